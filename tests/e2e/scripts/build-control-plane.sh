#!/usr/bin/env bash
# Builds the Kubernetes control plane, etcd, kubectl and helm from the Go module proxy
# at pinned versions, into a cache outside the repository keyed by version. A second
# run finds the binaries there and does nothing.
#
# Usage: build-control-plane.sh            build what is missing, print the bin directory
#        build-control-plane.sh --print-dir print the bin directory only
set -euo pipefail

K8S_VERSION="${TORTIE_K8S_VERSION:-v1.35.4}"
ETCD_VERSION="${TORTIE_ETCD_VERSION:-v3.6.17}"
HELM_VERSION="${TORTIE_HELM_VERSION:-v3.22.0}"
CNI_VERSION="${TORTIE_CNI_LIBCNI_VERSION:-v1.3.0}"

CACHE_ROOT="${TORTIE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tortie}"
KEY="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_helm-${HELM_VERSION}_cni-${CNI_VERSION}"
BIN_DIR="$CACHE_ROOT/$KEY/bin"
WORK_DIR="$CACHE_ROOT/$KEY/build"

if [[ "${1:-}" == "--print-dir" ]]; then
  echo "$BIN_DIR"
  exit 0
fi

log() { printf '[build-control-plane %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

mkdir -p "$BIN_DIR" "$WORK_DIR"
export GOFLAGS="-buildvcs=false -trimpath"
export CGO_ENABLED=0

# True when every named binary is already in the cache.
have() {
  local b
  for b in "$@"; do [[ -x "$BIN_DIR/$b" ]] || return 1; done
}

build_kubernetes() {
  local bins=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
  if have "${bins[@]}"; then log "kubernetes $K8S_VERSION: cached"; return; fi
  local dir="$WORK_DIR/kubernetes"
  rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
  log "kubernetes $K8S_VERSION: resolving modules"
  go mod init tortie.dev/build/kubernetes >/dev/null 2>&1
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
  # The release requires its staging modules at v0.0.0 and points them at ./staging.
  # Outside that repository each one is published as v0.<minor>.<patch>.
  local staging_version="v0.${K8S_VERSION#v1.}"
  local args=("-require=k8s.io/kubernetes@$K8S_VERSION")
  local m
  while read -r m; do
    args+=("-replace=$m=$m@$staging_version")
  done < <(sed -n 's#^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/.*#\1#p' "$gomod")
  log "kubernetes $K8S_VERSION: ${#args[@]} module directives from the release's go.mod"
  go mod edit "${args[@]}"
  go mod edit -go="$(sed -n 's/^go //p' "$gomod")"
  local ver="${K8S_VERSION#v}" major minor
  major="${ver%%.*}"; minor="${ver#*.}"; minor="${minor%%.*}"
  local ldflags="-s -w"
  local p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
    ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  for b in "${bins[@]}"; do
    log "kubernetes $K8S_VERSION: building $b (a cold build takes several minutes)"
    go build -mod=mod -ldflags "$ldflags" -o "$BIN_DIR/$b.tmp" "k8s.io/kubernetes/cmd/$b"
    mv "$BIN_DIR/$b.tmp" "$BIN_DIR/$b"
  done
}

build_simple() { # NAME MODULE VERSION OUTPUT PACKAGE [LDFLAGS]
  local name=$1 module=$2 version=$3 out=$4 pkg=$5 ldflags=${6:-"-s -w"}
  if have "$out"; then log "$name $version: cached"; return; fi
  local dir="$WORK_DIR/$name"
  rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
  go mod init "tortie.dev/build/$name" >/dev/null 2>&1
  go mod edit "-require=$module@$version"
  log "$name $version: building $out"
  go build -mod=mod -ldflags "$ldflags" -o "$BIN_DIR/$out.tmp" "$pkg"
  mv "$BIN_DIR/$out.tmp" "$BIN_DIR/$out"
}

start=$SECONDS
build_simple etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION" etcd go.etcd.io/etcd/server/v3 \
  || { # etcd's main package lives in the etcd module root at go.etcd.io/etcd/v3
       build_simple etcd go.etcd.io/etcd/v3 "$ETCD_VERSION" etcd go.etcd.io/etcd/v3; }
build_simple helm helm.sh/helm/v3 "$HELM_VERSION" helm helm.sh/helm/v3/cmd/helm \
  "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
build_simple cnitool github.com/containernetworking/cni "$CNI_VERSION" cnitool \
  github.com/containernetworking/cni/cnitool
build_kubernetes
log "all binaries ready in $BIN_DIR ($((SECONDS - start)) s)"
echo "$BIN_DIR"
