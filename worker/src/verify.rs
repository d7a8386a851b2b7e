//! `verify` and `rebuild`: compare or replace every derived table with its
//! from-scratch definition (the `*_expected` views of migration 0003). One
//! table-driven path for all tables.

use sqlx::{PgPool, Postgres, Row, Transaction};

/// A derived table and the columns that define it.
#[derive(Debug, Clone, Copy)]
pub struct DerivedTable {
    pub name: &'static str,
    /// Primary key columns.
    pub key: &'static [&'static str],
    /// Columns compared by `verify` and written by `rebuild`.
    pub columns: &'static [&'static str],
    /// Level 3 (eventually consistent; exact once the analytics queue is empty).
    pub analytics: bool,
}

impl DerivedTable {
    pub fn expected_view(&self) -> String {
        format!("{}_expected", self.name)
    }
}

/// The event tables (level 0); every row carries (network, block_number).
pub const EVENT_TABLES: [&str; 6] = [
    "atom_created_events",
    "triple_created_events",
    "deposited_events",
    "redeemed_events",
    "share_price_changed_events",
    "generic_events",
];

/// Every derived table, in dependency order.
pub const DERIVED_TABLES: &[DerivedTable] = &[
    DerivedTable {
        name: "atom",
        key: &["term_id"],
        columns: &[
            "term_id",
            "creator_id",
            "wallet_id",
            "data",
            "raw_data",
            "block_number",
            "log_index",
            "transaction_hash",
            "created_at",
        ],
        analytics: false,
    },
    DerivedTable {
        name: "triple",
        key: &["term_id"],
        columns: &[
            "term_id",
            "subject_id",
            "predicate_id",
            "object_id",
            "creator_id",
            "counter_term_id",
            "block_number",
            "log_index",
            "transaction_hash",
            "created_at",
        ],
        analytics: false,
    },
    DerivedTable {
        name: "position",
        key: &["account_id", "term_id", "curve_id"],
        columns: &[
            "account_id",
            "term_id",
            "curve_id",
            "shares",
            "total_deposit_assets_after_total_fees",
            "total_redeem_assets_for_receiver",
            "block_number",
            "log_index",
            "transaction_hash",
        ],
        analytics: false,
    },
    DerivedTable {
        name: "vault",
        key: &["term_id", "curve_id"],
        columns: &[
            "term_id",
            "curve_id",
            "total_shares",
            "total_assets",
            "current_share_price",
            "vault_type",
            "position_count",
            "price_block_number",
            "price_log_index",
            "price_transaction_hash",
        ],
        analytics: false,
    },
    DerivedTable {
        name: "term",
        key: &["id"],
        columns: &[
            "id",
            "type",
            "atom_id",
            "triple_id",
            "total_assets",
            "total_market_cap",
        ],
        analytics: false,
    },
    DerivedTable {
        name: "triple_vault",
        key: &["term_id", "counter_term_id", "curve_id"],
        columns: &[
            "term_id",
            "counter_term_id",
            "curve_id",
            "total_shares",
            "total_assets",
            "position_count",
            "market_cap",
        ],
        analytics: true,
    },
    DerivedTable {
        name: "triple_term",
        key: &["term_id", "counter_term_id"],
        columns: &[
            "term_id",
            "counter_term_id",
            "total_assets",
            "total_market_cap",
            "total_position_count",
            "subject_id",
            "predicate_id",
            "object_id",
        ],
        analytics: true,
    },
    DerivedTable {
        name: "predicate_object",
        key: &["predicate_id", "object_id"],
        columns: &[
            "predicate_id",
            "object_id",
            "triple_count",
            "total_position_count",
            "total_market_cap",
        ],
        analytics: true,
    },
    DerivedTable {
        name: "subject_predicate",
        key: &["subject_id", "predicate_id"],
        columns: &[
            "subject_id",
            "predicate_id",
            "triple_count",
            "total_position_count",
            "total_market_cap",
        ],
        analytics: true,
    },
];

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
    pub analytics_pending: i64,
    /// Deltas folded by `verify` itself before it compared (ADR 0015).
    pub folded_first: u64,
    /// Deltas committed after that fold, not yet folded in the snapshot compared
    /// (base tables are exact once folded; writers still running add these).
    pub fold_pending: i64,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.tables.iter().all(TableDrift::is_clean)
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
        if self.folded_first > 0 {
            out.push_str(&format!(
                "note: folded {} pending delta(s) into the base tables before comparing\n",
                self.folded_first
            ));
        }
        if self.fold_pending > 0 {
            out.push_str(&format!(
                "note: {} delta(s) committed during verify are not yet folded; base tables are exact once they are\n",
                self.fold_pending
            ));
        }
        if self.analytics_pending > 0 {
            out.push_str(&format!(
                "note: {} term(s) still on the analytics queue; analytics tables are exact once it is empty\n",
                self.analytics_pending
            ));
        }
        out.push_str(if self.is_clean() {
            "verify: OK, no drift\n"
        } else {
            "verify: DRIFT found\n"
        });
        out
    }
}

