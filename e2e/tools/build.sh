#!/usr/bin/env bash
# Builds or downloads every real infrastructure component of the e2e harness into a versioned cache
# (`make e2e-tools`): kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd, kwok and
# argocd-health (Argo CD's Lua interpreter, for the health check) and kube-state-metrics from the Go
# module proxy; the Argo
# Rollouts and monitoring.coreos.com CRDs and kwok's stages from their Go modules; the Kafka broker's
# jars and the Prometheus JMX exporter agent from Maven Central; the Argo Rollouts controller if it
# builds. No Docker and no network beyond
# those registries.
#
# Why a cache: the Kubernetes build takes minutes, so it is paid once per set of versions. The cache
# directory is keyed by a hash of everything that decides its content (versions.env, the wrapper
# go.mod/go.sum files, pom.xml and this script), so any change builds a fresh directory. Each piece
# is built in a temporary directory, moved into place, then marked done, so an interrupted run
# resumes where it stopped; a fully built directory holds `.complete` and a warm run only checks it.
#
# Output: progress on stderr; on stdout exactly one line, `E2E_TOOLS_DIR=<dir>`, so a consumer can
# `eval "$(e2e/tools/build.sh)"`. Layout of <dir> (a contract, see README.md):
#   bin/{kube-apiserver,kube-controller-manager,kube-scheduler,kubectl,etcd,kwok,argocd-health,
#       kube-state-metrics}  (+ rollouts-controller)
#   kwok/stages.yaml  crds/argo-rollouts/*.yaml  crds/monitoring/*.yaml  kafka/classpath.txt
#   jmx-exporter/jmx_prometheus_javaagent.jar  versions.env
# `${ORDERPIPE_CACHE}/e2e-tools/current` is a symlink to the newest complete <dir>.
set -euo pipefail

tools_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${tools_dir}/versions.env"

cache_root="${ORDERPIPE_CACHE:-${HOME}/.cache/orderpipe}/e2e-tools"
key_inputs=(versions.env kubernetes/go.mod kubernetes/go.sum etcd/go.mod etcd/go.sum kafka/pom.xml build.sh
	argocd-health/go.mod argocd-health/go.sum argocd-health/main.go)
key="k8s-${K8S_VERSION}-$(cd "${tools_dir}" && sha256sum "${key_inputs[@]}" | sha256sum | cut -c1-16)"
dest="${cache_root}/${key}"

log() { printf '[e2e-tools] %s\n' "$*" >&2; }

# Points `current` at the keyed directory (atomically, by renaming a new symlink over it) and hands
# the directory to the caller.
publish() {
	if [[ "$(readlink "${cache_root}/current" 2>/dev/null)" != "${key}" ]]; then
		ln -sfn "${key}" "${cache_root}/current.new"
		mv -T "${cache_root}/current.new" "${cache_root}/current"
	fi
	echo "E2E_TOOLS_DIR=${dest}"
}

# Warm: the one line of output is the answer.
if [[ -e "${dest}/.complete" ]]; then
	publish
	exit 0
fi

for tool in go mvn java flock sha256sum; do
	command -v "${tool}" >/dev/null || {
		log "${tool} not found: run 'make e2e-setup'; Go itself must be >= 1.26, from go.dev (Debian 12 ships 1.19)"
		exit 1
	}
done

mkdir -p "${cache_root}"
exec 9>"${cache_root}/.lock"
if ! flock -n 9; then
	log "another build holds ${cache_root}/.lock, waiting..."
	flock 9
	if [[ -e "${dest}/.complete" ]]; then
		publish
		exit 0
	fi
fi

export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-p=2 -mod=readonly -buildvcs=false"
mkdir -p "${dest}/bin" "${dest}/.done"
tmp_root="${dest}/.tmp"
rm -rf "${tmp_root}"
mkdir -p "${tmp_root}"
trap 'rm -rf "${tmp_root}"' EXIT

# The wrappers' go.mod must pin the versions in versions.env: the cache key trusts both.
require_pinned() { # <go.mod> <module> <version> <how to fix>
	grep -Eq "^[[:space:]]*(require )?$2 $3( |$)" "${tools_dir}/$1" || {
		log "$1 does not require $2 $3 (versions.env); $4"
		exit 1
	}
}
require_pinned kubernetes/go.mod k8s.io/kubernetes "${K8S_VERSION}" "run e2e/tools/kubernetes/gen-gomod.sh"
require_pinned etcd/go.mod go.etcd.io/etcd/server/v3 "${ETCD_VERSION}" "edit it and run go mod tidy in e2e/tools/etcd"
require_pinned argocd-health/go.mod github.com/yuin/gopher-lua "${GOPHER_LUA_VERSION}" "edit it and run go mod tidy in e2e/tools/argocd-health"

