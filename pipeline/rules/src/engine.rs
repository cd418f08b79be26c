//! The rule engine: one tick folds a batch of items into the state and
//! evaluates every due rule against it.
//!
//! Two kinds of rule, told apart by `cadence`:
//!
//! - **event-driven** (`cadence: batch`) rules run on every tick and see the
//!   tick's events (`batch_events`) and the state of the customers in it;
//! - **sweeps** (`cadence: 15m`, `hourly`, `daily`) run when the rule clock
//!   crosses a multiple of their cadence and see every customer's state.
//!   They return `due_at`, the instant their condition became true (a cart's
//!   deadline, an inactivity threshold); a firing counts only if `due_at`
//!   falls after the rule's previous evaluation. That is what keeps a rule
//!   from firing for conditions that were already true before it went live,
//!   and `catch_up` bounds how far back a restart after downtime reaches.
//!
//! A sweep due at boundary `b` sees exactly the events up to `b`, even when
//! the tick holds later ones, so a replay in large batches fires the same
//! set as a live run in small ones.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type, TimeUnit};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::Value;

use kairos_core::event::{EventRecord, StagedItem};
use kairos_storage::tables;

use crate::plans::{self, Planned, Plans, rule_tables};
use crate::rule::{Cadence, Param, Rule};
use crate::state::{Applied, HashMap, HashSet, State};

/// A `catch_up_us` that never limits (replays and backtests: history has
/// no downtime); small enough that `clock - it` cannot overflow.
pub const NO_CATCH_UP_LIMIT: i64 = i64::MAX / 4;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// How far back (µs) a sweep reaches after downtime.
    pub catch_up_us: i64,
    /// The rule clock follows event time (replay, backtest, `rules.clock =
    /// "events"`): a firing carries the moment a live run ticking at every
    /// instant would have fired it (a sweep's first boundary at or after
    /// `due_at`; an event-driven rule's trigger time), so the batch span
    /// never shows in firings or decisions. On the wall clock a firing
    /// carries the evaluation's clock: a deadline passed during downtime is
    /// decided now, under today's quiet hours and caps.
    pub event_clock: bool,
    /// How long (µs of rule clock) a firing's (rule, customer, dedupe key)
    /// is remembered: it never fires again within this, and is forgotten
    /// after, so memory and restart time do not grow with all of history.
    pub dedupe_horizon_us: i64,
    /// The clock firings are stamped with (`fired_at`): the machine's, or
    /// a simulation's.
    pub wall: kairos_core::time::Clock,
}

/// The default [`EngineOptions::dedupe_horizon_us`]: 400 days, over a
/// year, so a key naming a year or a yearly date never repeats inside it.
pub const DEDUPE_HORIZON_US: i64 = 400 * 86_400_000_000;

/// How often (rule clock) the remembered firings are walked for ones past
/// the horizon.
const FORGET_EVERY_US: i64 = 3_600_000_000;

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            catch_up_us: 3_600_000_000,
            event_clock: false,
            dedupe_horizon_us: DEDUPE_HORIZON_US,
            wall: kairos_core::time::Clock::system(),
        }
    }
}

/// One rule firing.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    /// Rule name.
    pub rule: String,
    /// Canonical customer id.
    pub customer_id: String,
    /// One instance of the trigger.
    pub dedupe_key: String,
    /// When the condition became true, µs.
    pub due_at_us: i64,
    /// The rule clock of the evaluation, µs.
    pub clock_us: i64,
    /// The rule's other output columns, as a JSON object.
    pub context: String,
}

/// A rule that failed in a tick; the others still ran.
#[derive(Debug, Clone)]
pub struct RuleFailure {
    /// Rule name.
    pub rule: String,
    /// What went wrong.
    pub error: String,
}

/// What a tick did.
#[derive(Debug, Default)]
pub struct TickReport {
    /// New firings, deduplicated.
    pub firings: Vec<Firing>,
    /// Rules that failed.
    pub failures: Vec<RuleFailure>,
    /// Per evaluated rule: name, time taken, rows returned.
    pub evaluated: Vec<(String, Duration, usize)>,
    /// Items in the tick.
    pub items: usize,
    /// Items dropped as retries.
    pub duplicates: usize,
    /// Rows dropped because their `due_at` was before the rule's window.
    pub stale: usize,
    /// The batch's events (canonical customer, type, time), for later stages.
    pub events: Vec<BatchEvent>,
}

/// One event of a batch, as later stages see it.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchEvent {
    /// Canonical customer.
    pub customer_id: String,
    /// Canonical event type.
    pub event_type: String,
    /// Event time, µs.
    pub at: i64,
}