/// Settings for a transaction that evaluates the `*_expected` views over
/// whole tables. The planner overestimates their nested aggregates by orders
/// of magnitude, so JIT compilation would cost more than the query (1 s of
/// 2 s per table on 200,000 events); more sort memory keeps sorts off disk.
async fn tune_for_whole_tables(tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
    sqlx::query("SET LOCAL jit = off")
        .execute(&mut **tx)
        .await?;
    sqlx::query("SET LOCAL work_mem = '64MB'")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Compares every derived table with its definition, in one snapshot. Folds
/// the pending deltas first (waiting for folders that hold a partition): the
/// base tables are exact once folded, not before (ADR 0015).
pub async fn verify(pool: &PgPool, show: i64) -> Result<VerifyReport, sqlx::Error> {
    let folded_first = crate::fold::fold_until_empty(pool).await?;
    let mut tx = pool.begin().await?;
    // One snapshot for every comparison; nothing is written but temp tables,
    // and the transaction is rolled back.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await?;
    tune_for_whole_tables(&mut tx).await?;
    let mut report = VerifyReport {
        folded_first,
        ..VerifyReport::default()
    };
    for table in DERIVED_TABLES {
        let cols = table.columns.join(", ");
        // Each definition is evaluated once, into a temp table.
        let expected = format!("verify_{}", table.name);
        sqlx::query(&format!(
            "CREATE TEMP TABLE {expected} ON COMMIT DROP AS SELECT {cols} FROM {}",
            table.expected_view()
        ))
        .execute(&mut *tx)
        .await?;
        let count = |from: &str| format!("SELECT count(*) FROM {from}");
        let diff =
            |a: &str, b: &str| format!("SELECT {cols} FROM {a} EXCEPT ALL SELECT {cols} FROM {b}");
        let live_rows: i64 = sqlx::query_scalar(&count(table.name))
            .fetch_one(&mut *tx)
            .await?;
        let expected_rows: i64 = sqlx::query_scalar(&count(&expected))
            .fetch_one(&mut *tx)
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
                .fetch_one(&mut *tx)
                .await?;
            if *total > 0 {
                let rows = sqlx::query(&format!(
                    "SELECT row_to_json(d)::text FROM ({sql}) d LIMIT $1"
                ))
                .bind(show)
                .fetch_all(&mut *tx)
                .await?;
                for row in rows {
                    examples.push(row.try_get(0)?);
                }
            }
        }
        report.tables.push(drift);
    }
    report.analytics_pending = sqlx::query_scalar("SELECT count(*) FROM analytics_queue")
        .fetch_one(&mut *tx)
        .await?;
    report.fold_pending = sqlx::query_scalar("SELECT count(*) FROM fold_delta")
        .fetch_one(&mut *tx)
        .await?;
    tx.rollback().await?;
    Ok(report)
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
