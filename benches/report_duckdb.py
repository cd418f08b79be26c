#!/usr/bin/env python3
"""The experiment report's question asked of DuckDB over the raw Parquet
tables, for BENCHMARKS.md: per arm of one rule, the recipients, the
conversions (a purchase in the 7 days after assignment), the window revenue
and its sum of squares, plus what Kairos' report also computes from the same
rows (the pre-period covariate sums and the messages sent), so both engines
do the same work.

    cargo build --release -p kairos-dev
    kairos-dev bench-report --build --recipients 10000000 --data /root/.cache/kairos-bench/report
    ~/.cache/kairos/venv/bin/python benches/report_duckdb.py /root/.cache/kairos-bench/report

It times the query on a fresh connection (cold: no metadata cached; the OS
page cache may hold the files) and then WARM more runs on one connection,
and checks every arm against the `kairos-sums.json` that `kairos-dev
bench-report` wrote into the same directory: the counts (recipients,
conversions, messages) exactly, the sums (revenue, its squares, the covariate
and its products with revenue) to 1e-9 relative (summation order differs).
"""
import argparse
import json
import os
import statistics
import sys
import time

import duckdb

THREADS = 2
WARM = 5
WINDOW_US = 7 * 86_400 * 1_000_000


def query(root, rule):
    g = lambda t: f"read_parquet('{os.path.join(root, t)}/**/*.parquet')"
    return f"""
    WITH rcp AS (
      SELECT arm, customer_id, epoch_us(assigned_at) AS at
      FROM {g('assignments')} WHERE experiment = '{rule}'),
    ev AS (
      SELECT customer_id, epoch_us("timestamp") AS t, coalesce(revenue, 0.0) AS revenue
      FROM {g('events')} WHERE event_type = 'purchase'),
    msg AS (
      SELECT customer_id, count(*) AS messages
      FROM {g('sends')} WHERE decision = 'send' AND rule = '{rule}' GROUP BY customer_id),
    per AS (
      SELECT r.arm, r.customer_id,
        max(CASE WHEN ev.t > r.at AND ev.t <= r.at + {WINDOW_US} THEN 1 ELSE 0 END) AS converted,
        sum(CASE WHEN ev.t > r.at AND ev.t <= r.at + {WINDOW_US} THEN ev.revenue ELSE 0.0 END) AS y,
        sum(CASE WHEN ev.t > r.at - {WINDOW_US} AND ev.t <= r.at THEN ev.revenue ELSE 0.0 END) AS x
      FROM rcp r LEFT JOIN ev ON ev.customer_id = r.customer_id
      GROUP BY r.arm, r.customer_id, r.at)
    SELECT per.arm, count(*) AS recipients,
      CAST(coalesce(sum(msg.messages), 0) AS BIGINT) AS messages,
      CAST(sum(converted) AS BIGINT) AS conversions,
      sum(y) AS revenue_sum, sum(y * y) AS revenue_sum_squares,
      sum(x) AS covariate_sum, sum(x * y) AS sum_products
    FROM per LEFT JOIN msg ON msg.customer_id = per.customer_id
    GROUP BY per.arm ORDER BY per.arm
    """


def run(con, sql):
    started = time.perf_counter()
    rows = con.execute(sql).fetchall()
    return time.perf_counter() - started, rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="the lake `kairos-dev bench-report --build` wrote")
    p.add_argument("--rule", default="cart_abandonment")
    p.add_argument("--warm", type=int, default=WARM)
    a = p.parse_args()
    sql = query(a.data, a.rule)

    con = duckdb.connect(config={"threads": THREADS})
    cold, rows = run(con, sql)
    warm = [run(con, sql)[0] for _ in range(a.warm)]
    print(f"duckdb {duckdb.__version__}, {THREADS} threads")
    print(f"cold {cold:.3f} s, warm median {statistics.median(warm):.3f} s of {len(warm)}"
          f" ({', '.join(f'{t:.3f}' for t in warm)})")
    cols = ["arm", "recipients", "messages", "conversions", "revenue_sum",
            "revenue_sum_squares", "covariate_sum", "sum_products"]
    got = {r[0]: dict(zip(cols, r)) for r in rows}
    for r in got.values():
        print("  " + json.dumps(r))

    sums = os.path.join(a.data, "kairos-sums.json")
    if not os.path.exists(sums):
        print(f"{sums} not found: run `kairos-dev bench-report --data {a.data}` to compare")
        return 0
    with open(sums) as f:
        kairos = json.load(f)
    print(f"kairos: cold {kairos['cold_secs']:.3f} s, warm median {kairos['warm_median_secs']:.3f} s")
    bad = []
    for k in kairos["arms"]:
        d = got.get(k["arm"])
        if d is None:
            bad.append(f"{k['arm']}: missing in DuckDB's answer")
            continue
        for c in ["recipients", "conversions", "messages"]:
            if d[c] != k[c]:
                bad.append(f"{k['arm']}.{c}: duckdb {d[c]} vs kairos {k[c]}")
        for c in ["revenue_sum", "revenue_sum_squares", "covariate_sum", "sum_products"]:
            if k.get(c) is None:
                continue
            if abs(d[c] - k[c]) > 1e-9 * max(1.0, abs(k[c])):
                bad.append(f"{k['arm']}.{c}: duckdb {d[c]!r} vs kairos {k[c]!r}")
    if len(kairos["arms"]) != len(got):
        bad.append(f"arms: duckdb {sorted(got)} vs kairos {[k['arm'] for k in kairos['arms']]}")
    if bad:
        print("DIFFERENT:\n  " + "\n  ".join(bad))
        return 1
    print(f"same numbers for all {len(got)} arms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
