-- Each tenant's agent policy (rules, privacy settings, consent notice), as the JSON document
-- agents fetch. Stored whole because it is only ever read whole; every save adds a row and the
-- newest wins. Old rows stay as the history of what employees were shown.

CREATE TABLE IF NOT EXISTS policies (
    tenant_id String,
    version UInt32,
    policy_json String,
    etag String,
    saved_by String,
    updated_ms UInt64
) ENGINE = ReplacingMergeTree(updated_ms)
ORDER BY tenant_id;
