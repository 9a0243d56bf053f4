# The commands a person needs. `make help` lists them.
SHELL := /bin/bash

.PHONY: help demo demo-down test lint fmt crds chart-crds manifest chart-lint binaries control-plane

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

demo: ## the main job: local cluster, Tortie by its Helm chart, pool 10.244.0.0/16, pods on two nodes talking
	bash tests/e2e/scripts/demo.sh up

demo-down: ## take the demo cluster down, leaving no process, namespace or link
	bash tests/e2e/scripts/demo.sh down

test: ## run every test: unit, property and end-to-end (needs root for the end-to-end part)
	bash tests/run-tests.sh

lint: ## cargo fmt --check and clippy with warnings as errors
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt: ## format the code
	cargo fmt --all

crds: ## regenerate the CRD manifests under crds/manifests from the Rust types, and the chart's copies
	cargo run -q -p tortie-crds --bin crdgen
	$(MAKE) chart-crds

chart-crds: ## copy crds/manifests into the chart's crds/ directory (a test fails when they differ)
	rm -f charts/tortie/crds/*.yaml
	cp crds/manifests/*.yaml charts/tortie/crds/

manifest: ## render deploy/tortie.yaml, the kubectl-apply manifest, from the chart (a test fails on drift)
	bash charts/render.sh

chart-lint: ## helm lint the chart with default and with non-default values
	bash -c 'helm="$${HELM:-$$(bash tests/e2e/scripts/build-control-plane.sh --print-dir)/helm}"; \
	  "$$helm" lint --strict charts/tortie && \
	  "$$helm" lint --strict charts/tortie -f charts/tortie/ci/non-default-values.yaml'

binaries: ## build Tortie's binaries (debug)
	cargo build --workspace --bins

control-plane: ## build or reuse the pinned kube-apiserver, etcd, kubectl, helm, ...
	bash tests/e2e/scripts/build-control-plane.sh
