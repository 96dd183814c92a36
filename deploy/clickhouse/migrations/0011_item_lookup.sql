-- One table for status lookups: an item's events and its registrations, each row packed into
-- one String column.
--
-- Why: a lookup read `item_events_v2` (9 columns) and `item_registrations` (9 columns) in two
-- queries, and ClickHouse pays per query, per part and per column read (docs/BENCHMARKS.md,
-- "Status lookups: one packed read"). Measured on 18.16 with the benchmark's data in 7 parts:
-- one query reading (item_id, row) here costs 0.49x the two queries for 1 item and 0.58x for
-- 5 items.
--
-- The format of `row` is written here and parsed in one place, `server/src/storage/lookup_row.rs`.
-- Fields are separated by one space; text is hex-encoded, so any byte in it is safe; enums are
-- their Enum8 codes. The leading tag names the kind of row and its format version:
--   e1 <device_id> <seq> <kind> <time_ms> <end_ms> <state> <action> <hex(step)>
--   r1 <priority> <sla_due_ms> <registered_ms> <updated_ms> <hex(queue)> <hex(sla_class)> <hex(customer_ref)>
-- A row the parser does not know (a newer tag) is skipped, so a newer format can be added
-- beside an old one.
--
-- Partitions are years, not months as elsewhere: a lookup does not know an item's dates, so it
-- reads a granule in every part of every partition, and fewer partitions mean fewer parts.
--
-- Identity: an event is (tenant_id, item_id, device_id, seq), as in `events`; readers dedupe by
-- (device_id, seq) and re-sent events collapse on merge. A registration has the nil device and
-- seq 0, so merges keep only its newest version (`version` = updated_ms); readers take the
-- newest by updated_ms before merges happen.
--
-- How, without losing a row: the views start copying first, then the backfills copy what
-- `item_events_v2` and `items` hold; rows arriving in between are copied twice and are
-- duplicates by identity, so repeating a backfill after a crash is harmless too. Then the view
-- feeding `item_registrations` is dropped: nothing reads that table any more (it can be
-- dropped by hand; servers of the previous release still running during a rolling upgrade
-- show registrations as of this migration until they are replaced). `item_events_v2` stays:
-- the ETA statistics, the backlog report and the Grafana dashboards scan it.

CREATE TABLE IF NOT EXISTS item_lookup (
    tenant_id String,
    item_id String,
    device_id UUID,
    seq UInt64,
    -- Partition key: the event's day, or the day of the registration's updated_ms.
    event_date Date,
    -- received_ms of an event, updated_ms of a registration: the newest version survives merges.
    version UInt64,
    row String
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYear(event_date)
ORDER BY (tenant_id, item_id, device_id, seq)
SETTINGS index_granularity = 256;

CREATE MATERIALIZED VIEW IF NOT EXISTS item_lookup_events_mv TO item_lookup AS
SELECT tenant_id, item_id, device_id, seq, event_date, received_ms AS version,
       concat('e1 ', toString(device_id), ' ', toString(seq), ' ', toString(toInt8(kind)), ' ',
              toString(time_ms), ' ', toString(end_ms), ' ', toString(toInt8(state)), ' ',
              toString(toInt8(action)), ' ', hex(step)) AS row
FROM events
WHERE item_id != '';

CREATE MATERIALIZED VIEW IF NOT EXISTS item_lookup_registrations_mv TO item_lookup AS
SELECT tenant_id, item_id, toUUID('00000000-0000-0000-0000-000000000000') AS device_id,
       toUInt64(0) AS seq, toDate(toDateTime(intDiv(updated_ms, 1000))) AS event_date,
       updated_ms AS version,
       concat('r1 ', toString(priority), ' ', toString(sla_due_ms), ' ', toString(registered_ms), ' ',
              toString(updated_ms), ' ', hex(queue), ' ', hex(sla_class), ' ', hex(customer_ref)) AS row
FROM items;

INSERT INTO item_lookup
SELECT tenant_id, item_id, device_id, seq, event_date, received_ms AS version,
       concat('e1 ', toString(device_id), ' ', toString(seq), ' ', toString(toInt8(kind)), ' ',
              toString(time_ms), ' ', toString(end_ms), ' ', toString(toInt8(state)), ' ',
              toString(toInt8(action)), ' ', hex(step)) AS row
FROM item_events_v2;

INSERT INTO item_lookup
SELECT tenant_id, item_id, toUUID('00000000-0000-0000-0000-000000000000') AS device_id,
       toUInt64(0) AS seq, toDate(toDateTime(intDiv(updated_ms, 1000))) AS event_date,
       updated_ms AS version,
       concat('r1 ', toString(priority), ' ', toString(sla_due_ms), ' ', toString(registered_ms), ' ',
              toString(updated_ms), ' ', hex(queue), ' ', hex(sla_class), ' ', hex(customer_ref)) AS row
FROM items;

DROP TABLE IF EXISTS item_registrations_mv;
