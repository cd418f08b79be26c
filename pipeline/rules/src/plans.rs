//! Rules planned once per engine, executed at every evaluation.
//!
//! Parsing, planning and optimising a rule's SQL costs far more than
//! running it on a micro-batch's few hundred rows, and a replay evaluates
//! every rule thousands of times. So each rule (and each variant's
//! parameters) is planned once into a physical plan whose inputs change
//! without replanning:
//!
//! - the tables are [`SlotTable`]s: their scans read whatever batch the
//!   engine put in the slot for this evaluation, not what was there at
//!   planning time;
//! - `${now}` becomes `kairos_rule_clock()`, a volatile function reading
//!   the evaluation's clock (volatile so the optimiser never folds it into
//!   a constant).
//!
//! Before each run the plan's operators are reset
//! ([`reset_plan_states`]), so nothing one run built (a join's hash table)
//! leaks into the next. DataFusion cannot reset dynamic filters, so the
//! session turns them off; they prune file scans, which rules never do.
//! A plan with a recursive query cannot be reset either: it is planned
//! again at every evaluation.

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{ScalarValue, internal_datafusion_err};
use datafusion::datasource::TableType;
use datafusion::error::Result;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType, reset_plan_states};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream, collect,
};
use datafusion::prelude::{SessionConfig, SessionContext};
use kairos_storage::tables;

use crate::state;

/// Tables a rule can read, with their schemas.
pub fn rule_tables() -> Vec<(&'static str, SchemaRef)> {
    vec![
        ("batch_events", tables::EVENTS_SCHEMA.clone()),
        ("customers", state::CUSTOMERS_SCHEMA.clone()),
        ("carts", state::CARTS_SCHEMA.clone()),
        ("product_views", state::PRODUCT_VIEWS_SCHEMA.clone()),
        ("profiles", state::RULE_PROFILES_SCHEMA.clone()),
        ("profile_changes", tables::PROFILE_CHANGES_SCHEMA.clone()),
        ("identities", tables::IDENTITIES_SCHEMA.clone()),
    ]
}

/// What `${now}` becomes in a planned rule.
pub const CLOCK_CALL: &str = "kairos_rule_clock()";

/// The type of `${now}`: what `CAST('…' AS TIMESTAMP)` gives, so a rule
/// means the same whether the clock is this call or a literal (as in
/// `kairos sql` or a test).
const CLOCK_TYPE: DataType = DataType::Timestamp(TimeUnit::Nanosecond, None);

/// A physical plan ready to run again, or the SQL to plan at every run
/// (a recursive query, which DataFusion cannot reset).
#[derive(Clone)]
pub enum Planned {
    /// Reset and run.
    Plan(Arc<dyn ExecutionPlan>),
    /// Planned at every run.
    Sql(String),
}

/// One session with the rule tables as slots and the clock as a function.
pub struct Plans {
    ctx: SessionContext,
    clock_ns: Arc<AtomicI64>,
    slots: HashMap<&'static str, Arc<Slot>>,
}

impl Plans {
    /// A session over the rule tables of [`rule_tables`].
    pub fn new() -> Result<Plans> {
        // One partition: a rule's tables are a micro-batch's customers, or
        // everyone's state already in memory; splitting them costs more in
        // repartitioning and tasks than a second core gives back.
        let config = SessionConfig::new()
            .with_target_partitions(1)
            .set_bool("datafusion.optimizer.enable_dynamic_filter_pushdown", false);
        let ctx = SessionContext::new_with_config(config);
        let clock_ns = Arc::new(AtomicI64::new(0));
        ctx.register_udf(ScalarUDF::from(RuleClock {
            signature: Signature::nullary(Volatility::Volatile),
            now_ns: clock_ns.clone(),
        }));
        let mut slots = HashMap::new();
        for (name, schema) in rule_tables() {
            let slot = Arc::new(Slot {
                name,
                schema,
                batch: Mutex::new(None),
            });
            ctx.register_table(name, Arc::new(SlotTable(slot.clone())))?;
            slots.insert(name, slot);
        }
        Ok(Plans {
            ctx,
            clock_ns,
            slots,
        })
    }

