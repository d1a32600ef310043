# syntax=docker/dockerfile:1
# One image for every Courier binary: the workers (greeter, ledger), the ops CLI (courier) and the
# HTTP gateway (gateway). The default command runs the greeter; compose and Kubernetes
# pick another binary by overriding the command. Checked by scripts/check-deploy.

# ---- build -------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder

# Nothing to install: rdkafka builds librdkafka, OpenSSL and zlib from source with the
# image's C compiler, make and perl (scripts/check-bare-build keeps it so).

WORKDIR /src
COPY . .

# The registry and target folders are cache mounts, so a rebuild after a code change
# recompiles only the workspace crates. A cache mount is not part of the image: the
# binaries are copied out of it into /out.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p greeter -p ledger -p courier-ops -p gateway \
 && mkdir -p /out \
 && cp target/release/greeter target/release/ledger target/release/courier target/release/gateway /out/

# ---- run ---------------------------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates: the trust roots of amqps:// (rustls with the system roots) and of
# Kafka over SSL (OpenSSL is linked in statically).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 courier \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin courier

COPY --from=builder /out/greeter /out/ledger /out/courier /out/gateway /usr/local/bin/

# Fail the build, not the first start, when a shared library is missing.
RUN ! ldd /usr/local/bin/greeter /usr/local/bin/ledger /usr/local/bin/courier /usr/local/bin/gateway | grep "not found"

# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001

# 9464: a worker's /metrics, /healthz and /readyz (COURIER_HTTP_ADDR).
# 8080: the gateway (GATEWAY_LISTEN), its API and the same three endpoints.
EXPOSE 9464 8080

# For the worker (the default command). The gateway and the one-shot `courier topology`
# containers override or disable it (docker-compose.yml); Kubernetes ignores it and uses
# the probes of deploy/k8s. The image has no curl: `courier probe` does the GET.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["courier", "probe", "http://127.0.0.1:9464/healthz"]

# No ENTRYPOINT: a command names its binary (`greeter …`, `courier …`, `gateway …`).
# The worker runs as PID 1 and handles SIGTERM itself (graceful shutdown).
CMD ["greeter"]
