-- Issue 10 (access hardening): the history of every saved policy, and use limits of
-- enrollment keys.
--
-- `policies` keeps only the newest policy per tenant once ClickHouse merges its parts
-- (ReplacingMergeTree by tenant), so what employees were shown before is kept here: every saved
-- policy with who saved it and what it changed. Append-only; identical rows (a migration
-- retried) collapse.

CREATE TABLE IF NOT EXISTS policy_history (
    tenant_id String,
    saved_ms UInt64,
    version UInt32,
    policy_json String,
    etag String,
    -- `api-key:<key id> (<key name>)` or `admin-cli:<operating-system user>`.
    saved_by String,
    -- What changed against the policy before, in words (`title_policy drop → send; …`).
    changes String
) ENGINE = ReplacingMergeTree
ORDER BY (tenant_id, saved_ms, etag);

INSERT INTO policy_history
SELECT tenant_id, updated_ms, version, policy_json, etag, saved_by,
       'saved before the policy history was kept' AS changes
FROM policies;

-- The most devices an enrollment key may enroll (a key without a row here has no limit).
-- A table of its own because ClickHouse 18.16 cannot add a column idempotently.
CREATE TABLE IF NOT EXISTS enrollment_key_limits (
    key_id String,
    tenant_id String,
    max_uses UInt32,
    updated_ms UInt64
) ENGINE = ReplacingMergeTree(updated_ms)
ORDER BY key_id;
