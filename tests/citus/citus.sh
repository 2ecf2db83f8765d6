# A three-node Citus cluster on this machine (a coordinator and two workers, each
# an ordinary PostgreSQL 15 cluster run by postgres with citus and deal_store preloaded), and
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
    [ -f "$($PG15_HOME/bin/pg_config --pkglibdir)/citus.so" ]
}

# citus_psql N [psql args]: psql as postgres on node N (0 = coordinator).
citus_psql() {
    local n=$1; shift
    $PG15_HOME/bin/psql -X -h "$CITUS_DIR/${CITUS_NODES[$n]}" -p "${CITUS_PORTS[$n]}" -U postgres "$@"
}

citus_start() {
    local bin=$PG15_HOME/bin n dir
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
                "-p ${CITUS_PORTS[$n]} -k $dir -c listen_addresses=127.0.0.1 -c shared_preload_libraries=citus,deal_store -c max_prepared_transactions=100 -c max_connections=200 ${CITUS_OPTS:-}" >/dev/null
        fi
    done
}

# citus_fresh: the three clusters stopped and removed; citus_start makes them anew
citus_fresh() {
    citus_stop
    rm -rf "$CITUS_DIR"
}

citus_stop() {
    local n
    for n in 0 1 2; do
        runuser -u postgres -- $PG15_HOME/bin/pg_ctl -D "$CITUS_DIR/${CITUS_NODES[$n]}/data" -m fast -w stop >/dev/null 2>&1 || true
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
    "$PGXS/src/test/regress/pg_regress" --use-existing --bindir=$PG15_HOME/bin \
        --host="$CITUS_DIR/coordinator" --port="${CITUS_PORTS[0]}" --user=postgres \
        --inputdir="$ROOT/tests/citus" --outputdir="$ROOT/tests/citus" --dbname=deal_store_citus \
        $tests || { cat "$ROOT/tests/citus/regression.diffs" 2>/dev/null | head -200; return 1; }
}

# The suites of the PostgreSQL layers on a distributed database: every
# pg_regress file (tests/pg_regress/sql) and isolation spec (tests/isolation/specs)
# through the coordinator, compared with what they give on Citus
# (tests/citus/regress/*.out, tests/citus/isolation/*.out). Those files differ
# from PostgreSQL's where README "Running on Citus" says why. What varies from
# run to run on Citus is written one way before comparing (citus_normalize):
# shard ids (a random deal id picks the shard), the worker's port, temporary
# schema numbers, the ids an error message names (some are random), and the
# frames of the Rust backtrace pgrx adds to an error that
# Citus raised inside a query deal_store's Rust code ran (paths, line numbers and
# inlining differ by build). CITUS_FILL=1 rewrites the expected files from a run.
citus_normalize() {
    sed -E -e 's/(\"?[a-z_]+)_1[0-9]{5}\b/\1_<shard>/g' -e 's/127\.0\.0\.1:5436[0-9]/<worker>/g' \
        -e 's/pg_temp_[0-9]+/pg_temp_N/g' -e '/^ {2,}[0-9]{1,3}: /d' -e '/^ {8,}at /d' \
        -e '/^ERROR:/s/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/<uuid>/g' "$1"
}

