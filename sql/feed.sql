-- The change feed: the audit log read by registered consumers with cursors,
-- gap-free whatever the commit order. Transactions commit out of seq order, so
-- a reader that remembers "the last seq I saw" skips entries that commit later
-- with a lower seq. The feed delivers an entry only once every transaction
-- whose xid is not above its own has finished (its txid is below the xmin of
-- the reading snapshot: nothing older can still appear), in (txid, seq) order;
-- each read's rows are returned in seq order. A consumer's cursor is a position
-- in that order; reading does not move it, acknowledging does, so what is not
-- acknowledged comes back (at least once, in the same order).
--
-- Transaction ids are one node's. On Citus the workers write their shards'
-- entries with their own, so the feed keeps a position per writing node and
-- delivers node by node: an entry's seq names its node (the node's Citus group
-- above bit 48, see _log_seq), and each node's entries are ordered and held back
-- by that node's transaction ids. On plain PostgreSQL there is one node, 0.

COMMENT ON FUNCTION deal_store_internal._caller_role() IS
    'Internal: the role the caller acts as outside SECURITY DEFINER functions (its login, or the role it SET ROLE to): the owner of the consumers it registers.';

CREATE TABLE deal_store.feed_consumers (
    name          text        NOT NULL,
    owner_role    name        NOT NULL,
    cursor_txid   bigint[]    NOT NULL,
    cursor_seq    bigint[]    NOT NULL,
    read_txid     bigint[],
    read_seq      bigint[],
    registered_at timestamptz NOT NULL DEFAULT now(),
    read_at       timestamptz,
    acked_at      timestamptz,
    CONSTRAINT feed_consumers_pkey PRIMARY KEY (owner_role, name),
    CONSTRAINT feed_consumers_name_check CHECK (name ~ '^[A-Za-z0-9_.:-]{1,63}$'),
    CONSTRAINT feed_consumers_read_check CHECK ((read_txid IS NULL) = (read_seq IS NULL))
);
COMMENT ON TABLE deal_store.feed_consumers IS
    'Registered readers of the change feed (read_changes / ack_changes), each owned by the role that registered it.';
COMMENT ON COLUMN deal_store.feed_consumers.cursor_txid IS
    'With cursor_seq, element n + 1 for the entries node n wrote (one node, 0, on plain PostgreSQL; a missing element is the start): every such entry at or before (cursor_txid, cursor_seq) in (txid, seq) order is acknowledged.';
COMMENT ON COLUMN deal_store.feed_consumers.read_txid IS
    'With read_seq, per node like cursor_txid: where the last read_changes ended (the position an ack of all its rows moves the cursor to).';
SELECT pg_catalog.pg_extension_config_dump('deal_store.feed_consumers', '');

-- the feed reads the log in (txid, seq) order
CREATE INDEX deal_activity_log_txid_idx ON deal_store.deal_activity_log (txid, seq);

-- Which node wrote an entry: the one rule for numbering and reading.
CREATE FUNCTION deal_store_internal._log_seq(node integer, n bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (node::bigint << 48) + n;
COMMENT ON FUNCTION deal_store_internal._log_seq(integer, bigint) IS
    'Internal: the seq of the n-th log entry a node wrote: its Citus group above bit 48 (the audit writer on a worker numbers its shards'' entries so; on plain PostgreSQL and on the coordinator the node is 0).';

CREATE FUNCTION deal_store_internal._log_node(seq bigint) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (seq >> 48)::integer;
COMMENT ON FUNCTION deal_store_internal._log_node(bigint) IS
    'Internal: the node (Citus group; 0 on plain PostgreSQL) that wrote the log entry with this seq, whose transaction ids order it.';

CREATE FUNCTION deal_store_internal._horizon() RETURNS bigint
LANGUAGE sql VOLATILE
RETURN pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())::text::bigint;
COMMENT ON FUNCTION deal_store_internal._horizon() IS
    'Internal: the xmin of the current snapshot as a txid: every transaction below it has committed or aborted, so the log holds all of their entries.';

