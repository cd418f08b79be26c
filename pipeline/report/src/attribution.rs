//! The SQL every outcome computation attributes events with (the raw
//! report in `metrics`, the maintained outcomes in `outcomes`): which
//! events count, under which customer id, inside which window.

use crate::lake::ID_HASH;

/// A day in µs: per-day rows group by `assigned_at / DAY_US` (UTC days).
pub const DAY_US: i64 = 86_400_000_000;

/// A string as an SQL literal.
pub fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `(experiment, arm, variant)` as one integer `g`, from the column
/// holding the experiment (`experiment` or `rule`) and `arm`, `variant`.
pub fn group_hash(experiment: &str) -> String {
    format!("{ID_HASH}({experiment} || chr(31) || arm || chr(31) || coalesce(variant, ''), 3)")
}

/// The `link` and `ev` CTEs of every outcome computation (the raw report,
/// a day's full recomputation, a diff), so all attribute events alike:
/// `link` maps an anonymous id to the user of its earliest link; `ev` is
/// `events`' conversion and revenue events (`conv`, `rev`: SQL literals;
/// `and` narrows them further) under the canonical id, as its two hashes
/// `k1`, `k2`, with `t` (µs) and `revenue` (0 when null).
pub fn events_ctes(events: &str, conv: &str, rev: &str, and: &str) -> String {
    format!(
        "link AS (
           SELECT anonymous_id, first_value(user_id ORDER BY linked_at) AS user_id
           FROM identities GROUP BY anonymous_id),
         ev AS (
           SELECT {ID_HASH}(customer_id, 1) AS k1, {ID_HASH}(customer_id, 2) AS k2,
                  event_type, t, revenue
           FROM (SELECT coalesce(link.user_id, e.customer_id) AS customer_id, e.event_type,
                        CAST(e.timestamp AS BIGINT) AS t, coalesce(e.revenue, 0.0) AS revenue
                 FROM {events} e LEFT JOIN link ON e.customer_id = link.anonymous_id
                 WHERE e.event_type IN ({conv}, {rev}){and}))"
    )
}

/// `ev` rows of recipient `r` (hashes `k1`, `k2`, assigned at `at`) in
/// `(at − pre, at + window]` (µs), as a join condition.
pub fn in_windows(r: &str, pre_us: i64, window_us: i64) -> String {
    format!(
        "ev.k1 = {r}.k1 AND ev.k2 = {r}.k2 AND ev.t > {r}.at - {pre_us} AND ev.t <= {r}.at + {window_us}"
    )
}

/// A recipient `r`'s window sums over its `ev` rows: `converted` (0 or 1:
/// a conversion after `at`), `y` (revenue after `at`), `x` (revenue up to
/// and including `at`, the pre-period).
pub fn window_sums(r: &str, conv: &str, rev: &str) -> String {
    format!(
        "max(CASE WHEN ev.event_type = {conv} AND ev.t > {r}.at THEN 1 ELSE 0 END) AS converted,
         sum(CASE WHEN ev.event_type = {rev} AND ev.t > {r}.at THEN ev.revenue ELSE 0.0 END) AS y,
         sum(CASE WHEN ev.event_type = {rev} AND ev.t <= {r}.at THEN ev.revenue ELSE 0.0 END) AS x"
    )
}
