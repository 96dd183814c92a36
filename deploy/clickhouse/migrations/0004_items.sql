-- Item status: events by item, item registrations and SLA classes.
--
-- `events` is sorted by device, which makes "everything about item CLM-1042" a full scan. The
-- materialized view below copies every event that names an item into `item_events`, sorted by
-- (tenant_id, item_id, device_id, seq), so a status lookup reads a few granules. A view only
-- sees inserts made after it exists; migrations run before any ingest, so a new database
-- misses nothing. The view's insert is part of the INSERT into `events`: once ingest has
-- answered 200 the rows are readable here too.
--
-- Exactly-once: (tenant_id, item_id, device_id, seq) identifies a row; a re-sent event collapses
-- on merge, and readers dedupe by (device_id, seq) before counting (they never rely on merges).

CREATE TABLE IF NOT EXISTS item_events (
    tenant_id String,
    item_id String,
    device_id UUID,
    seq UInt64,
    kind Enum8('activity_span' = 1, 'work_item' = 2, 'consent' = 3, 'health' = 4),
    event_date Date,
    -- Span start, or the instant of a work_item event (ms since the epoch, UTC).
    time_ms UInt64,
    -- Span end; equal to time_ms for work_item events.
    end_ms UInt64,
    received_ms UInt64,
    state Enum8('' = 0, 'active' = 1, 'idle' = 2, 'locked' = 3),
    step String,
    action Enum8('' = 0, 'started' = 1, 'paused' = 2, 'resumed' = 3, 'completed' = 4, 'transferred' = 5),
    source Enum8('' = 0, 'rule' = 1, 'app' = 2, 'manual' = 3)
) ENGINE = ReplacingMergeTree(received_ms)
PARTITION BY toYYYYMM(event_date)
ORDER BY (tenant_id, item_id, device_id, seq);

CREATE MATERIALIZED VIEW IF NOT EXISTS item_events_mv TO item_events AS
SELECT tenant_id, item_id, device_id, seq, kind, event_date, time_ms, end_ms, received_ms,
       state, step, action, source
FROM events
WHERE item_id != '';

-- Items registered by a back-office system: queue, priority, SLA, customer reference.
-- A re-registration inserts a newer version (`updated_ms`); readers take the newest row.
CREATE TABLE IF NOT EXISTS items (
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
ORDER BY (tenant_id, item_id);

-- Named SLA targets: an item registered with a class is due `target_ms` after registration.
CREATE TABLE IF NOT EXISTS sla_classes (
    tenant_id String,
    sla_class String,
    target_ms UInt64,
    updated_ms UInt64
) ENGINE = ReplacingMergeTree(updated_ms)
ORDER BY (tenant_id, sla_class);
