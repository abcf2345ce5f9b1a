#!/usr/bin/env bash
# Lints every delivery file (`make lint-delivery`, part of `make lint`), offline once the tools are
# cached:
#   Dockerfile             hadolint (.hadolint.yaml)
#   Jenkinsfile            npm-groovy-lint, Jenkinsfile rules (.groovylintrc.json); and every
#                          `make X` it runs must be a target of the Makefile
#   config/**              every kustomization builds with kubectl kustomize, and `make deploy`'s
#                          render pins both images (operator and worker) to the deployed tag
#   shell scripts          shellcheck
# The server-side dry-run of the same overlays needs an apiserver: e2e/tests/delivery.rs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

eval "$(e2e/tools/build.sh)"
eval "$(tools/delivery/install.sh)"
kubectl="${E2E_TOOLS_DIR}/bin/kubectl"
failed=0
step() { printf '[lint-delivery] %s\n' "$*" >&2; }
fail() {
	printf '[lint-delivery] FAILED: %s\n' "$*" >&2
	failed=1
}

step "hadolint Dockerfile"
"${DELIVERY_TOOLS_DIR}/bin/hadolint" --no-color Dockerfile || fail "hadolint Dockerfile"

step "npm-groovy-lint Jenkinsfile"
# --noserver: no CodeNarc server left behind; colours off so CI logs stay readable.
FORCE_COLOR=0 "${DELIVERY_TOOLS_DIR}/bin/npm-groovy-lint" --noserver --failon info \
	--config .groovylintrc.json Jenkinsfile >"${TMPDIR:-/tmp}/groovy-lint.$$" 2>&1 ||
	{
		cat "${TMPDIR:-/tmp}/groovy-lint.$$" >&2
		fail "npm-groovy-lint Jenkinsfile"
	}
rm -f "${TMPDIR:-/tmp}/groovy-lint.$$"

step "every make target the Jenkinsfile runs exists"
targets="$(make -pRrn -f Makefile help 2>/dev/null | sed -n 's/^\([a-zA-Z0-9_-][a-zA-Z0-9_-]*\):.*/\1/p' | sort -u)"
called="$(grep -o "make [a-z][a-z0-9-]*" Jenkinsfile | cut -d' ' -f2 | sort -u)"
[[ -n ${called} ]] || fail "no make call found in Jenkinsfile"
for target in ${called}; do
	grep -qx "${target}" <<<"${targets}" || fail "Jenkinsfile runs 'make ${target}', which the Makefile lacks"
done

step "kubectl kustomize, every overlay"
while read -r kustomization; do
	dir="$(dirname "${kustomization}")"
	"${kubectl}" kustomize "${dir}" >/dev/null || fail "kubectl kustomize ${dir}"
done < <(git ls-files 'config/**/kustomization.yaml' 'config/kustomization.yaml')

# Both images of the rendered manifests ($2) are the build registry/tag, and no other is left.
check_images() { # <what> <manifests>
	grep -q "image: ${registry}/orderpipe-operator:${tag}\$" <<<"$2" ||
		fail "$1: operator image is not ${registry}/orderpipe-operator:${tag}"
	grep -q "value: ${registry}/orderpipe-worker:${tag}\$" <<<"$2" ||
		fail "$1: ORDERPIPE_WORKER_IMAGE is not ${registry}/orderpipe-worker:${tag}"
	if grep -E "orderpipe-(operator|worker):" <<<"$2" | grep -v "${registry}/orderpipe-[a-z]*:${tag}\$"; then
		fail "$1: an image above is not the deployed build"
	fi
}

step "make deploy's render pins both images"
registry=registry.example/orderpipe tag=lint0123
rendered="$(make -s deploy-render REGISTRY="${registry}" IMG_TAG="${tag}")"
check_images "deploy" "${rendered}"

step "make promote's Argo CD overrides pin both images"
# Argo CD turns spec.source.kustomize into a kustomization over config/default: do the same.
promote_dir=target/deploy-promote
mkdir -p "${promote_dir}"
make -s promote-patch REGISTRY="${registry}" IMG_TAG="${tag}" | jq '.spec.source.kustomize | {
	apiVersion: "kustomize.config.k8s.io/v1beta1", kind: "Kustomization",
	resources: ["../../config/default"], patches: .patches,
	images: [.images[] | capture("^(?<name>[^=]+)=(?<newName>.+):(?<newTag>[^:]+)$")]}' \
	>"${promote_dir}/kustomization.yaml"
promoted="$("${kubectl}" kustomize "${promote_dir}")"
check_images "promote" "${promoted}"

step "shellcheck"
mapfile -t scripts < <(git ls-files '*.sh')
shellcheck -x -P SCRIPTDIR "${scripts[@]}" .ci/run || fail "shellcheck"

((failed == 0)) || exit 1
step "all delivery files clean"
