#!/usr/bin/env bash
# Builds and installs Citus for Debian's PostgreSQL 15 from a Citus 13.2.x source
# tree: bash tests/citus/build.sh /path/to/citus (about 5 minutes on 2 cores).
# Get the tree with `git clone --branch v13.2.2 https://github.com/citusdata/citus`
# (or an archive of that tag). One edit is needed: Citus 13.2 defines a static
# have_createdb_privilege() in src/include/pg_version_compat.h that clashes with
# the one PostgreSQL 15.20 exports; it is switched off with #if 0.
set -euo pipefail
src=${1:?usage: build.sh CITUS_SOURCE_TREE}
cd "$src"
h=src/include/pg_version_compat.h
if ! grep -q 'deal_store: clashes' "$h"; then
    python3 - "$h" <<'PY'
import sys
p = sys.argv[1]
lines = open(p).read().split('\n')
i = next(n for n, l in enumerate(lines) if l.startswith('have_createdb_privilege(void)'))
assert lines[i - 1] == 'static inline bool', 'unexpected layout of ' + p
j = i
while lines[j] != '}':
    j += 1
lines.insert(j + 1, '#endif /* deal_store: clashes with PostgreSQL 15.20 */')
lines.insert(i - 1, '#if 0')
open(p, 'w').write('\n'.join(lines))
PY
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq liblz4-dev libzstd-dev libkrb5-dev >/dev/null
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config ./configure --without-libcurl >/dev/null
make -j2 >/dev/null
make install >/dev/null
echo "Citus installed for PostgreSQL 15: $(/usr/lib/postgresql/15/bin/pg_config --pkglibdir)/citus.so"
