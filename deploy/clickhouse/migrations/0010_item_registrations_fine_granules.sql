-- A copy of `items` (registrations, 0004) in 256-row granules, for the status lookups' point
-- reads by item id: with 8,192-row granules each item read cost 8,192 rows of 9 columns per
-- part. Measured on 18.16 (docs/BENCHMARKS.md, "Status lookups"): 0.20-0.28 -> 0.08 ms of
-- ClickHouse CPU per item read.
--
-- `items` stays the table registrations are written to and the one reports and search read;
-- the view copies every INSERT into it as part of that INSERT, so the copy is never behind.
-- As in 0009, the view starts first and the backfill follows: a registration written in
-- between reaches the copy twice, which is harmless because readers take the newest version of
-- an item (by updated_ms) and ReplacingMergeTree collapses equal versions - so a repeat of the
-- backfill after a crash is harmless too.

CREATE TABLE IF NOT EXISTS item_registrations (
    tenant_id String,
    item_id String,
    queue String,
    priority UInt8,
    -- When the SLA is due (ms since the epoch, UTC); 0 means the item has no SLA.
    sla_due_ms UInt64,
    -- The SLA class the due time was computed from, '' when given directly.
    sla_class String,
    customer_ref String,
    registered_ms UInt64,
    updated_ms UInt64
) ENGINE = ReplacingMergeTree(updated_ms)
ORDER BY (tenant_id, item_id)
SETTINGS index_granularity = 256;

CREATE MATERIALIZED VIEW IF NOT EXISTS item_registrations_mv TO item_registrations AS
SELECT tenant_id, item_id, queue, priority, sla_due_ms, sla_class, customer_ref,
       registered_ms, updated_ms
FROM items;

INSERT INTO item_registrations
SELECT tenant_id, item_id, queue, priority, sla_due_ms, sla_class, customer_ref,
       registered_ms, updated_ms
FROM items;
