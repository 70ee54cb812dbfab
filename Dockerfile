# auditship's container image.
#
#   docker build -t auditship .
#   docker run --rm auditship --version
#   docker run --rm -v auditship-state:/var/lib/auditship auditship demo
#
# Two stages: a release build on the Rust toolchain's Debian image, then a slim Debian runtime
# holding the binary, CA certificates and the two libraries it links dynamically (OpenSSL for
# the Kafka sink's TLS, zlib); everything else is linked in (SQLite, zstd, librdkafka).
# The process runs as an unprivileged user (uid 10001) and needs only its state directory to be
# writable, so it runs with a read-only root file system. `scripts/image` assembles the same
# runtime image without a registry (buildah, debootstrap); the tests run that one.

ARG RUST_VERSION=1.95.0
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
# Build tools for the C parts (librdkafka, zstd, SQLite) and OpenSSL's headers. Versions are
# the release's own: a Debian stable release only takes security fixes, which pinning would
# refuse.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ make perl pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin auditship \
    && strip target/release/auditship

FROM debian:${DEBIAN_RELEASE}-slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="auditship" \
      org.opencontainers.image.description="Ships the egress-audit events of Miosa sandboxes to files, Kafka, S3 and Amazon Security Lake" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/miosa/auditship"
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/auditship --no-create-home \
       --shell /usr/sbin/nologin auditship \
    && mkdir -p /var/lib/auditship /etc/auditship \
    && chown auditship:auditship /var/lib/auditship
COPY --from=build /src/target/release/auditship /usr/local/bin/auditship
COPY pipelines/ /etc/auditship/pipelines/
USER 10001:10001
WORKDIR /var/lib/auditship
VOLUME ["/var/lib/auditship"]
# /metrics, /health and /live when a pipeline runs with --metrics-addr 0.0.0.0:9464.
EXPOSE 9464
ENTRYPOINT ["auditship"]
CMD ["--help"]