-- What a worker answers for its horizon: its snapshot's xmin, and the nodes that
-- began the prepared transactions it holds (Citus names them citus_<group>_…).
CREATE FUNCTION deal_store_internal._node_horizon(routed bigint) RETURNS text
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())::pg_catalog.text || ':'
           || coalesce((SELECT pg_catalog.string_agg(DISTINCT pg_catalog.split_part(p.gid, '_', 2), ',')
                        FROM pg_catalog.pg_prepared_xacts p WHERE p.gid LIKE 'citus\_%'), '')
$$;
COMMENT ON FUNCTION deal_store_internal._node_horizon(bigint) IS
    'Internal, the change feed on Citus: this node''s horizon (its snapshot''s xmin) and the nodes that began the prepared transactions it holds, as xmin:group,group. routed only carries the count of the query that sends the call to the node.';

-- Each node's horizon, element n + 1 for node n (plain PostgreSQL: just this one).
-- On Citus the coordinator's comes first, then each worker's, asked by a query this
-- transaction routes to one of the worker's deal shards (one round trip on the
-- connection the transaction uses there: a later read there sees every
-- transaction below it). An entry the coordinator writes lands on a worker,
-- where a two-phase commit makes it visible only after the coordinator's own
-- commit: while a worker still holds a prepared transaction of a node, that
-- node's horizon is 0 when `settled` (nothing new of it is delivered yet). A
-- node that holds no deal shard writes no entries: its horizon is not asked.
CREATE FUNCTION deal_store_internal._horizons(settled boolean) RETURNS bigint[]
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
-- @plpgsql_check_options: security_warnings = false
DECLARE
    h bigint[] := ARRAY[deal_store_internal._horizon()];
    held integer[] := ARRAY[]::integer[];
    asked integer[] := ARRAY[]::integer[];
    groups integer;
    g integer;
    u uuid;
    answer text;
BEGIN
    IF NOT deal_store_internal._distributed() THEN
        RETURN h;
    END IF;
    EXECUTE format($q$SELECT count(DISTINCT p.groupid)::integer FROM %s p JOIN %s s ON s.shardid = p.shardid
                      WHERE s.logicalrelid = 'deal_store.deals'::regclass AND p.groupid > 0$q$,
                   'pg_catalog.pg_dist_placement', 'pg_catalog.pg_dist_shard') INTO groups;
    -- deal ids of a fixed list, until one falls in a shard of each worker group
    FOR i IN 1 .. 100000 LOOP
        EXIT WHEN cardinality(asked) >= groups;
        u := pg_catalog.md5(i::pg_catalog.text)::pg_catalog.uuid;
        EXECUTE format('SELECT p.groupid FROM %s p WHERE p.shardid = %s(''deal_store.deals'', $1) AND p.groupid > 0',
                       'pg_catalog.pg_dist_placement', 'pg_catalog.get_shard_id_for_distribution_column') INTO g USING u;
        CONTINUE WHEN g IS NULL OR g = ANY (asked);
        asked := asked || g;
        EXECUTE 'SELECT deal_store_internal._node_horizon(pg_catalog.count(*)) FROM deal_store.deals d WHERE d.id = $1'
            INTO answer USING u;
        h[g + 1] := pg_catalog.split_part(answer, ':', 1)::bigint;
        held := held || pg_catalog.string_to_array(NULLIF(pg_catalog.split_part(answer, ':', 2), ''), ',')::integer[];
    END LOOP;
    IF settled THEN
        FOREACH g IN ARRAY held LOOP
            h[g + 1] := 0;
        END LOOP;
    END IF;
    RETURN h;
END $$;
COMMENT ON FUNCTION deal_store_internal._horizons(boolean) IS
    'Internal: each node''s horizon, element n + 1 for node n (the Citus group; one element on plain PostgreSQL; a worker asked through a query routed to one of its deal shards): its entries below it are final. settled: 0 for a node while a worker holds a prepared transaction it began (its entries there are not yet visible).';

