# Brings up what scripts/test and scripts/demo need on this machine: RabbitMQ
# and PostgreSQL from Debian's packages, started, with the database `test` and
# a role for the current user. Idempotent: a second run only checks. Every
# step says what it does on stderr, and a failure names the step.
#
# Source it, then call `ensure_backends NAME` (NAME prefixes the messages).

_backends_who=scripts
# The servers' commands live in sbin, which a non-login PATH may lack.
PATH="$PATH:/usr/sbin:/sbin"
_say() { echo "$_backends_who: $*" >&2; }
_fail() {
    _say "FAILED at step '$1': $2"
    exit 1
}
_answers() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

_apt_updated=false
# Installs Debian packages that are missing; `apt-get update` once per run.
_apt_install() { # step packages...
    local step=$1
    shift
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    local sudo=()
    ((EUID == 0)) || sudo=(sudo -n)
    if ! $_apt_updated; then
        _say "updating Debian's package lists (apt-get update)"
        "${sudo[@]}" apt-get update -q >/tmp/switchyard-apt-update.log 2>&1 ||
            _fail "$step" "apt-get update failed; see /tmp/switchyard-apt-update.log"
        _apt_updated=true
    fi
    _say "installing ${missing[*]} from Debian's packages"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" \
        >/tmp/switchyard-apt-install.log 2>&1 ||
        _fail "$step" "apt-get install ${missing[*]} failed; see /tmp/switchyard-apt-install.log"
}

_wait_port() { # step port seconds
    local i
    for ((i = 0; i < $3; i++)); do
        _answers "$2" && return 0
        sleep 1
    done
    _fail "$1" "nothing answers on 127.0.0.1:$2 after $3 s"
}

_ensure_rabbitmq() {
    if _answers 5672; then return 0; fi
    _apt_install "install RabbitMQ" rabbitmq-server
    # Where apt may start services (no policy-rc.d), installing started it.
    if ! _answers 5672; then
        _say "starting RabbitMQ (rabbitmq-server -detached)"
        # A node that is already booting makes this fail: await_startup decides.
        rabbitmq-server -detached >/tmp/switchyard-rabbitmq-start.log 2>&1 || true
    fi
    # await_startup fails at once while the node is not yet reachable at
    # all (just after -detached): ask again until it says booted.
    local deadline=$((SECONDS + 120))
    until timeout 60 rabbitmqctl -q await_startup >/dev/null 2>&1; do
        ((SECONDS < deadline)) ||
            _fail "start RabbitMQ" "RabbitMQ did not finish booting in 120 s (see /tmp/switchyard-rabbitmq-start.log and /var/log/rabbitmq)"
        sleep 1
    done
    _wait_port "start RabbitMQ" 5672 30
}

_pg_cluster() { ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1; }

# The tests connect over loopback as the current user without a password;
# allow exactly that, nothing else. Reloads a running cluster after a change.
_pg_trust_loopback() { # version user
    local hba=/etc/postgresql/$1/main/pg_hba.conf
    [[ -f "$hba" ]] || return 0
    grep -q "^# switchyard-test: $2\$" "$hba" && return 0
    _say "letting role '$2' connect over loopback without a password ($hba)"
    local tmp
    tmp=$(mktemp)
    { printf '# switchyard-test: %s\n' "$2"
      printf 'host all %s 127.0.0.1/32 trust\nhost all %s ::1/128 trust\n' "$2" "$2"
      cat "$hba"; } >"$tmp" && cat "$tmp" >"$hba" && rm -f "$tmp" ||
        _fail "configure PostgreSQL" "could not write $hba"
    if _answers 5432; then
        pg_ctlcluster --skip-systemctl-redirect "$1" main reload >/dev/null 2>&1 ||
            _fail "configure PostgreSQL" "pg_ctlcluster $1 main reload failed"
    fi
}

_ensure_postgresql() {
    local me
    me=$(id -un)
    if ! _answers 5432; then
        _apt_install "install PostgreSQL" postgresql
        local version
        version=$(_pg_cluster)
        [[ -n "$version" ]] || _fail "install PostgreSQL" "no cluster under /etc/postgresql after installing"
        if [[ ! -d /etc/postgresql/$version/main ]]; then
            _say "creating the PostgreSQL $version cluster 'main'"
            pg_createcluster "$version" main >/dev/null 2>&1 || _fail "create the PostgreSQL cluster" "pg_createcluster $version main failed"
        fi
        _pg_trust_loopback "$version" "$me"
        if ! _answers 5432; then
            _say "starting PostgreSQL $version (pg_ctlcluster $version main start)"
            # Status 2 is "already running" (apt may have started it).
            local status=0
            pg_ctlcluster --skip-systemctl-redirect "$version" main start >/tmp/switchyard-postgresql-start.log 2>&1 ||
                status=$?
            ((status == 0 || status == 2)) ||
                _fail "start PostgreSQL" "pg_ctlcluster $version main start failed; see /tmp/switchyard-postgresql-start.log"
        fi
        _wait_port "start PostgreSQL" 5432 60
    fi
    [[ -n "$(_pg_cluster)" ]] && _pg_trust_loopback "$(_pg_cluster)" "$me"
    # The role and the database, through the local socket as postgres.
    local as_pg=(runuser -u postgres --)
    ((EUID == 0)) || as_pg=(sudo -n -u postgres)
    if ! "${as_pg[@]}" psql -qtAX -c "select 1 from pg_roles where rolname = '$me'" | grep -q 1; then
        _say "creating PostgreSQL role '$me' (superuser: the tests create and drop databases)"
        "${as_pg[@]}" psql -q -c "create role \"$me\" login superuser" >/dev/null ||
            _fail "create the PostgreSQL role" "create role $me failed"
    fi
    if ! "${as_pg[@]}" psql -qtAX -c "select 1 from pg_database where datname = 'test'" | grep -q 1; then
        _say "creating PostgreSQL database 'test'"
        "${as_pg[@]}" psql -q -c "create database test owner \"$me\"" >/dev/null ||
            _fail "create the PostgreSQL database" "create database test failed"
    fi
}

ensure_backends() { # who
    _backends_who=$1
    _ensure_rabbitmq
    _ensure_postgresql
}
