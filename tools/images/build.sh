#!/usr/bin/env bash
# `make images`: builds the operator and worker images from the Dockerfile with buildah (no daemon),
# tagged ${REGISTRY}/orderpipe-{operator,worker}:${IMG_TAG}, then runs each image's entrypoint with
# --version and --help inside the image (buildah run), which proves the binary, its shared
# libraries and the entrypoint all fit together. Also saves each as an OCI archive under
# ${IMAGES_DIR} (Snyk's container test and `make push` read them).
#
# IMAGE_BASES=local (default): bases from tools/images/bases.sh (debootstrap, no registry needed);
# IMAGE_BASES=public: the Dockerfile's defaults (Docker Hub, gcr.io), as Jenkins builds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

: "${REGISTRY:?}" "${IMG_TAG:?}"
images_dir="${IMAGES_DIR:-target/images}"
# chroot isolation: RUN steps and the entrypoint checks need no OCI runtime and no cgroup setup,
# which sandboxed CI machines refuse (crun: "cgroups in hybrid mode not supported").
export BUILDAH_ISOLATION="${BUILDAH_ISOLATION:-chroot}"
log() { printf '[images] %s\n' "$*" >&2; }

build_args=()
case "${IMAGE_BASES:-local}" in
local)
	eval "$(tools/images/bases.sh)"
	build_args=(--build-arg "BUILD_BASE=${BUILD_BASE}" --build-arg "RUNTIME_BASE=${RUNTIME_BASE}")
	;;
public) ;;
*)
	log "IMAGE_BASES must be local or public"
	exit 1
	;;
esac

mkdir -p "${images_dir}"
for target in operator worker; do
	image="${REGISTRY}/orderpipe-${target}:${IMG_TAG}"
	start=${SECONDS}
	log "building ${image} (target ${target})..."
	# --layers: the build stage is shared by both targets and cached between runs.
	buildah build --quiet --layers --target "${target}" "${build_args[@]}" -t "${image}" . >/dev/null
	log "${image} built in $((SECONDS - start)) s"
	rm -f "${images_dir}/orderpipe-${target}.tar"
	buildah push --quiet "${image}" "oci-archive:${images_dir}/orderpipe-${target}.tar:${image}"
done

# The entrypoint as the image declares it, run in the image with each flag; its first line must
# name the binary.
for target in operator worker; do
	image="${REGISTRY}/orderpipe-${target}:${IMG_TAG}"
	mapfile -t entrypoint < <(buildah inspect --type image --format '{{range .OCIv1.Config.Entrypoint}}{{println .}}{{end}}' "${image}" | sed '/^$/d')
	user="$(buildah inspect --type image --format '{{.OCIv1.Config.User}}' "${image}")"
	ctr="$(buildah from --quiet "${image}")"
	for flag in --version --help; do
		out="$(buildah run --user "${user}" "${ctr}" -- "${entrypoint[@]}" "${flag}")" || {
			buildah rm "${ctr}" >/dev/null
			log "${image}: ${entrypoint[*]} ${flag} failed"
			exit 1
		}
		grep -q "orderpipe-${target}" <<<"${out}" || {
			buildah rm "${ctr}" >/dev/null
			log "${image}: ${entrypoint[*]} ${flag} does not name orderpipe-${target}: ${out}"
			exit 1
		}
		log "${image}: ${entrypoint[*]} ${flag} (as user ${user}): $(head -n 1 <<<"${out}")"
	done
	buildah rm "${ctr}" >/dev/null
done
buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' | grep -E "orderpipe-(operator|worker):${IMG_TAG}[[:space:]]" >&2
