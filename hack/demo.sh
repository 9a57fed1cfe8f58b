#!/usr/bin/env bash
# The one-command demo: a real kube-apiserver + etcd, moto (EC2) behind the fault proxy, the
# feip controller and two simulated nodes; shows a failover and that the address stays put
# when the failed node returns. `hack/demo.sh --non-interactive` exits when done (CI).
# The first run builds the Kubernetes binaries (about 7 minutes on 2 cores, up to 20) and the Rust crate (about
# 5 minutes); progress is printed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
hack/install-tools.sh
echo "[demo] building feip and the demo (cargo build --features testenv --bins)" >&2
cargo build --locked --quiet --features testenv --bins
exec target/debug/feip-demo "$@"
