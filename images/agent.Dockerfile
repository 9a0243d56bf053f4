# syntax=docker/dockerfile:1
# The agent image: the agent, the CNI and IPAM plugins it installs on each node, BIRD 2
# for BGP and nft for the rules the agent programs.
#
#   docker build -f images/agent.Dockerfile -t tortie/agent:dev .
#
# Build from the repository root (the whole workspace is the build context).
#
# Why static musl binaries: `tortie-agent install-cni` copies tortie-cni and tortie-ipam
# out of this image into the node's CNI binary directory, where the container runtime runs
# them against the node's own libc, whatever its version; a static binary does not care.
# The base is Debian slim rather than distroless because BIRD and nft come as Debian
# packages with their own shared libraries.
#
# Not built on the machine this repository is developed on (it has no container engine);
# tests/e2e/kind/run.sh builds it for the kind path.

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-alpine AS build
# musl-dev: the C runtime objects static linking needs; ring (TLS) compiles C code.
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the build directory between builds; the binaries are
# copied out within the same step because the cache is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tortie-node-agent --bins \
    && for binary in tortie-agent tortie-cni tortie-ipam; do \
         install -D -m 0755 "target/release/$binary" "/out/$binary"; \
       done

FROM debian:bookworm-slim
# bird2: the BGP daemon the agent configures and reloads when bgp.enabled is true.
# nftables: the `nft` command; the agent loads its ruleset with `nft -f -`, one
# transaction per change, and people read it with `nft list ruleset` in the container.
RUN apt-get update \
    && apt-get install -y --no-install-recommends bird2 nftables \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
# The chart sets the command for each container (install-cni, run); this is for
# `docker run`.
ENTRYPOINT ["/usr/local/bin/tortie-agent"]
CMD ["run"]
