#!/usr/bin/env bash
# Builds and caches the real parts feip's tests run against:
#   kube-apiserver + kubectl (one Kubernetes version), etcd, helm  -- from their Go modules
#   moto[server]                                                   -- in a project-local venv
#
# Versions are pinned in hack/versions.env. Binaries are cached outside the repository under
# $FEIP_CACHE (default ~/.cache/feip), one directory per tool and version, so a rebuild only
# happens when a version changes. Safe to run repeatedly and concurrently (a lock serialises
# builds). On success it prints the bin directory; `source <(hack/install-tools.sh --env)` exports
# FEIP_BIN_DIR and FEIP_MOTO_SERVER for the test harness.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=hack/versions.env
source "$repo/hack/versions.env"

cache=${FEIP_CACHE:-$HOME/.cache/feip}
venv=${FEIP_VENV:-$repo/.venv}
mode=${1:-}

log() { [ "$mode" = "--env" ] || printf '[install-tools %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
log_always() { printf '[install-tools %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

k8s_dir="$cache/kubernetes-$KUBERNETES_VERSION"
etcd_dir="$cache/etcd-$ETCD_VERSION"
helm_dir="$cache/helm-$HELM_VERSION"
bin_dir="$cache/bin-k8s$KUBERNETES_VERSION-etcd$ETCD_VERSION-helm$HELM_VERSION"

have() { [ -x "$1" ]; }

# Runs "$@" and logs "still <what> (N s)" every 30 s while it runs: Go prints nothing while it
# compiles, and a cold build takes minutes. Returns the command's status. The ticker's sleep
# holds no inherited pipe, so a killed ticker never keeps a reader of our output waiting.
with_progress() {
    local what=$1 started ticker rc=0
    shift
    started=$(date +%s)
    (
        while sleep 30 </dev/null >/dev/null 2>&1; do
            log_always "  still $what ($(($(date +%s) - started)) s)"
        done
    ) >/dev/null &
    ticker=$!
    "$@" || rc=$?
    kill "$ticker" 2>/dev/null || true
    wait "$ticker" 2>/dev/null || true
    return "$rc"
}

# Runs "$@" quietly; if it fails, once more with its output shown.
quiet_or_loud() { "$@" >/dev/null 2>&1 || "$@"; }

# Wrapper-module build: k8s.io/kubernetes and go.etcd.io/etcd/server/v3 carry `replace`
# directives pointing into their own source tree, so `go install pkg@version` refuses them.
# A throwaway module that replaces each such module with the same release from the proxy works.
# $1 = module@version, $2 = module path prefix of replaced modules, $3 = version to pin them to.
wrapper_module() {
    local modver=$1 prefix=$2 pin=$3 gomod
    go mod init feip.local/toolbuild >/dev/null 2>&1
    gomod=$(go mod download -json "$modver" | jq -r .GoMod)
    [ -f "$gomod" ] || { log_always "could not download go.mod of $modver"; exit 1; }
    # Lines of the form `<module> => ./staging/...` or `<module> => ../...`.
    local replaced
    replaced=$(grep -Eo "^[[:space:]]*(replace[[:space:]]+)?${prefix}[^[:space:]]* => \.\.?/" "$gomod" |
        sed -E 's/^[[:space:]]*(replace[[:space:]]+)?//; s/ => .*//' | sort -u)
    local n=0 m
    for m in $replaced; do
        go mod edit -replace "$m=$m@$pin"
        n=$((n + 1))
    done
    log "  replaced $n modules of $modver with $pin"
}

build_kubernetes() {
    have "$k8s_dir/kube-apiserver" && have "$k8s_dir/kubectl" && return 0
    local v=$KUBERNETES_VERSION minor staging_pin work started
    minor=$(echo "$v" | cut -d. -f2)
    staging_pin="v0.${v#v1.}"
    started=$(date +%s)
    log_always "building kube-apiserver + kubectl $v from Go modules (cold: about 7 min measured on 2 cores, up to 20)"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' RETURN
    (
        cd "$work"
        wrapper_module "k8s.io/kubernetes@$v" "k8s.io/" "$staging_pin"
        log "  resolving dependencies"
        with_progress "resolving the dependencies of kubernetes $v" \
            quiet_or_loud go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@$v" "k8s.io/kubernetes/cmd/kubectl@$v"
        local date ld="" p
        date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
        for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
            ld+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor"
            ld+=" -X $p.gitTreeState=clean -X $p.buildDate=$date"
        done
        mkdir -p "$k8s_dir.tmp"
        for cmd in kube-apiserver kubectl; do
            log "  compiling $cmd (a line every 30 s while it runs)"
            CGO_ENABLED=0 with_progress "compiling $cmd" \
                go build -trimpath -tags selinux,notest,grpcnotrace -ldflags "-s -w$ld" \
                -o "$k8s_dir.tmp/$cmd" "k8s.io/kubernetes/cmd/$cmd"
            log "  $cmd done after $(($(date +%s) - started)) s"
        done
    )
    rm -rf "$k8s_dir" && mv "$k8s_dir.tmp" "$k8s_dir"
    log_always "kubernetes $v built in $(($(date +%s) - started)) s"
}

build_etcd() {
    have "$etcd_dir/etcd" && return 0
    local v=$ETCD_VERSION work started
    started=$(date +%s)
    log_always "building etcd $v from Go modules (cold: a few minutes)"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' RETURN
    (
        cd "$work"
        wrapper_module "go.etcd.io/etcd/server/v3@$v" "go.etcd.io/etcd/" "$v"
        with_progress "resolving the dependencies of etcd $v" quiet_or_loud go get -tool "go.etcd.io/etcd/server/v3@$v"
        mkdir -p "$etcd_dir.tmp"
        CGO_ENABLED=0 with_progress "compiling etcd $v" \
            go build -trimpath -ldflags "-s -w" -o "$etcd_dir.tmp/etcd" go.etcd.io/etcd/server/v3
    )
    rm -rf "$etcd_dir" && mv "$etcd_dir.tmp" "$etcd_dir"
    log_always "etcd $v built in $(($(date +%s) - started)) s"
}

build_helm() {
    have "$helm_dir/helm" && return 0
    local v=$HELM_VERSION started major
    started=$(date +%s)
    major=$(echo "$v" | cut -d. -f1)
    log_always "building helm $v from Go modules (cold: a few minutes)"
    mkdir -p "$helm_dir.tmp"
    CGO_ENABLED=0 GOBIN="$helm_dir.tmp" with_progress "building helm $v" go install -trimpath \
        -ldflags "-s -w -X helm.sh/helm/$major/internal/version.version=$v" "helm.sh/helm/$major/cmd/helm@$v"
    rm -rf "$helm_dir" && mv "$helm_dir.tmp" "$helm_dir"
    log_always "helm $v built in $(($(date +%s) - started)) s"
}

install_moto() {
    if [ -x "$venv/bin/moto_server" ] && [ "$("$venv/bin/python" -c 'import moto; print(moto.__version__)' 2>/dev/null)" = "$MOTO_VERSION" ]; then
        return 0
    fi
    log_always "creating $venv with moto[server]==$MOTO_VERSION"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
}

mkdir -p "$cache"
exec 9>"$cache/.install.lock"
flock 9

build_etcd
build_helm
build_kubernetes
install_moto

mkdir -p "$bin_dir"
ln -sf "$k8s_dir/kube-apiserver" "$k8s_dir/kubectl" "$etcd_dir/etcd" "$helm_dir/helm" "$bin_dir/"

if [ "$mode" = "--env" ]; then
    echo "export FEIP_BIN_DIR=$bin_dir"
    echo "export FEIP_MOTO_SERVER=$venv/bin/moto_server"
    echo "export FEIP_KUBERNETES_VERSION=$KUBERNETES_VERSION"
else
    log "ready: $bin_dir (kube-apiserver, kubectl, etcd, helm), moto: $venv/bin/moto_server"
fi
