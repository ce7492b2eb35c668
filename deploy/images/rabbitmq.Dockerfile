# RabbitMQ from Debian's package, on the base scripts/images made with
# debootstrap (no registry needed). Honours RABBITMQ_DEFAULT_USER and
# RABBITMQ_DEFAULT_PASS (or RABBITMQ_DEFAULT_PASS_FILE) like the upstream image.
FROM switchyard/debian:bookworm
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends rabbitmq-server \
    && rm -rf /var/lib/apt/lists/*
COPY rabbitmq-entrypoint.sh /usr/local/bin/switchyard-rabbitmq
EXPOSE 5672
ENTRYPOINT ["/usr/local/bin/switchyard-rabbitmq"]
