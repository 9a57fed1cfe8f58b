#!/usr/bin/env bash
# Benchmarks feip against the real local environment (kube-apiserver + etcd, moto behind the
# fault proxy with EC2's token buckets emulated, 200 simulated nodes, 1,000 addresses) with the
# real `feip controller` binary as a subprocess. Prints every figure and the targets (met / not
# met); docs/benchmarks.md explains them and records the last results.
#
#   hack/bench.sh                      # release build, full size (about 25 minutes)
#   hack/bench.sh --smoke              # every phase at a tiny size (about a minute)
#   BENCH_PROFILE=debug hack/bench.sh  # debug build (numbers are not comparable)
#   hack/bench.sh --trials 50 --steady-secs 600 --json results.json
#
# `target/<profile>/feip-bench --help` lists the options. The first run builds the pinned
# Kubernetes binaries (hack/install-tools.sh, 10-20 minutes) and a release build of the crate
# (about 10 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

hack/install-tools.sh
profile=${BENCH_PROFILE:-release}
started=$(date +%s)
if [[ $profile == release ]]; then
    echo "[bench] cargo build --release --locked --features testenv --bins (a cold release build takes about 10 minutes on 2 cores, a warm one seconds)" >&2
    cargo build --release --locked --features testenv --bins
else
    echo "[bench] cargo build --locked --features testenv --bins (a cold debug build takes about 5-10 minutes on 2 cores, a warm one seconds)" >&2
    cargo build --locked --features testenv --bins
fi
echo "[bench] build done in $(($(date +%s) - started)) s" >&2
echo "[bench] $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
exec "target/$profile/feip-bench" "$@"