    /// The session, for planning without running (`kairos rules check`).
    pub fn into_session(self) -> SessionContext {
        self.ctx
    }

    /// Plans `sql` (with `${now}` rendered as [`CLOCK_CALL`]).
    pub async fn plan(&self, sql: &str) -> Result<Planned> {
        let plan = self.ctx.sql(sql).await?.create_physical_plan().await?;
        let mut recursive = false;
        plan.apply(|node| {
            recursive |= node.name() == "RecursiveQueryExec";
            Ok(TreeNodeRecursion::Continue)
        })?;
        Ok(if recursive {
            Planned::Sql(sql.to_string())
        } else {
            Planned::Plan(plan)
        })
    }

    /// Runs `planned` at `clock_us` over `tables` (every table the rule
    /// reads; reading another is an error, never stale data).
    pub async fn run(
        &self,
        planned: &Planned,
        clock_us: i64,
        tables: Vec<(&'static str, RecordBatch)>,
    ) -> Result<Vec<RecordBatch>> {
        self.clock_ns
            .store(clock_us.saturating_mul(1000), Ordering::Relaxed);
        let names: Vec<&'static str> = tables.iter().map(|(n, _)| *n).collect();
        for (name, batch) in tables {
            self.slot(name)?.put(Some(batch));
        }
        let out = match planned {
            Planned::Plan(plan) => {
                collect(reset_plan_states(plan.clone())?, self.ctx.task_ctx()).await
            }
            Planned::Sql(sql) => async { self.ctx.sql(sql).await?.collect().await }.await,
        };
        // Emptied, so a rule never reads another evaluation's rows and the
        // state tables are freed with their scope.
        for name in names {
            self.slot(name)?.put(None);
        }
        out
    }

    fn slot(&self, name: &str) -> Result<&Arc<Slot>> {
        self.slots
            .get(name)
            .ok_or_else(|| internal_datafusion_err!("no rule table named {name}"))
    }
}

/// `kairos_rule_clock()`: the evaluation's clock.
#[derive(Debug)]
struct RuleClock {
    signature: Signature,
    now_ns: Arc<AtomicI64>,
}

impl PartialEq for RuleClock {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.now_ns, &other.now_ns)
    }
}

impl Eq for RuleClock {}

impl Hash for RuleClock {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.now_ns).hash(state);
    }
}

impl ScalarUDFImpl for RuleClock {
    fn name(&self) -> &str {
        "kairos_rule_clock"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(CLOCK_TYPE)
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::TimestampNanosecond(
            Some(self.now_ns.load(Ordering::Relaxed)),
            None,
        )))
    }
}

/// One rule table's contents for the current evaluation.
#[derive(Debug)]
struct Slot {
    name: &'static str,
    schema: SchemaRef,
    batch: Mutex<Option<RecordBatch>>,
}

impl Slot {
    fn put(&self, batch: Option<RecordBatch>) {
        // A panic while the lock was held left nothing half-written: the
        // slot holds a whole batch or none.
        *self.batch.lock().unwrap_or_else(|p| p.into_inner()) = batch;
    }

    fn get(&self) -> Result<RecordBatch> {
        self.batch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                internal_datafusion_err!(
                    "rule table {} was not filled for this evaluation",
                    self.name
                )
            })
    }
}

#[derive(Debug)]
struct SlotTable(Arc<Slot>);

#[async_trait]
impl TableProvider for SlotTable {
    fn schema(&self) -> SchemaRef {
        self.0.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = match projection {
            Some(p) => Arc::new(self.0.schema.project(p)?),
            None => self.0.schema.clone(),
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Arc::new(SlotExec {
            slot: self.0.clone(),
            projection: projection.cloned(),
            schema,
            properties: Arc::new(properties),
        }))
    }
}

