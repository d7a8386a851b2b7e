//! `verify` and `rebuild`: compare or replace every derived table with its
//! from-scratch definition (the `*_expected` views of migration 0003). One
//! table-driven path for all tables, listed in [`crate::catalog`].

use crate::catalog::{DerivedTable, DERIVED_TABLES, EVENT_TABLES};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Postgres, Row, Transaction};

/// Differences between one live table and its definition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableDrift {
    pub table: &'static str,
    pub live_rows: i64,
    pub expected_rows: i64,
    /// Expected rows absent from (or different in) the live table.
    pub missing: i64,
    /// Live rows absent from (or different in) the definition.
    pub unexpected: i64,
    /// Up to `show` examples of each, as JSON.
    pub missing_examples: Vec<String>,
    pub unexpected_examples: Vec<String>,
}

impl TableDrift {
    pub fn is_clean(&self) -> bool {
        self.missing == 0 && self.unexpected == 0
    }
}

#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub tables: Vec<TableDrift>,
    /// Committed deltas not yet folded in the snapshot, folded into the model
    /// compared (ADR 0019), and the age of the oldest in seconds.
    pub pending_deltas: i64,
    pub pending_deltas_age_seconds: f64,
    /// Queued analytics terms recomputed into the model compared, and the
    /// age of the oldest queued in seconds.
    pub pending_terms: i64,
    pub pending_terms_age_seconds: f64,
    /// Parked analytics terms (not recomputed: their rows are drift until
    /// `requeue`).
    pub parked_terms: i64,
    /// Parked fold deltas (not applied: their effects are drift until
    /// `fold-deltas replay`), including pending ones that cannot be folded.
    pub parked_deltas: i64,
    /// Deltas of a newer format than this binary reads: the model lacks
    /// them, so differences may be theirs (run the newer binary's verify).
    pub newer_format_deltas: i64,
    /// Set by [`wait_for_pending`] (`--max-wait`): the snapshot's pending
    /// work still not done after the wait.
    pub still_pending: Option<StillPending>,
    /// The snapshot's pending work, for [`wait_for_pending`]: the newest
    /// pending delta id, and each queued term with its version.
    pub pending_deltas_upto: Option<i64>,
    pub pending_term_versions: Vec<(String, i64)>,
}

/// Pending work of the verified snapshot that was not done after `--max-wait`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StillPending {
    pub deltas: i64,
    pub terms: i64,
    pub waited: std::time::Duration,
}

/// What `verify` concludes, and its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Exit 0: the read model equals its definition (pending work counted).
    Exact,
    /// Exit 1: real drift; the differences printed are real.
    Drift,
    /// Exit 3 (`--max-wait` only): no drift, but work pending in the snapshot
    /// was not done within the wait: folding or analytics are stuck or slow.
    Pending,
    /// Exit 4: no drift found among what this binary can read, but deltas of
    /// a newer format exist (a rolling upgrade): run the newer binary's verify.
    Incomplete,
}

