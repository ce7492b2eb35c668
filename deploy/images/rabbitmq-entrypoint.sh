#!/bin/sh
# Writes the broker's default user from the environment, then runs RabbitMQ
# in the foreground as the rabbitmq user (it receives the container's signals).
set -eu
pass=${RABBITMQ_DEFAULT_PASS:-}
if [ -n "${RABBITMQ_DEFAULT_PASS_FILE:-}" ]; then pass=$(cat "$RABBITMQ_DEFAULT_PASS_FILE"); fi
: "${RABBITMQ_DEFAULT_USER:?set RABBITMQ_DEFAULT_USER}"
[ -n "$pass" ] || { echo "set RABBITMQ_DEFAULT_PASS or RABBITMQ_DEFAULT_PASS_FILE" >&2; exit 2; }
umask 077
cat > /etc/rabbitmq/rabbitmq.conf <<CONF
default_user = $RABBITMQ_DEFAULT_USER
default_pass = $pass
loopback_users = none
listeners.tcp.default = 5672
CONF
chown rabbitmq:rabbitmq /etc/rabbitmq/rabbitmq.conf /var/lib/rabbitmq
exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups env HOME=/var/lib/rabbitmq rabbitmq-server
