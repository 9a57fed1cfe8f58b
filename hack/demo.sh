#!/usr/bin/env bash
# The one-command demo: a real kube-apiserver + etcd, moto (EC2) behind the fault proxy, the
# feip controller and two simulated nodes; shows a failover and that the address stays put
# when the failed node returns. `hack/demo.sh --non-interactive` exits when done (CI).
# The first run builds the Kubernetes binaries (about 7 minutes on 2 cores, up to 20) and the
# Rust crate (about 5-10 minutes on 2 cores); both print their progress.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
hack/install-tools.sh
echo "[demo] building feip and the demo (cargo build --features testenv --bins; a cold build takes about 5-10 minutes on 2 cores, a warm one seconds)" >&2
started=$(date +%s)
cargo build --locked --features testenv --bins
echo "[demo] build done in $(($(date +%s) - started)) s" >&2
exec target/debug/feip-demo "$@"
