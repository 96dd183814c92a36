#!/usr/bin/env python3
"""Replays every SQL statement a ClickHouse server logged from backlight-server on the current
ClickHouse engine (chDB, the engine in-process: `pip install chdb-core`), and fails on any error.

Why: the development machines can only run ClickHouse 18.16, and production runs 24.x-26.x. The
server's SQL must work on both. `server/tests/clickhouse_compat.rs` drives every route, report
grouping and admin command against an 18.16 server with `log_queries=1`, then runs this script
against that server:

1. Every statement the server sent (HTTP user agent `clickhouse-rs…`) that did not finish on
   18.16 is a failure (the tour sends no statement that is meant to fail).
2. The distinct statements that finished are replayed on chDB in the order they were first
   sent: the migrations, then the API's reads and writes. Statements that depend on one sent in
   the same second are retried in later passes; one that still fails is a failure.
3. A row insert (`INSERT INTO t (cols) FORMAT RowBinary` or `… VALUES` with the rows in the
   request body, which the log does not keep) is
   replayed with the rows that table holds on 18.16 at the end of the tour, dumped as
   TabSeparated, so materialized views run and the reads after it see real data.

Exit status 0 when every statement ran on both; 1 with every failure named otherwise; 2 when
chDB or the server is missing.

Usage: clickhouse-compat.py --clickhouse-url http://127.0.0.1:8123 --database backlight_test [--schema S.jsonl]
(--schema: the schema statements in the runner's order, run first; the log orders only by the second.)
"""

import argparse
import os
import re
import sys
import tempfile
import urllib.parse
import urllib.request

SERVER_USER_AGENT = "clickhouse-rs%"
# Rows sent after the statement (RowBinary, or VALUES in the body): the log has no data.
ROW_INSERT = re.compile(r"^INSERT INTO\s+(\S+)\s*\(([^)]*)\)\s*(FORMAT\s+RowBinary|VALUES)\s*$", re.S)
TRAILING_FORMAT = re.compile(r"\s+FORMAT\s+RowBinary\s*$")
MAX_PASSES = 4


def http_query(url, sql, database=None):
    params = {"query": sql}
    if database:
        params["database"] = database
    request = urllib.request.Request(url.rstrip("/") + "/?" + urllib.parse.urlencode(params), method="POST")
    # The embedded ClickHouse has a password; the test passes it as the server takes it.
    password = os.environ.get("BACKLIGHT_CLICKHOUSE_PASSWORD")
    if password:
        request.add_header("X-ClickHouse-User", os.environ.get("BACKLIGHT_CLICKHOUSE_USER", "default"))
        request.add_header("X-ClickHouse-Key", password)
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read().decode()


def logged_statements(url):
    """(finished, failed): the distinct statements of the server, in first-sent order."""
    http_query(url, "SYSTEM FLUSH LOGS")
    rows = http_query(
        url,
        "SELECT toUInt8(type) AS kind, query, exception FROM system.query_log "
        f"WHERE http_user_agent LIKE '{SERVER_USER_AGENT}' AND kind != 1 "
        "ORDER BY event_time, query_start_time FORMAT JSONEachRow",
    )
    import json

    finished, failed, seen = [], [], set()
    for line in rows.splitlines():
        row = json.loads(line)
        sql = row["query"].strip()
        if row["kind"] == 2:
            if sql not in seen:
                seen.add(sql)
                finished.append(sql)
        else:
            failed.append((sql, row["exception"]))
    return finished, failed


def replayable(sql, url, database, loaded_tables):
    """The statement to run on chDB for one logged statement, or None to skip it."""
    insert = ROW_INSERT.match(sql)
    if insert:
        table, columns = insert.group(1), insert.group(2)
        if table in loaded_tables:
            return None
        loaded_tables.add(table)
        rows = http_query(url, f"SELECT {columns} FROM {table} FORMAT TabSeparated", database)
        return f"INSERT INTO {table} ({columns}) FORMAT TabSeparated\n{rows}"
    return TRAILING_FORMAT.sub("", sql)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clickhouse-url", required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--schema", help="JSON lines: the schema statements in the order the "
                        "migration runner sends them; run first, in that order, since the query "
                        "log orders statements only by the second")
    args = parser.parse_args()
    try:
        from chdb import session
        import chdb
    except ImportError as e:
        print(f"clickhouse-compat: chDB is missing ({e}); install it with `pip install chdb-core`", file=sys.stderr)
        return 2
    try:
        finished, failed = logged_statements(args.clickhouse_url)
    except OSError as e:
        print(f"clickhouse-compat: cannot read the query log of {args.clickhouse_url}: {e}", file=sys.stderr)
        return 2
    old_version = http_query(args.clickhouse_url, "SELECT version()").strip()

    with tempfile.TemporaryDirectory(prefix="backlight-chdb-") as path:
        s = session.Session(path)
        new_version = s.query("SELECT version()", "TSV").bytes().decode().strip()
        s.query(f"CREATE DATABASE IF NOT EXISTS `{args.database}`")
        s.query(f"USE `{args.database}`")
        loaded = set()
        pending = []
        schema = []
        if args.schema:
            import json
            schema = [json.loads(line) for line in open(args.schema) if line.strip()]
            pending = [(sql, sql) for sql in schema]
            logged = set(finished)
            missing = [sql for sql in schema if sql not in logged and not sql.startswith("ALTER TABLE")]
            if missing:
                print("clickhouse-compat: schema statements the server did not send (is --schema current?):\n  "
                      + "\n  ".join(missing), file=sys.stderr)
                return 1
        in_schema = set(schema)
        for sql in finished:
            if sql in in_schema:
                continue
            statement = replayable(sql, args.clickhouse_url, args.database, loaded)
            if statement is not None:
                pending.append((sql, statement))
        ran = 0
        errors = {}
        for _ in range(MAX_PASSES):
            retry = []
            for sql, statement in pending:
                try:
                    s.query(statement, "TSV")
                    ran += 1
                except Exception as e:  # chDB raises its own error types
                    errors[sql] = str(e)
                    retry.append((sql, statement))
            if len(retry) == len(pending):
                break
            pending = retry
        still_failing = [(sql, errors[sql]) for sql, _ in pending]
        s.close()

    print(f"clickhouse-compat: {len(finished)} distinct statements from backlight-server on ClickHouse {old_version}; "
          f"{ran} ran on ClickHouse {new_version} (chDB {chdb.__version__}, {len(loaded)} tables loaded with 18.16's rows), "
          f"{len(still_failing)} failed there; "
          f"{len(failed)} failed on {old_version}")
    for sql, error in failed:
        print(f"\nFAILED on {old_version}:\n  {sql}\n  -> {error.splitlines()[0] if error else '?'}")
    for sql, error in still_failing:
        print(f"\nFAILED on {new_version}:\n  {sql}\n  -> {error.strip().splitlines()[0]}")
    if not finished:
        print("clickhouse-compat: the query log holds no statement of backlight-server (is log_queries on?)")
        return 1
    return 1 if failed or still_failing else 0


if __name__ == "__main__":
    sys.exit(main())
