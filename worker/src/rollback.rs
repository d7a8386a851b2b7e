//! Chain reorganisations: `postgres-writer rollback --network N --to-block B`
//! removes that network's events above block B and recomputes every derived
//! row they touched (analytics included) from the remaining events, in one
//! transaction. Entries that arrive again afterwards apply normally (their
//! event rows are gone, so they are new again). rindexer's own reorg notices
//! use the same removal, narrowed to one stream's earlier entries
//! ([`crate::reorg`], ADR 0018).

use crate::analytics;
use crate::catalog::{DERIVED_TABLES, EVENT_TABLES};
use crate::failure::{self, ConflictRetry, Policy};
use crate::queries;
use sqlx::{PgPool, Postgres, Row, Transaction};

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
    /// The first removed events (at most [`REMOVED_SAMPLE`]), for the log and
    /// the reorg span (ADR 0018).
    pub removed_sample: Vec<RemovedEvent>,
    /// Times the transaction was rolled back by a deadlock or serialization
    /// failure and run again (0 when it takes the global lock order).
    pub conflict_retries: u32,
}

/// How many removed events a report names one by one.
pub const REMOVED_SAMPLE: usize = 200;

/// One removed event and the stream entry it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedEvent {
    pub table: &'static str,
    pub stream: String,
    pub entry_id: String,
    pub item_index: i32,
    pub transaction_hash: String,
    pub log_index: i64,
    pub block_number: i64,
}

/// The events a removal takes away: the network's events at or above
/// `min_block`; with `before_entry`, only those of that stream's entries
/// before that entry id (a reorg notice's fence, ADR 0018).
#[derive(Debug, Clone, Copy)]
pub struct Removal<'a> {
    pub network: &'a str,
    pub min_block: i64,
    pub before_entry: Option<(&'a str, &'a str)>,
}

impl RollbackReport {
    /// Events removed in all event tables.
    pub fn events_removed_total(&self) -> u64 {
        self.events_removed.iter().map(|(_, n)| n).sum()
    }
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
            backoff: crate::backoff::ROLLBACK_CONFLICT,
        },
        outages: None,
    };
    let done = failure::retry(&policy, || async {
        let mut tx = pool.begin().await?;
        let removal = Removal {
            network,
            min_block: to_block.saturating_add(1),
            before_entry: None,
        };
        let report = remove_and_recompute(&mut tx, &removal).await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>(report)
    })
    .await?;
    Ok(RollbackReport {
        conflict_retries: done.conflict_retries,
        ..done.value
    })
}

/// Removes the events `removal` selects and recomputes every derived row
/// they touched (pending fold deltas first, analytics included), inside `tx`.
pub async fn remove_and_recompute(
    tx: &mut Transaction<'_, Postgres>,
    removal: &Removal<'_>,
) -> Result<RollbackReport, sqlx::Error> {
    let (stream, before) = match removal.before_entry {
        Some((stream, entry)) => (Some(stream), Some(entry)),
        None => (None, None),
    };
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
        .bind(removal.network)
        .bind(removal.min_block)
        .bind(stream)
        .bind(before)
        .execute(&mut **tx)
        .await?;

    let mut report = RollbackReport::default();
    for table in EVENT_TABLES {
        let delete = format!(
            "DELETE FROM {table} WHERE network = $1 AND block_number >= $2 \
             AND ($3::text IS NULL OR (stream = $3 AND stream_entry_position(entry_id) < stream_entry_position($4)))"
        );
        if stream.is_none() {
            // A manual rollback can remove millions of events: count them only.
            let removed = sqlx::query(&delete)
                .bind(removal.network)
                .bind(removal.min_block)
                .bind(stream)
                .bind(before)
                .execute(&mut **tx)
                .await?
                .rows_affected();
            report.events_removed.push((table, removed));
            continue;
        }
        // A reorg's branch is a few blocks of one stream: name what it removes.
        let removed = sqlx::query(&format!(
            "{delete} RETURNING stream, entry_id, item_index, transaction_hash, log_index, block_number"
        ))
        .bind(removal.network)
        .bind(removal.min_block)
        .bind(stream)
        .bind(before)
        .fetch_all(&mut **tx)
        .await?;
        for row in removed
            .iter()
            .take(REMOVED_SAMPLE.saturating_sub(report.removed_sample.len()))
        {
            report.removed_sample.push(RemovedEvent {
                table,
                stream: row.try_get(0)?,
                entry_id: row.try_get(1)?,
                item_index: row.try_get(2)?,
                transaction_hash: row.try_get(3)?,
                log_index: row.try_get(4)?,
                block_number: row.try_get(5)?,
            });
        }
        report.events_removed.push((table, removed.len() as u64));
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
