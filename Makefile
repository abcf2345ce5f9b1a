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
# The independent HTTP load generator of the intake gateway's benchmark.
OHA_VERSION := 1.16.0
CARGO_CYCLONEDX_VERSION := 0.5.9
# Reports CI archives or hands to SonarQube and Snyk: inside the clone, whatever CARGO_TARGET_DIR is.
REPORTS ?= target/reports

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
lint: cargo-tools lint-delivery ## rustfmt check, clippy -D warnings, cargo-deny (licenses, bans, sources), delivery files
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@# cargo-deny resolves the graph for every platform, a build downloads only the host's crates:
	@# fetch them all first, or a fresh cargo cache fails with "--offline was specified".
	$(CARGO) fetch --locked
	$(CARGO) deny --offline check licenses bans sources

.PHONY: lint-delivery
lint-delivery: e2e-tools ## Dockerfile (hadolint), Jenkinsfile (npm-groovy-lint, make targets), kustomize overlays, shell scripts
	tools/delivery/lint.sh

.PHONY: audit
audit: cargo-tools ## cargo-deny advisories (needs the RustSec database from the network)
	$(CARGO) deny check advisories

.PHONY: clippy-report
clippy-report: ## Clippy as JSON for SonarQube into target/reports/clippy.json; fails on any finding
	mkdir -p $(REPORTS)
	$(CARGO) clippy --workspace --all-targets --message-format=json -- -D warnings > $(REPORTS)/clippy.json

.PHONY: sbom
sbom: ## CycloneDX SBOMs of the shipped crates (operator, worker) into target/reports/sbom
	@$(CARGO) cyclonedx --version 2>/dev/null | grep -qF "$(CARGO_CYCLONEDX_VERSION)" || \
		$(CARGO) install cargo-cyclonedx --locked --version $(CARGO_CYCLONEDX_VERSION)
	$(CARGO) cyclonedx --quiet --format json --spec-version 1.5
	mkdir -p $(REPORTS)/sbom
	for crate in operator worker; do mv $$crate/orderpipe-$$crate.cdx.json $(REPORTS)/sbom/; done
	find . -name '*.cdx.json' -not -path './target/*' -delete

