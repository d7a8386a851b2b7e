# postgres-writer worker image: multi-stage, small distroless runtime, non-root.
#   docker build -f docker/worker.Dockerfile -t postgres-writer:dev .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p worker --bin postgres-writer \
 && cp target/release/postgres-writer /postgres-writer \
 && /postgres-writer --version

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /postgres-writer /usr/local/bin/postgres-writer
# Fails the build if the binary cannot run in this image.
RUN ["/usr/local/bin/postgres-writer", "--version"]
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/postgres-writer"]
CMD ["run"]
