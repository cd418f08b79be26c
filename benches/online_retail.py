#!/usr/bin/env python3
"""UCI Online Retail -> Segment calls (NDJSON) for `kairos replay`.

    python3 benches/online_retail.py OUT.ndjson [--input CSV_OR_CSV_GZ]

Source: shared/data-real/online_retail_uci.csv.gz (see SOURCES.md there;
CC BY 4.0, attribute "Chen, D. (2015). Online Retail. UCI Machine Learning
Repository."). Standard library only.

What it writes, sorted by timestamp (file order breaks ties, identify first):

* one `identify` per customer (userId = CustomerID, messageId
  `cust-<id>`), at the customer's first invoice, with traits `country` (of
  that invoice) and a synthetic `email` `c<id>@example.com`; with
  `--consent-email` also `consent: {email: true}` (without it marketing
  rules fire but their email is suppressed as no_consent:email; the
  transactional order_confirmation still delivers);
* one `track` per invoice, messageId `inv-<InvoiceNo>` so reruns dedupe:
  `Order Completed` (Kairos event_type `purchase`) or, for invoices starting
  with "C", `Order Refunded` (event_type `refund`). properties: `order_id`
  (-> the order_id column), `revenue` = sum(Quantity * UnitPrice) over the
  invoice's lines, exact in decimal (-> the revenue column; negative for
  refunds, as in the data), `currency` "GBP" and `products` [{product_id,
  name, price, quantity}] (kept in the properties JSON; Kairos promotes only
  top-level product_id/price/quantity, which an order does not have).

Rows without CustomerID (guests, and every stock adjustment and bad-debt
row of the file) are dropped and counted. InvoiceDate is UK wall-clock time
without a zone; it is read in --tz (default Europe/London, so BST dates
move one hour back) and written as UTC ISO-8601. An invoice whose lines
span several minutes takes its earliest time. A call larger than
--max-event-bytes (Kairos' ingest.max_event_bytes, default 32768) would be
rejected, so its products list is cut at the end to fit, with
`products_omitted` = the number of lines left out (revenue still counts
them all).
"""

import argparse
import csv
import gzip
import json
import sys
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

try:
    from zoneinfo import ZoneInfo
except ImportError:  # Python < 3.9
    ZoneInfo = None

DEFAULT_INPUT = (
    Path(__file__).resolve().parent.parent.parent
    / "shared" / "data-real" / "online_retail_uci.csv.gz"
)
if not DEFAULT_INPUT.exists():
    DEFAULT_INPUT = Path("/work/shared/data-real/online_retail_uci.csv.gz")


def parse_local(text):
    """`YYYY-MM-DD HH:MM[:SS]` (this copy) or `M/D/YYYY H:MM` (UCI's CSV)."""
    text = text.strip()
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S"):
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            pass
    raise ValueError(f"unrecognised InvoiceDate {text!r}")


def customer_id(raw):
    """CustomerID as a string without a float's `.0`; None when empty."""
    raw = raw.strip()
    if not raw:
        return None
    if raw.endswith(".0"):
        raw = raw[:-2]
    return raw


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="NDJSON to write (.ndjson: kairos replay picks the reader by extension)")
    ap.add_argument("--input", default=str(DEFAULT_INPUT), help="CSV or CSV.gz (default %(default)s)")
    ap.add_argument("--tz", default="Europe/London", help="zone of InvoiceDate (default %(default)s; UTC to take it as UTC)")
    ap.add_argument("--max-event-bytes", type=int, default=32768,
                    help="Kairos ingest.max_event_bytes; bigger calls get their products cut (default %(default)s)")
    ap.add_argument("--consent-email", action="store_true",
                    help="also set traits.consent.email = true (synthetic, like the email)")
    args = ap.parse_args()

    if args.tz.upper() == "UTC":
        zone = timezone.utc
    elif ZoneInfo is None:
        sys.exit("--tz needs Python 3.9+ (zoneinfo); use --tz UTC")
    else:
        zone = ZoneInfo(args.tz)

    opener = gzip.open if args.input.endswith(".gz") else open
    # invoice -> [first local time, customer, country, revenue, [product JSON], input order]
    invoices = {}
    rows = dropped = 0
    with opener(args.input, "rt", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            rows += 1
            cust = customer_id(r["CustomerID"])
            if cust is None:
                dropped += 1
                continue
            inv = r["InvoiceNo"].strip()
            when = parse_local(r["InvoiceDate"])
            qty = int(float(r["Quantity"]))
            price = Decimal(r["UnitPrice"].strip())
            product = json.dumps(
                {"product_id": r["StockCode"].strip(), "name": r["Description"].strip(),
                 "price": float(price), "quantity": qty},
                ensure_ascii=False, separators=(",", ":"))
            st = invoices.get(inv)
            if st is None:
                invoices[inv] = [when, cust, r["Country"].strip(), qty * price, [product], len(invoices)]
            else:
                if st[1] != cust:
                    sys.exit(f"invoice {inv}: two customers ({st[1]}, {cust})")
                st[0] = min(st[0], when)
                st[3] += qty * price
                st[4].append(product)

    def utc(local):
        return local.replace(tzinfo=zone).astimezone(timezone.utc)

    def iso(t):
        return t.strftime("%Y-%m-%dT%H:%M:%SZ")

    # One entry per call: (utc time, 0 identify / 1 track, input order, line).
    calls = []
    first = {}  # customer -> (utc, order, country) of their first invoice
    orders = refunds = cut = 0
    for inv, (local, cust, country, revenue, products, order) in invoices.items():
        t = utc(local)
        refund = inv.upper().startswith("C")
        if refund:
            refunds += 1
        else:
            orders += 1
        if cust not in first or (t, order) < first[cust][:2]:
            first[cust] = (t, order, country)
        head = json.dumps({
            "type": "track", "userId": cust,
            "event": "Order Refunded" if refund else "Order Completed",
            "messageId": f"inv-{inv}", "timestamp": iso(t),
        }, ensure_ascii=False, separators=(",", ":"))
        props = json.dumps({"order_id": inv, "revenue": float(revenue), "currency": "GBP"},
                           ensure_ascii=False, separators=(",", ":"))

        def line(n):
            omitted = "" if n == len(products) else f',"products_omitted":{len(products) - n}'
            return (f'{head[:-1]},"properties":{props[:-1]}{omitted},'
                    f'"products":[{",".join(products[:n])}]}}}}')

        n = len(products)
        text = line(n)
        if len(text.encode()) > args.max_event_bytes:
            cut += 1
            lo, hi = 0, n  # the most products that fit
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if len(line(mid).encode()) <= args.max_event_bytes:
                    lo = mid
                else:
                    hi = mid - 1
            text = line(lo)
        calls.append((t, 1, order, text))

    for cust, (t, order, country) in first.items():
        traits = {"country": country, "email": f"c{cust}@example.com"}
        if args.consent_email:
            traits["consent"] = {"email": True}
        calls.append((t, 0, order, json.dumps({
            "type": "identify", "userId": cust, "messageId": f"cust-{cust}",
            "timestamp": iso(t), "traits": traits,
        }, ensure_ascii=False, separators=(",", ":"))))

    calls.sort(key=lambda c: c[:3])
    with open(args.out, "w", encoding="utf-8") as out:
        for c in calls:
            out.write(c[3])
            out.write("\n")

    print(f"{rows} rows read, {dropped} lines dropped (no CustomerID); "
          f"{len(first)} customers, {orders} orders, {refunds} refunds; "
          f"{cut} invoice(s) with products cut to fit {args.max_event_bytes} bytes; "
          f"{len(calls)} calls -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
