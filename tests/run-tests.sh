#!/usr/bin/env bash
# Runs every test of the workspace: the pure unit and property tests first, then the
# tests that need root, network namespaces and the local cluster, one at a time because
# each brings up its own control plane and the machine may have few cores.
set -euo pipefail
cd "$(dirname "$0")/.."

TORTIE_BIN_DIR="$(bash tests/e2e/scripts/build-control-plane.sh)"
export TORTIE_BIN_DIR
# A missing prerequisite fails the end-to-end tests instead of skipping them.
export TORTIE_E2E_REQUIRE="${TORTIE_E2E_REQUIRE:-1}"

if [[ $EUID -ne 0 ]]; then
  echo "run-tests: the end-to-end tests need root (network namespaces); run as root" >&2
  exit 1
fi

echo "== building binaries"
cargo build --workspace --bins

echo "== unit, property and namespace tests"
cargo test --workspace --exclude tortie-e2e --no-fail-fast

echo "== end-to-end tests on the local cluster"
cargo test -p tortie-e2e --no-fail-fast -- --test-threads=1
