# A three-node Citus cluster on this machine (a coordinator and two workers, each
# an ordinary PostgreSQL 15 cluster run by postgres with citus preloaded), and
# the layer that runs deal_store's tests on it. Sourced by scripts/test and
# scripts/bench after lib.sh.
#
# Citus is not in the package registries: the layer runs when citus.so is
# installed for PostgreSQL 15 (see README "Running on Citus" for building it
# from its source) and says that it skipped otherwise.
CITUS_DIR=${CITUS_DIR:-/tmp/deal_store_citus}
CITUS_PORTS=(54361 54362 54363)   # coordinator, worker 1, worker 2
CITUS_NODES=(coordinator worker1 worker2)

citus_available() {
    [ -f "$(/usr/lib/postgresql/15/bin/pg_config --pkglibdir)/citus.so" ]
}

# citus_psql N [psql args]: psql as postgres on node N (0 = coordinator).
citus_psql() {
    local n=$1; shift
    /usr/lib/postgresql/15/bin/psql -X -h "$CITUS_DIR/${CITUS_NODES[$n]}" -p "${CITUS_PORTS[$n]}" -U postgres "$@"
}

citus_start() {
    local bin=/usr/lib/postgresql/15/bin n dir
    for n in 0 1 2; do
        dir=$CITUS_DIR/${CITUS_NODES[$n]}
        if [ ! -f "$dir/data/PG_VERSION" ]; then
            rm -rf "$dir"
            install -d -o postgres -g postgres "$dir"
            runuser -u postgres -- "$bin/initdb" -A trust -U postgres -E UTF8 --locale=C.UTF-8 -D "$dir/data" >/dev/null
        fi
        # the coordinator reaches the workers over TCP as the role that runs the
        # query (the login roles of the tests included): this loopback-only test
        # cluster trusts them; a real one gives Citus their credentials
        # (pg_dist_authinfo or a .pgpass)
        printf '%s\n' 'local all all trust' 'host all all 127.0.0.1/32 trust' >"$dir/data/pg_hba.conf"
        runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1 &&
            runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" reload >/dev/null
        if ! runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
            runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w start -o \
                "-p ${CITUS_PORTS[$n]} -k $dir -c listen_addresses=127.0.0.1 -c shared_preload_libraries=citus -c max_prepared_transactions=100 -c max_connections=200 ${CITUS_OPTS:-}" >/dev/null
        fi
    done
}

citus_stop() {
    local n
    for n in 0 1 2; do
        runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$CITUS_DIR/${CITUS_NODES[$n]}/data" -m fast -w stop >/dev/null 2>&1 || true
    done
}

# citus_db NAME: a fresh database NAME on every node, the workers added, deal_store
# created on the coordinator (Citus creates it on the workers), not yet distributed.
citus_db() {
    local db=$1 n
    for n in 0 1 2; do
        citus_psql $n -q -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" &&
            citus_psql $n -q -d "$db" -c "SET client_min_messages = warning" -c "CREATE EXTENSION citus" || return 1
    done
    citus_psql 0 -q -v ON_ERROR_STOP=1 -d "$db" \
        -c "SET client_min_messages = warning" \
        -c "SELECT citus_set_coordinator_host('127.0.0.1', ${CITUS_PORTS[0]})" \
        -c "SELECT citus_add_node('127.0.0.1', ${CITUS_PORTS[1]})" \
        -c "SELECT citus_add_node('127.0.0.1', ${CITUS_PORTS[2]})" \
        -c "CREATE EXTENSION deal_store CASCADE" >/dev/null
}

# The layer: a distributed database, then tests/citus/sql/*.sql through the
# coordinator with pg_regress against tests/citus/expected.
citus_check() {
    citus_start
    citus_db deal_store_citus || return 1
    citus_psql 0 -q -v ON_ERROR_STOP=1 -d deal_store_citus -c 'SELECT deal_store.distribute()' >/dev/null || return 1
    local tests; tests=$(cd "$ROOT/tests/citus/sql" && ls *.sql | sed 's/\.sql$//' | sort)
    "$PGXS/src/test/regress/pg_regress" --use-existing --bindir=/usr/lib/postgresql/15/bin \
        --host="$CITUS_DIR/coordinator" --port="${CITUS_PORTS[0]}" --user=postgres \
        --inputdir="$ROOT/tests/citus" --outputdir="$ROOT/tests/citus" --dbname=deal_store_citus \
        $tests || { cat "$ROOT/tests/citus/regression.diffs" 2>/dev/null | head -200; return 1; }
}
