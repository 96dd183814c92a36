-- Real time without a query per watcher, and outbound webhooks (docs/webhooks.md,
-- docs/status-api.md "Live updates").
--
-- `item_changes` is a change feed: which item changed at which `received_ms`, sorted by
-- (tenant, received_ms) so "what changed in this tenant in the last few seconds" reads only
-- the newest granules, whatever the size of the tenant. Two views fill it as part of the
-- INSERTs into `events` and `items`, so a change is in the feed the moment ingest or
-- registration answered 200. Servers poll it (one query per interval for every tenant with
-- open streams) to learn of changes other servers ingested; the webhook owner of a tenant reads
-- it to find the items to evaluate. The views group per inserted block: one row per (request,
-- item, device), not one per event. Only changes from now on are in the feed (no backfill: it
-- is a feed, not a history). Rows older than two days are dropped by the servers, a partition
-- (day) at a time.
--
-- A feed row may become visible before the `item_lookup` row of the same change (each view
-- writes its own part; ClickHouse does not promise an order), so each row names the change
-- precisely: the device and the highest `seq` of its events on the item (a registration: the
-- nil device, seq 0, and `received_ms` = its `updated_ms`). A reader that reads the item and
-- does not find that event (or a registration that new) reads it again later.
--
-- `what`: 1 activity spans only, 2 a work-item action (the codes of `events.kind`), 10 a
-- registration.

CREATE TABLE IF NOT EXISTS item_changes (
    tenant_id String,
    received_ms UInt64,
    item_id String,
    device_id UUID,
    seq UInt64,
    what UInt8,
    change_date Date
) ENGINE = MergeTree
PARTITION BY change_date
ORDER BY (tenant_id, received_ms, item_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS item_changes_events_mv TO item_changes AS
SELECT tenant_id, received_ms, item_id, device_id, max(seq) AS seq,
       max(toUInt8(toInt8(kind))) AS what,
       toDate(toDateTime(intDiv(received_ms, 1000))) AS change_date
FROM events
WHERE item_id != ''
GROUP BY tenant_id, received_ms, item_id, device_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS item_changes_registrations_mv TO item_changes AS
SELECT DISTINCT tenant_id, updated_ms AS received_ms, item_id,
       toUUID('00000000-0000-0000-0000-000000000000') AS device_id, toUInt64(0) AS seq,
       toUInt8(10) AS what, toDate(toDateTime(intDiv(updated_ms, 1000))) AS change_date
FROM items;

-- Every running server writes a heartbeat every few seconds. The servers alive (a beat in the
-- last 15 s) share the webhook work by rendezvous hashing of tenants over their ids; each
-- start is a new server_id. `serving` = 0 is written by a server that stops cleanly, so its
-- tenants move at once instead of after the beat expires.
CREATE TABLE IF NOT EXISTS server_heartbeats (
    server_id String,
    host String,
    started_ms UInt64,
    beat_ms UInt64,
    serving UInt8
) ENGINE = ReplacingMergeTree(beat_ms)
ORDER BY server_id;

-- Webhooks a tenant admin registered. Versioned like the registry (0001): a change or a
-- deletion inserts a newer version. `secret` is the HMAC key deliveries are signed with; it has
-- to be kept in clear to sign (like the signing secrets of every webhook provider), so whoever
-- can read this table can forge deliveries: see docs/webhooks.md, "Security notes".
CREATE TABLE IF NOT EXISTS webhooks (
    tenant_id String,
    webhook_id String,
    url String,
    events Array(String),
    description String,
    secret String,
    created_ms UInt64,
    deleted UInt8,
    updated_ms UInt64
) ENGINE = ReplacingMergeTree(updated_ms)
ORDER BY (tenant_id, webhook_id);

-- The delivery log: one row per delivery when it is created (`pending`, attempts 0), and one
-- more after each attempt. `version` = attempts x 2, + 1 in a final state, so the newest
-- attempt survives merges and a final state beats a pending row of the same attempt. The
-- delivery id is derived from what is delivered (webhook, item, event, new state), so two
-- servers that evaluate the same change write the same delivery, and receivers de-duplicate by
-- it. Every row carries the payload (bounded, 64 KiB), so whichever row survives can be sent
-- again. Partitions are days of `created_date`; servers drop those older than 30 days.
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    tenant_id String,
    webhook_id String,
    delivery_id String,
    event_type String,
    item_id String,
    created_ms UInt64,
    created_date Date,
    payload String,
    -- 'pending', 'delivered' or 'failed'
    state String,
    attempts UInt32,
    last_attempt_ms UInt64,
    last_status UInt16,
    last_error String,
    next_attempt_ms UInt64,
    version UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY created_date
ORDER BY (tenant_id, webhook_id, delivery_id);

-- What webhooks last said about each item of a tenant (status and SLA state), so a change is
-- announced once, by whichever server evaluates it, across restarts. Written after the
-- deliveries it caused: a crash in between re-creates the same deliveries (same ids), never
-- loses one.
CREATE TABLE IF NOT EXISTS webhook_item_state (
    tenant_id String,
    item_id String,
    status String,
    sla_state String,
    updated_ms UInt64
) ENGINE = ReplacingMergeTree(updated_ms)
ORDER BY (tenant_id, item_id);

-- How far the webhook owner of a tenant has evaluated the change feed and the SLA clock. A new
-- owner (after a restart or a change of servers) continues from here, re-evaluating a short
-- overlap, which the item states above make harmless.
CREATE TABLE IF NOT EXISTS webhook_cursors (
    tenant_id String,
    evaluated_ms UInt64,
    updated_ms UInt64
) ENGINE = ReplacingMergeTree(updated_ms)
ORDER BY tenant_id;
