-- A catalog fingerprint of deal_store: one line per property of every object the
-- extension owns. scripts/test compares an upgraded database's lines with a fresh
-- install's: any line on one side only is a difference the upgrade script missed.
-- Columns are listed in their order (a column added at the end by ALTER TABLE
-- must be at the end of the fresh CREATE TABLE too); dropped columns are skipped.
\pset format unaligned
\pset tuples_only on
WITH ext AS (SELECT oid, extconfig, extcondition FROM pg_catalog.pg_extension WHERE extname = 'deal_store'),
members AS (
    SELECT d.classid, d.objid FROM pg_catalog.pg_depend d, ext
    WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
),
rels AS (
    SELECT c.* FROM pg_catalog.pg_class c JOIN members m ON m.classid = 'pg_catalog.pg_class'::regclass AND m.objid = c.oid
),
procs AS (
    SELECT p.* FROM pg_catalog.pg_proc p JOIN members m ON m.classid = 'pg_catalog.pg_proc'::regclass AND m.objid = p.oid
),
lines(line) AS (
    -- extension members of every kind
    SELECT 'member ' || pg_catalog.pg_describe_object(classid, objid, 0) FROM members
    UNION ALL
    -- relations: kind, options, persistence, RLS flags, owner-independent ACL, comment
    SELECT format('relation %s kind=%s persistence=%s options=%s rls=%s force_rls=%s acl=%s comment=%s',
                  c.oid::regclass, c.relkind, c.relpersistence, c.reloptions, c.relrowsecurity, c.relforcerowsecurity,
                  c.relacl, pg_catalog.obj_description(c.oid, 'pg_class'))
    FROM rels c
    UNION ALL
    -- columns in order, with type, NOT NULL, default, generation, identity, ACL and comment
    SELECT format('column %s #%s %s %s notnull=%s default=%s generated=%s identity=%s collation=%s acl=%s comment=%s',
                  c.oid::regclass,
                  pg_catalog.row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum),
                  a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
                  pg_catalog.pg_get_expr(ad.adbin, ad.adrelid), a.attgenerated, a.attidentity, a.attcollation,
                  a.attacl, pg_catalog.col_description(c.oid, a.attnum))
    FROM rels c JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
    UNION ALL
    SELECT format('constraint %s %s %s deferrable=%s deferred=%s validated=%s comment=%s',
                  c.oid::regclass, k.conname, pg_catalog.pg_get_constraintdef(k.oid), k.condeferrable, k.condeferred,
                  k.convalidated, pg_catalog.obj_description(k.oid, 'pg_constraint'))
    FROM rels c JOIN pg_catalog.pg_constraint k ON k.conrelid = c.oid
    UNION ALL
    SELECT format('index %s comment=%s', pg_catalog.pg_get_indexdef(i.indexrelid),
                  pg_catalog.obj_description(i.indexrelid, 'pg_class'))
    FROM rels c JOIN pg_catalog.pg_index i ON i.indrelid = c.oid
    UNION ALL
    SELECT format('trigger %s enabled=%s comment=%s', pg_catalog.pg_get_triggerdef(t.oid), t.tgenabled,
                  pg_catalog.obj_description(t.oid, 'pg_trigger'))
    FROM rels c JOIN pg_catalog.pg_trigger t ON t.tgrelid = c.oid AND NOT t.tgisinternal
    UNION ALL
    SELECT format('view %s %s', c.oid::regclass, pg_catalog.pg_get_viewdef(c.oid))
    FROM rels c WHERE c.relkind IN ('v', 'm')
    UNION ALL
    SELECT format('sequence %s %s start=%s inc=%s min=%s max=%s cache=%s cycle=%s',
                  c.oid::regclass, s.seqtypid::regtype, s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcache, s.seqcycle)
    FROM rels c JOIN pg_catalog.pg_sequence s ON s.seqrelid = c.oid
    UNION ALL
    SELECT format('policy %s %s cmd=%s permissive=%s roles=%s using=%s check=%s',
                  c.oid::regclass, p.polname, p.polcmd, p.polpermissive,
                  (SELECT pg_catalog.array_agg(r ORDER BY r) FROM pg_catalog.unnest(p.polroles::pg_catalog.regrole[]) r),
                  pg_catalog.pg_get_expr(p.polqual, p.polrelid), pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid))
    FROM rels c JOIN pg_catalog.pg_policy p ON p.polrelid = c.oid
    UNION ALL
    -- functions and procedures: the whole definition (signature, body, language,
    -- volatility, strictness, security, parallel safety, settings), ACL, comment
    SELECT format('function %s acl=%s comment=%s %s', p.oid::regprocedure, p.proacl,
                  pg_catalog.obj_description(p.oid, 'pg_proc'),
                  CASE WHEN p.prokind = 'a' THEN 'aggregate' ELSE pg_catalog.pg_get_functiondef(p.oid) END)
    FROM procs p
    UNION ALL
    SELECT format('type %s typtype=%s comment=%s', t.oid::regtype, t.typtype, pg_catalog.obj_description(t.oid, 'pg_type'))
    FROM pg_catalog.pg_type t JOIN members m ON m.classid = 'pg_catalog.pg_type'::regclass AND m.objid = t.oid
    UNION ALL
    SELECT format('schema %s acl=%s comment=%s', n.nspname, n.nspacl, pg_catalog.obj_description(n.oid, 'pg_namespace'))
    FROM pg_catalog.pg_namespace n JOIN members m ON m.classid = 'pg_catalog.pg_namespace'::regclass AND m.objid = n.oid
    UNION ALL
    -- tables and sequences whose rows pg_dump dumps (pg_extension_config_dump)
    SELECT format('config_dump %s condition=%s', cfg::regclass, cond)
    FROM ext, ROWS FROM (pg_catalog.unnest(ext.extconfig), pg_catalog.unnest(ext.extcondition)) AS u(cfg, cond)
    UNION ALL
    SELECT format('extension comment=%s', pg_catalog.obj_description(oid, 'pg_extension')) FROM ext
)
SELECT line FROM lines ORDER BY line COLLATE "C";
