# syntax=docker/dockerfile:1.7
# Two small non-root images from one build:
#   docker build --target operator -t docker.io/orderpipe/orderpipe-operator:TAG .
#   docker build --target worker   -t docker.io/orderpipe/orderpipe-worker:TAG .
# librdkafka is built from source by rdkafka-sys (cmake, perl) and links the system OpenSSL and zlib,
# so the runtime image carries libssl3 and zlib from Debian (distroless/cc has glibc + libssl).

FROM docker.io/library/rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake libssl-dev pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p orderpipe-operator -p orderpipe-worker \
 && mkdir -p /out \
 && cp target/release/orderpipe-operator target/release/orderpipe-worker /out/

# distroless: no shell, no package manager; nonroot = uid 65532, matching the pod security context.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime-base
COPY --from=build /lib/x86_64-linux-gnu/libz.so.1 /lib/x86_64-linux-gnu/
USER 65532:65532

FROM runtime-base AS operator
COPY --from=build /out/orderpipe-operator /usr/local/bin/orderpipe-operator
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/orderpipe-operator"]

FROM runtime-base AS worker
COPY --from=build /out/orderpipe-worker /usr/local/bin/orderpipe-worker
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/orderpipe-worker"]
