#!/usr/bin/env bash
# Installs the Debian packages the e2e harness and its tool build need, if any is missing
# (`make e2e-setup`, and first thing in `make e2e-tools`):
#   kcat                      an independent Kafka client, to prove interoperability from outside our code
#   jq, shellcheck            `make lint-delivery` (the shell scripts, the Argo CD overrides), `make promote`
#   buildah, crun, debootstrap   `make images`: OCI images without a daemon, on bases made from Debian's
#                             packages (crun: the OCI runtime, for buildah runs outside chroot isolation)
#   curl                      readiness polling in e2e/postman/run.sh
#   prometheus-node-exporter  the local machine's CPU and memory for the dashboards' node row
#   prometheus                promtool (check/test the alert rules) and a real scraper for the metrics checks
#   openssl                   the harness's throwaway CA and apiserver/client certificates
#   maven, openjdk-17-jdk-headless   the Kafka broker's classpath (e2e/tools/kafka/pom.xml) and the JVM
#   libssl-dev, pkg-config, cmake, zlib1g-dev   rdkafka's `ssl` build of librdkafka
# Go (>= 1.26) is not among them: Debian 12's is far too old, it comes from the machine image.
#
# Idempotent and quick when nothing is missing (only `dpkg -s`); otherwise one `apt-get update` and one
# non-interactive install. Services are never started (prometheus's unit in particular): policy-rc.d
# forbids it for the duration of the install.
set -euo pipefail

packages=(kcat prometheus prometheus-node-exporter openssl maven openjdk-17-jdk-headless libssl-dev pkg-config cmake zlib1g-dev curl shellcheck jq buildah crun debootstrap)

missing=()
for pkg in "${packages[@]}"; do
	dpkg -s "${pkg}" >/dev/null 2>&1 || missing+=("${pkg}")
done
((${#missing[@]} == 0)) && exit 0

echo "[e2e-setup] installing missing Debian packages: ${missing[*]}" >&2
sudo=()
((EUID == 0)) || sudo=(sudo)

policy=/usr/sbin/policy-rc.d
if [[ ! -e ${policy} ]]; then
	printf '#!/bin/sh\n# Temporary, from orderpipe e2e/tools/setup-debian.sh: start no service.\nexit 101\n' |
		"${sudo[@]}" tee "${policy}" >/dev/null
	"${sudo[@]}" chmod 755 "${policy}"
	trap '"${sudo[@]}" rm -f "${policy}"' EXIT
fi

export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
