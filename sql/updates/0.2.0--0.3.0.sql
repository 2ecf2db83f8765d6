-- deal_store 0.2.0 -> 0.3.0, run by ALTER EXTENSION deal_store UPDATE (install
-- the 0.3.0 library first). What no generator can know (new tables and columns,
-- data moves, drops of changed signatures, roles, grants, triggers, the Rust
-- functions' declarations), and a line '-- @routine deal_store.name' wherever a
-- routine written in SQL or PL/pgSQL changed: ./scripts/gen-upgrade writes
-- sql/deal_store--0.2.0--0.3.0.sql with its current definition from sql/*.sql.
\echo Use "ALTER EXTENSION deal_store UPDATE" to load this file. \quit
-- routine bodies are checked when they first run
SET check_function_bodies = off;

-- The merge queue at scale: every statement of a set reads the batch's rows by
-- key; targets another transaction holds are left for a later batch; a new row
-- takes its change's id; the worker stops when a batch can apply nothing.
-- @routine deal_store._apply_set
-- @routine deal_store._apply
-- @routine deal_store.process_queue

-- The change feed warns when a consumer's cursor is beyond the cluster's transaction ids.
-- @routine deal_store.read_changes

-- One tenant's held rows never keep the worker from the rest of the queue: the
-- claim leaves out what a batch already tried.
DROP FUNCTION IF EXISTS deal_store._claim(integer, integer, uuid[]);
DROP FUNCTION IF EXISTS deal_store._claim_by_deal(integer, integer, uuid[]);
-- @routine deal_store._claim
-- @routine deal_store._claim_by_deal
-- @routine deal_store.process_queue_batch
REVOKE ALL ON FUNCTION deal_store._claim(integer, integer, uuid[], uuid[]), deal_store._claim_by_deal(integer, integer, uuid[], uuid[]) FROM PUBLIC;

-- The DROP guard also under session_replication_role = replica.
ALTER EVENT TRIGGER deal_store_guard_drop ENABLE ALWAYS;

-- Last: every routine granted and the API made SECURITY DEFINER again, as access.sql does.
-- @grants
