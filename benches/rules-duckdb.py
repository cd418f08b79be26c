#!/usr/bin/env python3
"""The "naive" peer approach to rules, for BENCHMARKS.md: keep the raw event
history as Parquet and re-run each rule's condition as one DuckDB query over
all of it (history + the newest batch) every time, with no state kept between
runs. This is what a team without Kairos would write first; the table it prints
is what every evaluation of a rule costs that way.

    ~/.cache/kairos/venv/bin/python benches/rules-duckdb.py --events 1M 10M 50M

For each size it generates a synthetic history (35 days ending at the fixed
clock 2026-10-05T00:00:00Z) plus a batch of 100k events in the last 2 s before
the clock, then times the three conditions hot (1 warm-up + 5 timed runs).
Generation and the queries run in separate child processes so that the peak
RSS of each can be reported on its own. The data directory is deleted at the
end unless --keep is given.
"""
import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time

import duckdb

CLOCK = "TIMESTAMP '2026-10-05 00:00:00'"
HISTORY_DAYS = 35
BATCH_EVENTS = 100_000
BATCH_SECONDS = 2
EVENTS_PER_CUSTOMER = 50
PRODUCTS = 2000
THREADS = 2
WARMUP, TIMED = 1, 5

US_PER_DAY = 86_400 * 1_000_000
# History ends where the batch begins, so the batch is strictly the newest data.
HISTORY_SPAN_US = HISTORY_DAYS * US_PER_DAY - BATCH_SECONDS * 1_000_000

# --- data -------------------------------------------------------------------

def events_sql(lo, hi, customers, ts_sql, keep=""):
    """Events lo..hi-1. Every value is a hash of the event number (and of the
    customer for per-customer traits) rather than random(): random() with
    setseed is only reproducible single-threaded, hash() is reproducible at
    any thread count. `ts_sql` places the event in time, given the columns
    first_us/end_us (the customer's active window, µs after the history start);
    `keep` is an optional WHERE/QUALIFY tail selecting which events to keep."""
    return f"""
    WITH e AS (
        SELECT i,
               (hash(i, 'customer') % {customers})::BIGINT AS c,
               (hash(i, 'type') % 100)::INT AS t
        FROM range({lo}, {hi}) r(i)
    ), w AS (
        -- Customers have lifetimes: 30% join after the history starts, 20%
        -- stop coming back before it ends. Without churn nobody would ever
        -- be 30 days inactive and win-back would select nothing.
        SELECT *,
               CASE WHEN hash(c, 'joins late') % 100 < 30
                    THEN (hash(c, 'joined at') % {HISTORY_SPAN_US})::BIGINT
                    ELSE 0 END AS first_us
        FROM e
    ), w2 AS (
        SELECT *,
               CASE WHEN hash(c, 'churns') % 100 < 20
                    THEN first_us + (hash(c, 'churned at') % ({HISTORY_SPAN_US} - first_us))::BIGINT
                    ELSE {HISTORY_SPAN_US} END AS end_us
        FROM w
    )
    SELECT 'c' || c AS customer_id,
           CASE WHEN t < 70 THEN 'product_view'
                WHEN t < 85 THEN 'page'
                WHEN t < 95 THEN 'cart_add'
                WHEN t < 98 THEN 'checkout_start'
                ELSE 'purchase' END AS event_type,
           -- Product events only. 60% of them go to one of the customer's 8
           -- favourite products: real shoppers come back to the same items,
           -- and browse abandonment (3 views of one product) depends on it.
           CASE WHEN t < 70 OR (t >= 85 AND t < 95) OR t >= 98 THEN
               'p' || CASE WHEN hash(i, 'favourite?') % 100 < 60
                           THEN hash(c, 'favourite', hash(i, 'which') % 8) % {PRODUCTS}
                           ELSE hash(i, 'product') % {PRODUCTS} END
           END AS product_id,
           {ts_sql} AS timestamp,
           CASE WHEN t >= 98 THEN round(5 + (hash(i, 'revenue') % 19500) / 100.0, 2) END AS revenue
    FROM w2
    {keep}
    """


