#!/usr/bin/env bash
# Regenerates the CRD from src/crd.rs: writes crds/floatingelasticips.feip.io.yaml with
# `feip crd` and copies it byte for byte to the Helm chart (deploy/helm/feip/crds/). Run it
# after changing src/crd.rs; a unit test in src/crd.rs and tests/e2e.rs fail while either copy
# is stale. Commit both files.
#
# Builds the `feip` binary first: seconds when the debug build is warm, about 5 minutes cold on
# 2 cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

crd=crds/floatingelasticips.feip.io.yaml
chart_crd=deploy/helm/feip/crds/floatingelasticips.feip.io.yaml

echo "[gen-crd] cargo run --locked --quiet -- crd > $crd (a cold build takes about 5 minutes on 2 cores)" >&2
# Into a temporary file outside the repository first, so a failed build leaves the committed
# CRD untouched (and no stray file in crds/, whose file list tests/e2e.rs compares).
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
cargo run --locked --quiet -- crd >"$tmp"
[ -s "$tmp" ] || { echo "[gen-crd] feip crd printed nothing" >&2; exit 1; }
cat "$tmp" >"$crd"
cp "$crd" "$chart_crd"
cmp "$crd" "$chart_crd"
echo "[gen-crd] wrote $crd and $chart_crd" >&2
git status --short -- "$crd" "$chart_crd" >&2 || true