# Prints the read-only directory of a downloaded module (from the Go module cache).
module_dir() { # <module@version>
	local dir
	dir="$(cd "${tmp_root}" && GOFLAGS='' go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
	[[ -d ${dir} ]] || {
		log "go mod download $1 gave no module directory"
		exit 1
	}
	echo "${dir}"
}

fmt_elapsed() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# Runs `<function> <work dir>` unless piece <name> is already done, timing it.
piece() { # <name> <cold estimate> <function>
	local name=$1 estimate=$2 fn=$3 start=${SECONDS} work
	[[ -e "${dest}/.done/${name}" ]] && return 0
	log "building ${name} (cold: ~${estimate})..."
	work="$(mktemp -d "${tmp_root}/${name}.XXXXXX")"
	"${fn}" "${work}"
	touch "${dest}/.done/${name}"
	log "${name} done in $(fmt_elapsed $((SECONDS - start)))"
}

# Moves a finished directory into place as <dest>/<rel>, replacing a stale one.
install_dir() { # <built dir> <rel>
	chmod 755 "$1"
	rm -rf "${dest:?}/$2"
	mkdir -p "$(dirname "${dest}/$2")"
	mv -T "$1" "${dest}/$2"
}

build_crds_argo_rollouts() {
	local src
	src="$(module_dir "github.com/argoproj/argo-rollouts@${ARGO_ROLLOUTS_VERSION}")/manifests/crds"
	cp "${src}"/*-crd.yaml "$1/"
	chmod u+w "$1"/*.yaml
	install_dir "$1" crds/argo-rollouts
}

build_crds_monitoring() {
	local src kind
	src="$(module_dir "github.com/prometheus-operator/prometheus-operator@${PROMETHEUS_OPERATOR_VERSION}")/example/prometheus-operator-crd"
	for kind in servicemonitors podmonitors prometheusrules; do
		cp "${src}/monitoring.coreos.com_${kind}.yaml" "$1/"
	done
	chmod u+w "$1"/*.yaml
	install_dir "$1" crds/monitoring
}

# One multi-document file of kwok Stage objects: `kwok --config` loads every document of a known kind.
build_kwok_stages() {
	local src stage
	src="$(module_dir "sigs.k8s.io/kwok@${KWOK_VERSION}")/kustomize/stage"
	for stage in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
		pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
		echo "---"
		cat "${src}/${stage}.yaml"
	done >"$1/stages.yaml"
	install_dir "$1" kwok
}

# The jars go into the cache too, so the classpath survives a cleaned ~/.m2.
# Maven's output goes to a log (printed on failure): in quiet batch mode it still emits colour codes.
build_kafka() {
	local mvn_log="${tmp_root}/kafka-mvn.log"
	mvn -B -ntp -q -f "${tools_dir}/kafka/pom.xml" \
		-Dkafka.version="${KAFKA_VERSION}" -Dslf4j.version="${SLF4J_VERSION}" \
		dependency:copy-dependencies dependency:build-classpath \
		-DoutputDirectory="$1/libs" -Dmdep.outputFile="$1/classpath.txt" -Dmdep.prefix="${dest}/kafka/libs" \
		>"${mvn_log}" 2>&1 || {
		cat "${mvn_log}" >&2
		exit 1
	}
	grep -q "kafka_2.13-${KAFKA_VERSION}.jar" "$1/classpath.txt" || {
		log "kafka/classpath.txt lacks kafka_2.13-${KAFKA_VERSION}.jar"
		exit 1
	}
	install_dir "$1" kafka
}

# The agent is not a broker dependency (it must not join the broker's classpath): copied on its own.
build_jmx_exporter() {
	local mvn_log="${tmp_root}/jmx-exporter-mvn.log"
	mvn -B -ntp -q -f "${tools_dir}/kafka/pom.xml" dependency:copy \
		-Dartifact="io.prometheus.jmx:jmx_prometheus_javaagent:${JMX_EXPORTER_VERSION}" \
		-DoutputDirectory="$1" -Dmdep.stripVersion=true >"${mvn_log}" 2>&1 || {
		cat "${mvn_log}" >&2
		exit 1
	}
	[[ -f "$1/jmx_prometheus_javaagent.jar" ]] || {
		log "jmx-exporter: no jmx_prometheus_javaagent.jar in $1"
		exit 1
	}
	install_dir "$1" jmx-exporter
}

build_kube_state_metrics() {
	GOFLAGS="-p=2 -buildvcs=false" GOBIN="$1" go install -trimpath -ldflags "-s -w" \
		"k8s.io/kube-state-metrics/v2@${KUBE_STATE_METRICS_VERSION}"
	mv -f "$1/kube-state-metrics" "${dest}/bin/kube-state-metrics"
}

build_kwok() {
	GOFLAGS="-p=2 -buildvcs=false" GOBIN="$1" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}"
	mv -f "$1/kwok" "${dest}/bin/kwok"
}

build_argocd_health() {
	(cd "${tools_dir}/argocd-health" && go build -trimpath -ldflags "-s -w" -o "$1/argocd-health" .)
	mv -f "$1/argocd-health" "${dest}/bin/argocd-health"
}

build_etcd() {
	(cd "${tools_dir}/etcd" && go build -trimpath \
		-ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${ETCD_VERSION}" \
		-o "$1/etcd" go.etcd.io/etcd/server/v3)
	mv -f "$1/etcd" "${dest}/bin/etcd"
}

# hack/lib/version.sh sets these in both packages; gitMajor/gitMinor feed kubectl's version-skew check.
k8s_minor="${K8S_VERSION#v1.}"
k8s_minor="${k8s_minor%%.*}"
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	k8s_ldflags+=" -X ${pkg}.gitVersion=${K8S_VERSION} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${k8s_minor}"
	k8s_ldflags+=" -X ${pkg}.gitTreeState=clean"
done

build_k8s_cmd() { # <work dir> <command>
	(cd "${tools_dir}/kubernetes" && go build -trimpath -ldflags "${k8s_ldflags}" -o "$1/$2" "k8s.io/kubernetes/cmd/$2")
	mv -f "$1/$2" "${dest}/bin/$2"
}
build_kube_apiserver() { build_k8s_cmd "$1" kube-apiserver; }
build_kube_controller_manager() { build_k8s_cmd "$1" kube-controller-manager; }
build_kube_scheduler() { build_k8s_cmd "$1" kube-scheduler; }
build_kubectl() { build_k8s_cmd "$1" kubectl; }

# Optional: the controller builds from a writable copy of its module (its own go.mod, replace lines
# and go.sum apply there). If it cannot be fetched or built, say why in a marker file and go on.
build_rollouts_controller() {
	local src reason="${dest}/rollouts-controller.unavailable"
	rm -f "${reason}"
	if src="$(module_dir "github.com/argoproj/argo-rollouts@${ARGO_ROLLOUTS_VERSION}" 2>"$1/build.log")" &&
		cp -r "${src}" "$1/src" && chmod -R u+w "$1/src" &&
		(cd "$1/src" && GOFLAGS="-p=2 -mod=mod -buildvcs=false" go build -trimpath \
			-ldflags "-s -w -X github.com/argoproj/argo-rollouts/utils/version.version=${ARGO_ROLLOUTS_VERSION}" \
			-o "$1/rollouts-controller" ./cmd/rollouts-controller) >>"$1/build.log" 2>&1; then
		mv -f "$1/rollouts-controller" "${dest}/bin/rollouts-controller"
	else
		{
			echo "rollouts-controller ${ARGO_ROLLOUTS_VERSION} could not be built; the tail of its build log:"
			tail -n 30 "$1/build.log"
		} >"${reason}"
		log "rollouts-controller NOT built (optional), reason in ${reason}"
	fi
}

total_start=${SECONDS}
log "building into ${dest}"
# The estimates are cold (empty Go build cache) times measured on 2 busy cores, see README.md.
piece crds-argo-rollouts "5 s" build_crds_argo_rollouts
piece crds-monitoring "5 s" build_crds_monitoring
piece kwok-stages "5 s" build_kwok_stages
piece kafka "1 min" build_kafka
piece jmx-exporter "10 s" build_jmx_exporter
piece kwok "3.5 min" build_kwok
piece etcd "1 min" build_etcd
piece argocd-health "10 s" build_argocd_health
piece kube-apiserver "10 min" build_kube_apiserver
piece kube-controller-manager "3.5 min" build_kube_controller_manager
piece kube-scheduler "0.5 min" build_kube_scheduler
piece kubectl "1 min" build_kubectl
piece kube-state-metrics "3 min" build_kube_state_metrics
piece rollouts-controller "6 min" build_rollouts_controller
cp "${tools_dir}/versions.env" "${tmp_root}/versions.env"
mv -f "${tmp_root}/versions.env" "${dest}/versions.env"

touch "${dest}/.complete"
log "all done in $(fmt_elapsed $((SECONDS - total_start))): ${dest}"
for old in "${cache_root}"/k8s-*/; do
	[[ ${old} == "${dest}/" ]] || log "older tool dir, delete it if no other checkout uses it: ${old%/}"
done
publish
