#!/usr/bin/env bash
# Runs every test of feip: unit and property tests, and the integration tests against a real
# kube-apiserver + etcd, the real kubectl/helm and moto. Installs what the tests need first
# (hack/install-tools.sh: the first run builds the Kubernetes binaries, about 7 minutes on 2 cores, up to 20).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

hack/install-tools.sh
# Integration tests start their own control planes and moto; give them the cores they need.
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-2}
cargo test --locked --features testenv --all-targets "$@"
target/debug/feip-bench --smoke  # the benchmark harness at a tiny size (docs/benchmarks.md)
# The one-command demo, non-interactively: a real failover end to end with the real binary.
target/debug/feip-demo --non-interactive
