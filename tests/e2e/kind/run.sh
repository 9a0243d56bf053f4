#!/usr/bin/env bash
# The end-to-end tests on a kind cluster, for machines with a Docker engine.
#
#   tests/e2e/kind/run.sh          create the cluster, load images, install, test
#   tests/e2e/kind/run.sh --down   delete the cluster
#
# Needs: docker, kind, kubectl, helm, cargo. The tests run against the kind cluster's
# kubeconfig instead of starting the local cluster (TORTIE_E2E_KUBECONFIG).
set -euo pipefail
cd "$(dirname "$0")/../../.."

CLUSTER=tortie
TAG="${TORTIE_IMAGE_TAG:-dev}"

if [[ "${1:-}" == "--down" ]]; then
  kind delete cluster --name "$CLUSTER"
  exit 0
fi

for tool in docker kind kubectl helm cargo; do
  command -v "$tool" >/dev/null || { echo "kind path: $tool is not installed" >&2; exit 1; }
done

kind get clusters | grep -qx "$CLUSTER" || kind create cluster --config tests/e2e/kind/cluster.yaml

for image in operator agent; do
  docker build -f "images/$image.Dockerfile" -t "tortie/$image:$TAG" .
  kind load docker-image --name "$CLUSTER" "tortie/$image:$TAG"
done

kubeconfig="$(mktemp)"
trap 'rm -f "$kubeconfig"' EXIT
kind get kubeconfig --name "$CLUSTER" >"$kubeconfig"

helm upgrade --install tortie charts/tortie --kubeconfig "$kubeconfig" \
  -n tortie-system --create-namespace \
  --set ipPool.cidr=10.244.0.0/16 --set image.tag="$TAG" --set image.pullPolicy=Never \
  --wait --timeout 5m

TORTIE_E2E_KUBECONFIG="$kubeconfig" cargo test -p tortie-e2e -- --test-threads=1