-- A consumer by name, locked, owned by the caller (admins may use any).
CREATE FUNCTION deal_store_internal._consumer(name text) RETURNS deal_store.feed_consumers
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c deal_store.feed_consumers;
BEGIN
    IF name IS NULL THEN
        RAISE EXCEPTION 'consumer must not be NULL' USING ERRCODE = '22004';
    END IF;
    -- names are the caller's own: another role's consumer of the same name is not
    -- this one (an admin reaches any, its own first)
    SELECT * INTO c FROM deal_store.feed_consumers f
    WHERE f.name = _consumer.name AND (f.owner_role = deal_store_internal._caller_role() OR deal_store.sees_all_deals())
    ORDER BY f.owner_role = deal_store_internal._caller_role() DESC, f.owner_role LIMIT 1 FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no feed consumer named "%"', name USING ERRCODE = 'P0002',
            HINT = 'Register it with deal_store.register_consumer.';
    END IF;
    RETURN c;
END $$;
COMMENT ON FUNCTION deal_store_internal._consumer(text) IS
    'Internal: the caller''s consumer of that name (names are per role; an admin reaches any role''s, its own first), locked; P0002 when there is none.';

CREATE FUNCTION deal_store.register_consumer(name text, from_start boolean DEFAULT false) RETURNS deal_store.feed_consumers
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c deal_store.feed_consumers;
BEGIN
    PERFORM deal_store_internal._require_feed_reader();
    IF name IS NULL THEN
        RAISE EXCEPTION 'name must not be NULL' USING ERRCODE = '22004';
    ELSIF name !~ '^[A-Za-z0-9_.:-]{1,63}$' THEN
        RAISE EXCEPTION 'invalid consumer name "%"', name USING ERRCODE = '22023',
            HINT = 'Use 1 to 63 letters, digits, _ . : or -.';
    END IF;
    -- from now: the transactions that have finished are behind the cursor, on every node
    INSERT INTO deal_store.feed_consumers AS f (name, owner_role, cursor_txid, cursor_seq)
    SELECT register_consumer.name, deal_store_internal._caller_role(),
           CASE WHEN coalesce(from_start, false) THEN '{}' ELSE ARRAY(SELECT x - 1 FROM unnest(h.h) WITH ORDINALITY x(x, i) ORDER BY i) END,
           CASE WHEN coalesce(from_start, false) THEN '{}' ELSE array_fill(9223372036854775807, ARRAY[cardinality(h.h)]) END
    FROM (SELECT deal_store_internal._horizons(false) AS h) h
    ON CONFLICT ON CONSTRAINT feed_consumers_pkey DO NOTHING
    RETURNING f.* INTO c;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'you have a feed consumer named "%" already', name USING ERRCODE = '23505',
            HINT = 'Read with it, or remove it first with deal_store.remove_consumer.';
    END IF;
    RETURN c;
END $$;
COMMENT ON FUNCTION deal_store.register_consumer(text, boolean) IS
    'Registers a change-feed consumer owned by the caller''s role (names are per role: another role''s consumer of the same name is another consumer). It receives every log entry of the transactions that had not finished when it registered (on Citus: on each node), and of all later ones (from_start: every entry in the log). 23505 when the caller''s role has a consumer of that name, 22023 for a bad name (1 to 63 of A-Z a-z 0-9 _ . : -).';

CREATE FUNCTION deal_store_internal._require_feed_reader() RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT deal_store.sees_all_deals() AND deal_store.current_actor() IS NULL THEN
        RAISE EXCEPTION 'permission denied to read the change feed: no actor' USING ERRCODE = '42501',
            HINT = 'Link the login role to a user (users.db_role), or SET LOCAL deal_store.actor through a member of deal_store_service.';
    END IF;
END $$;
COMMENT ON FUNCTION deal_store_internal._require_feed_reader() IS
    'Internal: 42501 unless the caller acts for a user (whose deals it will see) or sees every deal.';

