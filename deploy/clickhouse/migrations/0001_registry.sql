-- Who may talk to Backlight: tenants, enrollment keys, devices and API keys.
--
-- Rows are never updated in place: a change (a revocation, say) inserts a new row with a higher
-- `updated_ms`, and every read takes the newest row per key (`FINAL` or `argMax`). Secrets are
-- stored only as SHA-256 hashes of 256-bit random values.

CREATE TABLE IF NOT EXISTS tenants (
    tenant_id String,
    name String,
    created_ms UInt64,
    updated_ms UInt64
) ENGINE = ReplacingMergeTree(updated_ms)
ORDER BY tenant_id;

CREATE TABLE IF NOT EXISTS enrollment_keys (
    key_id String,
    tenant_id String,
    secret_hash String,
    note String,
    created_ms UInt64,
    -- 0 means the key never expires.
    expires_ms UInt64,
    revoked UInt8,
    updated_ms UInt64
) ENGINE = ReplacingMergeTree(updated_ms)
ORDER BY key_id;

CREATE TABLE IF NOT EXISTS devices (
    device_id UUID,
    tenant_id String,
    secret_hash String,
    hostname String,
    os String,
    agent_version String,
    enrollment_key_id String,
    enrolled_ms UInt64,
    revoked UInt8,
    updated_ms UInt64
) ENGINE = ReplacingMergeTree(updated_ms)
ORDER BY device_id;

CREATE TABLE IF NOT EXISTS api_keys (
    key_id String,
    tenant_id String,
    secret_hash String,
    role String,
    name String,
    created_ms UInt64,
    revoked UInt8,
    updated_ms UInt64
) ENGINE = ReplacingMergeTree(updated_ms)
ORDER BY key_id;

-- Written and read back at every start to prove the client settings work against this server.
CREATE TABLE IF NOT EXISTS self_test (
    probe String,
    at_ms UInt64
) ENGINE = MergeTree
ORDER BY probe;
