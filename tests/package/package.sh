# The package layer, sourced by scripts/test: the .deb that scripts/package
# builds, unpacked into a PostgreSQL 15 tree that holds no deal_store, serves the
# pg_regress suite with no Rust toolchain on the PATH.
package_check() {
    local version deb tree=/tmp/deal_store_pkg15 unpacked=/tmp/deal_store_pkg15_deb ok=0
    version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -1)
    deb=$ROOT/target/packages/postgresql-15-deal-store_${version}_amd64.deb
    "$ROOT/scripts/package" --pg 15 || return 1
    dpkg-deb --info "$deb" | sed -n 's/^ \(Package\|Version\|Depends\):/  \1:/p'
    # a PostgreSQL 15 tree of its own, without deal_store; the package's files go into it
    local saved=$PG15_HOME
    private_pg15 "$tree"
    rm -rf "$unpacked"; dpkg-deb -x "$deb" "$unpacked"
    cp -a "$unpacked/usr/lib/postgresql/15/." "$tree/lib/postgresql/15/"
    cp -a "$unpacked/usr/share/postgresql/15/." "$tree/share/postgresql/15/"
    (
        # no Rust at hand: only the system's directories on the PATH
        export PATH=/usr/sbin:/usr/bin:/sbin:/bin
        command -v cargo >/dev/null && { echo "cargo is on the PATH" >&2; exit 1; }
        use_pg 15
        CLUSTER=/tmp/deal_store_pkgtest PGPORT=54349 CLUSTER_OPTS=
        stop_throwaway_cluster; rm -rf "$CLUSTER"
        start_throwaway_cluster
        fresh_db deal_store_package
        run_regress deal_store_package; rc=$?
        stop_throwaway_cluster
        exit $rc
    ) || ok=1
    PG15_HOME=$saved
    use_pg 15
    return $ok
}
