# syntax=docker/dockerfile:1.7
# postgres-writer image: dependencies cached in their own layer (cargo-chef), the cargo
# registry in BuildKit cache mounts, a small distroless runtime, non-root.
#   DOCKER_BUILDKIT=1 docker build -f docker/worker.Dockerfile -t postgres-writer:dev .
# A source or README edit rebuilds only the workspace's own crates: the
# recipe (manifests and Cargo.lock) is unchanged, so the "cook" layer is
# reused. Nothing runs the built binary (not even --version): a cross-platform
# build (docker buildx build --platform linux/arm64 ...) would fail on it.
ARG RUST_IMAGE=rust:1.95-bookworm
ARG CARGO_CHEF_VERSION=0.1.76

FROM ${RUST_IMAGE} AS chef
ARG CARGO_CHEF_VERSION
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

# The recipe: only manifests and Cargo.lock end up in recipe.json.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# Dependencies only: this layer changes only when the recipe does.
FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    cargo chef cook --release --locked -p worker --bin postgres-writer --recipe-path recipe.json
# The workspace's own crates.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    cargo build --release --locked -p worker --bin postgres-writer \
 && cp target/release/postgres-writer /postgres-writer

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /postgres-writer /usr/local/bin/postgres-writer
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/postgres-writer"]
CMD ["run"]
