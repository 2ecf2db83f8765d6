-- Every table of deal_store, row by row, as one line per table: its row count
-- and the MD5 of its rows in order (generated columns included); and where
-- the log's sequence stands. Equal output before and after a restore means
-- every row came back exactly, and no row more.
SELECT pg_catalog.format('SELECT %L AS tbl, pg_catalog.count(*) AS n_rows, pg_catalog.md5(coalesce(pg_catalog.string_agg(t::text, E''\n'' ORDER BY t::text), '''')) AS rows_md5 FROM deal_store.%I t',
                         c.relname, c.relname)
FROM pg_catalog.pg_class c
WHERE c.relnamespace = 'deal_store'::pg_catalog.regnamespace AND c.relkind = 'r'
ORDER BY c.relname \gexec
SELECT pg_catalog.pg_sequence_last_value('deal_store.deal_activity_log_seq_seq') AS log_seq;
