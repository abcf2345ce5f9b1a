# syntax=docker/dockerfile:1.7
# Two small non-root images from one build, with buildah (`make images`) or docker:
#   buildah build --target operator -t docker.io/orderpipe/orderpipe-operator:TAG .
#   buildah build --target worker   -t docker.io/orderpipe/orderpipe-worker:TAG .
# The bases are build arguments. Their defaults are the public images (Jenkins); where those cannot
# be reached, tools/images/bases.sh makes equivalent ones from Debian's packages (`make images`).
# librdkafka is built from source by rdkafka-sys (cmake, perl) and links the system OpenSSL and zlib,
# so the runtime image carries libssl3 and zlib from Debian (distroless/cc has glibc + libssl).
ARG BUILD_BASE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_BASE=gcr.io/distroless/cc-debian12:nonroot

FROM ${BUILD_BASE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake libssl-dev pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# zlib goes to the runtime image under the build's own multiarch directory (no architecture is
# written here): /out/lib/<triplet>/libz.so.1.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p orderpipe-operator -p orderpipe-worker \
 && multiarch="$(gcc -print-multiarch)" \
 && mkdir -p "/out/bin" "/out/lib/${multiarch}" \
 && cp target/release/orderpipe-operator target/release/orderpipe-worker /out/bin/ \
 && cp -L "/lib/${multiarch}/libz.so.1" "/out/lib/${multiarch}/"

# distroless: no shell, no package manager; nonroot = uid 65532, matching the pod security context.
FROM ${RUNTIME_BASE} AS runtime-base
COPY --from=build /out/lib/ /lib/
USER 65532:65532

FROM runtime-base AS operator
COPY --from=build /out/bin/orderpipe-operator /usr/local/bin/orderpipe-operator
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/orderpipe-operator"]

FROM runtime-base AS worker
COPY --from=build /out/bin/orderpipe-worker /usr/local/bin/orderpipe-worker
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/orderpipe-worker"]