citus_suite() {
    local work=$CITUS_DIR/suite rc=0 tests specs kind f
    rm -rf "$work"
    mkdir -p "$work/regress/expected" "$work/isolation/expected"
    cp -r "$ROOT/tests/pg_regress/sql" "$work/regress/sql"
    cp -r "$ROOT/tests/isolation/specs" "$work/isolation/specs"
    # pg_regress and pg_isolation_regress run the files; the comparison is below
    cp "$ROOT"/tests/pg_regress/expected/*.out "$work/regress/expected/"
    cp "$ROOT"/tests/isolation/expected/*.out "$work/isolation/expected/"
    citus_start

    citus_db deal_store_citus_regress || return 1
    citus_psql 0 -q -v ON_ERROR_STOP=1 -d deal_store_citus_regress -c 'SELECT deal_store.distribute()' >/dev/null || return 1
    # the personas of the access and feed files are roles the files create NOLOGIN
    # when missing; on Citus the coordinator connects to the workers as them, so
    # here they are created beforehand, able to log in: on the coordinator only,
    # after distribute() (Citus creates them on the workers, the files' GRANTs follow)
    local r
    for r in ds_nobody ds_reader ds_analyst ds_reviewer ds_lead ds_admin ds_service ds_other ds_feed_viewer ds_feed_other; do
        citus_psql 0 -q -v ON_ERROR_STOP=1 -d deal_store_citus_regress -c "CREATE ROLE $r LOGIN" >/dev/null || return 1
    done
    tests=$(cd "$ROOT/tests/pg_regress/sql" && ls *.sql | sed 's/\.sql$//' | grep -v -e '^setup$' -e '^reinstall$' | sort)
    "$PGXS/src/test/regress/pg_regress" --use-existing --bindir=$PG15_HOME/bin \
        --host="$CITUS_DIR/coordinator" --port="${CITUS_PORTS[0]}" --user=postgres \
        --inputdir="$work/regress" --outputdir="$work/regress" --dbname=deal_store_citus_regress \
        setup $tests >"$work/regress.log" 2>&1

    # the specs' sessions SET ROLE to a reviewer login; the coordinator connects to
    # the workers as that role, so there it must be able to log in. A session waits
    # for a lock on a worker: Citus's own test function tells the isolation tester
    # that it is blocked (PostgreSQL's sees only the coordinator's locks)
    citus_db deal_store_citus_isolation || return 1
    citus_psql 0 -q -v ON_ERROR_STOP=1 -d deal_store_citus_isolation \
        -c 'SELECT deal_store.distribute()' \
        -c 'CREATE ROLE deal_store_iso LOGIN' \
        -c 'GRANT deal_store_reviewer TO deal_store_iso' \
        -c 'SELECT citus_internal.replace_isolation_tester_func()' \
        -c 'ALTER DATABASE deal_store_citus_isolation SET citus.multi_shard_modify_mode = sequential' >/dev/null || return 1
    specs=$(cd "$ROOT/tests/isolation/specs" && ls *.spec | sed 's/\.spec$//' | sort)
    "$PGXS/src/test/isolation/pg_isolation_regress" --use-existing --bindir=$PG15_HOME/bin \
        --host="$CITUS_DIR/coordinator" --port="${CITUS_PORTS[0]}" --user=postgres \
        --inputdir="$work/isolation" --outputdir="$work/isolation" --dbname=deal_store_citus_isolation \
        $specs >"$work/isolation.log" 2>&1

    for kind in regress isolation; do
        for f in "$work/$kind"/results/*.out; do
            if [ -n "${CITUS_FILL:-}" ]; then
                citus_normalize "$f" >"$ROOT/tests/citus/$kind/$(basename "$f")"
            elif ! citus_normalize "$f" | diff -u "$ROOT/tests/citus/$kind/$(basename "$f")" - >>"$work/citus.diffs"; then
                echo "differs on Citus from tests/citus/$kind/$(basename "$f")"
                rc=1
            fi
        done
    done
    # who did what is the same on Citus as on one node: the attribution file
    # gives PostgreSQL's output, entry for entry
    if ! citus_normalize "$work/regress/results/attribution.out" | diff -u "$ROOT/tests/pg_regress/expected/attribution.out" - >>"$work/citus.diffs"; then
        echo "attribution differs on Citus from one node (tests/pg_regress/expected/attribution.out)"
        rc=1
    fi
    [ "$rc" = 0 ] || head -300 "$work/citus.diffs"
    return $rc
}

# The change feed on a distributed database: tests/feed/randomized.py's seeded
# interleavings, the writers' facts spread over deals on both workers (each
# worker writes its entries with its own transaction ids).
citus_feed() {
    citus_start
    citus_db deal_store_citus_feed || return 1
    citus_psql 0 -q -v ON_ERROR_STOP=1 -d deal_store_citus_feed -c 'SELECT deal_store.distribute()' >/dev/null || return 1
    PYTHONPATH="$PY_DIR" python3 "$ROOT/tests/feed/randomized.py" \
        "host=$CITUS_DIR/coordinator port=${CITUS_PORTS[0]} user=postgres dbname=deal_store_citus_feed"
}