CREATE FUNCTION deal_store.read_changes(consumer text, max_rows integer DEFAULT 1000)
RETURNS TABLE(seq bigint, txid bigint, created_at timestamptz, deal_id uuid, user_id uuid, action text,
              entity_type text, entity_id uuid, entity_key jsonb, analysis_run_id uuid, reason text, details jsonb)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c deal_store.feed_consumers;
    horizons bigint[];
    everything boolean;
    deals uuid[];
    nodes integer;
    node_txid bigint;
    node_seq bigint;
    horizon bigint;
    todo integer;
    got bigint;
    -- where the read ends on each node if it takes all the node has below its horizon
    marks_txid bigint[];
    marks_seq bigint[];
BEGIN
    c := deal_store_internal._consumer(consumer);
    PERFORM deal_store_internal._require_feed_reader();
    IF max_rows IS NULL OR max_rows NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION 'max_rows must be between 1 and 100000' USING ERRCODE = '22023';
    END IF;
    everything := deal_store.sees_all_deals();
    deals := deal_store.my_deals('viewer');
    horizons := deal_store_internal._horizons(true);
    nodes := greatest(cardinality(horizons), cardinality(c.cursor_txid));
    -- a cursor beyond every transaction this cluster has begun: the database was
    -- restored into a cluster whose transaction ids are behind the old one's, and the
    -- consumer will see nothing new until they pass it
    IF EXISTS (SELECT 1 FROM pg_catalog.unnest(c.cursor_txid) WITH ORDINALITY x(t, i)
               WHERE x.t > coalesce(horizons[x.i], 0) AND x.t > pg_catalog.pg_current_xact_id()::text::bigint) THEN
        RAISE WARNING 'feed consumer "%" has a cursor beyond this cluster''s transaction ids', c.name
            USING DETAIL = 'The database was restored into another cluster whose transaction ids are behind the old one''s: new entries wait until they pass the cursor.',
                  HINT = 'Remove the consumer and register it again, or move with pg_upgrade (which keeps transaction ids).';
    END IF;
    marks_txid := c.cursor_txid;
    marks_seq := c.cursor_seq;
    todo := max_rows;
    -- node by node, each in (txid, seq) order, until max_rows
    FOR node IN 0 .. nodes - 1 LOOP
        EXIT WHEN todo = 0;
        node_txid := coalesce(marks_txid[node + 1], 0);
        node_seq := coalesce(marks_seq[node + 1], 0);
        horizon := coalesce(horizons[node + 1], 9223372036854775807);   -- no such node any more: all final
        IF (horizon - 1, 9223372036854775807) > (node_txid, node_seq) THEN
            marks_txid[node + 1] := horizon - 1;
            marks_seq[node + 1] := 9223372036854775807;
        END IF;
        RETURN QUERY
        WITH batch AS MATERIALIZED (
            SELECT l.* FROM deal_store.deal_activity_log l
            WHERE deal_store_internal._log_node(l.seq) = node
              AND (l.txid, l.seq) > (node_txid, node_seq) AND l.txid < horizon
              AND (everything OR l.deal_id = ANY (deals))
            ORDER BY l.txid, l.seq
            LIMIT todo
        ), last AS (
            SELECT b.txid, b.seq, (SELECT count(*) FROM batch) AS n FROM batch b ORDER BY b.txid DESC, b.seq DESC LIMIT 1
        ), mark AS (
            -- where an ack of the whole read moves the cursors: on this node past
            -- the horizon when the read took all there is below it (entries of
            -- other deals included), at its last entry otherwise; on the nodes
            -- before, past their horizons; on the nodes after, where they were
            UPDATE deal_store.feed_consumers f
            SET (read_txid, read_seq) = (
                    SELECT array_agg(CASE WHEN i = node + 1 AND x.n = todo THEN x.txid ELSE coalesce(marks_txid[i], 0) END ORDER BY i),
                           array_agg(CASE WHEN i = node + 1 AND x.n = todo THEN x.seq ELSE coalesce(marks_seq[i], 0) END ORDER BY i)
                    FROM generate_series(1, nodes) i LEFT JOIN last x ON true),
                read_at = pg_catalog.now()
            WHERE f.owner_role = c.owner_role AND f.name = c.name
            RETURNING 1
        )
        SELECT b.seq, b.txid, b.created_at, b.deal_id, b.user_id, b.action, b.entity_type, b.entity_id,
               b.entity_key, b.analysis_run_id, b.reason, b.details
        FROM batch b ORDER BY b.seq;
        GET DIAGNOSTICS got = ROW_COUNT;
        todo := todo - got;
    END LOOP;