struct Compiled {
    rule: Rule,
    overrides: BTreeMap<String, Param>,
    reads: Vec<&'static str>,
    /// With variants: the arm split, to run each variant's parameters for
    /// the customers assigned to it.
    design: Option<kairos_experiments::Design>,
}

/// The rule engine: state, rules, what fired, and each rule's clock.
pub struct Engine {
    rules: Vec<Compiled>,
    /// Customer state.
    pub state: State,
    /// Each remembered firing's key and the rule clock it fired at.
    fired: HashMap<u128, i64>,
    /// The clock of the last walk for firings past the horizon.
    forgot_at: Option<i64>,
    clocks: BTreeMap<String, i64>,
    opts: EngineOptions,
    plans: Plans,
    /// Each rule's plan per variant (`None`: the default parameters),
    /// made at its first evaluation.
    planned: HashMap<(usize, Option<usize>), Planned>,
}

fn fired_key(rule: &str, customer: &str, key: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(format!("{rule}\0{customer}\0{key}").as_bytes())
}

fn contains_word(haystack: &str, word: &str) -> bool {
    haystack.match_indices(word).any(|(i, _)| {
        let before = haystack[..i].chars().next_back();
        let after = haystack[i + word.len()..].chars().next();
        let ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        !ident(before) && !ident(after)
    })
}

impl Engine {
    /// An engine over `rules` (with parameter overrides per rule name).
    pub fn new(
        rules: Vec<Rule>,
        overrides: &BTreeMap<String, BTreeMap<String, Param>>,
        state: State,
        opts: EngineOptions,
    ) -> datafusion::error::Result<Engine> {
        let names: Vec<&'static str> = rule_tables().iter().map(|(n, _)| *n).collect();
        let rules = rules
            .into_iter()
            .map(|rule| {
                let sql = rule.sql.to_lowercase();
                let design = (!rule.variants.is_empty()).then(|| rule.design());
                Compiled {
                    design,
                    overrides: overrides.get(&rule.name).cloned().unwrap_or_default(),
                    reads: names
                        .iter()
                        .copied()
                        .filter(|n| contains_word(&sql, n))
                        .collect(),
                    rule,
                }
            })
            .collect();
        Ok(Engine {
            rules,
            state,
            fired: HashMap::default(),
            forgot_at: None,
            clocks: BTreeMap::new(),
            opts,
            plans: Plans::new()?,
            planned: HashMap::default(),
        })
    }

