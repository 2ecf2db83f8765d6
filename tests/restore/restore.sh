# The restore layer, sourced by scripts/test: a database holding the demo deal
# and a deal with a team, versions, links, a consumer, keys and seen marks is
# dumped and restored as a DBA does by habit, with no special setting: pg_dump
# -Fc + pg_restore, pg_dump + psql, pg_dump -Fd + pg_restore -j 4. Every table
# must come back row for row (tests/restore/rows.sql), with no error reported.
# Then a non-superuser replaying a dump's rows cannot forge a history row or a
# log entry, and DROP EXTENSION is refused while the deals exist.

RESTORE_OUT=${RESTORE_OUT:-/tmp/deal_store_restore}

restore_rows() {
    psql -X -q -At -v ON_ERROR_STOP=1 -d "$1" -f "$ROOT/tests/restore/rows.sql"
}

# restore_compare NAME LABEL [SOURCE_ROWS]: the rows of database NAME against the
# source's (default $RESTORE_OUT/source.rows); prints the verdict
restore_compare() {
    local source=${3:-$RESTORE_OUT/source.rows}
    restore_rows "$1" >"$RESTORE_OUT/$1.rows" || return 1
    if diff -u "$source" "$RESTORE_OUT/$1.rows"; then
        echo "$2: $(wc -l <"$source") tables and the log sequence equal, $(awk -F'|' '{n += $2} END {print n}' "$source") rows"
    else
        echo "$2: the restored rows differ (above: - source, + restored)" >&2
        return 1
    fi
}

# restore_clean LOG: fails when a restore's messages hold an error or a warning
restore_clean() {
    if grep -E 'ERROR|WARNING|error|warning' "$1"; then
        echo "the restore reported the problems above" >&2
        return 1
    fi
}

restore_check() {
    local ok=0 src=deal_store_restore_src
    rm -rf "$RESTORE_OUT"; mkdir -p "$RESTORE_OUT"; chmod 777 "$RESTORE_OUT"
    fresh_db $src
    psql -X -q -v ON_ERROR_STOP=1 -d $src -c "SET client_min_messages = warning" -c "CREATE EXTENSION deal_store CASCADE" || return 1
    psql -X -q -v ON_ERROR_STOP=1 -d $src -f scripts/demo_data/carve_out.sql >/dev/null || return 1
    psql -X -q -v ON_ERROR_STOP=1 -d $src -f tests/restore/extra.sql >/dev/null || return 1
    restore_rows $src >"$RESTORE_OUT/source.rows" || return 1

    # 1. custom format, pg_restore
    # (pg_dump warns that documents and facts refer to themselves: harmless for a
    # whole table loaded by one COPY; its messages go to a file, errors fail the layer)
    "$PG_BIN/pg_dump" -Fc -d $src -f "$RESTORE_OUT/deal.dump" 2>>"$RESTORE_OUT/dump.log" || { cat "$RESTORE_OUT/dump.log"; return 1; }
    fresh_db deal_store_restore_fc
    "$PG_BIN/pg_restore" -d deal_store_restore_fc "$RESTORE_OUT/deal.dump" >"$RESTORE_OUT/fc.log" 2>&1 || { cat "$RESTORE_OUT/fc.log"; ok=1; }
    restore_clean "$RESTORE_OUT/fc.log" || ok=1
    restore_compare deal_store_restore_fc "pg_dump -Fc + pg_restore" || ok=1

    # 2. plain SQL replayed by psql
    "$PG_BIN/pg_dump" -d $src -f "$RESTORE_OUT/deal.sql" 2>>"$RESTORE_OUT/dump.log" || { cat "$RESTORE_OUT/dump.log"; return 1; }
    fresh_db deal_store_restore_sql
    psql -X -q -v ON_ERROR_STOP=1 -d deal_store_restore_sql -f "$RESTORE_OUT/deal.sql" >"$RESTORE_OUT/sql.log" 2>&1 || { cat "$RESTORE_OUT/sql.log"; ok=1; }
    restore_clean "$RESTORE_OUT/sql.log" || ok=1
    restore_compare deal_store_restore_sql "pg_dump + psql" || ok=1

    # 3. directory format in parallel
    "$PG_BIN/pg_dump" -Fd -j 4 -d $src -f "$RESTORE_OUT/deal.dir" 2>>"$RESTORE_OUT/dump.log" || { cat "$RESTORE_OUT/dump.log"; return 1; }
    fresh_db deal_store_restore_dir
    "$PG_BIN/pg_restore" -j 4 -d deal_store_restore_dir "$RESTORE_OUT/deal.dir" >"$RESTORE_OUT/dir.log" 2>&1 || { cat "$RESTORE_OUT/dir.log"; ok=1; }
    restore_clean "$RESTORE_OUT/dir.log" || ok=1
    restore_compare deal_store_restore_dir "pg_dump -Fd + pg_restore -j 4" || ok=1

    # 4. the restored database works on: the consumer reads on, a change applies
    psql -X -q -At -v ON_ERROR_STOP=1 -d deal_store_restore_fc -f tests/restore/after.sql >"$RESTORE_OUT/after.out" 2>&1 ||
        { cat "$RESTORE_OUT/after.out"; ok=1; }
    grep -q '^restored database works on$' "$RESTORE_OUT/after.out" || { cat "$RESTORE_OUT/after.out"; ok=1; }

    # 5. a non-superuser replaying a dump's rows is an ordinary writer
    psql -X -q -v ON_ERROR_STOP=1 -d $src -f tests/restore/replay.sql 2>"$RESTORE_OUT/replay.log" || { cat "$RESTORE_OUT/replay.log"; ok=1; }
    return $ok
}

