# Scheduled work with pg_cron, sourced by scripts/test (PostgreSQL 15: Debian's
# postgresql-15-cron; the cluster preloads it with cron.database_name = postgres
# and background workers). A proposal waits in deal_store_cron; pg_cron, not a
# client, must apply it within its one-minute schedule.
CRON_OPTS="-c shared_preload_libraries=pg_cron -c cron.database_name=postgres -c cron.use_background_workers=on -c max_worker_processes=16"

cron_check() {
    fresh_db deal_store_cron
    psql -X -q -d deal_store_cron -f "$ROOT/tests/cron/setup.sql" >/dev/null || return 1
    psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "SET client_min_messages = warning" -c "CREATE EXTENSION IF NOT EXISTS pg_cron" \
        -c "SELECT cron.schedule_in_database('deal_store_cron_test', '* * * * *', 'CALL deal_store.process_queue()', 'deal_store_cron')" >/dev/null || return 1
    local status="" waited=0
    while [ $waited -lt 150 ]; do
        status=$(psql -X -At -d deal_store_cron -c "SELECT status FROM deal_store.pending_changes WHERE legacy_entity_id = 'F-CRON'")
        [ "$status" = accepted ] && break
        sleep 5; waited=$((waited + 5))
    done
    psql -X -q -d postgres -c "SELECT cron.unschedule('deal_store_cron_test')" >/dev/null
    local item; item=$(psql -X -At -d deal_store_cron -c "SELECT item FROM deal_store.active_facts WHERE legacy_id = 'F-CRON'")
    local runs; runs=$(psql -X -At -d postgres -c "SELECT count(*) FROM cron.job_run_details WHERE database = 'deal_store_cron' AND status = 'succeeded'")
    echo "pg_cron: the change is $status after ${waited} s; the fact reads \"$item\"; succeeded job runs: $runs"
    [ "$status" = accepted ] && [ "$item" = "applied by the scheduled worker" ] && [ "$runs" -ge 1 ]
}
