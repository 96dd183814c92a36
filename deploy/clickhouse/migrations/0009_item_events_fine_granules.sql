-- The item-keyed copy of events (0004) again, with 256-row granules instead of 8,192.
--
-- Why: a status lookup reads one item, but ClickHouse reads whole granules: with 8,192 rows
-- per granule every item cost 8,192 rows of 9 columns in every part that may hold it.
-- Measured on 18.16 (docs/BENCHMARKS.md, "Status lookups"): 0.30 -> 0.10 ms of ClickHouse CPU
-- per item read. The primary index grows 32x (about 1 KB of marks per 256 rows), which is
-- small beside the data.
--
-- How, without losing a row: the new view starts copying new events first, then the backfill
-- copies everything the old table holds. Rows that arrive in between reach both and are
-- duplicates, which collapse on merge (ReplacingMergeTree by identity) and which readers remove
-- anyway (by device_id, seq) - so repeating the backfill after a crash is harmless too. Then the
-- old view is dropped, so events are copied once. The old table `item_events` is no longer
-- written or read and can be dropped by hand; servers of the previous release still running
-- during a rolling upgrade would show status as of this migration until they are replaced.

CREATE TABLE IF NOT EXISTS item_events_v2 (
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
ORDER BY (tenant_id, item_id, device_id, seq)
SETTINGS index_granularity = 256;

CREATE MATERIALIZED VIEW IF NOT EXISTS item_events_v2_mv TO item_events_v2 AS
SELECT tenant_id, item_id, device_id, seq, kind, event_date, time_ms, end_ms, received_ms,
       state, step, action, source
FROM events
WHERE item_id != '';

INSERT INTO item_events_v2
SELECT tenant_id, item_id, device_id, seq, kind, event_date, time_ms, end_ms, received_ms,
       state, step, action, source
FROM item_events;

DROP TABLE IF EXISTS item_events_mv;
