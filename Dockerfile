# The builder's own image: a release binary, the pinned uv and CA certificates on Debian slim.
# Runs as a non-root user with no capabilities and a read-only root filesystem; it writes only
# to its cache dir and /tmp. Without a Docker engine, scripts/self-package.sh makes the same
# image with the builder itself (tests/selfpackage.rs checks the two agree).
#
#   docker build --build-arg FLOPS_GIT_COMMIT=$(git rev-parse --short=12 HEAD) -t flops-image-builder .

# Keep in step with base-layers/uv-version (a test checks).
ARG UV_VERSION=0.13.9

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

FROM rust:1.89-bookworm AS build
ARG FLOPS_GIT_COMMIT=unknown
WORKDIR /src
# Dependencies first, so a source change does not rebuild them.
COPY Cargo.toml Cargo.lock build.rs ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked && rm -rf src
COPY src src
COPY base-layers base-layers
RUN touch src/main.rs src/lib.rs && FLOPS_GIT_COMMIT=$FLOPS_GIT_COMMIT cargo build --release --locked \
    && strip target/release/flops-image-builder

FROM debian:bookworm-slim
# python3: uv needs an interpreter (with its stdlib) to resolve, of any version: the target's is passed.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates python3 \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/flops-image-builder /usr/local/bin/flops-image-builder
COPY --from=uv /uv /usr/local/bin/uv
# FLOps' SLA runs `python3 main.py <args>` in the working directory: a hand-over to the binary.
COPY builder-image/main.py /opt/flops-image-builder/main.py
WORKDIR /opt/flops-image-builder
ENV FLOPS_CACHE_DIR=/tmp/flops-image-builder HOME=/tmp UV_CACHE_DIR=/tmp/uv-cache UV_PYTHON_DOWNLOADS=never
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/flops-image-builder"]
CMD ["--help"]
