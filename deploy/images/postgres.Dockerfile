# PostgreSQL from Debian's package, on the base scripts/images made with
# debootstrap (no registry needed). Honours POSTGRES_USER, POSTGRES_DB and
# POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE) like the upstream image.
FROM switchyard/debian:bookworm
RUN mkdir -p /etc/postgresql-common \
    && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf \
    && apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql \
    && rm -rf /var/lib/apt/lists/*
COPY postgres-entrypoint.sh /usr/local/bin/switchyard-postgres
ENV PGDATA=/var/lib/postgresql/data
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/switchyard-postgres"]
