#!/usr/bin/env bash
# The main job on a local cluster: `demo.sh up` builds what is needed, brings up a cluster
# named "demo" with two nodes, installs Tortie with its Helm chart and shows pods on both
# nodes talking; `demo.sh down` takes it down.
set -euo pipefail
cd "$(dirname "$0")/../../.."

if [[ $EUID -ne 0 ]]; then
  echo "demo: the local cluster needs root (network namespaces); run as root" >&2
  exit 1
fi

case "${1:-up}" in
  up)
    echo "== system packages"
    bash tests/e2e/scripts/install-deps.sh
    echo "== control plane (built once from the Go module proxy, then cached)"
    TORTIE_BIN_DIR="$(bash tests/e2e/scripts/build-control-plane.sh)"
    export TORTIE_BIN_DIR
    echo "== Tortie's binaries"
    cargo build --workspace --bins
    target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
    exec "$target_dir/debug/tortie-cluster" --name demo demo --repository .
    ;;
  down)
    target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
    if [[ ! -x "$target_dir/debug/tortie-cluster" ]]; then
      cargo build -q -p tortie-e2e --bin tortie-cluster
    fi
    exec "$target_dir/debug/tortie-cluster" --name demo down
    ;;
  *)
    echo "usage: $0 up|down" >&2
    exit 2
    ;;
esac
