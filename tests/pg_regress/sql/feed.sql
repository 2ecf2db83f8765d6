-- The change feed: consumers, read / ack, at-least-once, the deals a consumer
-- may see. (Commit order against seq order: tests/isolation/specs/feed_commit_order.spec
-- and the seeded random interleavings of tests/feed/randomized.py.)
SET search_path = deal_store, public;
INSERT INTO users (id, email, display_name) VALUES
  ('00000000-0000-0000-0018-0000000000a1', 'feed.lead@example.com', 'Fay Lead'),
  ('00000000-0000-0000-0018-0000000000a2', 'feed.viewer@example.com', 'Vic Viewer');
INSERT INTO deals (id, user_id, name, target_name) VALUES
  ('00000000-0000-0000-0018-0000000000d1', '00000000-0000-0000-0018-0000000000a1', 'Project Feed', 'Feed AG'),
  ('00000000-0000-0000-0018-0000000000d2', '00000000-0000-0000-0018-0000000000a1', 'Project Other', 'Other AG');
SELECT add_member('00000000-0000-0000-0018-0000000000d1', '00000000-0000-0000-0018-0000000000a2', 'viewer');
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ds_feed_viewer') THEN CREATE ROLE ds_feed_viewer NOLOGIN; END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ds_feed_other') THEN CREATE ROLE ds_feed_other NOLOGIN; END IF;
END $$;
SET client_min_messages = warning;
GRANT deal_store_reader TO ds_feed_viewer, ds_feed_other;
RESET client_min_messages;
GRANT USAGE ON SCHEMA regress TO ds_feed_viewer, ds_feed_other;
UPDATE users SET db_role = 'ds_feed_viewer' WHERE id = '00000000-0000-0000-0018-0000000000a2';

-- The feed waits for every older transaction of the cluster (an autovacuum's
-- ANALYZE included): before a read that must see the entries just written, wait
-- until each node's horizon has passed its entries.
CREATE FUNCTION regress.feed_settled() RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    h bigint[];
BEGIN
    FOR i IN 1 .. 600 LOOP
        h := deal_store_internal._horizons(true);
        IF NOT EXISTS (SELECT 1 FROM deal_store.deal_activity_log l
                       WHERE l.txid >= coalesce(h[deal_store_internal._log_node(l.seq) + 1], 9223372036854775807)) THEN
            RETURN true;
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RETURN false;
END $$;

-- 1. registering: from now (what finished before is behind the cursor) or from the start
SELECT name, owner_role FROM register_consumer('mailer');
SELECT name FROM register_consumer('indexer', from_start => true);
SELECT regress.expect_error($$SELECT deal_store.register_consumer('mailer')$$);
SELECT regress.expect_error($$SELECT deal_store.register_consumer('no spaces')$$);
SELECT regress.expect_error($$SELECT deal_store.register_consumer(NULL)$$);
SELECT regress.expect_error($$SELECT deal_store.read_changes('nobody')$$);
SELECT regress.expect_error($$SELECT deal_store.ack_changes('mailer', 1)$$);
SELECT regress.expect_error($$SELECT deal_store.read_changes('mailer', 0)$$);

-- 2. read does not move the cursor; ack does; what is not acknowledged comes back in the same order
SET deal_store.actor = '00000000-0000-0000-0018-0000000000a1';
INSERT INTO facts (deal_id, legacy_id, domain, item)
SELECT '00000000-0000-0000-0018-0000000000d1', 'F-' || i, 'network', 'fact ' || i FROM generate_series(1, 4) i;
UPDATE facts SET verified = true WHERE deal_id = '00000000-0000-0000-0018-0000000000d1' AND legacy_id = 'F-2';
RESET deal_store.actor;
SELECT regress.feed_settled();
CREATE TABLE regress.feed_first AS
SELECT seq, action, entity_type, details ->> 'legacy_id' AS legacy_id FROM read_changes('mailer', 3);
SELECT action, entity_type, legacy_id FROM regress.feed_first ORDER BY seq;
SELECT (SELECT array_agg(seq ORDER BY seq) FROM read_changes('mailer', 3)) = (SELECT array_agg(seq ORDER BY seq) FROM regress.feed_first)
       AS read_again_same;
-- acknowledge the first two only: the third comes back first
SELECT ack_changes('mailer', (SELECT seq FROM regress.feed_first ORDER BY seq OFFSET 1 LIMIT 1)) AS acked;
SELECT action, entity_type, details ->> 'legacy_id' AS legacy_id, details -> 'verified' AS verified FROM read_changes('mailer', 10);
SELECT ack_changes('mailer', 9223372036854775807) AS acked;
SELECT count(*) AS nothing_new FROM read_changes('mailer');
SELECT ack_changes('mailer', 0) AS acked;   -- an empty read acknowledged: the cursor passes the horizon
SELECT regress.expect_error($$SELECT deal_store.ack_changes('mailer', 0)$$);

-- 3. a consumer sees the deals its caller may see: the viewer of D1 gets D1's entries, not D2's
SET deal_store.actor = '00000000-0000-0000-0018-0000000000a1';
INSERT INTO facts (deal_id, legacy_id, domain, item) VALUES
  ('00000000-0000-0000-0018-0000000000d1', 'F-9', 'network', 'seen by the viewer'),
  ('00000000-0000-0000-0018-0000000000d2', 'X-9', 'network', 'not seen by the viewer');
RESET deal_store.actor;
SELECT regress.feed_settled();
SET ROLE ds_feed_viewer;
SELECT name, owner_role FROM deal_store.register_consumer('viewer.inbox', from_start => true);
SELECT d.name, count(*) FROM deal_store.read_changes('viewer.inbox', 1000) c JOIN deal_store.deals d ON d.id = c.deal_id GROUP BY 1;
SELECT deal_store.ack_changes('viewer.inbox', 9223372036854775807) > 0 AS acked;
-- another role may neither read nor acknowledge nor remove it; the listing shows each role its own
SELECT regress.expect_error($$SELECT deal_store.read_changes('mailer')$$);
SELECT name, lag FROM deal_store.consumers();
RESET ROLE;
SET ROLE ds_feed_other;
SELECT regress.expect_error($$SELECT deal_store.read_changes('viewer.inbox')$$);
SELECT regress.expect_error($$SELECT deal_store.remove_consumer('viewer.inbox')$$);
SELECT count(*) AS none_of_mine FROM deal_store.consumers();
SELECT regress.expect_error($$SELECT * FROM deal_store.feed_consumers$$);
RESET ROLE;

-- 4. the listing with lag (an admin sees all), removal
SELECT name, owner_role, lag > 0 AS behind FROM consumers();
SELECT remove_consumer('indexer');
SELECT remove_consumer('viewer.inbox');
SELECT name FROM consumers();
SELECT regress.expect_error($$SELECT deal_store.remove_consumer('indexer')$$);
-- an aborted transaction's entries never reach the feed
BEGIN;
SET LOCAL deal_store.actor = '00000000-0000-0000-0018-0000000000a1';
INSERT INTO facts (deal_id, legacy_id, domain, item) VALUES ('00000000-0000-0000-0018-0000000000d1', 'F-ROLLED', 'network', 'never');
ROLLBACK;
SELECT regress.feed_settled();
SELECT count(*) AS rolled_back_entries FROM read_changes('mailer') WHERE details ->> 'legacy_id' = 'F-ROLLED';
SELECT remove_consumer('mailer');
DROP TABLE regress.feed_first;
DROP FUNCTION regress.feed_settled();
REVOKE USAGE ON SCHEMA regress FROM ds_feed_viewer, ds_feed_other;
