#!/usr/bin/env bash
# Style checks, as CI should run them: `cargo fmt --check` (fails on any unformatted file; run
# `cargo fmt` to fix), then clippy on every target with the test environment compiled in, with
# warnings as errors. Needs no tools beyond the Rust toolchain (no hack/install-tools.sh).
#
# fmt takes seconds. The first clippy run checks every dependency, which takes minutes on 2
# cores (a cold debug build of the crate is about 5 minutes); later runs take seconds to a
# minute, depending on what changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "[lint] cargo fmt --check" >&2
cargo fmt --check
echo "[lint] cargo clippy --locked --all-targets --features testenv -- -D warnings" >&2
cargo clippy --locked --all-targets --features testenv -- -D warnings
echo "[lint] ok" >&2
