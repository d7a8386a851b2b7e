//! Folding (ADR 0015): batch transactions append insert-only deltas to
//! `fold_delta`; partition owners fold them into `position`, `vault`, `term`
//! and the analytics queue, so that no batch holds a hot-row lock.
//!
//! A term, its vaults and their positions belong to one partition
//! ([`crate::partition::partition_of`]). A fold transaction takes partitions with `FOR UPDATE
//! SKIP LOCKED` on `fold_partition` (a folder never waits for another), deletes
//! a bounded number of their deltas, merges them per key and writes the result
//! ([`crate::aggregates::Folded`]). The deletion and the effect commit
//! together: a delta is folded exactly once, and a crash mid-fold leaves it
//! for the next folder. Every `run` process folds; commands that must see the
//! base tables complete (`verify`, dead-letter replay) fold what is left first
//! ([`fold_until_empty`]).
//!
//! Operating it (ADR 0019): a delta that cannot be folded (undecodable, or
//! its statements fail with a data-class error) is parked in
//! `fold_delta_parked` by the fold that meets it, and the rest keeps folding;
//! deltas carry a format version ([`DELTA_FORMAT`]) and a binary folds only formats
//! it knows; a draining process folds only deltas that existed when its
//! drain began.

use crate::aggregates::{Changes, Folded, DELTA_FORMAT};

use crate::backoff::{self, Backoff};
use crate::failure::{self, Classify, Failure};
use crate::health::{Health, Source};
use crate::lifecycle::pause;
use crate::metrics::Metrics;
use crate::partition::PARTITIONS;
use crate::queries;
use sqlx::Acquire;
use sqlx::{PgPool, Postgres, Row, Transaction};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How a fold takes its partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Up to this many partitions with deltas, skipping those held by others.
    SkipLocked(i64),
    /// As [`Claim::SkipLocked`], of the partitions last folded at least
    /// `spacing` ago (the fold loop: FOLD_INTERVAL_MS).
    Due { partitions: i64, spacing: Duration },
    /// Every partition with deltas, waiting for those held by others.
    Wait,
}

/// What one fold transaction did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FoldReport {
    pub partitions: usize,
    /// Deltas taken from `fold_delta`: folded or parked.
    pub deltas: u64,
    /// Of those, parked because they cannot be folded.
    pub parked: u64,
    pub terms_enqueued: u64,
    /// Per folded delta: seconds from its insert to this fold's commit.
    pub delays: Vec<f64>,
}

/// One fold transaction: takes partitions, folds up to `max_deltas` of
/// their deltas, commits. An empty report when nothing could be taken.
pub async fn fold_once(
    pool: &PgPool,
    claim: Claim,
    max_deltas: i64,
) -> Result<FoldReport, sqlx::Error> {
    fold_once_upto(pool, claim, max_deltas, None).await
}

/// [`fold_once`] limited to deltas with an id up to `upto` (a drain's
/// horizon), when given.
pub async fn fold_once_upto(
    pool: &PgPool,
    claim: Claim,
    max_deltas: i64,
    upto: Option<i64>,
) -> Result<FoldReport, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let partitions: Vec<i16> = match claim {
        Claim::SkipLocked(n) => claim_partitions(&mut tx, n, None, upto).await?,
        Claim::Due {
            partitions,
            spacing,
        } => claim_partitions(&mut tx, partitions, Some(spacing), upto).await?,
        Claim::Wait => {
            sqlx::query_scalar(queries::CLAIM_FOLD_PARTITIONS_WAITING)
                .bind(DELTA_FORMAT)
                .fetch_all(&mut *tx)
                .await?
        }
    };
    if partitions.is_empty() {
        tx.rollback().await?;
        return Ok(FoldReport::default());
    }
    let taken = Instant::now();
    let mut report = fold_in_upto(&mut tx, &partitions, max_deltas, upto).await?;
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
    fold_in_upto(tx, partitions, max_deltas, None).await
}

/// One delta as read from `fold_delta`.
#[derive(Debug, Clone)]
pub struct StoredDelta {
    pub id: i64,
    pub partition: i16,
    /// As PostgreSQL prints it (read back by the same session when parked).
    pub created_at: String,
    pub format: i16,
    pub changes: String,
    pub age_seconds: f64,
}

