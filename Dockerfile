# syntax=docker/dockerfile:1
# Build: the same command CI runs (`cargo build --profile dist --locked`), on a pinned toolchain.
FROM rust:1.95.0-bookworm AS build
WORKDIR /src
# The dependencies first, in a layer of their own, built against a stub of the crate: a change
# to clusterscope's sources then rebuilds only clusterscope. (Cargo.toml's benches must exist
# for the manifest to load: stubs too; tests/manifests.rs keeps this list complete.)
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && for b in review mirror_load resync owner_load history_load explain_load otlp_load; do echo 'fn main() {}' > benches/$b.rs; done \
 && cargo build --profile dist --locked --bin clusterscope \
 && rm -rf src benches
COPY . .
# COPY keeps the files' own times, older than the stub's build: make cargo see them as new.
RUN touch src/main.rs src/lib.rs && cargo build --profile dist --locked --bin clusterscope

# Run: only the binary, on distroless (glibc, no shell), as the non-root user 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/dist/clusterscope /usr/local/bin/clusterscope
USER 65532:65532
EXPOSE 8443 8080
ENTRYPOINT ["/usr/local/bin/clusterscope"]
CMD ["serve"]
