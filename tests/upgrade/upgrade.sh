# The upgrade test, sourced by scripts/test (PostgreSQL 15: the only version a
# release was built for). For each release in tests/upgrade/releases,
# upgrade_prepare builds and installs it, creates $UPGRADE_DB with it and loads
# data through its API; after the current build is installed, upgrade_check runs
# ALTER EXTENSION ... UPDATE and compares rows and the catalog with a fresh install.

UPGRADE_DB=deal_store_upgrade
UPGRADE_ROOT=${UPGRADE_OUT:-/tmp/deal_store_upgrade}
UPGRADE_OUT=$UPGRADE_ROOT

# The releases, one "version commit" line each, oldest first.
upgrade_releases() {
    grep -v '^#' "$ROOT/tests/upgrade/releases" | awk 'NF == 2 {print $1 ":" $2}'
}

# upgrade_prepare VERSION:COMMIT (default: the newest release)
upgrade_prepare() {
    local line=${1:-$(upgrade_releases | tail -1)}
    RELEASE_VERSION=${line%%:*}; local commit=${line##*:}
    UPGRADE_DB=deal_store_upgrade_${RELEASE_VERSION//./_}
    UPGRADE_OUT=$UPGRADE_ROOT/$RELEASE_VERSION
    step "upgrade test: building release $RELEASE_VERSION from commit $commit"
    git -C "$ROOT" cat-file -e "$commit^{commit}" || { echo "commit $commit of release $RELEASE_VERSION is not in this clone" >&2; return 1; }
    rm -rf "$UPGRADE_OUT"; mkdir -p "$UPGRADE_OUT/src"
    git -C "$ROOT" archive "$commit" | tar -x -C "$UPGRADE_OUT/src"
    # a target directory of its own: a cdylib's file name carries no version, so
    # a shared one would let either build install the other's library
    (cd "$UPGRADE_OUT/src" && CARGO_TARGET_DIR="$ROOT/target/release-$RELEASE_VERSION" cargo pgrx install --pg-config "$PG_CONFIG")
    step "upgrade test: a database at $RELEASE_VERSION with data loaded through its API"
    fresh_db "$UPGRADE_DB"
    psql -X -q -v ON_ERROR_STOP=1 -d "$UPGRADE_DB" -c "CREATE EXTENSION deal_store VERSION '$RELEASE_VERSION' CASCADE"
    psql -X -q -v ON_ERROR_STOP=1 -d "$UPGRADE_DB" -f "$ROOT/tests/upgrade/load.sql" >"$UPGRADE_OUT/load.out"
    grep -q '^ t *| t *| t *| t *| t' "$UPGRADE_OUT/load.out" || { cat "$UPGRADE_OUT/load.out"; echo "the release's data is incomplete" >&2; return 1; }
    psql -X -q -v ON_ERROR_STOP=1 -d "$UPGRADE_DB" -f "$ROOT/tests/upgrade/rows.sql" >"$UPGRADE_OUT/rows.before"
}

# Fails (non-zero) on any difference; prints it.
upgrade_check() {
    local ok=0 lib
    step "upgrade test: the new library serves a database still at $RELEASE_VERSION"
    lib="$("$PG_CONFIG" --pkglibdir)/deal_store.so"
    local missing exported
    exported=$(nm -D --defined-only "$lib" | awk '{print $3}')
    missing=$(psql -X -At -d "$UPGRADE_DB" -c "SELECT p.prosrc FROM pg_catalog.pg_proc p WHERE p.prolang = (SELECT oid FROM pg_catalog.pg_language WHERE lanname = 'c') AND p.probin LIKE '%deal_store%' ORDER BY 1" |
        while read -r sym; do
            for s in "$sym" "pg_finfo_$sym"; do grep -qx "$s" <<<"$exported" || echo "$s"; done
        done)
    if [ -n "$missing" ]; then echo "C symbols the $RELEASE_VERSION SQL names but the new library lacks: $missing" >&2; ok=1; fi
    psql -X -q -v ON_ERROR_STOP=1 -d "$UPGRADE_DB" -At -f "$ROOT/tests/upgrade/old_api.sql" >"$UPGRADE_OUT/old_api.out" ||
        { echo "the $RELEASE_VERSION API failed on the new library" >&2; ok=1; }
    step "upgrade test: ALTER EXTENSION deal_store UPDATE"
    psql -X -q -v ON_ERROR_STOP=1 -d "$UPGRADE_DB" -c "ALTER EXTENSION deal_store UPDATE" || return 1
    local want got
    want=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -1)
    got=$(psql -X -At -d "$UPGRADE_DB" -c "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'deal_store'")
    echo "upgraded from $RELEASE_VERSION to $got"
    [ "$got" = "$want" ] || { echo "the database is at $got after the upgrade, not at $want (Cargo.toml)" >&2; return 1; }
    psql -X -q -v ON_ERROR_STOP=1 -d "$UPGRADE_DB" -f "$ROOT/tests/upgrade/rows.sql" >"$UPGRADE_OUT/rows.after"
    if ! diff -u "$UPGRADE_OUT/rows.before" "$UPGRADE_OUT/rows.after"; then echo "the upgrade changed rows (above)" >&2; ok=1; fi
    step "upgrade test: catalog of the upgraded database = catalog of a fresh install"
    fresh_db deal_store_fresh
    psql -X -q -v ON_ERROR_STOP=1 -d deal_store_fresh -c "CREATE EXTENSION deal_store CASCADE"
    psql -X -q -v ON_ERROR_STOP=1 -d deal_store_fresh -f "$ROOT/tests/upgrade/fingerprint.sql" >"$UPGRADE_OUT/catalog.fresh"
    psql -X -q -v ON_ERROR_STOP=1 -d "$UPGRADE_DB" -f "$ROOT/tests/upgrade/fingerprint.sql" >"$UPGRADE_OUT/catalog.upgraded"
    [ -s "$UPGRADE_OUT/catalog.fresh" ] || { echo "empty fingerprint" >&2; ok=1; }
    if ! diff -u --label fresh-install "$UPGRADE_OUT/catalog.fresh" --label upgraded "$UPGRADE_OUT/catalog.upgraded"; then
        echo "the upgraded catalog differs from a fresh install (- fresh, + upgraded): the upgrade script misses a change" >&2
        ok=1
    else
        echo "catalog fingerprints equal: $(wc -l <"$UPGRADE_OUT/catalog.fresh") lines"
    fi
    return $ok
}