impl StoredDelta {
    fn from_row(row: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        Ok(StoredDelta {
            id: row.try_get("id")?,
            partition: row.try_get("partition")?,
            created_at: row.try_get("created_at")?,
            format: row.try_get("format")?,
            changes: row.try_get("changes")?,
            age_seconds: row.try_get("age_seconds")?,
        })
    }

    /// Its changes, or why they cannot be read.
    pub fn decode(&self) -> Result<Changes, String> {
        serde_json::from_str(&self.changes).map_err(|e| {
            format!(
                "delta {} (format {}) does not decode: {e}",
                self.id, self.format
            )
        })
    }
}

/// Why a delta cannot be folded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poison {
    pub id: i64,
    /// `undecodable` or `data`.
    pub kind: &'static str,
    pub sqlstate: Option<String>,
    pub reason: String,
}

/// What [`apply_isolating`] did: the deltas applied, those that cannot be.
#[derive(Debug, Default)]
pub struct Applied {
    pub folded: Vec<i64>,
    pub poisoned: Vec<Poison>,
    pub terms_enqueued: u64,
}

/// Applies `deltas` merged, inside a savepoint. When the merged statements
/// fail with a data-class error, applies them one by one, each in its own
/// savepoint, to find those responsible: they are returned as poisoned and
/// the others applied. An undecodable delta is poisoned without a statement.
/// Any other error is returned (the caller's transaction rolls back and the
/// failure policy retries).
pub async fn apply_isolating(
    tx: &mut Transaction<'_, Postgres>,
    deltas: &[StoredDelta],
) -> Result<Applied, sqlx::Error> {
    let mut applied = Applied::default();
    let mut decoded: Vec<&StoredDelta> = Vec::with_capacity(deltas.len());
    let mut folded = Folded::default();
    for delta in deltas {
        match delta.decode() {
            Ok(changes) => {
                folded.merge(changes);
                decoded.push(delta);
            }
            Err(reason) => applied.poisoned.push(Poison {
                id: delta.id,
                kind: "undecodable",
                sqlstate: None,
                reason,
            }),
        }
    }
    match apply_in_savepoint(tx, &folded).await? {
        Ok(terms) => {
            applied.terms_enqueued = terms;
            applied.folded = decoded.iter().map(|d| d.id).collect();
            return Ok(applied);
        }
        Err(error) => {
            tracing::warn!(%error, deltas = decoded.len(),
                "a fold failed with a data error; applying its deltas one by one to park the culprits");
        }
    }
    for delta in decoded {
        let mut one = Folded::default();
        // Decoded above; decoding again keeps the common path free of copies.
        one.merge(delta.decode().map_err(|e| sqlx::Error::Decode(e.into()))?);
        let id = delta.id;
        match apply_in_savepoint(tx, &one).await? {
            Ok(terms) => {
                applied.terms_enqueued += terms;
                applied.folded.push(id);
            }
            Err(error) => applied.poisoned.push(Poison {
                id,
                kind: "data",
                sqlstate: Some(error.sqlstate().into_owned()),
                reason: format!(
                    "delta {id} fails with SQLSTATE {}: {}",
                    error.sqlstate(),
                    telemetry::ErrorChain(&error)
                ),
            }),
        }
    }
    Ok(applied)
}

/// Applies `folded` in a savepoint: `Ok(Err(e))` when it failed with a
/// data-class error (rolled back to the savepoint), `Err` for any other.
async fn apply_in_savepoint(
    tx: &mut Transaction<'_, Postgres>,
    folded: &Folded,
) -> Result<Result<u64, sqlx::Error>, sqlx::Error> {
    let mut savepoint = (&mut **tx).begin().await?;
    match folded.apply(&mut savepoint).await {
        Ok(terms) => {
            savepoint.commit().await?;
            Ok(Ok(terms))
        }
        Err(error) if error.failure() == Failure::Data => {
            savepoint.rollback().await?;
            Ok(Err(error))
        }
        Err(error) => Err(error),
    }
}

