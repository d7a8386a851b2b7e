//! Folding (ADR 0015): batch transactions append insert-only deltas to
//! `fold_delta`; partition owners fold them into `position`, `vault`, `term`
//! and the analytics queue, so that no batch holds a hot-row lock.
//!
//! A term, its vaults and their positions belong to one partition
//! ([`partition_of`]). A fold transaction takes partitions with `FOR UPDATE
//! SKIP LOCKED` on `fold_partition` (a folder never waits for another), deletes
//! a bounded number of their deltas, merges them per key and writes the result
//! ([`crate::aggregates::Folded`]). The deletion and the effect commit
//! together: a delta is folded exactly once, and a crash mid-fold leaves it
//! for the next folder. Every `run` process folds; commands that must see the
//! base tables complete (`verify`, dead-letter replay) fold what is left first
//! ([`fold_until_empty`]).

use crate::aggregates::{Changes, Folded};
use crate::backoff;
use crate::failure::{self, Classify, Failure};
use crate::health::{Health, Source};
use crate::lifecycle::pause;
use crate::metrics::Metrics;
use crate::queries;
use sqlx::{PgPool, Postgres, Row, Transaction};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Fold partitions; migration 0010 creates exactly these `fold_partition` rows.
pub const PARTITIONS: i16 = 32;

/// The partition of a term: FNV-1a (32 bit) of its id, modulo [`PARTITIONS`].
/// Stable across builds and platforms: every binary must agree on it.
pub fn partition_of(term_id: &str) -> i16 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in term_id.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash % PARTITIONS as u32) as i16
}

/// Writes one batch's deltas (one row per partition) in its transaction.
pub async fn insert_deltas(
    tx: &mut Transaction<'_, Postgres>,
    deltas: BTreeMap<i16, Folded>,
    trace_context: Option<&str>,
) -> Result<u64, sqlx::Error> {
    let mut partitions = Vec::with_capacity(deltas.len());
    let mut texts = Vec::with_capacity(deltas.len());
    for (partition, folded) in deltas {
        if folded.is_empty() {
            continue;
        }
        let mut changes = folded.into_changes();
        changes.trace_context = trace_context.map(str::to_string);
        partitions.push(partition);
        texts.push(serde_json::to_string(&changes).map_err(|e| sqlx::Error::Encode(e.into()))?);
    }
    if partitions.is_empty() {
        return Ok(0);
    }
    let written = sqlx::query(queries::INSERT_FOLD_DELTAS)
        .bind(partitions)
        .bind(texts)
        .execute(&mut **tx)
        .await?;
    Ok(written.rows_affected())
}

/// How a fold takes its partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Up to this many partitions with deltas, skipping those held by others.
    SkipLocked(i64),
    /// Every partition with deltas, waiting for those held by others.
    Wait,
}

/// What one fold transaction did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FoldReport {
    pub partitions: usize,
    pub deltas: u64,
    pub terms_enqueued: u64,
    /// Per delta: seconds from its insert to this fold's commit.
    pub delays: Vec<f64>,
}

/// One fold transaction: takes partitions, folds up to `max_deltas` of
/// their deltas, commits. An empty report when nothing could be taken.
pub async fn fold_once(
    pool: &PgPool,
    claim: Claim,
    max_deltas: i64,
) -> Result<FoldReport, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let partitions: Vec<i16> = match claim {
        Claim::SkipLocked(n) => {
            sqlx::query_scalar(queries::CLAIM_FOLD_PARTITIONS)
                .bind(n)
                .fetch_all(&mut *tx)
                .await?
        }
        Claim::Wait => {
            sqlx::query_scalar(queries::CLAIM_FOLD_PARTITIONS_WAITING)
                .fetch_all(&mut *tx)
                .await?
        }
    };
    if partitions.is_empty() {
        tx.rollback().await?;
        return Ok(FoldReport::default());
    }
    let taken = Instant::now();
    let mut report = fold_in(&mut tx, &partitions, max_deltas).await?;
    tx.commit().await?;
    let elapsed = taken.elapsed().as_secs_f64();
    for delay in &mut report.delays {
        *delay += elapsed;
    }
    Ok(report)
}

/// Folds up to `max_deltas` deltas of `partitions`, which this transaction
/// holds (row locks on `fold_partition`, or a table lock).
pub async fn fold_in(
    tx: &mut Transaction<'_, Postgres>,
    partitions: &[i16],
    max_deltas: i64,
) -> Result<FoldReport, sqlx::Error> {
    let rows = sqlx::query(queries::TAKE_FOLD_DELTAS)
        .bind(partitions)
        .bind(max_deltas)
        .fetch_all(&mut **tx)
        .await?;
    let mut report = FoldReport {
        partitions: partitions.len(),
        deltas: rows.len() as u64,
        ..Default::default()
    };
    let mut per_partition: BTreeMap<i16, i64> = BTreeMap::new();
    let mut folded = Folded::default();
    for row in &rows {
        let partition: i16 = row.try_get("partition")?;
        let text: &str = row.try_get("changes")?;
        let changes: Changes =
            serde_json::from_str(text).map_err(|e| sqlx::Error::Decode(e.into()))?;
        folded.merge(changes);
        *per_partition.entry(partition).or_default() += 1;
        report.delays.push(row.try_get("age_seconds")?);
    }
    report.terms_enqueued = folded.apply(tx).await?;
    if !per_partition.is_empty() {
        sqlx::query(queries::RECORD_FOLD)
            .bind(per_partition.keys().copied().collect::<Vec<_>>())
            .bind(per_partition.values().copied().collect::<Vec<_>>())
            .execute(&mut **tx)
            .await?;
    }
    Ok(report)
}

