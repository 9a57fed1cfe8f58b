#!/usr/bin/env bash
# The local environment: a real kube-apiserver + etcd, moto (EC2) behind the fault proxy and
# two simulated nodes. The first run builds the Kubernetes binaries (10-20 minutes) and the
# Rust crate (about 5 minutes); progress is printed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
hack/install-tools.sh
exec cargo run --locked --quiet --features testenv --bin feip-demo -- "$@"
