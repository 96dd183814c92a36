#!/usr/bin/env python3
"""Checks the cluster schema on the current ClickHouse engine (chDB, in-process).

`server/tests/cluster_ddl_compat.rs` rewrites every migration for a cluster (what
`backlight-server --clickhouse-cluster NAME` runs) and writes the statements, one JSON string
per line, to a file; this script then, on chDB:

1. parses every statement with the current parser (`formatQuery`): ON CLUSTER, Replicated
   engines with ZooKeeper paths and macros, Distributed engines, views, backfills;
2. runs every node-local CREATE TABLE (the replicated tables, including those whose structure
   comes from a SELECT) with the replication taken out, since chDB has no ZooKeeper and no
   cluster: so the engines' arguments, the columns and the structure-from-SELECT are checked by
   the current engine, not only their syntax;
3. runs the fsync settings the server turns on where the version supports them
   (`ALTER TABLE … MODIFY SETTING fsync_after_insert = 1, fsync_part_directory = 1`).

What chDB cannot check: anything that needs a cluster or ZooKeeper at run time (ON CLUSTER
execution, replication, Distributed reads and writes). Those run on 18.16 in the cluster test.

Exit status 0 when everything passed, 1 with every failure named, 2 when chDB is missing.
Usage: clickhouse-cluster-ddl.py STATEMENTS.jsonl
"""

import json
import re
import sys
import tempfile

REPLICATED = re.compile(r"ENGINE = Replicated(\w*MergeTree)\('[^']*', '\{replica\}'(?:, )?")
ON_CLUSTER = re.compile(r" ON CLUSTER \w+")
FSYNC = "fsync_after_insert = 1, fsync_part_directory = 1"


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        from chdb import session
    except ImportError:
        print("chDB is missing: python3 -m pip install chdb-core", file=sys.stderr)
        return 2
    statements = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    failures = []
    with tempfile.TemporaryDirectory() as path:
        s = session.Session(path)
        version = s.query("SELECT version()", "TSV").bytes().decode().strip()
        for sql in statements:
            try:
                s.query("SELECT formatQuery(%s)" % quote(sql), "TSV")
            except Exception as e:  # noqa: BLE001 - chDB raises its own types
                failures.append(("parse", sql, e))
        databases = set()
        for sql in statements:
            m = re.match(r"CREATE TABLE IF NOT EXISTS `([^`]+)`\.`([^`]+_local)`", sql)
            if not m:
                continue
            if m.group(1) not in databases:
                s.query("CREATE DATABASE IF NOT EXISTS `%s`" % m.group(1))
                databases.add(m.group(1))
            local = ON_CLUSTER.sub("", REPLICATED.sub(lambda r: "ENGINE = %s(" % r.group(1), sql))
            try:
                s.query(local)
                s.query("ALTER TABLE `%s`.`%s` MODIFY SETTING %s" % (m.group(1), m.group(2), FSYNC))
            except Exception as e:  # noqa: BLE001
                failures.append(("create", local, e))
        tables = sum(1 for sql in statements if re.match(r"CREATE TABLE IF NOT EXISTS `[^`]+`\.`[^`]+_local`", sql))
    created = tables - sum(1 for kind, _, _ in failures if kind == "create")
    print("chDB %s: %d cluster statements parsed, %d of %d node-local tables created and set to fsync"
          % (version, len(statements), created, tables))
    for kind, sql, error in failures:
        print("FAILED (%s): %s\n  %s" % (kind, sql, str(error).strip().splitlines()[0]))
    return 1 if failures else 0


def quote(text):
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


if __name__ == "__main__":
    sys.exit(main())