/// A scan of a slot: reads the slot when executed, not when planned.
#[derive(Debug)]
struct SlotExec {
    slot: Arc<Slot>,
    projection: Option<Vec<usize>>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl DisplayAs for SlotExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SlotExec: {}", self.slot.name)
    }
}

impl ExecutionPlan for SlotExec {
    fn name(&self) -> &str {
        "SlotExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let batch = self.slot.get()?;
        let batch = match &self.projection {
            Some(p) => batch.project(p)?,
            None => batch,
        };
        Ok(Box::pin(MemoryStream::try_new(
            vec![batch],
            self.schema.clone(),
            None,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;
    use kairos_core::event::{Commerce, EventRecord};
    use kairos_storage::tables;

    use crate::state::State;

    fn event(customer: &str, at_us: i64) -> EventRecord {
        let id = format!("{customer}-{at_us}");
        EventRecord::track(
            id,
            "t",
            customer.into(),
            "promo",
            at_us,
            Commerce::default(),
        )
    }

    /// The `customers` and `batch_events` tables of `events`.
    fn tables_of(events: &[EventRecord]) -> Vec<(&'static str, RecordBatch)> {
        let mut state = State::default();
        for e in events {
            state.apply_event(e);
        }
        let refs: Vec<&EventRecord> = events.iter().collect();
        vec![
            ("customers", state.customers_table(None).expect("customers")),
            ("batch_events", tables::events_batch(&refs).expect("events")),
        ]
    }

    #[tokio::test]
    async fn the_clock_call_has_the_literal_clock_type() {
        let ctx = SessionContext::new();
        let literal = ctx
            .sql("SELECT CAST('1970-01-01T00:00:01Z' AS TIMESTAMP) AS t")
            .await
            .expect("plans")
            .collect()
            .await
            .expect("runs");
        assert_eq!(literal[0].schema().field(0).data_type(), &CLOCK_TYPE);
    }

    /// One plan, run twice with other tables and another clock, answers
    /// for each run's inputs: the join's build side is rebuilt and the
    /// clock is read at execution.
    #[tokio::test]
    async fn a_plan_reads_each_runs_tables_and_clock() {
        let plans = Plans::new().expect("session");
        let sql = format!(
            "SELECT c.customer_id, COUNT(*) AS n FROM customers c \
             JOIN batch_events e ON e.customer_id = c.customer_id \
             WHERE e.timestamp <= {CLOCK_CALL} GROUP BY c.customer_id ORDER BY 1"
        );
        let planned = plans.plan(&sql).await.expect("plans");
        assert!(matches!(planned, Planned::Plan(_)));
        let run = async |clock, events: &[EventRecord]| {
            let out = plans
                .run(&planned, clock, tables_of(events))
                .await
                .expect("runs");
            let mut rows = Vec::new();
            for b in out {
                let ids = b.column(0).as_string::<i32>();
                let n = b.column(1).as_primitive::<Int64Type>();
                for i in 0..b.num_rows() {
                    rows.push((ids.value(i).to_string(), n.value(i)));
                }
            }
            rows
        };
        let first = run(10, &[event("a", 1), event("a", 5), event("b", 20)]).await;
        assert_eq!(first, vec![("a".to_string(), 2)]);
        let second = run(30, &[event("b", 20), event("c", 25), event("c", 40)]).await;
        assert_eq!(second, vec![("b".to_string(), 1), ("c".to_string(), 1)]);
    }

    #[tokio::test]
    async fn a_table_not_filled_is_an_error() {
        let plans = Plans::new().expect("session");
        let planned = plans
            .plan("SELECT customer_id FROM customers")
            .await
            .expect("plans");
        let err = plans.run(&planned, 0, vec![]).await.expect_err("no table");
        assert!(
            err.to_string().contains("customers was not filled"),
            "{err}"
        );
    }
}
