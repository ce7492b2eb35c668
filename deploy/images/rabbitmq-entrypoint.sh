#!/bin/sh
# Writes the broker's default user from the environment, then runs RabbitMQ
# in the foreground as the rabbitmq user (it receives the container's signals).
# With RABBITMQ_CLUSTER_NODES ("rabbit@rabbit-1 rabbit@rabbit-2 …") the node
# joins those by static peer discovery (classic_config); the nodes share the
# Erlang cookie read from RABBITMQ_ERLANG_COOKIE_FILE (a compose secret), and
# notice a silent peer after RABBITMQ_NET_TICKTIME seconds (default 60).
# Under a container memory limit the memory alarm is set to 40 % of it.
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
# RabbitMQ 3.10 takes the host's memory for its own: under a 512 MiB limit
# on a 24 GiB host its alarm would be set at 10 GB, and the kernel would
# kill the node long before the alarm blocked a publisher. The alarm is set
# from the container's limit instead (cgroup v2, then v1), at the 40 %
# RabbitMQ uses by default; without a limit RabbitMQ's own reading stands.
limit=$(cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || echo max)
host_kib=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
case $limit in
    ''|max|*[!0-9]*) ;;
    *) if [ "$((limit / 1024))" -lt "$host_kib" ]; then
           echo "vm_memory_high_watermark.absolute = $((limit * 2 / 5))" >> /etc/rabbitmq/rabbitmq.conf
       fi ;;
esac
if [ -n "${RABBITMQ_CLUSTER_NODES:-}" ]; then
    [ -n "${RABBITMQ_ERLANG_COOKIE_FILE:-}" ] || { echo "RABBITMQ_CLUSTER_NODES needs RABBITMQ_ERLANG_COOKIE_FILE" >&2; exit 2; }
    {
        echo "cluster_formation.peer_discovery_backend = classic_config"
        i=1
        for node in $RABBITMQ_CLUSTER_NODES; do
            echo "cluster_formation.classic_config.nodes.$i = $node"
            i=$((i + 1))
        done
        # A node cut off from the majority pauses instead of serving a split brain.
        echo "cluster_partition_handling = pause_minority"
        # How long a silent peer takes to be declared down (75-125 % of it).
        # Until then every node waits on it to create or delete a queue
        # (the schema database locks on every member): a client that fails
        # over from a cut-off node gets no answer to its declarations. Erlang's
        # 60 s left a failed-over service unready for over a minute.
        echo "net_ticktime = ${RABBITMQ_NET_TICKTIME:-60}"
    } >> /etc/rabbitmq/rabbitmq.conf
    tr -d '\n' < "$RABBITMQ_ERLANG_COOKIE_FILE" > /var/lib/rabbitmq/.erlang.cookie
    chown rabbitmq:rabbitmq /var/lib/rabbitmq/.erlang.cookie
    chmod 400 /var/lib/rabbitmq/.erlang.cookie
fi
chown rabbitmq:rabbitmq /etc/rabbitmq/rabbitmq.conf /var/lib/rabbitmq
exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups env HOME=/var/lib/rabbitmq rabbitmq-server