impl Verdict {
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Exact => 0,
            Verdict::Drift => 1,
            Verdict::Pending => 3,
            Verdict::Incomplete => 4,
        }
    }
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.tables.iter().all(TableDrift::is_clean)
    }

    pub fn verdict(&self) -> Verdict {
        if !self.is_clean() {
            Verdict::Drift
        } else if self.newer_format_deltas > 0 {
            Verdict::Incomplete
        } else if self
            .still_pending
            .is_some_and(|p| p.deltas > 0 || p.terms > 0)
        {
            Verdict::Pending
        } else {
            Verdict::Exact
        }
    }

    pub fn render(&self) -> String {
        let mut out = format!(
            "{:<18} {:>10} {:>10} {:>9} {:>10}\n",
            "table", "live", "expected", "missing", "unexpected"
        );
        for t in &self.tables {
            out.push_str(&format!(
                "{:<18} {:>10} {:>10} {:>9} {:>10}{}\n",
                t.table,
                t.live_rows,
                t.expected_rows,
                t.missing,
                t.unexpected,
                if t.is_clean() { "" } else { "  DRIFT" }
            ));
        }
        for t in self.tables.iter().filter(|t| !t.is_clean()) {
            for row in &t.missing_examples {
                out.push_str(&format!(
                    "{}: expected but missing or different: {row}\n",
                    t.table
                ));
            }
            for row in &t.unexpected_examples {
                out.push_str(&format!("{}: present but not expected: {row}\n", t.table));
            }
        }
        out.push_str(&format!(
            "pending: {} delta(s) (oldest {:.1} s) and {} analytics term(s) (oldest {:.1} s), counted as part of the model\n",
            self.pending_deltas,
            self.pending_deltas_age_seconds,
            self.pending_terms,
            self.pending_terms_age_seconds
        ));
        if self.parked_deltas > 0 {
            out.push_str(&format!(
                "note: {} fold delta(s) parked (see `postgres-writer fold-deltas list`); their effects are missing until replayed\n",
                self.parked_deltas
            ));
        }
        if self.parked_terms > 0 {
            out.push_str(&format!(
                "note: {} analytics term(s) parked (see `postgres-writer requeue`); their rows are not recomputed\n",
                self.parked_terms
            ));
        }
        if self.newer_format_deltas > 0 {
            out.push_str(&format!(
                "note: {} delta(s) of a newer format than this binary reads ({}); the model lacks them\n",
                self.newer_format_deltas,
                crate::aggregates::DELTA_FORMAT
            ));
        }
        if let Some(p) = self.still_pending {
            out.push_str(&format!(
                "after waiting {:.1} s: {} delta(s) and {} analytics term(s) of the snapshot still pending\n",
                p.waited.as_secs_f64(),
                p.deltas,
                p.terms
            ));
        }
        out.push_str(match self.verdict() {
            Verdict::Exact => "verify: OK, no drift\n",
            Verdict::Drift => "verify: DRIFT found\n",
            Verdict::Pending => "verify: PENDING, not drift: work of the snapshot not done within --max-wait\n",
            Verdict::Incomplete => "verify: INCOMPLETE, no drift among what this binary reads; deltas of a newer format exist\n",
        });
        out
    }
}

/// Settings for a transaction that evaluates the `*_expected` views over
/// whole tables. The planner overestimates their nested aggregates by orders
/// of magnitude, so JIT compilation would cost more than the query (1 s of
/// 2 s per table on 200,000 events); more sort memory keeps sorts off disk.
/// A statement bound (ADR 0019) is lifted: a whole-table comparison takes
/// long by nature.
async fn tune_for_whole_tables(tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
    for setting in [
        "SET LOCAL jit = off",
        "SET LOCAL work_mem = '64MB'",
        "SET LOCAL statement_timeout = 0",
    ] {
        sqlx::query(setting).execute(&mut **tx).await?;
    }
    Ok(())
}

/// The tables the fold and analytics write: `verify` evaluates them as they
/// will be once the snapshot's pending work is done, in temporary copies
/// that shadow them (ADR 0019).
const MODELLED_TABLES: [&str; 8] = [
    "position",
    "vault",
    "term",
    "analytics_queue",
    "triple_vault",
    "triple_term",
    "predicate_object",
    "subject_predicate",
];

/// Compares every derived table with its definition, in one snapshot, with
/// the work pending in that snapshot counted as part of the model (ADR
/// 0019): the live base and analytics tables are copied into temporary
/// tables that shadow them, the snapshot's unfolded deltas are folded into
/// the copies and its queued analytics terms recomputed there, with the
/// worker's own statements; then the copies are compared with the
/// definitions. Nothing outside the temporary tables is written and no row
/// lock is taken, so workers keep writing at full speed, and a difference
/// found is one no later fold or recomputation removes.
///
/// Runs on a connection of its own (closed after): the shadowing temporary
/// tables must exist before the worker's statements are first prepared on
/// it, and must not outlive it.
pub async fn verify(pool: &PgPool, show: i64) -> Result<VerifyReport, sqlx::Error> {
    let mut conn = pool.connect_options().connect().await?;
    let result = verify_on(&mut conn, show).await;
    let _ = conn.close().await;
    result
}