    /// The options it runs with.
    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    /// The rules, in load order.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().map(|c| &c.rule)
    }

    /// Each rule's last evaluation (µs).
    pub fn clocks(&self) -> &BTreeMap<String, i64> {
        &self.clocks
    }

    /// Restores the rule clocks from a checkpoint.
    pub fn set_clocks(&mut self, clocks: BTreeMap<String, i64>) {
        self.clocks = clocks;
    }

    /// Records a past firing (at rule clock `clock_us`) so it never fires
    /// again within the dedupe horizon.
    pub fn mark_fired(&mut self, rule: &str, customer: &str, key: &str, clock_us: i64) {
        let at = self
            .fired
            .entry(fired_key(rule, customer, key))
            .or_insert(clock_us);
        *at = (*at).max(clock_us);
    }

    /// Drops from memory the firings that can no longer block one: older
    /// than the dedupe horizon before the earliest clock a rule evaluates
    /// at from here on (each rule's last clock, or `now`). At most once per
    /// [`FORGET_EVERY_US`] of clock; blocking itself checks the horizon
    /// (see `evaluate`), so when this runs changes nothing but memory.
    fn forget_old_firings(&mut self, now: i64) {
        if self
            .forgot_at
            .is_some_and(|at| now < at.saturating_add(FORGET_EVERY_US))
        {
            return;
        }
        self.forgot_at = Some(now);
        let earliest = self.clocks.values().copied().fold(now, i64::min);
        let oldest = earliest.saturating_sub(self.opts.dedupe_horizon_us);
        self.fired.retain(|_, at| *at >= oldest);
    }

    /// Firings remembered.
    pub fn fired_len(&self) -> usize {
        self.fired.len()
    }

    /// Folds `items` into the state without evaluating anything (history
    /// before a backtest window).
    pub fn absorb(&mut self, items: &[StagedItem]) {
        for item in items {
            match item {
                StagedItem::Event(e) => {
                    self.state.apply_event(e);
                }
                StagedItem::Profile(p) => {
                    self.state.apply_profile(p);
                }
                StagedItem::Identity(i) => {
                    self.state.apply_identity(i);
                }
            }
        }
    }

    fn apply(&mut self, item: StagedItem, applied: &mut Applied) {
        match item {
            StagedItem::Event(mut e) => {
                if self.state.apply_event(&e) {
                    let id = self.state.canonical(&e.customer_id);
                    if id != e.customer_id {
                        e.customer_id = id.to_string();
                    }
                    if !applied.customers.contains(&e.customer_id) {
                        applied.customers.insert(e.customer_id.clone());
                    }
                    applied.events.push(e);
                } else {
                    applied.duplicates += 1;
                }
            }
            StagedItem::Profile(p) => match self.state.apply_profile(&p) {
                Some(changes) => {
                    applied
                        .customers
                        .insert(self.state.canonical(&p.customer_id).to_string());
                    applied.changes.extend(changes);
                }
                None => applied.duplicates += 1,
            },
            StagedItem::Identity(i) => {
                if self.state.apply_identity(&i) {
                    applied.customers.insert(i.user_id.clone());
                    applied.identities.push(i);
                } else {
                    applied.duplicates += 1;
                }
            }
        }
    }

    /// One tick at rule clock `now` (µs): apply `items` in event time,
    /// evaluating each sweep at its boundaries on the way (see
    /// [`Engine::sweep_points`]), then the event-driven rules.
    pub async fn tick(&mut self, mut items: Vec<StagedItem>, now: i64) -> TickReport {
        items.sort_by_key(StagedItem::timestamp_us);
        self.forget_old_firings(now);
        let mut report = TickReport {
            items: items.len(),
            ..TickReport::default()
        };
        // A sweep goes live at its first tick: nothing due before fires
        // (no flood of old conditions on a first start; a replay starts
        // with an empty tick at its first event).
        for c in &self.rules {
            if c.rule.cadence != Cadence::EveryBatch && !self.clocks.contains_key(&c.rule.name) {
                self.clocks.insert(c.rule.name.clone(), now);
            }
        }

        let mut applied = Applied {
            first_at: items.first().map(StagedItem::timestamp_us),
            ..Applied::default()
        };
        let mut done: HashMap<usize, i64> = HashMap::default();
        let mut next_due = self.next_sweep_boundary(&done);
        let end = now.saturating_add(1);
        let mut items = std::collections::VecDeque::from(items);
        loop {
            // Boundaries before the next item see the state as it is now.
            let before = items.front().map_or(end, |i| i.timestamp_us().min(end));
            if next_due.is_some_and(|d| d < before) {
                let points = self.sweep_points(before, now, &done);
                for (boundary, group) in points.chunk_by(|a, b| a.0 == b.0).map(|g| (g[0].0, g)) {
                    self.state.prune(boundary);
                    let mut everyone = Tables::new(None, boundary);
                    // Before the last boundary, only the customers whose
                    // state changes before the sweep's next boundary, by
                    // the horizon they change before.
                    let mut changing: Vec<(i64, Tables)> = Vec::new();
                    for &(_, i, first, last) in group {
                        done.insert(i, boundary);
                        let tables = if last {
                            &mut everyone
                        } else {
                            let horizon = boundary.saturating_add(every_us(&self.rules[i].rule));
                            let at = match changing.iter().position(|(h, _)| *h == horizon) {
                                Some(at) => at,
                                None => {
                                    let ids = items
                                        .iter()
                                        .take_while(|item| item.timestamp_us() <= horizon)
                                        .flat_map(StagedItem::customer_ids)
                                        .map(|id| self.state.canonical(id).to_string())
                                        .collect();
                                    changing.push((horizon, Tables::new(Some(ids), boundary)));
                                    changing.len() - 1
                                }
                            };
                            &mut changing[at].1
                        };
                        self.run(
                            i,
                            boundary,
                            Some(first),
                            last,
                            &applied,
                            tables,
                            &mut report,
                        )
                        .await;
                    }
                }
                next_due = self.next_sweep_boundary(&done);
            }
            match items.pop_front() {
                Some(item) => self.apply(item, &mut applied),
                None => break,
            }
        }
        report.duplicates = applied.duplicates;

        report.events = applied
            .events
            .iter()
            .map(|e| BatchEvent {
                customer_id: e.customer_id.clone(),
                event_type: e.event_type.clone(),
                at: e.timestamp_us,
            })
            .collect();
        // Event-driven rules see only the batch's customers: with nothing
        // applied there is nothing to see, and an idle tick costs no query.
        if applied.customers.is_empty() && applied.events.is_empty() {
            return report;
        }
        let customers = std::mem::take(&mut applied.customers);
        let mut tables = Tables::new(Some(customers), now);
        for i in 0..self.rules.len() {
            if self.rules[i].rule.cadence == Cadence::EveryBatch {
                self.run(i, now, None, true, &applied, &mut tables, &mut report)
                    .await;
            }
        }
        report
    }

    /// Where sweeps are evaluated before the next item (at `before`, µs,
    /// exclusive) in a tick at `now`: `(boundary, rule, first boundary
    /// since the rule's last evaluation, whether for everyone)`, by
    /// boundary; `done` holds the boundaries already taken in this tick.
    ///
    /// Each sweep is evaluated for everyone once per tick, at its last
    /// boundary by `now`, in event time; at an earlier boundary (the last
    /// one before an item), only for the customers whose state changes
    /// before the sweep's next boundary. So every customer is seen at the
    /// last boundary before each change of their state and at the tick's
    /// last boundary: each version of their state at the last boundary it
    /// holds. A live run evaluating at every boundary would see the same
    /// rows, each firing at the first boundary at or after its `due_at`:
    /// so a replay in large batches fires what a live run in small ticks
    /// fires, at the same clocks, for rules whose condition stays true
    /// while nothing happens (every `due_at` rule of the library), and the
    /// extra evaluations grow with the items, not with the span.
    fn sweep_points(
        &self,
        before: i64,
        now: i64,
        done: &HashMap<usize, i64>,
    ) -> Vec<(i64, usize, i64, bool)> {
        let mut out: Vec<_> = self
            .pending(done)
            .filter_map(|(i, first, from, every)| {
                let floor = |t: i64| t - t.rem_euclid(every);
                let boundary = floor(before - 1);
                (boundary >= from).then_some((boundary, i, first, boundary == floor(now)))
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// The first boundary a sweep still has to be evaluated at in this tick.
    fn next_sweep_boundary(&self, done: &HashMap<usize, i64>) -> Option<i64> {
        self.pending(done).map(|(_, _, from, _)| from).min()
    }

    /// Each live sweep: `(rule, first boundary since its last evaluation
    /// for everyone, first boundary not yet taken in this tick, cadence µs)`.
    fn pending<'a>(
        &'a self,
        done: &'a HashMap<usize, i64>,
    ) -> impl Iterator<Item = (usize, i64, i64, i64)> + 'a {
        self.rules.iter().enumerate().filter_map(move |(i, c)| {
            if c.rule.cadence == Cadence::EveryBatch {
                return None;
            }
            let last = self.clocks.get(&c.rule.name)?;
            let every = every_us(&c.rule);
            let first = last - last.rem_euclid(every) + every;
            Some((i, first, done.get(&i).map_or(first, |d| d + every), every))
        })
    }

    /// Evaluates rule `i` at `clock`; a sweep also covers its boundaries
    /// from `first` (see [`Engine::sweep_points`]).
    /// `everyone`: the rule's evaluation for every customer of `tables`'
    /// scope, which moves its clock (a sweep evaluated for the customers a
    /// batch is about to change leaves it).
    #[allow(clippy::too_many_arguments)]
    async fn run(
        &mut self,
        i: usize,
        clock: i64,
        first: Option<i64>,
        everyone: bool,
        applied: &Applied,
        tables: &mut Tables,
        report: &mut TickReport,
    ) {
        let started = Instant::now();
        let name = self.rules[i].rule.name.clone();
        let sweep = self.rules[i].rule.cadence != Cadence::EveryBatch;
        let last = self.clocks.get(&name).copied();
        if everyone {
            self.clocks.insert(name.clone(), clock);
        }
        let rows = match self.evaluate_variants(i, clock, applied, tables).await {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(rule = %name, %error, "rule failed; the other rules keep firing");
                report.failures.push(RuleFailure { rule: name, error });
                return;
            }
        };
        report
            .evaluated
            .push((name.clone(), started.elapsed(), rows.len()));
        let floor = clock - self.opts.catch_up_us;
        let since = if sweep {
            last.unwrap_or(clock).max(floor)
        } else {
            floor
        };
        // Blocked by a firing inside the horizon of this evaluation's clock,
        // whether or not older ones were dropped from memory yet: a redo
        // decides as the first attempt did.
        let horizon_start = clock.saturating_sub(self.opts.dedupe_horizon_us);
        let blocked = |fired: &HashMap<u128, i64>, key: &u128| {
            fired.get(key).is_some_and(|at| *at >= horizon_start)
        };
        let mut due = Vec::new();
        for row in rows {
            let in_window = if sweep {
                row.due_at.is_some_and(|d| d > since && d <= clock)
            } else {
                row.due_at.unwrap_or(clock) >= since
            };
            if !in_window {
                report.stale += 1;
                continue;
            }
            let key = fired_key(&name, &row.customer_id, &row.dedupe_key);
            if !blocked(&self.fired, &key) {
                due.push((key, row));
            }
        }
        // The state tables come from hash maps whose order changes with each
        // process's hash seed, and the policy decides firings in order (caps,
        // priority): sorted, a redo in a new process sees the first attempt's
        // order. Only the rows that fire are sorted: a sweep returns every
        // eligible customer at each boundary, nearly all of them fired before.
        due.sort_unstable_by(|(_, a), (_, b)| {
            (a.due_at, &a.customer_id, &a.dedupe_key).cmp(&(
                b.due_at,
                &b.customer_id,
                &b.dedupe_key,
            ))
        });
        for (key, row) in due {
            // Two rows of one evaluation with the same key: the first fires.
            if blocked(&self.fired, &key) {
                continue;
            }
            let due_at_us = row.due_at.unwrap_or(clock);
            // The context is read only for a row that fires.
            let context = match row.context() {
                Ok(context) => context,
                Err(error) => {
                    tracing::warn!(rule = %name, %error, "rule failed; the other rules keep firing");
                    report.failures.push(RuleFailure { rule: name, error });
                    return;
                }
            };
            let clock_us = match first {
                _ if !self.opts.event_clock => clock,
                // A sweep: the boundary a live run would have fired at.
                Some(first) => boundary_at_or_after(due_at_us, every_us(&self.rules[i].rule))
                    .clamp(first, clock),
                // An event-driven rule: its trigger's time within the
                // batch (a tick right after the event).
                None => due_at_us.clamp(applied.first_at.unwrap_or(clock).min(clock), clock),
            };
            // Remembered at the clock firings/ records, so a restart
            // forgets it exactly when this process would have.
            self.fired.insert(key, clock_us);
            report.firings.push(Firing {
                rule: name.clone(),
                customer_id: row.customer_id,
                dedupe_key: row.dedupe_key,
                due_at_us,
                clock_us,
                context,
            });
        }
    }

    /// Rows of rule `i`: with the default parameters for customers outside
    /// any variant (holdout, scheduled, or a rule without variants), and
    /// with each variant's parameters for the customers assigned to it
    /// (the same hash assignment the policy stage records).
    async fn evaluate_variants(
        &mut self,
        i: usize,
        clock: i64,
        applied: &Applied,
        tables: &mut Tables,
    ) -> Result<Vec<Row>, String> {
        let base = self.rules[i].overrides.clone();
        let Some(design) = self.rules[i].design.clone() else {
            return self.evaluate(i, None, clock, applied, tables, &base).await;
        };
        let variant_of = |customer: &str| design.assign(customer).variant;
        let mut rows: Vec<Row> = self
            .evaluate(i, None, clock, applied, tables, &base)
            .await?
            .into_iter()
            .filter(|r| variant_of(&r.customer_id).is_none())
            .collect();
        for (j, v) in self.rules[i].rule.variants.clone().into_iter().enumerate() {
            let mut params = base.clone();
            params.extend(v.params.clone());
            rows.extend(
                self.evaluate(i, Some(j), clock, applied, tables, &params)
                    .await?
                    .into_iter()
                    .filter(|r| variant_of(&r.customer_id).as_deref() == Some(v.name.as_str())),
            );
        }
        Ok(rows)
    }

    /// Rows of rule `i` (variant `variant`, whose parameters are
    /// `params`) at `clock`, planned at its first evaluation.
    async fn evaluate(
        &mut self,
        i: usize,
        variant: Option<usize>,
        clock: i64,
        applied: &Applied,
        tables: &mut Tables,
        params: &BTreeMap<String, Param>,
    ) -> Result<Vec<Row>, String> {
        let key = (i, variant);
        if !self.planned.contains_key(&key) {
            let sql = self.rules[i]
                .rule
                .render_sql(params, plans::CLOCK_CALL)
                .map_err(|e| e.to_string())?;
            let planned = self.plans.plan(&sql).await.map_err(|e| e.to_string())?;
            self.planned.insert(key, planned);
        }
        let mut inputs = Vec::with_capacity(self.rules[i].reads.len());
        for name in &self.rules[i].reads {
            inputs.push((*name, tables.get(name, &self.state, applied)?));
        }
        let batches = self
            .plans
            .run(&self.planned[&key], clock, inputs)
            .await
            .map_err(|e| e.to_string())?;
        let mut rows = Vec::new();
        let mut unkeyed = 0;
        for b in batches {
            let (n, before) = (b.num_rows(), rows.len());
            rows.extend(rows_of(Arc::new(b))?);
            unkeyed += n - (rows.len() - before);
        }
        if unkeyed > 0 {
            tracing::warn!(
                rule = %self.rules[i].rule.name,
                rows = unkeyed,
                "rule rows without a customer_id or dedupe_key cannot fire; check the rule's joins"
            );
        }
        Ok(rows)
    }
}