END $$;
COMMENT ON FUNCTION deal_store.read_changes(text, integer) IS
    'The next at most max_rows (1 to 100000) log entries after the consumer''s cursor, in the deals the caller may see, in seq order. Gap-free: an entry is delivered only when every transaction that could precede it has committed or aborted (its txid is below the snapshot''s xmin; on Citus, that of the node that wrote it), so no entry is skipped whatever the commit order, and none of an aborted transaction appears. Reading does not move the cursor: ack_changes does, and what is not acknowledged is read again, in the same order (at least once).';

CREATE FUNCTION deal_store.ack_changes(consumer text, up_to bigint) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c deal_store.feed_consumers;
    everything boolean;
    deals uuid[];
    nodes integer;
    stop record;
    n bigint := 0;
BEGIN
    c := deal_store_internal._consumer(consumer);
    IF up_to IS NULL THEN
        RAISE EXCEPTION 'up_to must not be NULL' USING ERRCODE = '22004';
    ELSIF c.read_txid IS NULL THEN
        RAISE EXCEPTION 'feed consumer "%" has nothing read to acknowledge', consumer USING ERRCODE = '55000',
            HINT = 'Call deal_store.read_changes first.';
    END IF;
    everything := deal_store.sees_all_deals();
    deals := deal_store.my_deals('viewer');
    nodes := cardinality(c.read_txid);
    -- the last read's entries in delivery order, node by node; the first one above
    -- up_to stays unacknowledged, and the cursors stop before it. One query per
    -- node: that entry if there is one, else any entry with the node's count
    FOR node IN 0 .. nodes - 1 LOOP
        SELECT r.open, r.before_txid, r.before_seq, r.n, r.total INTO stop FROM (
            SELECT l.txid, l.seq, l.seq > up_to AS open,
                   pg_catalog.lag(l.txid) OVER w AS before_txid, pg_catalog.lag(l.seq) OVER w AS before_seq,
                   pg_catalog.row_number() OVER w - 1 AS n, pg_catalog.count(*) OVER () AS total
            FROM (SELECT l.txid, l.seq FROM deal_store.deal_activity_log l
                  WHERE deal_store_internal._log_node(l.seq) = node
                    AND (l.txid, l.seq) > (coalesce(c.cursor_txid[node + 1], 0), coalesce(c.cursor_seq[node + 1], 0))
                    AND (l.txid, l.seq) <= (c.read_txid[node + 1], c.read_seq[node + 1])
                    AND (everything OR l.deal_id = ANY (deals))) l
            WINDOW w AS (ORDER BY l.txid, l.seq)) r
        ORDER BY r.open DESC, r.txid, r.seq LIMIT 1;
        IF stop.open THEN
            UPDATE deal_store.feed_consumers f
            SET (cursor_txid, cursor_seq) = (
                    SELECT array_agg(CASE WHEN i < node + 1 THEN c.read_txid[i] WHEN i = node + 1 THEN coalesce(stop.before_txid, c.cursor_txid[i], 0)
                                          ELSE coalesce(c.cursor_txid[i], 0) END ORDER BY i),
                           array_agg(CASE WHEN i < node + 1 THEN c.read_seq[i] WHEN i = node + 1 THEN coalesce(stop.before_seq, c.cursor_seq[i], 0)
                                          ELSE coalesce(c.cursor_seq[i], 0) END ORDER BY i)
                    FROM generate_series(1, nodes) i),
                acked_at = pg_catalog.now()
            WHERE f.owner_role = c.owner_role AND f.name = c.name AND (node > 0 OR stop.before_txid IS NOT NULL);
            RETURN n + stop.n;
        END IF;
        n := n + coalesce(stop.total, 0);
    END LOOP;
    UPDATE deal_store.feed_consumers f
    SET cursor_txid = c.read_txid, cursor_seq = c.read_seq, read_txid = NULL, read_seq = NULL, acked_at = pg_catalog.now()
    WHERE f.owner_role = c.owner_role AND f.name = c.name;
    RETURN n;