.PHONY: snyk-sbom
snyk-sbom: ## Snyk test of the SBOMs of `make sbom` (needs SNYK_TOKEN)
	for sbom in $(REPORTS)/sbom/*.cdx.json; do \
		npx --yes snyk@1 sbom test --experimental --file="$$sbom" --severity-threshold=high; \
	done

.PHONY: bench-tools
bench-tools: ## Install the pinned benchmark tools (oha) if missing
	@oha --version 2>/dev/null | grep -qF "$(OHA_VERSION)" || \
		$(CARGO) install oha --locked --version $(OHA_VERSION)

.PHONY: cargo-tools
cargo-tools: ## Install the pinned cargo tools (cargo-deny) if missing
	@$(CARGO) deny --version 2>/dev/null | grep -qF "$(CARGO_DENY_VERSION)" || \
		$(CARGO) install cargo-deny --locked --version $(CARGO_DENY_VERSION)

.PHONY: manifests
manifests: ## Regenerate crds/, the API reference docs/api.md and the intake gateway's docs/intake.openapi.json from the Rust types
	$(CARGO) run -q -p orderpipe-api --bin crdgen > crds/orderpipe.dev_orderpipelines.yaml
	$(CARGO) run -q -p orderpipe-api --bin apidoc > docs/api.md
	$(CARGO) run -q -p orderpipe-worker --bin orderpipe-worker -- openapi > docs/intake.openapi.json

.PHONY: test
test: test-unit test-e2e ## Unit tests, then the end-to-end tests on the local real stack

.PHONY: test-unit
test-unit: ## Unit tests (no infrastructure needed)
	$(CARGO) test --workspace

.PHONY: e2e-setup
e2e-setup: ## Install the Debian packages the e2e tests need (kcat, prometheus, openssl...), if missing
	@e2e/tools/setup-debian.sh

# newman for the Postman suites, pinned by e2e/postman/package-lock.json (Node.js and npm come from
# the machine image, like Go).
.PHONY: postman-tools
postman-tools: ## Install newman from e2e/postman/package-lock.json (npm ci) if it is missing or stale
	@command -v npm >/dev/null || { echo "npm is missing: install Node.js (>= 18) with npm"; exit 1; }
	@test e2e/postman/node_modules/.package-lock.json -nt e2e/postman/package-lock.json || \
		npm ci --prefix e2e/postman --no-audit --no-fund

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
test-e2e: e2e-tools postman-tools ## End-to-end tests on a local stack started for the run and stopped after it, also on failure
	$(CARGO) test --workspace --no-run
	trap '$(CARGO) run -q -p orderpipe-stack -- down' EXIT; \
	$(CARGO) run -q -p orderpipe-stack -- up $(E2E_UP_FLAGS); \
	set -a; . $(E2E_DIR)/env; set +a; \
	$(CARGO) test --workspace --exclude orderpipe-worker -- --ignored --test-threads=2; \
	$(CARGO) test -p orderpipe-worker -- --ignored --test-threads=1 --skip broker_fault_; \
	e2e/postman/run.sh

.PHONY: e2e-logs
e2e-logs: ## Copy the logs of the last e2e run (components, operator, pods) into ARTIFACTS, for CI to archive
	@test -n "$(ARTIFACTS)" || { echo "set ARTIFACTS=<dir>"; exit 1; }
	mkdir -p $(ARTIFACTS)
	cd $(E2E_DIR) && find . -name '*.log' -not -path '*/kafka-data/*' -exec cp --parents {} $(abspath $(ARTIFACTS)) \;
	@find $(ARTIFACTS) -name '*.log' | grep -q . || { echo "no e2e logs under $(E2E_DIR)"; exit 1; }

# The worker's fault runs (SIGKILLs, rebalances, broker restart) at the issue's full size; `make test`
# runs them with 20,000 orders each. The hostile-input suite runs HOSTILE_CASES cases per processor
# here (96 in `make test`). Then the broker failures, each on a private three-broker cluster with
# every topic replicated (RF 3, min ISR 2): `make test` runs only a short leader SIGKILL
# (ha_smoke_*); each run prints its orders in and out and how long it took.
FAULT_ORDERS ?= 100000
HOSTILE_CASES ?= 10000
.PHONY: test-faults
test-faults: e2e-tools ## Hostile-input suite at depth, the worker's fault tests with FAULT_ORDERS orders each on a local stack, then broker failures on three-broker clusters
	ORDERPIPE_HOSTILE_CASES=$(HOSTILE_CASES) $(CARGO) test -p orderpipe-orders --test orders -- hostile
	$(CARGO) test -p orderpipe-worker --no-run
	trap '$(CARGO) run -q -p orderpipe-stack -- down' EXIT; \
	$(CARGO) run -q -p orderpipe-stack -- up --profile kafka; \
	set -a; . $(E2E_DIR)/env; set +a; \
	ORDERPIPE_FAULT_ORDERS=$(FAULT_ORDERS) $(CARGO) test -p orderpipe-worker --test pipeline -- \
		--ignored --test-threads=1 --nocapture sigkilled rebalances a_broker_restart
	ORDERPIPE_FAULT_ORDERS=$(FAULT_ORDERS) $(CARGO) test -p orderpipe-worker --test broker_faults -- \
		--ignored --test-threads=1 --nocapture broker_fault_

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
bench: e2e-tools bench-tools ## Benchmarks on a local stack (release builds), side by side with baselines; report in bench/results/latest.md
	$(CARGO) build --release -p orderpipe-worker -p orderpipe-operator -p orderpipe-bench
	$(or $(CARGO_TARGET_DIR),target)/release/orderpipe-bench $(BENCH_FLAGS)

.PHONY: profile
profile: e2e-tools ## Flame graph of every CPU while the pipeline benchmark drains (needs perf), into docs/profiles/
	$(CARGO) build --release -p orderpipe-worker -p orderpipe-bench
	tools/profile/pipeline.sh

.PHONY: api-test
api-test: e2e-tools postman-tools ## Postman (newman) tests of the operator's probes and the intake gateway's API on a local stack
	$(CARGO) build -q -p orderpipe-operator -p orderpipe-worker
	trap '$(CARGO) run -q -p orderpipe-stack -- down' EXIT; \
	$(CARGO) run -q -p orderpipe-stack -- up --no-prometheus; \
	e2e/postman/run.sh

# --- Delivery (used by the Jenkinsfile; they act on the current kubectl context) ---------------
IMG_TAG ?= $(shell git rev-parse --short=12 HEAD)
REGISTRY ?= docker.io/orderpipe
DEPLOY_DIR := target/deploy
# kubectl with kustomize; the pinned one of the e2e tools when built (Debian's is too old).
KUBECTL ?= $(or $(wildcard $(ORDERPIPE_CACHE)/e2e-tools/current/bin/kubectl),kubectl)

IMAGES_DIR := target/images
# local: bases made from Debian's packages (tools/images/bases.sh); public: the Dockerfile's
# defaults from Docker Hub and gcr.io (Jenkins).
IMAGE_BASES ?= local

.PHONY: images
images: e2e-setup ## Build the operator and worker images with buildah (IMAGE_BASES=local|public), run their entrypoints
	REGISTRY=$(REGISTRY) IMG_TAG=$(IMG_TAG) IMAGES_DIR=$(IMAGES_DIR) IMAGE_BASES=$(IMAGE_BASES) tools/images/build.sh

.PHONY: snyk-images
snyk-images: ## Snyk container test of the images of `make images` (needs SNYK_TOKEN)
	for target in operator worker; do \
		npx --yes snyk@1 container test "oci-archive:$(IMAGES_DIR)/orderpipe-$$target.tar" \
			--file=Dockerfile --severity-threshold=high; \
	done

.PHONY: push
push: ## Push both images to REGISTRY (log in with REGISTRY_USER/REGISTRY_PASSWORD when set)
	@if [ -n "$${REGISTRY_USER:-}" ]; then \
		echo "$$REGISTRY_PASSWORD" | buildah login -u "$$REGISTRY_USER" --password-stdin "$(firstword $(subst /, ,$(REGISTRY)))"; \
	fi
	for target in operator worker; do buildah push "$(REGISTRY)/orderpipe-$$target:$(IMG_TAG)"; done

# The kubebuilder verbs: install/uninstall the CRD, deploy/undeploy the operator, run it from here.

# Fills @REGISTRY@ and @TAG@ of config/deploy/*.in into DEPLOY_DIR.
define render_deploy_dir
	@mkdir -p $(DEPLOY_DIR)
	@for file in config/deploy/*.in; do \
		sed -e 's|@REGISTRY@|$(REGISTRY)|g' -e 's|@TAG@|$(IMG_TAG)|g' "$$file" > $(DEPLOY_DIR)/$$(basename "$$file" .in); \
	done
endef

.PHONY: deploy-render
deploy-render: ## Print config/default with both images tagged IMG_TAG (what deploy applies)
	$(render_deploy_dir)
	@$(KUBECTL) kustomize $(DEPLOY_DIR)

.PHONY: install
install: ## Install the OrderPipeline CRD (config/crd) into the current cluster
	$(KUBECTL) apply --server-side -k config/crd

.PHONY: uninstall
uninstall: ## Remove the OrderPipeline CRD, and with it every OrderPipeline
	$(KUBECTL) delete --ignore-not-found -k config/crd

.PHONY: deploy
deploy: ## Apply config/default with operator and worker images tagged IMG_TAG
	$(render_deploy_dir)
	$(KUBECTL) apply --server-side -k $(DEPLOY_DIR)

.PHONY: deploy-status
deploy-status: ## Wait until the deployed operator is rolled out (TIMEOUT)
	$(KUBECTL) -n orderpipe-system rollout status deployment/orderpipe-operator --timeout=$(TIMEOUT)

.PHONY: undeploy
undeploy: ## Delete what deploy applied (namespace, RBAC, operator, CRD)
	$(render_deploy_dir)
	$(KUBECTL) delete --ignore-not-found -k $(DEPLOY_DIR)

# `make run RUN_FLAGS=...` passes more flags (`orderpipe-operator --help`).
RUN_FLAGS ?=
.PHONY: run
run: install ## Run the operator from this checkout against the current kubeconfig (one replica, no leader election)
	$(CARGO) run -p orderpipe-operator -- --leader-election=false $(RUN_FLAGS)

TIMEOUT ?= 20m
ROLLOUTS := -A -l app.kubernetes.io/managed-by=orderpipe-operator

.PHONY: canary-status
canary-status: ## Wait until every worker Rollout (canary stage) is Healthy
	$(KUBECTL) wait rollouts.argoproj.io $(ROLLOUTS) --for=jsonpath='{.status.phase}'=Healthy --timeout=$(TIMEOUT)

.PHONY: canary-abort
canary-abort: ## Abort every worker Rollout that is not Healthy (back to the stable version)
	$(KUBECTL) get rollouts.argoproj.io $(ROLLOUTS) -o jsonpath='{range .items[?(@.status.phase!="Healthy")]}{.metadata.namespace} {.metadata.name}{"\n"}{end}' | \
	while read -r ns name; do \
		$(KUBECTL) -n "$$ns" patch rollout "$$name" --subresource=status --type=merge -p '{"status":{"abort":true}}'; \
	done

# What config/deploy sets, as Argo CD kustomize overrides: the operator image, and the worker image
# the operator hands to every stage (the same patch file).
promote_patch = jq -cn --arg rev "$$(git rev-parse HEAD)" \
	--arg image "docker.io/orderpipe/orderpipe-operator=$(REGISTRY)/orderpipe-operator:$(IMG_TAG)" \
	--rawfile patch $(DEPLOY_DIR)/worker-image-patch.yaml \
	'{spec: {source: {targetRevision: $$rev, kustomize: {images: [$$image], \
	  patches: [{target: {kind: "Deployment", name: "orderpipe-operator"}, patch: $$patch}]}}}}'

.PHONY: promote-patch
promote-patch: ## Print the merge patch promote gives the production Argo CD Application
	$(render_deploy_dir)
	@$(promote_patch)

.PHONY: promote
promote: ## Point the production Argo CD Application at this commit and both images, then wait for Healthy
	$(render_deploy_dir)
	$(KUBECTL) -n argocd patch application orderpipe --type=merge -p "$$($(promote_patch))"
	$(KUBECTL) -n argocd wait application orderpipe --for=jsonpath='{.status.health.status}'=Healthy --timeout=$(TIMEOUT)
