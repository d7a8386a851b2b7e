//! Chain reorganisations: `postgres-writer rollback --network N --to-block B`
//! removes that network's events above block B and recomputes every derived
//! row they touched (analytics included) from the remaining events, in one
//! transaction. Entries that arrive again afterwards apply normally (their
//! event rows are gone, so they are new again).

use crate::analytics;
use crate::failure::{self, ConflictRetry, Policy};
use crate::queries;
use crate::verify::{DERIVED_TABLES, EVENT_TABLES};
use sqlx::{PgPool, Postgres, Row, Transaction};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("this database holds network {bound:?}, not {requested:?}: nothing rolled back")]
    OtherNetwork { bound: String, requested: String },
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RollbackReport {
    /// Events removed per event table.
    pub events_removed: Vec<(&'static str, u64)>,
    /// Derived rows rewritten (deleted and recomputed) per base table.
    pub rows_recomputed: Vec<(&'static str, u64)>,
    /// Triples whose analytics were recomputed.
    pub triples_recomputed: usize,
    /// Times the transaction was rolled back by a deadlock or serialization
    /// failure and run again (0 when it takes the global lock order).
    pub conflict_retries: u32,
}

impl RollbackReport {
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (table, n) in &self.events_removed {
            out.push_str(&format!("removed   {table:<28} {n:>10}\n"));
        }
        for (table, n) in &self.rows_recomputed {
            out.push_str(&format!("recomputed {table:<27} {n:>10}\n"));
        }
        out.push_str(&format!(
            "recomputed analytics of {} triple(s)\n",
            self.triples_recomputed
        ));
        if self.conflict_retries > 0 {
            out.push_str(&format!(
                "run again after {} deadlock(s) or serialization failure(s)\n",
                self.conflict_retries
            ));
        }
        out
    }
}

/// Runs the rollback, retrying on deadlock with writers.
pub async fn rollback(
    pool: &PgPool,
    network: &str,
    to_block: i64,
) -> Result<RollbackReport, RollbackError> {
    if let Some(bound) = crate::network::database_network(pool).await? {
        if bound != network {
            return Err(RollbackError::OtherNetwork {
                bound,
                requested: network.to_string(),
            });
        }
    }
    let policy = Policy {
        conflicts: ConflictRetry {
            max_attempts: 10,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
        },
        outages: None,
    };
    let done = failure::retry(&policy, || async {
        let mut tx = pool.begin().await?;
        let report = rollback_in(&mut tx, network, to_block).await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>(report)
    })
    .await?;
    Ok(RollbackReport {
        conflict_retries: done.conflict_retries,
        ..done.value
    })
}

async fn rollback_in(
    tx: &mut Transaction<'_, Postgres>,
    network: &str,
    to_block: i64,
) -> Result<RollbackReport, sqlx::Error> {
    // Writers wait (readers do not) while the chain is rewound.
    let base: Vec<_> = DERIVED_TABLES.iter().filter(|t| !t.analytics).collect();
    // Folders first (they start with fold_partition), then in the order
    // batches take them: events, atom/triple, fold_delta (ADR 0015). The
    // analytics tables in the order analytics transactions lock them
    // (lock_analytics_tables.sql, ADR 0002).
    let mut locked: Vec<&str> = vec!["fold_partition"];
    locked.extend(EVENT_TABLES);
    locked.extend(DERIVED_TABLES.iter().map(|t| t.name));
    locked.push("fold_delta");
    locked.push("analytics_queue");
    sqlx::query(&format!(
        "LOCK TABLE {} IN EXCLUSIVE MODE",
        locked.join(", ")
    ))
    .execute(&mut **tx)
    .await?;
    // The base tables hold every committed effect once folded; the keys
    // recomputed below are then exact.
    crate::fold::fold_all_in(tx).await?;
    sqlx::query(queries::ROLLBACK_COLLECT_KEYS)
        .bind(network)
        .bind(to_block)
        .execute(&mut **tx)
        .await?;

    let mut report = RollbackReport::default();
    for table in EVENT_TABLES {
        let removed = sqlx::query(&format!(
            "DELETE FROM {table} WHERE network = $1 AND block_number > $2"
        ))
        .bind(network)
        .bind(to_block)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        report.events_removed.push((table, removed));
    }

    // Base tables: delete the touched keys, re-insert them from the definitions.
    for table in base {
        let key = table.key.join(", ");
        let key_columns = ["k1", "k2", "k3"][..table.key.len()].join(", ");
        let touched = format!(
            "({key}) IN (SELECT {key_columns} FROM rollback_keys WHERE derived = '{}')",
            table.name
        );
        let deleted = sqlx::query(&format!("DELETE FROM {} WHERE {touched}", table.name))
            .execute(&mut **tx)
            .await?
            .rows_affected();
        let cols = table.columns.join(", ");
        let inserted = sqlx::query(&format!(
            "INSERT INTO {} ({cols}) SELECT {cols} FROM {} WHERE {touched}",
            table.name,
            table.expected_view()
        ))
        .execute(&mut **tx)
        .await?
        .rows_affected();
        report
            .rows_recomputed
            .push((table.name, deleted.max(inserted)));
    }

    // Analytics of every triple whose own or counter vault, or existence, changed.
    let terms: Vec<String> = sqlx::query("SELECT k1 FROM rollback_keys WHERE derived = 'term'")
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    let refs: Vec<&str> = terms.iter().map(String::as_str).collect();
    report.triples_recomputed = analytics::recompute_terms(tx, &refs).await?;
    Ok(report)
}
