# The Switchyard image without a registry or a Rust toolchain in the build:
# the binaries scripts/images copies into the build context (the ones
# `cargo build` made on this Debian bookworm host), on the debootstrap base.
# deploy/Dockerfile is the upstream path (builds from source on rust:slim).
FROM switchyard/debian:bookworm
RUN useradd --system --uid 10001 --home-dir /var/lib/switchyard --create-home switchyard
COPY switchyard-api switchyard-collector switchyard-notifier switchyard-echo switchyard /usr/local/bin/
USER switchyard
WORKDIR /var/lib/switchyard
