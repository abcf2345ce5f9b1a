# orderpipe — every command a person or CI runs. `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
# Tools built from the registries (kube-apiserver, etcd, kwok, Kafka...) live in a cache keyed by their
# pinned versions, so only a fresh machine pays for the build.
export ORDERPIPE_CACHE ?= $(HOME)/.cache/orderpipe
# The harness keeps its work dirs and env file under the cargo target dir (CI moves it out of the clone).
E2E_DIR := $(or $(CARGO_TARGET_DIR),target)/e2e
CARGO_DENY_VERSION := 0.20.2

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

.PHONY: build
build: ## Build every crate (debug)
	$(CARGO) build --workspace --all-targets

.PHONY: fmt
fmt: ## Format the code
	$(CARGO) fmt --all

.PHONY: lint
lint: cargo-tools ## rustfmt check, clippy -D warnings, cargo-deny (licenses, bans, sources)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@# cargo-deny resolves the graph for every platform, a build downloads only the host's crates:
	@# fetch them all first, or a fresh cargo cache fails with "--offline was specified".
	$(CARGO) fetch --locked
	$(CARGO) deny --offline check licenses bans sources

.PHONY: audit
audit: cargo-tools ## cargo-deny advisories (needs the RustSec database from the network)
	$(CARGO) deny check advisories

.PHONY: cargo-tools
cargo-tools: ## Install the pinned cargo tools (cargo-deny) if missing
	@$(CARGO) deny --version 2>/dev/null | grep -qF "$(CARGO_DENY_VERSION)" || \
		$(CARGO) install cargo-deny --locked --version $(CARGO_DENY_VERSION)

.PHONY: manifests
manifests: ## Regenerate crds/ and the API reference docs/api.md from the Rust API types
	$(CARGO) run -q -p orderpipe-api --bin crdgen > crds/orderpipe.dev_orderpipelines.yaml
	$(CARGO) run -q -p orderpipe-api --bin apidoc > docs/api.md

.PHONY: test
test: test-unit test-e2e ## Unit tests, then the end-to-end tests on the local real stack

.PHONY: test-unit
test-unit: ## Unit tests (no infrastructure needed)
	$(CARGO) test --workspace

.PHONY: e2e-setup
e2e-setup: ## Install the Debian packages the e2e tests need (kcat, prometheus, openssl...), if missing
	@e2e/tools/setup-debian.sh

.PHONY: e2e-tools
e2e-tools: e2e-setup ## Build the real infrastructure (apiserver, etcd, kwok, Kafka...) into the versioned cache
	@e2e/tools/build.sh

# Flags for `orderpipe-stack up` (see `cargo run -p orderpipe-stack -- up --help`); the shared stack runs
# the Argo Rollouts controller too, for the canary tests.
E2E_UP_FLAGS ?= --argo-rollouts

.PHONY: e2e-up
e2e-up: e2e-tools ## Start the local stack in the background; then: source target/e2e/env
	$(CARGO) run -q -p orderpipe-stack -- up $(E2E_UP_FLAGS)

.PHONY: e2e-down
e2e-down: ## Stop the local stack started by e2e-up
	$(CARGO) run -q -p orderpipe-stack -- down

# The e2e tests of every crate are #[ignore]d (they need the stack); this runs exactly those. The
# worker's run whole pipelines of processes each, so they go one at a time on a 2-core machine.
.PHONY: test-e2e
test-e2e: e2e-tools ## End-to-end tests on a local stack started for the run and stopped after it, also on failure
	$(CARGO) test --workspace --no-run
	trap '$(CARGO) run -q -p orderpipe-stack -- down' EXIT; \
	$(CARGO) run -q -p orderpipe-stack -- up $(E2E_UP_FLAGS); \
	set -a; . $(E2E_DIR)/env; set +a; \
	$(CARGO) test --workspace --exclude orderpipe-worker -- --ignored --test-threads=2; \
	$(CARGO) test -p orderpipe-worker -- --ignored --test-threads=1; \
	e2e/postman/run.sh

# The worker's fault runs (SIGKILLs, rebalances, broker restart) at the issue's full size; `make test`
# runs them with 20,000 orders each. The hostile-input suite runs HOSTILE_CASES cases per processor
# here (96 in `make test`).
FAULT_ORDERS ?= 100000
HOSTILE_CASES ?= 10000
.PHONY: test-faults
test-faults: e2e-tools ## Hostile-input suite at depth, then the worker's fault tests with FAULT_ORDERS orders each, on a local stack
	ORDERPIPE_HOSTILE_CASES=$(HOSTILE_CASES) $(CARGO) test -p orderpipe-orders --test orders -- hostile
	$(CARGO) test -p orderpipe-worker --no-run
	trap '$(CARGO) run -q -p orderpipe-stack -- down' EXIT; \
	$(CARGO) run -q -p orderpipe-stack -- up --profile kafka; \
	set -a; . $(E2E_DIR)/env; set +a; \
	ORDERPIPE_FAULT_ORDERS=$(FAULT_ORDERS) $(CARGO) test -p orderpipe-worker --test pipeline -- \
		--ignored --test-threads=1 --nocapture sigkilled rebalances a_broker_restart