/// Folds every delta inside a transaction that holds `fold_partition` and
/// `fold_delta` locked in EXCLUSIVE mode (rollback): no folder or batch can
/// add or take deltas meanwhile. Returns the number of deltas folded.
pub async fn fold_all_in(tx: &mut Transaction<'_, Postgres>) -> Result<u64, sqlx::Error> {
    let all: Vec<i16> = (0..PARTITIONS).collect();
    let mut total = 0;
    loop {
        let report = fold_in(tx, &all, 5_000).await?;
        if report.deltas == 0 {
            return Ok(total);
        }
        total += report.deltas;
    }
}

/// Folds until no delta is left that existed when it started, waiting for
/// other folders where they hold a partition. Deltas written meanwhile may
/// remain (writers keep running; bounded so that it ends under constant
/// load). Returns the number of deltas folded here.
pub async fn fold_until_empty(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let Some(last) = sqlx::query_scalar::<_, Option<i64>>("SELECT max(id) FROM fold_delta")
        .fetch_one(pool)
        .await?
    else {
        return Ok(0);
    };
    let mut total = 0;
    loop {
        let report = fold_once(pool, Claim::Wait, 5_000).await?;
        total += report.deltas;
        let left: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM fold_delta WHERE id <= $1)")
                .bind(last)
                .fetch_one(pool)
                .await?;
        if !left {
            return Ok(total);
        }
        if report.deltas == 0 {
            // Held partitions were just released; take them on the next turn.
            tokio::task::yield_now().await;
        }
    }
}

/// Unfolded deltas and the age of the oldest, in seconds.
pub async fn stats(pool: &PgPool) -> Result<(i64, f64), sqlx::Error> {
    let row = sqlx::query(queries::FOLD_STATS).fetch_one(pool).await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// Settings of a process's fold loop.
#[derive(Debug, Clone)]
pub struct FoldSettings {
    /// Least time between the starts of two folds while deltas keep coming:
    /// more deltas per key merged into one row write, for a bounded delay.
    pub interval: Duration,
    /// How often to look for deltas written by other processes.
    pub poll_interval: Duration,
    pub max_partitions: i64,
    pub max_deltas: i64,
}

impl From<&crate::config::FoldArgs> for FoldSettings {
    fn from(a: &crate::config::FoldArgs) -> Self {
        FoldSettings {
            interval: Duration::from_millis(a.fold_interval_ms),
            poll_interval: Duration::from_millis(a.fold_poll_interval_ms),
            max_partitions: i64::from(a.fold_max_partitions),
            max_deltas: i64::from(a.fold_max_deltas),
        }
    }
}

/// The fold loop of a `run` process. Woken by `wake` after each local commit,
/// and every `poll_interval` for deltas of other processes. When `stop`
/// fires it waits for the `consumers` (their last batches commit deltas), folds
/// what it can take, and returns; deltas it could not take are durable and
/// folded by another process or at the next start.
pub async fn run_loop(
    pool: PgPool,
    settings: FoldSettings,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop: CancellationToken,
    wake: Arc<Notify>,
    consumers: TaskTracker,
) {
    let source = Source::fold();
    let mut failures = 0u32;
    let mut last_start: Option<Instant> = None;
    loop {
        let stopping = stop.is_cancelled();
        if stopping {
            consumers.wait().await;
        } else if let Some(wait) =
            last_start.and_then(|t| settings.interval.checked_sub(t.elapsed()))
        {
            pause(&stop, wait).await;
        }
        last_start = Some(Instant::now());
        let claim = Claim::SkipLocked(settings.max_partitions);
        match fold_once(&pool, claim, settings.max_deltas).await {
            Ok(report) => {
                failures = 0;
                health.clear(&source);
                if report.deltas > 0 {
                    record(&metrics, &report, last_start.map(|t| t.elapsed()));
                    // More may be waiting (other partitions, or the bound).
                    continue;
                }
                if stopping {
                    tracing::info!(
                        "fold loop stopped: every delta this process could take is folded"
                    );
                    return;
                }
            }
            Err(error) => {
                failures += 1;
                let failure = error.failure();
                if failure == Failure::Conflict {
                    tracing::debug!(%error, "fold conflict; retrying");
                } else {
                    failure::report_outage(&metrics, &health, &source, "fold", &error);
                }
                metrics.fold_failures.inc();
                if stopping && failures >= 3 {
                    tracing::warn!(%error, "fold loop stopping with deltas left; they are durable and folded by another worker or at the next start");
                    return;
                }
                let delay = backoff::jittered(
                    Duration::from_millis(50),
                    failures,
                    failure::MAX_OUTAGE_BACKOFF,
                );
                if stopping {
                    tokio::time::sleep(delay).await;
                } else {
                    pause(&stop, delay).await;
                }
                continue;
            }
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(settings.poll_interval) => {}
            _ = stop.cancelled() => {}
        }
    }
}

fn record(metrics: &Metrics, report: &FoldReport, duration: Option<Duration>) {
    metrics.fold_transactions.inc();
    metrics.fold_deltas.inc_by(report.deltas);
    for delay in &report.delays {
        metrics.fold_delay_seconds.observe(*delay);
    }
    if let Some(d) = duration {
        metrics.fold_duration.observe(d.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_in_range() {
        // Fixed values: a change would move terms between partitions while
        // older binaries still run (their deltas would meet other owners).
        assert_eq!(partition_of(""), 5);
        assert_eq!(partition_of(&format!("0x{:064x}", 1)), 2);
        assert_eq!(partition_of(&format!("0x{:064x}", 2)), 15);
        for n in 0..1000u32 {
            let p = partition_of(&format!("0x{n:064x}"));
            assert!((0..PARTITIONS).contains(&p));
        }
    }
}