/// [`fold_in`] limited to deltas with an id up to `upto`, when given.
/// Deltas that cannot be folded are parked in this transaction.
pub async fn fold_in_upto(
    tx: &mut Transaction<'_, Postgres>,
    partitions: &[i16],
    max_deltas: i64,
    upto: Option<i64>,
) -> Result<FoldReport, sqlx::Error> {
    let rows = sqlx::query(queries::TAKE_FOLD_DELTAS)
        .bind(partitions)
        .bind(max_deltas)
        .bind(DELTA_FORMAT)
        .bind(upto)
        .fetch_all(&mut **tx)
        .await?;
    let deltas = rows
        .iter()
        .map(StoredDelta::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let mut report = FoldReport {
        partitions: partitions.len(),
        deltas: deltas.len() as u64,
        ..Default::default()
    };
    if deltas.is_empty() {
        return Ok(report);
    }
    let applied = apply_isolating(tx, &deltas).await?;
    report.terms_enqueued = applied.terms_enqueued;
    report.parked = applied.poisoned.len() as u64;
    if !applied.poisoned.is_empty() {
        park(tx, &deltas, &applied.poisoned).await?;
    }
    let poisoned: BTreeSet<i64> = applied.poisoned.iter().map(|p| p.id).collect();
    let mut per_partition: BTreeMap<i16, i64> = BTreeMap::new();
    for delta in deltas.iter().filter(|d| !poisoned.contains(&d.id)) {
        *per_partition.entry(delta.partition).or_default() += 1;
        report.delays.push(delta.age_seconds);
    }
    if !per_partition.is_empty() {
        sqlx::query(queries::RECORD_FOLD)
            .bind(per_partition.keys().copied().collect::<Vec<_>>())
            .bind(per_partition.values().copied().collect::<Vec<_>>())
            .execute(&mut **tx)
            .await?;
    }
    Ok(report)
}

/// Locks up to `n` partitions with deltas (see [`Claim`]).
async fn claim_partitions(
    tx: &mut Transaction<'_, Postgres>,
    n: i64,
    spacing: Option<Duration>,
    upto: Option<i64>,
) -> Result<Vec<i16>, sqlx::Error> {
    sqlx::query_scalar(queries::CLAIM_FOLD_PARTITIONS)
        .bind(n)
        .bind(DELTA_FORMAT)
        .bind(upto)
        .bind(spacing.map(|s| s.as_millis() as i64))
        .fetch_all(&mut **tx)
        .await
}

/// How long until a partition with deltas is due again (`spacing` after
/// its last fold): `None` when one is due now (held by another folder) or
/// none has deltas, or when that cannot be read.
async fn next_due(pool: &PgPool, spacing: Duration) -> Option<Duration> {
    let due_in: Option<i64> = sqlx::query_scalar(queries::FOLD_NEXT_DUE)
        .bind(spacing.as_millis() as i64)
        .bind(DELTA_FORMAT)
        .fetch_one(pool)
        .await
        .ok()
        .flatten();
    due_in
        .filter(|ms| *ms > 0)
        .map(|ms| Duration::from_millis(ms as u64))
}

/// Moves poisoned deltas (already deleted from `fold_delta` by this
/// transaction) into `fold_delta_parked` with their reasons.
async fn park(
    tx: &mut Transaction<'_, Postgres>,
    deltas: &[StoredDelta],
    poisoned: &[Poison],
) -> Result<(), sqlx::Error> {
    let by_id: BTreeMap<i64, &StoredDelta> = deltas.iter().map(|d| (d.id, d)).collect();
    let rows: Vec<(&StoredDelta, &Poison)> = poisoned
        .iter()
        .filter_map(|p| by_id.get(&p.id).map(|d| (*d, p)))
        .collect();
    for (delta, poison) in &rows {
        tracing::error!(id = delta.id, partition = delta.partition, kind = poison.kind,
            reason = %poison.reason,
            "fold delta parked: it cannot be folded; the rest keeps folding (`postgres-writer fold-deltas list`)");
    }
    sqlx::query(queries::PARK_FOLD_DELTAS)
        .bind(rows.iter().map(|(d, _)| d.id).collect::<Vec<_>>())
        .bind(rows.iter().map(|(d, _)| d.partition).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|(d, _)| d.created_at.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|(d, _)| d.format).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|(d, _)| d.changes.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|(_, p)| p.kind).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|(_, p)| p.sqlstate.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|(_, p)| p.reason.as_str())
                .collect::<Vec<_>>(),
        )
        .execute(&mut **tx)
        .await?;
    Ok(())
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

