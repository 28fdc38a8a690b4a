# syntax=docker/dockerfile:1
# Build: the same command CI runs (`cargo build --release --locked`), on a pinned toolchain.
FROM rust:1.95.0-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin clusterscope

# Run: only the binary, on distroless (glibc, no shell), as the non-root user 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/clusterscope /usr/local/bin/clusterscope
USER 65532:65532
EXPOSE 8443 8080
ENTRYPOINT ["/usr/local/bin/clusterscope"]
CMD ["serve"]
