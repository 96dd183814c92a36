-- Who looked at what: one row per item lookup, search, timeline, stream, or report.
--
-- Append-only; never updated. Partitioned by month so retention drops whole partitions.

CREATE TABLE IF NOT EXISTS audit_log (
    tenant_id String,
    at_ms UInt64,
    event_date Date,
    -- A random id per entry, so a retried batch can be told apart from two real lookups.
    entry_id UUID,
    key_id String,
    key_name String,
    role String,
    -- item_lookup, item_search, item_timeline, item_stream, item_register, report, ...
    action String,
    -- The item id, or the query (URL query string) for searches and reports.
    target String,
    -- ok, not_found, or error: what the caller was shown.
    outcome String
) ENGINE = MergeTree
PARTITION BY toYYYYMM(event_date)
ORDER BY (tenant_id, at_ms);