/// The newest delta id now (`None`: no delta): deltas up to it existed
/// when this was read; later ones may not.
pub async fn horizon(pool: &PgPool) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(queries::FOLD_HORIZON)
        .fetch_one(pool)
        .await
}

/// Folds until no delta is left that existed when it started, waiting for
/// other folders where they hold a partition. Deltas written meanwhile may
/// remain (writers keep running; bounded so that it ends under constant
/// load), as do deltas of a newer format. Returns the number of deltas
/// folded (or parked) here.
pub async fn fold_until_empty(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let Some(last) = horizon(pool).await? else {
        return Ok(0);
    };
    let mut total = 0;
    loop {
        let report = fold_once(pool, Claim::Wait, 5_000).await?;
        total += report.deltas;
        let left: bool = sqlx::query_scalar(queries::FOLD_DELTAS_LEFT)
            .bind(last)
            .bind(DELTA_FORMAT)
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
    let backlog = backlog(pool).await?;
    Ok((backlog.pending, backlog.lag_seconds))
}

/// The fold's backlog (all processes).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Backlog {
    /// Deltas this binary can fold, not yet folded.
    pub pending: i64,
    /// Age of the oldest of them, in seconds.
    pub lag_seconds: f64,
    /// Deltas of a newer format, left for a newer binary.
    pub newer_format: i64,
    /// Deltas parked because they cannot be folded.
    pub parked: i64,
}

pub async fn backlog(pool: &PgPool) -> Result<Backlog, sqlx::Error> {
    let row = sqlx::query(queries::FOLD_STATS)
        .bind(DELTA_FORMAT)
        .fetch_one(pool)
        .await?;
    Ok(Backlog {
        pending: row.try_get(0)?,
        lag_seconds: row.try_get(1)?,
        newer_format: row.try_get(2)?,
        parked: row.try_get(3)?,
    })
}

/// Publishes the backlog in the metrics and `/health` (the monitor's turn).
pub async fn report_backlog(
    pool: &PgPool,
    metrics: &Metrics,
    health: &Health,
) -> Result<Backlog, sqlx::Error> {
    let b = backlog(pool).await?;
    metrics.fold_pending_deltas.set(b.pending);
    metrics.fold_lag_seconds.set(b.lag_seconds);
    metrics.fold_parked_deltas.set(b.parked);
    metrics.fold_newer_format_deltas.set(b.newer_format);
    health.set_fold(crate::health::FoldHealth {
        pending_deltas: b.pending,
        lag_seconds: b.lag_seconds,
        parked_deltas: b.parked,
        newer_format_deltas: b.newer_format,
    });
    Ok(b)
}

/// A parked delta, for `fold-deltas list`.
#[derive(Debug, Clone)]
pub struct ParkedDelta {
    pub id: i64,
    pub partition: i16,
    pub created_at: String,
    pub parked_at: String,
    pub format: i16,
    pub kind: String,
    pub sqlstate: Option<String>,
    pub reason: String,
    pub bytes: i64,
}

/// Parked deltas, oldest first.
pub async fn list_parked(pool: &PgPool, limit: i64) -> Result<Vec<ParkedDelta>, sqlx::Error> {
    let rows = sqlx::query(queries::SELECT_PARKED_FOLD_DELTAS)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(ParkedDelta {
                id: r.try_get("id")?,
                partition: r.try_get("partition")?,
                created_at: r.try_get("created_at")?,
                parked_at: r.try_get("parked_at")?,
                format: r.try_get("format")?,
                kind: r.try_get("kind")?,
                sqlstate: r.try_get("sqlstate")?,
                reason: r.try_get("reason")?,
                bytes: r.try_get("bytes")?,
            })
        })
        .collect()
}

/// Moves parked deltas (all when `ids` is None) back into `fold_delta`, then
/// folds what existed (this binary's formats). A delta that still cannot be
/// folded is parked again, with its new reason. Returns the ids moved back.
pub async fn replay_parked(pool: &PgPool, ids: Option<&[i64]>) -> Result<Vec<i64>, sqlx::Error> {
    let moved: Vec<i64> = sqlx::query_scalar(queries::REPLAY_PARKED_FOLD_DELTAS)
        .bind(ids)
        .fetch_all(pool)
        .await?;
    if !moved.is_empty() {
        fold_until_empty(pool).await?;
    }
    Ok(moved)
}

