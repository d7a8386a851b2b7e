# postgres-writer-operator image: multi-stage, small distroless runtime, non-root.
#   docker build -f docker/operator.Dockerfile -t postgres-writer-operator:dev .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p operator --bin postgres-writer-operator \
 && cp target/release/postgres-writer-operator /postgres-writer-operator \
 && /postgres-writer-operator --version

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /postgres-writer-operator /usr/local/bin/postgres-writer-operator
RUN ["/usr/local/bin/postgres-writer-operator", "--version"]
USER 65532:65532
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/postgres-writer-operator"]
CMD ["run"]
