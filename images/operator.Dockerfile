# syntax=docker/dockerfile:1
# The operator image: one static binary on a base with no shell and no libc.
#
#   docker build -f images/operator.Dockerfile -t tortie/operator:dev .
#
# Build from the repository root (the whole workspace is the build context).
#
# Why static musl binaries: the agent image's CNI plugins are copied onto every node and
# run there by the container runtime, against whatever libc the node has (or none); a
# static binary runs on all of them. The operator is built the same way so both images
# come from one recipe, and a static binary needs nothing from its base image, so the
# operator ships on distroless/static: no shell, no package manager, no libc to patch.
#
# Not built on the machine this repository is developed on (it has no container engine);
# tests/e2e/kind/run.sh builds it for the kind path.

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-alpine AS build
# musl-dev: the C runtime objects static linking needs; ring (TLS) compiles C code.
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the build directory between builds; the binary is
# copied out within the same step because the cache is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tortie-operator \
    && install -D -m 0755 target/release/tortie-operator /out/tortie-operator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/tortie-operator /usr/local/bin/tortie-operator
# The chart runs the operator as this user (distroless's nonroot, 65532) and sets the
# command explicitly; the entry point is for `docker run`.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/tortie-operator"]
