# orderpipe — every command a person or CI runs. `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
# Tools built from the registries (kube-apiserver, etcd, kwok, Kafka...) live in a cache keyed by their
# pinned versions, so only a fresh machine pays for the build.
export ORDERPIPE_CACHE ?= $(HOME)/.cache/orderpipe
E2E_DIR := target/e2e

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
lint: ## rustfmt check, clippy -D warnings, cargo-deny
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

.PHONY: test
test: ## Unit tests, then the end-to-end tests on the local real stack
	$(CARGO) test --workspace
