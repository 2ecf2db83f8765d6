# Shared by scripts/test, scripts/demo and scripts/bench: prerequisites and a
# PostgreSQL 15 cluster run by the postgres OS user (PostgreSQL refuses root).
set -euo pipefail

PG_BIN=/usr/lib/postgresql/15/bin
PG_CONFIG=$PG_BIN/pg_config
PGXS=/usr/lib/postgresql/15/lib/pgxs
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"

step() { printf '\n==> %s\n' "$*"; }

ensure_prereqs() {
    local missing=()
    [ -x "$PG_CONFIG" ] || missing+=(postgresql-15)
    [ -f /usr/include/postgresql/15/server/postgres.h ] || missing+=(postgresql-server-dev-15)
    command -v clang >/dev/null || missing+=(clang)
    ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || missing+=(libclang-dev)
    command -v sudo >/dev/null || missing+=(sudo)
    if [ ${#missing[@]} -gt 0 ]; then
        step "installing apt packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if ! cargo pgrx --version 2>/dev/null | grep -q ' 0\.18\.0'; then
        step "installing cargo-pgrx 0.18.0 (about 4 minutes)"
        cargo install cargo-pgrx --version 0.18.0 --locked
    fi
    if ! grep -qs "^pg15" "$HOME/.pgrx/config.toml"; then
        step "cargo pgrx init against the system PostgreSQL 15"
        cargo pgrx init --pg15="$PG_CONFIG"
    fi
}

install_extension() {
    step "building and installing deal_store ${1:-}"
    (cd "$ROOT" && cargo pgrx install --pg-config "$PG_CONFIG" "$@")
}

# A throwaway cluster owned by postgres: socket in $CLUSTER, TCP on 127.0.0.1:$PGPORT.
start_throwaway_cluster() {
    CLUSTER=${CLUSTER:-/tmp/deal_store_ci}
    export PGHOST=$CLUSTER PGPORT=${PGPORT:-54329} PGUSER=postgres
    if [ ! -f "$CLUSTER/data/PG_VERSION" ]; then
        step "creating a throwaway cluster in $CLUSTER"
        rm -rf "$CLUSTER"
        install -d -o postgres -g postgres "$CLUSTER"
        runuser -u postgres -- "$PG_BIN/initdb" -A trust -U postgres -E UTF8 --locale=C.UTF-8 -D "$CLUSTER/data" >/dev/null
    fi
    if ! runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$CLUSTER/data" status >/dev/null 2>&1; then
        step "starting the cluster on port $PGPORT"
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$CLUSTER/data" -l "$CLUSTER/log" -w start \
            -o "-p $PGPORT -k $CLUSTER -c listen_addresses=127.0.0.1 -c max_prepared_transactions=10 ${CLUSTER_OPTS:-}" >/dev/null
    fi
}

stop_throwaway_cluster() {
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$CLUSTER/data" -m fast -w stop >/dev/null 2>&1 || true
}

fresh_db() {
    psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1"
}