def generate(data_dir, n):
    customers = max(1, n // EVENTS_PER_CUSTOMER)
    con = duckdb.connect()
    con.execute(f"SET threads = {THREADS}")
    con.execute("SET TimeZone = 'UTC'")
    start_us = f"epoch_us({CLOCK} - INTERVAL {HISTORY_DAYS} DAY)"
    history_ts = f"make_timestamp({start_us} + first_us + (hash(i, 'ts') % greatest(end_us - first_us, 1))::BIGINT)"
    batch_ts = f"make_timestamp(epoch_us({CLOCK}) - {BATCH_SECONDS * 1_000_000} + (hash(i, 'ts') % {BATCH_SECONDS * 1_000_000})::BIGINT)"
    t0 = time.perf_counter()
    # One directory per day, as an event lake would be laid out; the files'
    # min/max statistics on timestamp let the 7-day rules skip older days.
    con.execute(f"""
        COPY (SELECT *, CAST(timestamp AS DATE) AS day
              FROM ({events_sql(0, n, customers, history_ts)}))
        TO '{data_dir}/history' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (day))
    """)
    # The batch uses event numbers after the history's, so its events are new
    # ones from the same customers; only from those who have not churned
    # (churned customers coming back would cancel win-back), first
    # BATCH_EVENTS of them by event number so the result is deterministic.
    keep = f"WHERE end_us = {HISTORY_SPAN_US} QUALIFY row_number() OVER (ORDER BY i) <= {BATCH_EVENTS}"
    con.execute(f"""
        COPY ({events_sql(n, n + 2 * BATCH_EVENTS, customers, batch_ts, keep)})
        TO '{data_dir}/batch.parquet' (FORMAT parquet, COMPRESSION zstd)
    """)
    seconds = time.perf_counter() - t0
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(data_dir) for f in fs)
    files = sum(len(fs) for _, _, fs in os.walk(data_dir))
    return {"customers": customers, "generate_s": seconds, "bytes": size, "files": files}

# --- rules ------------------------------------------------------------------

LOOKBACK = f"{CLOCK} - INTERVAL 7 DAY"

RULES = {
    # A cart is the run of cart adds up to the customer's next purchase; its
    # deadline runs from its last add (as in sql/cart_abandonment.sql). One
    # row per cart whose last add t has t + 1h <= clock and no purchase in
    # (t, t + 1h]. A cart still receiving adds in the last hour is not due.
    "cart abandonment": f"""
        WITH ev AS (
            SELECT customer_id, event_type, timestamp AS ts, product_id
            FROM events
            WHERE event_type IN ('cart_add', 'purchase')
              AND timestamp >= {LOOKBACK} AND timestamp <= {CLOCK}
        ), seq AS (
            SELECT *, lead(event_type) OVER w AS next_type, lead(ts) OVER w AS next_ts
            FROM ev
            WINDOW w AS (PARTITION BY customer_id ORDER BY ts, event_type)
        )
        SELECT customer_id, ts AS last_added_at, ts + INTERVAL 1 HOUR AS due_at,
               product_id AS last_product_id
        FROM seq
        WHERE event_type = 'cart_add'
          AND (next_type IS NULL OR next_type = 'purchase')
          AND ts + INTERVAL 1 HOUR <= {CLOCK}
          AND (next_ts IS NULL OR next_ts > ts + INTERVAL 1 HOUR)
    """,
    # (customer, product) viewed >= 3 times in the last 7 days with no
    # purchase (of anything) by the customer after the first of those views.
    "browse abandonment": f"""
        WITH views AS (
            SELECT customer_id, product_id, count(*) AS views_7d,
                   min(timestamp) AS first_viewed_at, max(timestamp) AS last_viewed_at
            FROM events
            WHERE event_type = 'product_view'
              AND timestamp >= {LOOKBACK} AND timestamp <= {CLOCK}
            GROUP BY customer_id, product_id
            HAVING count(*) >= 3
        ), purchases AS (
            SELECT customer_id, max(timestamp) AS last_purchase_at
            FROM events
            WHERE event_type = 'purchase'
              AND timestamp >= {LOOKBACK} AND timestamp <= {CLOCK}
            GROUP BY customer_id
        )
        SELECT v.*
        FROM views v LEFT JOIN purchases p USING (customer_id)
        WHERE p.last_purchase_at IS NULL OR p.last_purchase_at <= v.first_viewed_at
    """,
    # Buyers whose last event of any type is more than 30 days old, and at
    # most 31: the deadline passed within the last day, so each is selected
    # once by a daily run. Needs the whole history: no lookback to prune by.
    "win-back": f"""
        SELECT customer_id, max(timestamp) AS last_seen_at,
               count(*) FILTER (WHERE event_type = 'purchase') AS orders,
               sum(revenue) AS lifetime_value
        FROM events
        WHERE timestamp <= {CLOCK}
        GROUP BY customer_id
        HAVING orders >= 1
           AND last_seen_at <= {CLOCK} - INTERVAL 30 DAY
           AND last_seen_at > {CLOCK} - INTERVAL 31 DAY
    """,
}


