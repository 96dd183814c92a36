#!/usr/bin/env python3
"""Checks on the current ClickHouse engine (chDB, in-process) that a new database and an
upgraded one end in the same schema.

`server/tests/schema_paths.rs` writes, one JSON string per line, the statements of each path the
migration runner (`server/src/storage/migrations.rs`) can take on one server: NEW.jsonl (the
baseline, `deploy/clickhouse/baseline.sql`) and UPGRADE.jsonl (every migration in order, from
0001). This script runs each list in a database of its own on chDB, failing on any error, then
compares the two schemas: every table and view with its engine, sorting and partition keys and
CREATE statement (the database name taken out), and every column with its type and default.
The same comparison runs on ClickHouse 18.16 in that test.

Exit status 0 when both paths ran and agree; 1 with every failure named; 2 when chDB is missing.
Usage: clickhouse-schema-paths.py NEW.jsonl UPGRADE.jsonl
"""

import json
import sys
import tempfile


def run(session, database, statements, failures):
    session.query("CREATE DATABASE IF NOT EXISTS `%s`" % database)
    session.query("USE `%s`" % database)
    for sql in statements:
        try:
            session.query(sql)
        except Exception as e:  # noqa: BLE001 - chDB raises its own types
            failures.append("FAILED in %s: %s\n  %s" % (database, sql, str(e).strip().splitlines()[0]))


def schema(session, database):
    """name -> description. Tables a view keeps inside (`.inner…`) are named by the server
    (with a UUID on current releases), so they are compared through their view's columns."""
    rows = session.query(
        "SELECT name, engine, sorting_key, partition_key, create_table_query FROM system.tables "
        "WHERE database = '%s' AND NOT startsWith(name, '.inner') ORDER BY name" % database,
        "JSONEachRow",
    ).bytes().decode()
    columns = session.query(
        "SELECT table, name, type, default_kind, default_expression FROM system.columns "
        "WHERE database = '%s' ORDER BY table, name" % database,
        "JSONEachRow",
    ).bytes().decode()
    out = {}
    for line in rows.splitlines():
        t = json.loads(line)
        out[t["name"]] = [t["engine"], t["sorting_key"], t["partition_key"],
                          t["create_table_query"].replace(database + ".", "DB.")]
    for line in columns.splitlines():
        c = json.loads(line)
        if c["table"] in out:
            out[c["table"]].append("%s %s %s %s" % (c["name"], c["type"], c["default_kind"], c["default_expression"]))
    return out


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        from chdb import session
    except ImportError:
        print("chDB is missing: python3 -m pip install chdb-core", file=sys.stderr)
        return 2
    paths = [[json.loads(line) for line in open(p) if line.strip()] for p in sys.argv[1:]]
    failures = []
    with tempfile.TemporaryDirectory() as path:
        s = session.Session(path)
        version = s.query("SELECT version()", "TSV").bytes().decode().strip()
        run(s, "schema_new", paths[0], failures)
        run(s, "schema_upgraded", paths[1], failures)
        new, upgraded = schema(s, "schema_new"), schema(s, "schema_upgraded")
        s.close()
    for name in sorted(set(new) | set(upgraded)):
        if new.get(name) != upgraded.get(name):
            failures.append("DIFFERS: %s\n  new:      %s\n  upgraded: %s" % (name, new.get(name), upgraded.get(name)))
    print("chDB %s: new database %d statements, upgraded %d statements; %d tables and views compared"
          % (version, len(paths[0]), len(paths[1]), len(new)))
    for failure in failures:
        print(failure)
    return 1 if failures or not new else 0


if __name__ == "__main__":
    sys.exit(main())
