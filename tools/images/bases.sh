#!/usr/bin/env bash
# Creates the local base images `make images` builds on where Docker Hub and gcr.io cannot be
# reached (this machine, CI), from Debian's packages with debootstrap, into buildah's storage:
#   localhost/orderpipe-build-base:<key>    Debian bookworm (minbase) with the C toolchain, cmake,
#                                           libssl-dev and zlib1g-dev that rdkafka's build needs, and
#                                           this machine's Rust toolchain (the one rust-toolchain.toml
#                                           pins) in /usr/local/rust; it trusts this machine's CA
#                                           bundle, so its build reaches crates.io the way the
#                                           machine does (through a TLS-inspecting proxy, say)
#   localhost/orderpipe-runtime-base:<key>  Debian bookworm (minbase) with libssl3, zlib and CA
#                                           certificates: what distroless/cc carries for our binaries
# <key> hashes this script and the Rust version, so a warm run only finds both images and prints
# them. Jenkins builds on the public bases instead (the Dockerfile's defaults).
#
# Output: progress on stderr; on stdout `BUILD_BASE=<image>` and `RUNTIME_BASE=<image>`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
suite=bookworm
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
rust_version="$(cd "${here}/../.." && rustc --version | cut -d' ' -f2)"
key="$( (sha256sum "${here}/bases.sh" && echo "${rust_version}") | sha256sum | cut -c1-12)"
build_base="localhost/orderpipe-build-base:${key}"
runtime_base="localhost/orderpipe-runtime-base:${key}"
log() { printf '[image-bases] %s\n' "$*" >&2; }

for tool in buildah debootstrap; do
	command -v "${tool}" >/dev/null || {
		log "${tool} not found: run 'make e2e-setup'"
		exit 1
	}
done

work="$(mktemp -d "${TMPDIR:-/tmp}/orderpipe-bases.XXXXXX")"
trap 'rm -rf "${work}"' EXIT

# Commits the root file system <dir> as image <name>, with the given `buildah config` flags.
commit_rootfs() { # <dir> <name> <buildah config flags...>
	local dir=$1 name=$2 ctr mnt
	shift 2
	ctr="$(buildah from scratch)"
	mnt="$(buildah mount "${ctr}")"
	cp -a "${dir}/." "${mnt}/"
	buildah umount "${ctr}" >/dev/null
	buildah config "$@" "${ctr}"
	buildah commit --rm --quiet "${ctr}" "${name}" >/dev/null
}

# debootstrap's minbase, without the apt lists and caches it leaves behind.
bootstrap() { # <dir> <packages,comma,separated>
	debootstrap --variant=minbase --include="$2" "${suite}" "$1" "${mirror}" >"${work}/debootstrap.log" 2>&1 || {
		tail -n 30 "${work}/debootstrap.log" >&2
		exit 1
	}
	rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/archives/*.deb
}

if ! buildah inspect --type image "${build_base}" >/dev/null 2>&1; then
	start=${SECONDS}
	log "creating ${build_base} (debootstrap ${suite}, Rust ${rust_version})..."
	bootstrap "${work}/build" ca-certificates,gcc,g++,libc6-dev,make,cmake,perl,pkg-config,libssl-dev,zlib1g-dev
	sysroot="$(cd "${here}/../.." && rustc --print sysroot)"
	mkdir -p "${work}/build/usr/local/rust"
	# The toolchain without its documentation; the plain cargo and rustc, not rustup's proxies.
	cp -a "${sysroot}/bin" "${sysroot}/lib" "${sysroot}/libexec" "${work}/build/usr/local/rust/"
	cp /etc/ssl/certs/ca-certificates.crt "${work}/build/etc/ssl/certs/ca-certificates.crt"
	commit_rootfs "${work}/build" "${build_base}" \
		--env PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		--env CARGO_HOME=/usr/local/cargo --cmd /bin/bash
	rm -rf "${work}/build"
	log "${build_base} done in $((SECONDS - start)) s"
fi

if ! buildah inspect --type image "${runtime_base}" >/dev/null 2>&1; then
	start=${SECONDS}
	log "creating ${runtime_base} (debootstrap ${suite})..."
	bootstrap "${work}/runtime" ca-certificates,libssl3
	commit_rootfs "${work}/runtime" "${runtime_base}" --user 65532:65532
	rm -rf "${work}/runtime"
	log "${runtime_base} done in $((SECONDS - start)) s"
fi

echo "BUILD_BASE=${build_base}"
echo "RUNTIME_BASE=${runtime_base}"