# Demo knobs: SCENARIO=steady|peak|bad-release|good-release (peak: a burst on top of the rate, validate
# scales out on its lag and back in; bad-release/good-release: validate released by canary to a faulty
# or a sound worker, aborted or promoted by its analysis), DEMO_RATE orders/s, DEMO_SECONDS to stop by
# itself (default: at Ctrl-C; the other scenarios stop by themselves), DEMO_FLAGS for more
# (`target/debug/orderpipe-demo --help`).
SCENARIO ?= steady
DEMO_RATE ?= 300
DEMO_FLAGS ?=

.PHONY: demo
demo: e2e-tools ## The checkout pipeline on a local stack with a live view; Ctrl-C (or DEMO_SECONDS=N) stops, drains, checks the books
	@echo "[demo] building the operator, the worker and the demo ..."
	@start=$$(date +%s); $(CARGO) build -p orderpipe-operator -p orderpipe-worker -p orderpipe-demo --bins; \
		echo "[demo] built in $$(( $$(date +%s) - start )) s"
	$(or $(CARGO_TARGET_DIR),target)/debug/orderpipe-demo --scenario $(SCENARIO) --rate $(DEMO_RATE) $(DEMO_FLAGS)

# Bench knobs: BENCH_FLAGS (`orderpipe-bench --help`: --only worker,operator, --quick).
BENCH_FLAGS ?=

.PHONY: bench
bench: e2e-tools ## Benchmarks on a local stack (release builds), side by side with baselines; report in bench/results/latest.md
	$(CARGO) build --release -p orderpipe-worker -p orderpipe-operator -p orderpipe-bench
	$(or $(CARGO_TARGET_DIR),target)/release/orderpipe-bench $(BENCH_FLAGS)

.PHONY: api-test
api-test: e2e-tools ## Postman (newman) tests of the operator's HTTP API on a local stack
	$(CARGO) build -q -p orderpipe-operator
	trap '$(CARGO) run -q -p orderpipe-stack -- down' EXIT; \
	$(CARGO) run -q -p orderpipe-stack -- up --profile kubernetes; \
	e2e/postman/run.sh

# --- Delivery (used by the Jenkinsfile; they act on the current kubectl context) ---------------

IMG_TAG ?= $(shell git rev-parse --short=12 HEAD)
REGISTRY ?= docker.io/orderpipe
DEPLOY_DIR := target/deploy

.PHONY: deploy
deploy: ## Apply config/default with operator and worker images tagged IMG_TAG
	mkdir -p $(DEPLOY_DIR)
	sed -e 's|@REGISTRY@|$(REGISTRY)|g' -e 's|@TAG@|$(IMG_TAG)|g' config/deploy/kustomization.yaml.in > $(DEPLOY_DIR)/kustomization.yaml
	kubectl apply --server-side -k $(DEPLOY_DIR)

TIMEOUT ?= 20m
ROLLOUTS := -A -l app.kubernetes.io/managed-by=orderpipe-operator

.PHONY: canary-status
canary-status: ## Wait until every worker Rollout (canary stage) is Healthy
	kubectl wait rollouts.argoproj.io $(ROLLOUTS) --for=jsonpath='{.status.phase}'=Healthy --timeout=$(TIMEOUT)

.PHONY: canary-abort
canary-abort: ## Abort every worker Rollout that is not Healthy (back to the stable version)
	kubectl get rollouts.argoproj.io $(ROLLOUTS) -o jsonpath='{range .items[?(@.status.phase!="Healthy")]}{.metadata.namespace} {.metadata.name}{"\n"}{end}' | \
	while read -r ns name; do \
		kubectl -n "$$ns" patch rollout "$$name" --subresource=status --type=merge -p '{"status":{"abort":true}}'; \
	done

.PHONY: promote
promote: ## Point the production Argo CD Application at this commit and images, then wait for Healthy
	kubectl -n argocd patch application orderpipe --type=merge -p \
		'{"spec":{"source":{"targetRevision":"$(shell git rev-parse HEAD)","kustomize":{"images":["$(REGISTRY)/orderpipe-operator:$(IMG_TAG)"]}}}}'
	kubectl -n argocd wait application orderpipe --for=jsonpath='{.status.health.status}'=Healthy --timeout=$(TIMEOUT)