# move_check: a PostgreSQL 15 database holding deal_store with data (the restore
# layer's: the demo deal and a deal with a team, history, links, a consumer,
# keys, soft deletes and a change waiting for review) moves to PostgreSQL 18 the
# way README says: 18's pg_dump of the 15 database, restored into 18 with no
# special setting. Every table's rows must be equal, and the pg_regress suite
# must pass on the moved database. Runs while $PG_BIN is 18's and its cluster is
# up; starts a PostgreSQL 15 cluster of its own from $PG15_HOME (deal_store installed).
move_check() {
    local ok=0 src=deal_store_move_src dir=/tmp/deal_store_move15 port=54359
    local bin15=$PG15_HOME/bin
    # deal_store for 15 in the tests' own tree (a run of the 18 layers alone has not installed it)
    if [ ! -f "$PG15_HOME/lib/deal_store.so" ]; then
        (PG_CONFIG=$bin15/pg_config PG_MAJOR=15 install_extension) || return 1
    fi
    rm -rf "$RESTORE_OUT"; mkdir -p "$RESTORE_OUT"
    runuser -u postgres -- "$bin15/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"; install -d -o postgres -g postgres "$dir"
    runuser -u postgres -- "$bin15/initdb" -A trust -U postgres -E UTF8 --locale=C.UTF-8 -D "$dir/data" >/dev/null || return 1
    runuser -u postgres -- "$bin15/pg_ctl" -D "$dir/data" -l "$dir/log" -w start \
        -o "-p $port -k $dir -c listen_addresses=''" >/dev/null || return 1
    local p15=("$bin15/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir" -p $port -U postgres)
    "${p15[@]}" -d postgres -c "CREATE DATABASE $src" &&
        "${p15[@]}" -d $src -c "SET client_min_messages = warning" -c "CREATE EXTENSION deal_store CASCADE" &&
        "${p15[@]}" -d $src -f scripts/demo_data/carve_out.sql >/dev/null &&
        "${p15[@]}" -d $src -f tests/restore/extra.sql >/dev/null &&
        "${p15[@]}" -At -d $src -f tests/restore/rows.sql >"$RESTORE_OUT/move15.rows" || ok=1
    # 18's pg_dump reads the 15 server; the dump is restored into 18
    if [ $ok -eq 0 ]; then
        "$PG_BIN/pg_dump" -h "$dir" -p $port -U postgres -Fc -d $src -f "$RESTORE_OUT/move.dump" 2>"$RESTORE_OUT/move_dump.log" || { cat "$RESTORE_OUT/move_dump.log"; ok=1; }
        fresh_db deal_store_moved
        "$PG_BIN/pg_restore" -d deal_store_moved "$RESTORE_OUT/move.dump" >"$RESTORE_OUT/move.log" 2>&1 || { cat "$RESTORE_OUT/move.log"; ok=1; }
        restore_clean "$RESTORE_OUT/move.log" || ok=1
        restore_compare deal_store_moved "PostgreSQL 15 -> $PG_MAJOR" "$RESTORE_OUT/move15.rows" || ok=1
        psql -X -q -At -v ON_ERROR_STOP=1 -d deal_store_moved -c "SELECT 'moved database at ' || extversion FROM pg_catalog.pg_extension WHERE extname = 'deal_store'" || ok=1
        # the moved database works on: its consumer reads on, a change is logged once, DROP is refused
        psql -X -q -At -v ON_ERROR_STOP=1 -d deal_store_moved -f tests/restore/after.sql >"$RESTORE_OUT/move_after.out" 2>&1 ||
            { cat "$RESTORE_OUT/move_after.out"; ok=1; }
        grep -q '^restored database works on$' "$RESTORE_OUT/move_after.out" && echo "the moved database works on: its feed consumer reads on" ||
            { cat "$RESTORE_OUT/move_after.out"; ok=1; }
        # the suite counts some things across the database (open changes, consumers, keys):
        # the moved deal's are settled first, through the API
        psql -X -q -v ON_ERROR_STOP=1 -d deal_store_moved \
            -c "SELECT count(deal_store.reject_change(p.id)) FROM deal_store.pending_changes p WHERE p.status IN ('pending', 'deferred')" \
            -c "SELECT count(deal_store.remove_consumer(c.name)) FROM deal_store.consumers() c" \
            -c "DELETE FROM deal_store.idempotency_keys" >/dev/null || ok=1
        step "PostgreSQL $PG_MAJOR: the pg_regress suite against the database moved from 15"
        run_regress deal_store_moved || ok=1
    fi
    runuser -u postgres -- "$bin15/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    return $ok
}