async fn verify_on(conn: &mut PgConnection, show: i64) -> Result<VerifyReport, sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await?;
    tune_for_whole_tables(&mut tx).await?;
    // Between statements verify decodes and merges every pending delta: give
    // that room, still bounded (it holds only ACCESS SHARE locks).
    sqlx::query("SET LOCAL idle_in_transaction_session_timeout = '5min'")
        .execute(&mut *tx)
        .await?;
    // The first query fixes the snapshot every later one reads.
    let schema: String = sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(&mut *tx)
        .await?;
    let mut report = VerifyReport::default();
    for table in MODELLED_TABLES {
        shadow(&mut tx, &schema, table).await?;
    }
    fold_pending_into_model(&mut tx, &schema, &mut report).await?;
    recompute_queued_into_model(&mut tx, &mut report).await?;
    for table in DERIVED_TABLES {
        report.tables.push(compare(&mut tx, table, show).await?);
    }
    tx.rollback().await?;
    Ok(report)
}

/// A temporary copy of `schema.table` named `table`, which unqualified names
/// resolve to from now on in this session (the temporary schema comes first).
async fn shadow(
    tx: &mut Transaction<'_, Postgres>,
    schema: &str,
    table: &str,
) -> Result<(), sqlx::Error> {
    let real = format!("{}.{}", quote_ident(schema), table);
    let columns: String = sqlx::query_scalar(
        "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute \
         WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = ''",
    )
    .bind(&real)
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query(&format!(
        "CREATE TEMP TABLE {table} (LIKE {real} INCLUDING DEFAULTS INCLUDING GENERATED \
         INCLUDING CONSTRAINTS INCLUDING INDEXES) ON COMMIT DROP"
    ))
    .execute(&mut **tx)
    .await?;
    sqlx::query(&format!(
        "INSERT INTO pg_temp.{table} ({columns}) SELECT {columns} FROM {real}"
    ))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Folds the snapshot's unfolded deltas into the shadowing copies with the
/// fold's own statements. Deltas that cannot be folded are left out and
/// counted with the parked ones; deltas of a newer format are counted apart.
async fn fold_pending_into_model(
    tx: &mut Transaction<'_, Postgres>,
    schema: &str,
    report: &mut VerifyReport,
) -> Result<(), sqlx::Error> {
    let s = quote_ident(schema);
    let rows = sqlx::query(&format!(
        "SELECT id, partition, created_at::text AS created_at, format, changes, \
                extract(epoch FROM clock_timestamp() - created_at)::float8 AS age_seconds \
         FROM {s}.fold_delta ORDER BY id"
    ))
    .fetch_all(&mut **tx)
    .await?;
    let mut deltas = Vec::with_capacity(rows.len());
    for row in &rows {
        let delta = crate::fold::StoredDelta {
            id: row.try_get("id")?,
            partition: row.try_get("partition")?,
            created_at: row.try_get("created_at")?,
            format: row.try_get("format")?,
            changes: row.try_get("changes")?,
            age_seconds: row.try_get("age_seconds")?,
        };
        if delta.format > crate::aggregates::DELTA_FORMAT {
            report.newer_format_deltas += 1;
        } else {
            report.pending_deltas_age_seconds =
                report.pending_deltas_age_seconds.max(delta.age_seconds);
            deltas.push(delta);
        }
    }
    report.pending_deltas = deltas.len() as i64;
    report.pending_deltas_upto = deltas.iter().map(|d| d.id).max();
    let applied = crate::fold::apply_isolating(tx, &deltas).await?;
    report.parked_deltas = applied.poisoned.len() as i64
        + sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {s}.fold_delta_parked"))
            .fetch_one(&mut **tx)
            .await?;
    Ok(())
}

/// Recomputes the analytics of every queued (not parked) term in the
/// shadowing copies, with the analytics workers' own statements.
async fn recompute_queued_into_model(
    tx: &mut Transaction<'_, Postgres>,
    report: &mut VerifyReport,
) -> Result<(), sqlx::Error> {
    let (queued, versions, oldest, parked): (Vec<String>, Vec<i64>, f64, i64) = {
        let row = sqlx::query(
            "SELECT coalesce(array_agg(term_id ORDER BY term_id) FILTER (WHERE parked_at IS NULL), '{}'), \
                    coalesce(array_agg(version ORDER BY term_id) FILTER (WHERE parked_at IS NULL), '{}'), \
                    coalesce(extract(epoch FROM clock_timestamp() - min(enqueued_at) FILTER (WHERE parked_at IS NULL)), 0)::float8, \
                    count(*) FILTER (WHERE parked_at IS NOT NULL) \
             FROM analytics_queue",
        )
        .fetch_one(&mut **tx)
        .await?;
        (
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            row.try_get(3)?,
        )
    };
    report.pending_term_versions = queued.iter().cloned().zip(versions).collect();
    report.pending_terms = queued.len() as i64;
    report.pending_terms_age_seconds = oldest;
    report.parked_terms = parked;
    for chunk in queued.chunks(1_000) {
        let terms: Vec<&str> = chunk.iter().map(String::as_str).collect();
        crate::analytics::recompute_terms(tx, &terms).await?;
    }
    Ok(())
}

/// One table's differences from its definition.
async fn compare(
    tx: &mut Transaction<'_, Postgres>,
    table: &DerivedTable,
    show: i64,
) -> Result<TableDrift, sqlx::Error> {
    let cols = table.columns.join(", ");
    // Each definition is evaluated once, into a temp table.
    let expected = format!("verify_{}", table.name);
    sqlx::query(&format!(
        "CREATE TEMP TABLE {expected} ON COMMIT DROP AS SELECT {cols} FROM {}",
        table.expected_view()
    ))
    .execute(&mut **tx)
    .await?;
    let count = |from: &str| format!("SELECT count(*) FROM {from}");
    let diff =
        |a: &str, b: &str| format!("SELECT {cols} FROM {a} EXCEPT ALL SELECT {cols} FROM {b}");
    let live_rows: i64 = sqlx::query_scalar(&count(table.name))
        .fetch_one(&mut **tx)
        .await?;
    let expected_rows: i64 = sqlx::query_scalar(&count(&expected))
        .fetch_one(&mut **tx)
        .await?;
    let missing_sql = diff(&expected, table.name);
    let unexpected_sql = diff(table.name, &expected);
    let mut drift = TableDrift {
        table: table.name,
        live_rows,
        expected_rows,
        ..Default::default()
    };
    for (sql, total, examples) in [
        (
            &missing_sql,
            &mut drift.missing,
            &mut drift.missing_examples,
        ),
        (
            &unexpected_sql,
            &mut drift.unexpected,
            &mut drift.unexpected_examples,
        ),
    ] {
        *total = sqlx::query_scalar(&format!("SELECT count(*) FROM ({sql}) d"))
            .fetch_one(&mut **tx)
            .await?;
        if *total > 0 {
            let rows = sqlx::query(&format!(
                "SELECT row_to_json(d)::text FROM ({sql}) d LIMIT $1"
            ))
            .bind(show)
            .fetch_all(&mut **tx)
            .await?;
            for row in rows {
                examples.push(row.try_get(0)?);
            }
        }
    }
    Ok(drift)
}

/// `--max-wait`: waits up to `max_wait` for the work pending in the verified
/// snapshot to be done by the workers: its deltas folded (or parked) and its
/// queued terms recomputed (their queue row gone or at a newer version).
/// Records what is left in `report.still_pending`. Newer deltas and terms
/// queued later do not count: under constant load this still ends.
pub async fn wait_for_pending(
    pool: &PgPool,
    report: &mut VerifyReport,
    max_wait: std::time::Duration,
) -> Result<(), sqlx::Error> {
    let started = std::time::Instant::now();
    let (terms, versions): (Vec<&str>, Vec<i64>) = report
        .pending_term_versions
        .iter()
        .map(|(t, v)| (t.as_str(), *v))
        .unzip();
    loop {
        let (deltas, left_terms): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM fold_delta WHERE id <= $1 AND format <= $2), \
                    (SELECT count(*) FROM unnest($3::text[], $4::int8[]) AS s(term_id, version) \
                     JOIN analytics_queue q ON q.term_id = s.term_id AND q.version = s.version)",
        )
        .bind(report.pending_deltas_upto.unwrap_or(0))
        .bind(crate::aggregates::DELTA_FORMAT)
        .bind(&terms)
        .bind(&versions)
        .fetch_one(pool)
        .await?;
        let waited = started.elapsed();
        if (deltas == 0 && left_terms == 0) || waited >= max_wait {
            report.still_pending = Some(StillPending {
                deltas,
                terms: left_terms,
                waited,
            });
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Rewrites derived tables from their definitions in one transaction. Writers
/// keep running: the exclusive locks make them wait, and their changes apply
/// on top of the rebuilt rows after the commit.
pub async fn rebuild(
    pool: &PgPool,
    analytics_only: bool,
) -> Result<Vec<(&'static str, u64)>, sqlx::Error> {
    let tables: Vec<&DerivedTable> = DERIVED_TABLES
        .iter()
        .filter(|t| t.analytics || !analytics_only)
        .collect();
    let mut tx = pool.begin().await?;
    tune_for_whole_tables(&mut tx).await?;
    let names: Vec<&str> = tables.iter().map(|t| t.name).collect();
    // Base tables (ADR 0015): folders stop first (they take fold_partition
    // before anything else); batches write atom/triple before fold_delta, so
    // fold_delta is locked after the derived tables. Every delta committed
    // before these locks has its events in what the rebuild reads, so the
    // deltas are dropped; later ones fold on top of the rebuilt rows.
    if !analytics_only {
        sqlx::query("LOCK TABLE fold_partition IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(&format!(
        "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
        names.join(", ")
    ))
    .execute(&mut *tx)
    .await?;
    if !analytics_only {
        sqlx::query("LOCK TABLE fold_delta IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM fold_delta")
            .execute(&mut *tx)
            .await?;
        // Parked deltas too: their events are read like the others', so a
        // later replay would apply them twice (ADR 0019).
        sqlx::query("DELETE FROM fold_delta_parked")
            .execute(&mut *tx)
            .await?;
    }
    // The queue too, before anything is read: a writer's enqueue waits for
    // this commit, so every queue row deleted below is covered by what the
    // rebuild reads (ADR 0012). Last, in the order writers and analytics
    // workers take these tables; EXCLUSIVE still lets /health read the queue.
    sqlx::query("LOCK TABLE analytics_queue IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("TRUNCATE {}", names.join(", ")))
        .execute(&mut *tx)
        .await?;
    let mut written = Vec::new();
    for table in tables {
        let cols = table.columns.join(", ");
        let select = format!("SELECT {cols} FROM {}", table.expected_view());
        let result = sqlx::query(&format!("INSERT INTO {} ({cols}) {select}", table.name))
            .execute(&mut *tx)
            .await?;
        written.push((table.name, result.rows_affected()));
    }
    // The rebuilt analytics reflect every change committed before this
    // transaction took its locks, and no writer could queue a term since, so
    // the queued terms are done.
    sqlx::query("DELETE FROM analytics_queue")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(written)
}

/// Row counts of the read model, for `summary` and the demo.
pub async fn summary(pool: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let tables = EVENT_TABLES
        .iter()
        .copied()
        .chain(["dead_letters"])
        .chain(DERIVED_TABLES.iter().map(|t| t.name))
        .chain(["fold_delta", "analytics_queue"]);
    let mut out = Vec::new();
    for table in tables {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(pool)
            .await?;
        out.push((table.to_string(), n));
    }
    Ok(out)
}