/// A sweep's cadence, µs.
fn every_us(rule: &Rule) -> i64 {
    match rule.cadence {
        Cadence::EverySecs(secs) => (secs as i64).saturating_mul(1_000_000).max(1),
        Cadence::EveryBatch => 1,
    }
}

/// The first multiple of `every` at or after `t`.
fn boundary_at_or_after(t: i64, every: i64) -> i64 {
    let r = t.rem_euclid(every);
    if r == 0 {
        t
    } else {
        t.saturating_add(every - r)
    }
}

/// One result row of a rule: who, which instance of the trigger, when;
/// its other columns, the firing's context, stay in `batch` until
/// [`Row::context`] reads them.
struct Row {
    customer_id: String,
    dedupe_key: String,
    due_at: Option<i64>,
    batch: Arc<RecordBatch>,
    index: usize,
}

impl Row {
    /// The row's other columns as a JSON object.
    fn context(&self) -> Result<String, String> {
        let one = self.batch.slice(self.index, 1);
        let mut ctx = serde_json::Map::new();
        for (field, col) in one.schema().fields().iter().zip(one.columns()) {
            if is_firing_column(field.name()) {
                continue;
            }
            let v = json_values(col.as_ref())?
                .pop()
                .ok_or_else(|| format!("`{}` has no value in row {}", field.name(), self.index))?;
            ctx.insert(field.name().clone(), v);
        }
        Ok(Value::Object(ctx).to_string())
    }
}