END $$;
COMMENT ON FUNCTION deal_store.ack_changes(text, bigint) IS
    'Acknowledges the entries of the consumer''s last read_changes whose seq is at most up_to and returns how many; the cursor moves in delivery order, so it stops before the first entry of the read above up_to, and what follows comes back on the next read (at least once). Acknowledging all of a read moves the cursor past it (and past the entries of deals the caller does not see). 55000 when nothing was read since the last full acknowledgement.';

CREATE FUNCTION deal_store.consumers()
RETURNS TABLE(name text, owner_role name, registered_at timestamptz, read_at timestamptz, acked_at timestamptz,
              lag bigint, oldest_unacked_at timestamptz)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    f deal_store.feed_consumers;
BEGIN
    FOR f IN SELECT * FROM deal_store.feed_consumers x
             WHERE x.owner_role = deal_store_internal._caller_role() OR deal_store.sees_all_deals() ORDER BY x.name, x.owner_role LOOP
        -- a query per consumer, its cursors as values (on Citus it runs on every shard)
        SELECT f.name, f.owner_role, f.registered_at, f.read_at, f.acked_at, count(*), min(l.created_at)
        INTO name, owner_role, registered_at, read_at, acked_at, lag, oldest_unacked_at
        FROM deal_store.deal_activity_log l
        WHERE (l.txid, l.seq) > (coalesce(f.cursor_txid[deal_store_internal._log_node(l.seq) + 1], 0),
                                 coalesce(f.cursor_seq[deal_store_internal._log_node(l.seq) + 1], 0));
        RETURN NEXT;
    END LOOP;
END $$;
COMMENT ON FUNCTION deal_store.consumers() IS
    'The caller''s change-feed consumers (an admin''s: all) with their lag: the log entries after the cursor (of every deal; a consumer reads those of its deals) and the time of the oldest.';

CREATE FUNCTION deal_store.remove_consumer(name text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c deal_store.feed_consumers := deal_store_internal._consumer(name);
BEGIN
    DELETE FROM deal_store.feed_consumers f WHERE f.owner_role = c.owner_role AND f.name = c.name;
END $$;
COMMENT ON FUNCTION deal_store.remove_consumer(text) IS
    'Removes a change-feed consumer (its owner''s role or an admin). P0002 when there is none.';

-- Wake-up: a LISTEN deal_store_feed gets one notification per committed
-- transaction that wrote log entries while a consumer is registered. The data
-- is read with read_changes; a missed notification loses nothing.
CREATE FUNCTION deal_store_internal.feed_wakeup() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM deal_store.feed_consumers) THEN
        PERFORM pg_catalog.pg_notify('deal_store_feed', '');
    END IF;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION deal_store_internal.feed_wakeup() IS
    'Trigger (AFTER INSERT on deal_activity_log, per statement): pg_notify(''deal_store_feed'', '''') while any consumer is registered; identical notifications of one transaction are delivered once, at commit.';
CREATE TRIGGER feed_wakeup AFTER INSERT ON deal_store.deal_activity_log
    FOR EACH STATEMENT EXECUTE FUNCTION deal_store_internal.feed_wakeup();