def run_rules(data_dir):
    con = duckdb.connect()
    con.execute(f"PRAGMA threads = {THREADS}")
    con.execute("SET TimeZone = 'UTC'")
    # hive_partitioning off: the day= directories are layout only, the
    # timestamp column is what the rules filter on.
    con.execute(f"""
        CREATE VIEW events AS
        SELECT * FROM read_parquet('{data_dir}/history/*/*.parquet', hive_partitioning = false)
        UNION ALL
        SELECT * FROM read_parquet('{data_dir}/batch.parquet')
    """)
    results = {}
    for name, sql in RULES.items():
        times = []
        for run in range(WARMUP + TIMED):
            # Materialised inside DuckDB so the timing is the query's, not
            # the cost of converting rows to Python objects.
            t0 = time.perf_counter()
            con.execute(f"CREATE OR REPLACE TEMP TABLE result AS {sql}")
            elapsed = time.perf_counter() - t0
            if run >= WARMUP:
                times.append(elapsed)
        rows = con.execute("SELECT count(*) FROM result").fetchone()[0]
        results[name] = {"median_s": statistics.median(times), "max_s": max(times), "rows": rows}
    return results

# --- driver -----------------------------------------------------------------

def parse_count(text):
    mult = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}.get(text[-1].lower(), 1)
    return int(float(text[:-1] if mult > 1 else text) * mult)


def child(step, data_dir, n):
    """Runs one step in a fresh interpreter; returns its JSON result and peak
    RSS (kB), from wait4 so each child is measured alone."""
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__), f"--_{step}", str(n), "--dir", data_dir],
                         stdout=subprocess.PIPE)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.exit(f"{step} for {n} events failed with exit code {p.returncode}")
    return json.loads(out), usage.ru_maxrss


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", nargs="+", default=["1M"], help="history sizes, e.g. 1M 10M 50M")
    ap.add_argument("--dir", default="/tmp/kairos-bench-duckdb", help="data directory (wiped first)")
    ap.add_argument("--keep", action="store_true", help="keep the generated data")
    ap.add_argument("--_generate", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--_query", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._generate is not None:
        print(json.dumps(generate(args.dir, args._generate)))
        return
    if args._query is not None:
        print(json.dumps(run_rules(args.dir)))
        return

    command = " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv)
    sizes = [parse_count(e) for e in args.events]
    rule_rows, size_rows = [], []
    try:
        for n in sizes:
            data_dir = os.path.join(args.dir, f"n{n}")
            shutil.rmtree(data_dir, ignore_errors=True)
            os.makedirs(data_dir)
            print(f"# {n:,} events: generating…", file=sys.stderr, flush=True)
            gen, gen_rss = child("generate", data_dir, n)
            print(f"# {n:,} events: generated in {gen['generate_s']:.1f} s; running rules…", file=sys.stderr, flush=True)
            rules, query_rss = child("query", data_dir, n)
            size_rows.append((n, gen, gen_rss, query_rss))
            for name, r in rules.items():
                rule_rows.append((n, gen["customers"], name, r))
            if not args.keep:
                shutil.rmtree(data_dir, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)

    print(f"DuckDB {duckdb.__version__}, Python {platform.python_version()}, "
          f"CPU {cpu_model()}, {os.cpu_count()} cores, PRAGMA threads={THREADS}")
    print(f"Clock {CLOCK[11:-1]} UTC; history {HISTORY_DAYS} days + batch of {BATCH_EVENTS:,} events "
          f"in the last {BATCH_SECONDS} s; hot: {WARMUP} warm-up + {TIMED} timed runs per query")
    print(f"Command: `{command}`\n")
    print("| events of history | customers | rule | median s | max s | rows |")
    print("| ---: | ---: | --- | ---: | ---: | ---: |")
    for n, customers, name, r in rule_rows:
        print(f"| {n:,} | {customers:,} | {name} | {r['median_s']:.3f} | {r['max_s']:.3f} | {r['rows']:,} |")
    print()
    print("| events of history | Parquet files | Parquet size | generation s | peak RSS generation | peak RSS queries |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, gen, gen_rss, query_rss in size_rows:
        print(f"| {n:,} | {gen['files']} | {gen['bytes'] / 2**20:,.0f} MiB | {gen['generate_s']:.1f} "
              f"| {gen_rss / 1024:,.0f} MiB | {query_rss / 1024:,.0f} MiB |")


if __name__ == "__main__":
    main()