/// The columns every rule returns; the others are the firing's context.
fn is_firing_column(name: &str) -> bool {
    matches!(name, "customer_id" | "dedupe_key" | "due_at")
}

/// The state tables of one evaluation scope, built on first use.
struct Tables {
    customers: Option<HashSet<String>>,
    clock: i64,
    built: HashMap<&'static str, RecordBatch>,
}

impl Tables {
    fn new(customers: Option<HashSet<String>>, clock: i64) -> Tables {
        Tables {
            customers,
            clock,
            built: HashMap::default(),
        }
    }

    fn get(
        &mut self,
        name: &'static str,
        state: &State,
        applied: &Applied,
    ) -> Result<RecordBatch, String> {
        if let Some(b) = self.built.get(name) {
            return Ok(b.clone());
        }
        let ids = self.customers.as_ref();
        let text = |e: &dyn std::fmt::Display| format!("building the `{name}` table: {e}");
        let batch = match name {
            "batch_events" => {
                let refs: Vec<&EventRecord> = applied.events.iter().collect();
                tables::events_batch(&refs).map_err(|e| text(&e))?
            }
            "customers" => state.customers_table(ids).map_err(|e| text(&e))?,
            "carts" => state.carts_table(ids, self.clock).map_err(|e| text(&e))?,
            "product_views" => state.views_table(ids, self.clock).map_err(|e| text(&e))?,
            "profiles" => state.profiles_table(ids).map_err(|e| text(&e))?,
            "profile_changes" => {
                let refs: Vec<_> = applied.changes.iter().collect();
                tables::changes_batch(&refs).map_err(|e| text(&e))?
            }
            _ => {
                let refs: Vec<_> = applied.identities.iter().collect();
                tables::identities_batch(&refs).map_err(|e| text(&e))?
            }
        };
        self.built.insert(name, batch.clone());
        Ok(batch)
    }
}