/// Settings of a process's fold loop.
#[derive(Debug, Clone)]
pub struct FoldSettings {
    /// Least time between two folds of one partition (all processes
    /// together) while deltas keep coming: more deltas per key merged into
    /// one row write, for a bounded delay.
    pub interval: Duration,
    /// How often to look for deltas written by other processes.
    pub poll_interval: Duration,
    pub max_partitions: i64,
    pub max_deltas: i64,
}

/// Failures in a row after which a draining fold loop gives up.
const DRAIN_FAILURES: u32 = 3;

/// The fold loop of a `run` process. Woken by `wake` after each local commit,
/// and every `poll_interval` for deltas of other processes. When `stop`
/// fires it waits for the `consumers` (their last batches commit deltas),
/// reads the drain's horizon (the newest delta id then), folds what it can
/// take up to it, and returns: deltas other processes write during the drain
/// are theirs to fold, so the drain ends however fast they write (ADR 0019).
/// Deltas it could not take are durable and folded by another process or at
/// the next start.
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
    let mut backoff = Backoff::new(backoff::FOLD);
    // Set once the drain began: Some(horizon), None inside when no delta existed.
    let mut drain: Option<Option<i64>> = None;
    loop {
        let stopping = stop.is_cancelled();
        if stopping && drain.is_none() {
            // Draining: give up after a few failures, with short pauses.
            backoff.set_policy(backoff::FOLD_DRAIN);
            consumers.wait().await;
            match horizon(&pool).await {
                Ok(None) => {
                    tracing::info!("fold loop stopped: no delta left");
                    return;
                }
                Ok(h) => {
                    tracing::info!(
                        horizon = h,
                        "draining the fold: deltas up to the horizon only"
                    );
                    drain = Some(h);
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    metrics.fold_failures.inc();
                    if backoff.failures() >= DRAIN_FAILURES {
                        tracing::warn!(%error, "fold loop stopping with deltas left; they are durable and folded by another worker or at the next start");
                        return;
                    }
                    tokio::time::sleep(delay).await;
                    continue;
                }
            }
        }
        let started = Instant::now();
        // Draining: whatever it can take now, however recently folded.
        let claim = match drain {
            Some(_) => Claim::SkipLocked(settings.max_partitions),
            None => Claim::Due {
                partitions: settings.max_partitions,
                spacing: settings.interval,
            },
        };
        let upto = drain.flatten();
        match fold_once_upto(&pool, claim, settings.max_deltas, upto).await {
            Ok(report) => {
                backoff.reset();
                health.clear(&source);
                if report.deltas > 0 {
                    record(&metrics, &report, Some(started.elapsed()));
                    // More may be waiting (other partitions, or the bound).
                    continue;
                }
                if drain.is_some() {
                    tracing::info!(
                        "fold loop stopped: every delta up to the drain's horizon this process could take is folded"
                    );
                    return;
                }
            }
            Err(error) => {
                let delay = backoff.next_delay();
                let failure = error.failure();
                if failure == Failure::Conflict {
                    tracing::debug!(%error, "fold conflict; retrying");
                } else {
                    failure::report_outage(&metrics, &health, &source, "fold", &error);
                }
                metrics.fold_failures.inc();
                if drain.is_some() && backoff.failures() >= DRAIN_FAILURES {
                    tracing::warn!(%error, "fold loop stopping with deltas left; they are durable and folded by another worker or at the next start");
                    return;
                }
                if drain.is_some() {
                    tokio::time::sleep(delay).await;
                } else {
                    pause(&stop, delay).await;
                }
                continue;
            }
        }
        if stop.is_cancelled() {
            continue;
        }
        // Deltas folded too recently to fold again: sleep until they are due
        // (at most FOLD_INTERVAL_MS). Otherwise, until this process commits
        // a batch, or a poll for other processes' deltas.
        if let Some(due_in) = next_due(&pool, settings.interval).await {
            pause(&stop, due_in.min(settings.poll_interval)).await;
            continue;
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
    metrics.fold_deltas.inc_by(report.deltas - report.parked);
    metrics.fold_parked.inc_by(report.parked);
    for delay in &report.delays {
        metrics.fold_delay_seconds.observe(*delay);
    }
    if let Some(d) = duration {
        metrics.fold_duration.observe(d.as_secs_f64());
    }
}
