#!/usr/bin/env bash
# Regenerates the CRDs from src/crd.rs and src/grant.rs: writes crds/<plural>.feip.io.yaml with
# `feip crd <plural>` and copies each byte for byte to the Helm chart (deploy/helm/feip/crds/). Run it
# after changing src/crd.rs; a unit test in src/crd.rs and tests/e2e.rs fail while either copy
# is stale. Commit both files.
#
# Builds the `feip` binary first: seconds when the debug build is warm, about 5 minutes cold on
# 2 cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "[gen-crd] cargo build --locked --quiet (a cold build takes about 5 minutes on 2 cores)" >&2
cargo build --locked --quiet
bin=${CARGO_TARGET_DIR:-target}/debug/feip
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
for plural in floatingelasticips floatingelasticipgrants; do
  crd=crds/$plural.feip.io.yaml
  chart_crd=deploy/helm/feip/crds/$plural.feip.io.yaml
  # Into a temporary file outside the repository first, so a failed run leaves the committed
  # CRD untouched (and no stray file in crds/, whose file list tests/e2e.rs compares).
  "$bin" crd "$plural" >"$tmp"
  [ -s "$tmp" ] || { echo "[gen-crd] feip crd $plural printed nothing" >&2; exit 1; }
  cat "$tmp" >"$crd"
  cp "$crd" "$chart_crd"
  cmp "$crd" "$chart_crd"
  echo "[gen-crd] wrote $crd and $chart_crd" >&2
  git status --short -- "$crd" "$chart_crd" >&2 || true
done