fn strings(b: &RecordBatch, name: &str) -> Result<Vec<Option<String>>, String> {
    let col = b
        .column_by_name(name)
        .ok_or_else(|| format!("the rule returned no `{name}` column"))?;
    let col = cast(col, &DataType::Utf8).map_err(|e| format!("`{name}`: {e}"))?;
    let s = col.as_string::<i32>();
    Ok((0..s.len())
        .map(|i| s.is_valid(i).then(|| s.value(i).to_string()))
        .collect())
}

fn rows_of(b: Arc<RecordBatch>) -> Result<Vec<Row>, String> {
    let customers = strings(&b, "customer_id")?;
    let keys = strings(&b, "dedupe_key")?;
    let due = match b.column_by_name("due_at") {
        Some(col) => {
            let col = cast(
                col,
                &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            )
            .map_err(|e| format!("`due_at` must be a timestamp: {e}"))?;
            let col = cast(&col, &DataType::Int64).map_err(|e| e.to_string())?;
            let a = col.as_primitive::<Int64Type>();
            (0..a.len())
                .map(|i| a.is_valid(i).then(|| a.value(i)))
                .collect()
        }
        None => vec![None; b.num_rows()],
    };
    // A context column of a type JSON cannot hold fails the evaluation
    // whether or not a row fires.
    for (field, col) in b.schema().fields().iter().zip(b.columns()) {
        if !is_firing_column(field.name()) {
            json_values(col.slice(0, 0).as_ref())?;
        }
    }
    let mut out = Vec::with_capacity(b.num_rows());
    for (index, (customer, key)) in customers.into_iter().zip(keys).enumerate() {
        // A row without a customer or key cannot fire: there is no one to
        // message and nothing to deduplicate on.
        let (Some(customer_id), Some(dedupe_key)) = (customer, key) else {
            continue;
        };
        out.push(Row {
            customer_id,
            dedupe_key,
            due_at: due[index],
            batch: b.clone(),
            index,
        });
    }
    Ok(out)
}

