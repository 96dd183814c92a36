#!/usr/bin/env python3
"""What each materialized view on `events` adds to the cost of one ingest INSERT, on the current
ClickHouse engine (chDB, in-process, on the disk under TMPDIR).

The server stores an upload as one INSERT into `events`; the views fill the tables that lookups,
the change feed, reports and deduplication read (deploy/clickhouse/baseline.sql, then any later
migration). With few rows per INSERT, as with one agent's batch, each view's fixed cost (its
query run over the block, and one new part of its table) outweighs the rows. This script puts a
number on that, so a change to the views can be weighed: it builds the schema in a fresh
database per configuration, inserts the same 200-row batches (the load generator's mix: three
quarters activity spans, most naming an item, a quarter work-item events, spread over a week),
and prints the median milliseconds per INSERT with every view, with each view dropped in turn,
and with none. Configurations alternate, ROUNDS times, so drift on a noisy machine falls on all.

Usage: clickhouse-view-cost.py [INSERTS=60] [ROUNDS=2]
Exit status 0 when measured; 2 when chDB is missing (python3 -m pip install chdb-core).
"""

import glob
import os
import random
import re
import statistics
import sys
import tempfile
import time
import uuid

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ROWS = 200


def schema_statements():
    """The baseline, then every migration after it, split into statements."""
    files = [os.path.join(ROOT, "deploy/clickhouse/baseline.sql")]
    baseline = int(re.search(r"migrations 0001-(\d{4})", open(files[0]).read()).group(1))
    for path in sorted(glob.glob(os.path.join(ROOT, "deploy/clickhouse/migrations/*.sql"))):
        if int(os.path.basename(path)[:4]) > baseline:
            files.append(path)
    statements = []
    for path in files:
        text = "\n".join(line for line in open(path).read().splitlines() if not line.strip().startswith("--"))
        statements += [s.strip() for s in text.split(";") if s.strip()]
    return statements


def views_on_events(session, database):
    """The views the built schema runs on every INSERT into `events`, asked of the database
    itself: a later migration may drop or remake a view the baseline made."""
    rows = session.query(
        "SELECT name, create_table_query FROM system.tables WHERE database = '%s' "
        "AND engine = 'MaterializedView' ORDER BY name" % database, "TSV").bytes().decode()
    from_events = re.compile(r"\bFROM\s+(`?%s`?\.)?`?events`?\b" % database, re.I)
    return [line.split("\t", 1)[0] for line in rows.splitlines() if from_events.search(line)]


def batch(rng, device, first_seq, now_ms):
    lines = []
    item = "CLM-%06d" % rng.randrange(10**6)
    for i in range(ROWS):
        at = now_ms - rng.randrange(7 * 86_400_000)
        if rng.random() < 0.75:
            on_item = rng.random() < 0.6
            kind, end, app, state, action, source = "activity_span", at + rng.randrange(1000, 60000), "excel.exe", "active", "", ""
            item_id, step = (item, "review") if on_item else ("", "")
        else:
            action = rng.choice(["started", "paused", "resumed", "completed"])
            if action == "started":
                item = "CLM-%06d" % rng.randrange(10**6)
            kind, end, app, state, source, item_id, step = "work_item", at, "", "", "rule", item, "review"
        day = time.strftime("%Y-%m-%d", time.gmtime(at / 1000))
        lines.append("\t".join(map(str, [
            "bench", device, first_seq + i, uuid.UUID(int=rng.getrandbits(128)), kind, day, at, end, now_ms,
            app, "\\N", state, item_id, step, action, source, 1, 1, "", "0.1", 0, 0, 0, 0, "", ""])))
    return "\n".join(lines)


def main():
    inserts = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    try:
        from chdb import session
    except ImportError:
        print("chDB is missing: python3 -m pip install chdb-core", file=sys.stderr)
        return 2
    statements = schema_statements()
    rng = random.Random(7)
    now_ms = int(time.time() * 1000)
    batches = [batch(rng, uuid.UUID(int=rng.getrandbits(128)), 1 + n * ROWS, now_ms) for n in range(inserts)]
    with tempfile.TemporaryDirectory() as path:
        s = session.Session(path)
        version = s.query("SELECT version()", "TSV").bytes().decode().strip()
        s.query("CREATE DATABASE cost_schema")
        s.query("USE cost_schema")
        for sql in statements:
            s.query(sql)
        views = views_on_events(s, "cost_schema")
        s.query("DROP DATABASE cost_schema")
        configs = [("every view", [])] + [("without " + v, [v]) for v in views] + [("no view", views)]
        medians = {name: [] for name, _ in configs}
        for r in range(rounds):
            for c, (name, dropped) in enumerate(configs):
                db = "cost_%d_%d" % (r, c)
                s.query("CREATE DATABASE %s" % db)
                s.query("USE %s" % db)
                for sql in statements:
                    s.query(sql)
                for view in dropped:
                    s.query("DROP TABLE %s" % view)
                times = []
                for rows in batches:
                    started = time.perf_counter()
                    s.query("INSERT INTO %s.events FORMAT TabSeparated\n%s" % (db, rows))
                    times.append((time.perf_counter() - started) * 1000)
                medians[name].append(statistics.median(times))
                s.query("DROP DATABASE %s" % db)
        s.close()
    every = statistics.median(medians["every view"])
    print("chDB %s: median ms per %d-row INSERT into events (%d INSERTs, %d rounds)" % (version, ROWS, inserts, rounds))
    for name, _ in configs:
        m = statistics.median(medians[name])
        runs = ", ".join("%.1f" % x for x in medians[name])
        share = "" if name == "every view" else "  saves %2.0f %% of the INSERT" % (100 * (every - m) / every)
        print("  %-36s %6.1f ms  (rounds: %s)%s" % (name, m, runs, share))
    return 0


if __name__ == "__main__":
    sys.exit(main())
