-- Folds `item_events` into `item_lookup`: both held every event naming an item, under the same
-- key (tenant_id, item_id, device_id, seq) and the same newest-wins version (received_ms), so
-- each such event was stored three times and every ingest INSERT fed two views for one purpose.
-- `item_lookup` keeps its packed `row` for status lookups and gains, as columns, the five fields
-- the ETA and the backlog report filter and sum on. Measured (docs/BENCHMARKS.md, "Items 5 and 6
-- a third time"): the `item_events` view is a fifth of a 200-row ingest INSERT, and its table
-- took about a third of ClickHouse's merge time under load.
--
-- The new columns on rows written before this step come from their DEFAULT, which reads the
-- packed row (`e1 device seq kind time_ms end_ms state action hex(step)`); registrations (`r1 …`)
-- get '' and 0. So no backfill is needed, and merges write the values out in time. The views
-- must name every column of their target on 18.16, so both views are dropped, and made again
-- after the columns exist. Events and registrations inserted in between (a server of the
-- previous release still ingesting) reach only `events` and `items`; the copies below take
-- again everything received in the last hour, which covers that moment many times over.
-- Copies are harmless: readers dedupe by (device_id, seq), and ReplacingMergeTree collapses
-- them on merge. They name their columns: an INSERT … SELECT without a list matches by
-- position, and the added columns' position is not the same on every release.
--
-- The ETA's 90-day scan now reads `item_lookup`, partitioned by year rather than by month: its
-- time filter and each part's event_date range still skip what is older, but a part merged
-- over the whole year is read for the tenant in full (docs/BENCHMARKS.md: 394-829 ms on the
-- status benchmark, as before; it runs once a minute per tenant, off the lookup path).
--
-- Servers of the previous release read `item_events` (the ETA, the backlog report): from the
-- last step until they are replaced, those answers fail on them (deploy/README.md,
-- "Upgrading"). Ingest and status lookups are not affected.
DROP TABLE IF EXISTS item_lookup_events_mv;
DROP TABLE IF EXISTS item_lookup_registrations_mv;
ALTER TABLE item_lookup ADD COLUMN kind Enum8('' = 0, 'activity_span' = 1, 'work_item' = 2, 'consent' = 3, 'health' = 4) DEFAULT CAST(if(startsWith(row, 'e1 '), toInt8OrZero(splitByChar(' ', row)[4]), 0) AS Enum8('' = 0, 'activity_span' = 1, 'work_item' = 2, 'consent' = 3, 'health' = 4));
ALTER TABLE item_lookup ADD COLUMN time_ms UInt64 DEFAULT if(startsWith(row, 'e1 '), toUInt64OrZero(splitByChar(' ', row)[5]), 0);
ALTER TABLE item_lookup ADD COLUMN end_ms UInt64 DEFAULT if(startsWith(row, 'e1 '), toUInt64OrZero(splitByChar(' ', row)[6]), 0);
ALTER TABLE item_lookup ADD COLUMN state Enum8('' = 0, 'active' = 1, 'idle' = 2, 'locked' = 3) DEFAULT CAST(if(startsWith(row, 'e1 '), toInt8OrZero(splitByChar(' ', row)[7]), 0) AS Enum8('' = 0, 'active' = 1, 'idle' = 2, 'locked' = 3));
ALTER TABLE item_lookup ADD COLUMN action Enum8('' = 0, 'started' = 1, 'paused' = 2, 'resumed' = 3, 'completed' = 4, 'transferred' = 5) DEFAULT CAST(if(startsWith(row, 'e1 '), toInt8OrZero(splitByChar(' ', row)[8]), 0) AS Enum8('' = 0, 'started' = 1, 'paused' = 2, 'resumed' = 3, 'completed' = 4, 'transferred' = 5));
CREATE MATERIALIZED VIEW IF NOT EXISTS item_lookup_events_mv TO item_lookup AS
SELECT tenant_id, item_id, device_id, seq, event_date, received_ms AS version,
       concat('e1 ', toString(device_id), ' ', toString(seq), ' ', toString(toInt8(kind)), ' ',
              toString(time_ms), ' ', toString(end_ms), ' ', toString(toInt8(state)), ' ',
              toString(toInt8(action)), ' ', hex(step)) AS row,
       CAST(toInt8(kind) AS Enum8('' = 0, 'activity_span' = 1, 'work_item' = 2, 'consent' = 3, 'health' = 4)) AS kind,
       time_ms, end_ms, state, action
FROM events
WHERE item_id != '';
CREATE MATERIALIZED VIEW IF NOT EXISTS item_lookup_registrations_mv TO item_lookup AS
SELECT tenant_id, item_id, toUUID('00000000-0000-0000-0000-000000000000') AS device_id,
       toUInt64(0) AS seq, toDate(toDateTime(intDiv(updated_ms, 1000))) AS event_date,
       updated_ms AS version,
       concat('r1 ', toString(priority), ' ', toString(sla_due_ms), ' ', toString(registered_ms), ' ',
              toString(updated_ms), ' ', hex(queue), ' ', hex(sla_class), ' ', hex(customer_ref)) AS row,
       CAST(0 AS Enum8('' = 0, 'activity_span' = 1, 'work_item' = 2, 'consent' = 3, 'health' = 4)) AS kind,
       toUInt64(0) AS time_ms, toUInt64(0) AS end_ms,
       CAST(0 AS Enum8('' = 0, 'active' = 1, 'idle' = 2, 'locked' = 3)) AS state,
       CAST(0 AS Enum8('' = 0, 'started' = 1, 'paused' = 2, 'resumed' = 3, 'completed' = 4, 'transferred' = 5)) AS action
FROM items;
INSERT INTO item_lookup (tenant_id, item_id, device_id, seq, event_date, version, row,
                         kind, time_ms, end_ms, state, action)
SELECT tenant_id, item_id, device_id, seq, event_date, received_ms AS version,
       concat('e1 ', toString(device_id), ' ', toString(seq), ' ', toString(toInt8(kind)), ' ',
              toString(time_ms), ' ', toString(end_ms), ' ', toString(toInt8(state)), ' ',
              toString(toInt8(action)), ' ', hex(step)) AS row,
       CAST(toInt8(kind) AS Enum8('' = 0, 'activity_span' = 1, 'work_item' = 2, 'consent' = 3, 'health' = 4)) AS kind,
       time_ms, end_ms, state, action
FROM events
WHERE item_id != '' AND received_ms >= (toUInt64(toUnixTimestamp(now())) - 3600) * 1000;
INSERT INTO item_lookup (tenant_id, item_id, device_id, seq, event_date, version, row,
                         kind, time_ms, end_ms, state, action)
SELECT tenant_id, item_id, toUUID('00000000-0000-0000-0000-000000000000') AS device_id,
       toUInt64(0) AS seq, toDate(toDateTime(intDiv(updated_ms, 1000))) AS event_date,
       updated_ms AS version,
       concat('r1 ', toString(priority), ' ', toString(sla_due_ms), ' ', toString(registered_ms), ' ',
              toString(updated_ms), ' ', hex(queue), ' ', hex(sla_class), ' ', hex(customer_ref)) AS row,
       CAST(0 AS Enum8('' = 0, 'activity_span' = 1, 'work_item' = 2, 'consent' = 3, 'health' = 4)) AS kind,
       toUInt64(0) AS time_ms, toUInt64(0) AS end_ms,
       CAST(0 AS Enum8('' = 0, 'active' = 1, 'idle' = 2, 'locked' = 3)) AS state,
       CAST(0 AS Enum8('' = 0, 'started' = 1, 'paused' = 2, 'resumed' = 3, 'completed' = 4, 'transferred' = 5)) AS action
FROM items
WHERE updated_ms >= (toUInt64(toUnixTimestamp(now())) - 3600) * 1000;
DROP TABLE IF EXISTS item_events_mv;
DROP TABLE IF EXISTS item_events