fn json_values(col: &dyn Array) -> Result<Vec<Value>, String> {
    let n = col.len();
    let err = |e: datafusion::arrow::error::ArrowError| e.to_string();
    Ok(match col.data_type() {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32 => {
            let c = cast(col, &DataType::Int64).map_err(err)?;
            let a = c.as_primitive::<Int64Type>();
            (0..n)
                .map(|i| {
                    if a.is_valid(i) {
                        Value::from(a.value(i))
                    } else {
                        Value::Null
                    }
                })
                .collect()
        }
        DataType::Float16 | DataType::Float32 | DataType::Float64 | DataType::Decimal128(..) => {
            let c = cast(col, &DataType::Float64).map_err(err)?;
            let a = c.as_primitive::<datafusion::arrow::datatypes::Float64Type>();
            (0..n)
                .map(|i| {
                    if a.is_valid(i) {
                        serde_json::Number::from_f64(a.value(i)).map_or(Value::Null, Value::Number)
                    } else {
                        Value::Null
                    }
                })
                .collect()
        }
        DataType::Boolean => {
            let a = col.as_boolean();
            (0..n)
                .map(|i| {
                    if a.is_valid(i) {
                        Value::Bool(a.value(i))
                    } else {
                        Value::Null
                    }
                })
                .collect()
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let c = cast(col, &DataType::Utf8).map_err(err)?;
            let a = c.as_string::<i32>();
            (0..n)
                .map(|i| {
                    if a.is_valid(i) {
                        Value::String(a.value(i).to_string())
                    } else {
                        Value::Null
                    }
                })
                .collect()
        }
        _ => {
            let opts = FormatOptions::default();
            let f = ArrayFormatter::try_new(col, &opts).map_err(err)?;
            (0..n)
                .map(|i| {
                    if col.is_valid(i) {
                        Value::String(f.value(i).to_string())
                    } else {
                        Value::Null
                    }
                })
                .collect()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kairos_core::event::{Commerce, Json};

    fn event(n: usize) -> StagedItem {
        StagedItem::Event(EventRecord {
            event_id: format!("e{n}"),
            source: "t".into(),
            call: "track".into(),
            event: "Promo".into(),
            event_type: "promo".into(),
            customer_id: format!("c{n}"),
            user_id: Some(format!("c{n}")),
            anonymous_id: None,
            timestamp_us: 1_000_000,
            received_at_us: 1_000_000,
            sent_at_us: None,
            commerce: Commerce::default(),
            timezone: None,
            properties: Json::empty_object(),
            context: Json::empty_object(),
        })
    }

    /// An engine over one rule, the text of `sql/NAME.sql`.
    fn engine(name: &str, text: &str, opts: EngineOptions) -> Engine {
        let path = format!("sql/{name}.sql");
        let rule = crate::rule::parse(std::path::Path::new(&path), text).expect("valid");
        Engine::new(vec![rule], &BTreeMap::new(), State::default(), opts).expect("engine")
    }

    #[test]
    fn a_rows_context_is_its_own_other_columns() {
        use datafusion::arrow::array::{BooleanArray, Float64Array, Int32Array, StringArray};
        use datafusion::arrow::datatypes::{Field, Schema};
        let schema = Arc::new(Schema::new(vec![
            Field::new("customer_id", DataType::Utf8, true),
            Field::new("dedupe_key", DataType::Utf8, true),
            Field::new("n", DataType::Int32, true),
            Field::new("total", DataType::Float64, true),
            Field::new("vip", DataType::Boolean, true),
            Field::new("sku", DataType::Utf8, true),
        ]));
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![Some("c1"), None, Some("c3")])),
                Arc::new(StringArray::from(vec!["k1", "k2", "k3"])),
                Arc::new(Int32Array::from(vec![Some(1), Some(2), None])),
                Arc::new(Float64Array::from(vec![1.5, 2.5, 3.5])),
                Arc::new(BooleanArray::from(vec![true, false, false])),
                Arc::new(StringArray::from(vec!["a", "b", "c"])),
            ],
        )
        .expect("batch");
        let rows = rows_of(Arc::new(b)).expect("rows");
        let who: Vec<_> = rows.iter().map(|r| r.customer_id.as_str()).collect();
        assert_eq!(who, ["c1", "c3"], "a row without a customer cannot fire");
        let ctx = |r: &Row| serde_json::from_str::<Value>(&r.context().expect("context"));
        assert_eq!(
            ctx(&rows[1]).expect("json"),
            serde_json::json!({"n": null, "total": 3.5, "vip": false, "sku": "c"})
        );
        assert_eq!(
            ctx(&rows[0]).expect("json"),
            serde_json::json!({"n": 1, "total": 1.5, "vip": true, "sku": "a"})
        );
    }

    /// Found by reading for issue 19 (H4): a rule's rows came in the order
    /// of the state's hash maps, which changes with each process's seed, so
    /// a redo after a restart could decide caps and priority differently.
    #[tokio::test]
    async fn a_rules_firings_come_in_one_order_whatever_the_hash_seed() {
        let mut engine = engine(
            "all",
            "-- name: all\n-- description: d\n-- channel: email\n\nSELECT customer_id, 'k' AS dedupe_key FROM customers\n",
            EngineOptions::default(),
        );
        let report = engine.tick((0..300).map(event).collect(), 2_000_000).await;
        let who: Vec<&str> = report
            .firings
            .iter()
            .map(|f| f.customer_id.as_str())
            .collect();
        assert_eq!(who.len(), 300);
        let mut sorted = who.clone();
        sorted.sort_unstable();
        assert_eq!(who, sorted, "sorted by (due_at, customer, key)");
    }

    #[tokio::test]
    async fn a_firing_is_remembered_for_the_dedupe_horizon_then_forgotten() {
        let day = 86_400_000_000i64;
        let mut engine = engine(
            "once",
            "-- name: once\n-- description: d\n-- channel: email\n\nSELECT customer_id, 'k' AS dedupe_key FROM batch_events\n",
            EngineOptions {
                catch_up_us: i64::MAX / 4,
                dedupe_horizon_us: 10 * day,
                ..EngineOptions::default()
            },
        );
        // The same customer and key, each time in a new event.
        let at = |n: usize, t: i64| {
            let StagedItem::Event(mut e) = event(1) else {
                unreachable!("event() makes events")
            };
            e.event_id = format!("e{n}");
            e.timestamp_us = t;
            StagedItem::Event(e)
        };
        let t0 = 2_000_000;
        assert_eq!(engine.tick(vec![at(1, t0)], t0).await.firings.len(), 1);
        let inside = t0 + 9 * day;
        assert!(
            engine
                .tick(vec![at(2, inside)], inside)
                .await
                .firings
                .is_empty(),
            "inside the horizon the key fired already"
        );
        assert_eq!(engine.fired_len(), 1);
        let after = t0 + 11 * day;
        assert_eq!(
            engine.tick(vec![at(3, after)], after).await.firings.len(),
            1,
            "past the horizon the old firing is forgotten"
        );
        assert_eq!(engine.fired_len(), 1, "only the new firing is remembered");
    }

    #[tokio::test]
    async fn each_variant_runs_with_its_parameters_for_its_customers() {
        let design = kairos_experiments::Design::from_percent("promo", 20, 0)
            .with_variants(vec![("one".into(), 1), ("two".into(), 3)]);
        let mut engine = engine(
            "promo",
            "-- name: promo\n-- description: d\n-- channel: email\n-- split: holdout=20 triggered=80\n-- param n: 0\n-- variant one: n=1\n-- variant two: n=2 weight=3\n\nSELECT customer_id, CAST(${n} AS VARCHAR) AS dedupe_key FROM batch_events\n",
            EngineOptions::default(),
        );
        let report = engine.tick((0..400).map(event).collect(), 2_000_000).await;
        assert_eq!(
            report.firings.len(),
            400,
            "one firing per customer, whatever the arm"
        );
        let mut seen = [0; 3];
        for f in &report.firings {
            let want = match design.assign(&f.customer_id).variant.as_deref() {
                None => "0",
                Some("one") => "1",
                _ => "2",
            };
            assert_eq!(f.dedupe_key, want, "{}", f.customer_id);
            seen[want.parse::<usize>().expect("digit")] += 1;
        }
        assert!(
            seen.iter().all(|n| *n > 30),
            "every arm and variant ran: {seen:?}"
        );
    }
}
