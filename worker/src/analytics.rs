//! Analytics: keeps the triple-level tables (`triple_vault`, `triple_term`,
//! `predicate_object`, `subject_predicate`) current from the analytics queue
//! (transactional outbox, contract §3 level 3 and §4).
//!
//! Per batch: claim due terms for a lease (FOR UPDATE SKIP LOCKED, a short
//! transaction of its own, so writers never wait for analytics work), then in
//! one transaction lock the affected pair rows in key order, recompute the
//! affected triples and pairs with a handful of set-based statements, and
//! delete the claimed queue rows whose version did not move and that still
//! carry this claim's token (a lease another worker took over is not ours,
//! ADR 0012), commit. A failing batch is retried term by term so that one bad
//! term cannot hold back the rest; a failing term is retried with jittered
//! exponential backoff and parked after the configured number of attempts.
//! Only a data error (SQLSTATE class 22 or 23) is a term's failure. An outage
//! or a deadlock/serialization failure that outlasts its reruns (see
//! [`crate::failure`]) is not: it costs no attempt, the claims are released,
//! and the loop waits it out, unready.

use crate::backoff::{self, Backoff, BackoffPolicy};
use crate::failure::{self, classify, ConflictRetry, Failure, OutageRetry, Policy};
use crate::health::{Health, Source};
use crate::lifecycle::pause;
use crate::metrics::Metrics;
use crate::queries;
use crate::ratelimit::RateLimit;
use sqlx::{PgPool, Postgres, Row, Transaction};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Tuning of the analytics loop (built from the command line by `config`).
#[derive(Debug, Clone)]
pub struct AnalyticsSettings {
    pub batch_size: i64,
    pub poll_interval: Duration,
    pub max_attempts: i32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub max_terms_per_second: u32,
    /// How long a claim lasts before another worker may take the term.
    pub claim_lease: Duration,
    /// How long a queued term waits so that later changes share its recomputation.
    pub coalesce: Duration,
}

/// What one call to [`process_batch`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchReport {
    /// Terms claimed from the queue.
    pub claimed: usize,
    /// Terms whose analytics were recomputed and removed from the queue.
    pub completed: usize,
    /// Terms that failed and were scheduled for another attempt.
    pub retried: usize,
    /// Terms that failed their last allowed attempt and were parked.
    pub parked: usize,
    /// Triples recomputed.
    pub triples: usize,
}

/// A term this worker claimed for a lease: what completion, release and
/// failure need to find the queue row again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub term_id: String,
    /// Version at claim time: the row is done only if it is still this one.
    pub version: i64,
    pub attempts: i32,
    /// traceparent of the batch that enqueued the term.
    pub trace_context: Option<String>,
    /// Stamped on the row by this claim: completion, release and failure act
    /// only while the row still carries it (another worker may have claimed
    /// the term after this lease expired).
    pub token: i64,
}

/// Claims and processes one batch. Returns a report with `claimed == 0` when
/// nothing was due. The work runs in an `analytics.batch` span linked to the
/// batches that enqueued its terms.
pub async fn process_batch(
    pool: &PgPool,
    settings: &AnalyticsSettings,
) -> Result<BatchReport, sqlx::Error> {
    let span = tracing::info_span!(
        "analytics.batch",
        terms = tracing::field::Empty,
        triples = tracing::field::Empty,
        retried = tracing::field::Empty,
        parked = tracing::field::Empty
    );
    let report = process_batch_in(pool, settings, &span)
        .instrument(span.clone())
        .await?;
    span.record("terms", report.claimed);
    span.record("triples", report.triples);
    span.record("retried", report.retried);
    span.record("parked", report.parked);
    Ok(report)
}

async fn process_batch_in(
    pool: &PgPool,
    settings: &AnalyticsSettings,
    span: &tracing::Span,
) -> Result<BatchReport, sqlx::Error> {
    let claimed = claim(pool, settings).await?;
    if claimed.is_empty() {
        return Ok(BatchReport::default());
    }
    let mut parents: Vec<String> = claimed
        .iter()
        .filter_map(|c| c.trace_context.clone())
        .collect();
    parents.sort();
    parents.dedup();
    telemetry::link(span, parents);

    let result = recompute_claimed(pool, settings, &claimed).await;
    if matches!(&result, Err(e) if classify(e) != Failure::Data) {
        // An outage or a conflict that outlasted its reruns: not the terms'
        // fault. Best effort: the terms are claimable again at once instead
        // of when the lease ends.
        release(pool, &claimed).await;
    }
    result
}

/// Ends this worker's claims on `claimed` without spending an attempt (best
/// effort: a claim that cannot be released ends with its lease).
async fn release(pool: &PgPool, claimed: &[Claimed]) {
    let terms: Vec<&str> = claimed.iter().map(|c| c.term_id.as_str()).collect();
    let tokens: Vec<i64> = claimed.iter().map(|c| c.token).collect();
    if let Err(error) = sqlx::query(queries::RELEASE_ANALYTICS_TERMS)
        .bind(&terms)
        .bind(&tokens)
        .execute(pool)
        .await
    {
        tracing::debug!(%error, "could not release claims; their lease ends them");
    }
}

/// Reruns of an analytics transaction that hit a deadlock or serialization
/// failure. Such a conflict is never a term's fault: it costs no attempt.
const CONFLICT_RETRY: ConflictRetry = ConflictRetry {
    max_attempts: 11,
    backoff: backoff::ANALYTICS_CONFLICT,
};

/// Recomputes the claimed terms in one transaction, or term by term when
/// the database refuses the data of one of them (SQLSTATE class 22 or 23).
/// Outages and conflicts that outlast their reruns are returned: they are
/// not the terms' fault and cost no attempt (ADR 0009).
async fn recompute_claimed(
    pool: &PgPool,
    settings: &AnalyticsSettings,
    claimed: &[Claimed],
) -> Result<BatchReport, sqlx::Error> {
    let policy = Policy {
        conflicts: CONFLICT_RETRY,
        outages: None,
    };
    match failure::retry(&policy, || complete(pool, claimed)).await {
        Ok(done) => {
            let (triples, completed) = done.value;
            Ok(BatchReport {
                claimed: claimed.len(),
                completed,
                triples,
                ..Default::default()
            })
        }
        // The claims are released; another worker (or this one) claims the terms again.
        Err(error) if classify(&error) != Failure::Data => Err(error),
        Err(error) => {
            tracing::warn!(%error, terms = claimed.len(), "analytics batch failed; retrying its terms one by one");
            process_individually(pool, settings, claimed).await
        }
    }
}

/// One analytics transaction: recompute, mark done (version unchanged), end
/// the lease of what stays queued. Returns (triples recomputed, terms done).
pub async fn complete(pool: &PgPool, claimed: &[Claimed]) -> Result<(usize, usize), sqlx::Error> {
    let terms: Vec<&str> = claimed.iter().map(|c| c.term_id.as_str()).collect();
    let versions: Vec<i64> = claimed.iter().map(|c| c.version).collect();
    let tokens: Vec<i64> = claimed.iter().map(|c| c.token).collect();
    let mut tx = pool.begin().await?;
    let triples = recompute_terms(&mut tx, &terms).await?;
    let completed = sqlx::query(queries::COMPLETE_ANALYTICS_TERMS)
        .bind(&terms)
        .bind(&versions)
        .bind(&tokens)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    sqlx::query(queries::RELEASE_ANALYTICS_TERMS)
        .bind(&terms)
        .bind(&tokens)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((triples, completed as usize))
}

/// Processes each term in its own transaction, recording data failures per
/// term; a term whose transaction keeps conflicting is released unharmed.
async fn process_individually(
    pool: &PgPool,
    settings: &AnalyticsSettings,
    claimed: &[Claimed],
) -> Result<BatchReport, sqlx::Error> {
    let mut report = BatchReport {
        claimed: claimed.len(),
        ..Default::default()
    };
    let policy = Policy {
        conflicts: CONFLICT_RETRY,
        outages: None,
    };
    let mut failed: Vec<(&Claimed, String, Duration)> = Vec::new();
    let mut conflicted: Vec<Claimed> = Vec::new();
    for term in claimed {
        let one = std::slice::from_ref(term);
        match failure::retry(&policy, || complete(pool, one)).await {
            Ok(done) => {
                let (triples, completed) = done.value;
                report.completed += completed;
                report.triples += triples;
            }
            // Not the term's fault: no attempt is spent on it.
            Err(error) if classify(&error) == Failure::Outage => return Err(error),
            Err(error) if classify(&error) == Failure::Conflict => {
                tracing::warn!(term = %term.term_id, %error, "analytics for term kept conflicting; released without spending an attempt");
                conflicted.push(term.clone());
            }
            Err(error) => {
                let attempt = (term.attempts + 1) as u32;
                let delay =
                    BackoffPolicy::new(settings.backoff_base, settings.backoff_max).delay(attempt);
                tracing::warn!(term = %term.term_id, %error, attempt, "analytics failed for term");
                failed.push((term, error.to_string().replace('\0', ""), delay));
            }
        }
    }
    release(pool, &conflicted).await;
    let (retried, parked) = record_failures(pool, settings, &failed).await?;
    report.retried = retried;
    report.parked = parked;
    Ok(report)
}

/// Records failed attempts (term, error, delay before the next attempt):
/// each term is retried later or parked once it used its attempts, and its
/// lease ends. Returns (retried, parked).
pub async fn record_failures(
    pool: &PgPool,
    settings: &AnalyticsSettings,
    failed: &[(&Claimed, String, Duration)],
) -> Result<(usize, usize), sqlx::Error> {
    if failed.is_empty() {
        return Ok((0, 0));
    }
    let rows = sqlx::query(queries::FAIL_ANALYTICS_TERMS)
        .bind(
            failed
                .iter()
                .map(|f| f.0.term_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(failed.iter().map(|f| f.1.as_str()).collect::<Vec<_>>())
        .bind(
            failed
                .iter()
                .map(|f| f.2.as_millis() as i64)
                .collect::<Vec<_>>(),
        )
        .bind(settings.max_attempts)
        .bind(failed.iter().map(|f| f.0.token).collect::<Vec<_>>())
        .fetch_all(pool)
        .await?;
    let (mut retried, mut parked) = (0, 0);
    for row in rows {
        if row.try_get::<bool, _>("parked")? {
            parked += 1;
        } else {
            retried += 1;
        }
    }
    Ok((retried, parked))
}

/// How long a loop that found nothing to claim waits: until the next queued
/// term is due (its coalescing window over), at most the poll interval, and
/// the poll interval when that cannot be read (the next claim reports it).
pub async fn idle_wait(pool: &PgPool, settings: &AnalyticsSettings) -> Duration {
    let due_in: Result<Option<i64>, sqlx::Error> = sqlx::query_scalar(queries::ANALYTICS_NEXT_DUE)
        .bind(settings.coalesce.as_millis() as i64)
        .fetch_one(pool)
        .await;
    match due_in {
        Ok(Some(ms)) => {
            Duration::from_millis(ms.clamp(1, i64::MAX) as u64).min(settings.poll_interval)
        }
        Ok(None) | Err(_) => settings.poll_interval,
    }
}

/// Claims due terms for a lease, in its own (auto-committed) statement.
pub async fn claim(
    pool: &PgPool,
    settings: &AnalyticsSettings,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let rows = sqlx::query(queries::CLAIM_ANALYTICS_TERMS)
        .bind(settings.batch_size)
        .bind(settings.claim_lease.as_millis() as i64)
        .bind(settings.coalesce.as_millis() as i64)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Claimed {
                term_id: r.try_get("term_id")?,
                version: r.try_get("version")?,
                attempts: r.try_get("attempts")?,
                trace_context: r.try_get("trace_context")?,
                token: r.try_get("claim_token")?,
            })
        })
        .collect()
}

/// Recomputes every analytics row that depends on `terms` (the queue rows are
/// the caller's business). Returns the number of triples recomputed.
pub async fn recompute_terms(
    tx: &mut Transaction<'_, Postgres>,
    terms: &[&str],
) -> Result<usize, sqlx::Error> {
    // Table locks first, in the global order (ADR 0002): no deadlock with
    // `rollback` or `rebuild`.
    sqlx::query(queries::LOCK_ANALYTICS_TABLES)
        .execute(&mut **tx)
        .await?;
    let rows = sqlx::query(queries::ANALYTICS_AFFECTED_TRIPLES)
        .bind(terms)
        .fetch_all(&mut **tx)
        .await?;
    let mut triples: BTreeSet<String> = BTreeSet::new();
    let mut predicate_objects: BTreeSet<(String, String)> = BTreeSet::new();
    let mut subject_predicates: BTreeSet<(String, String)> = BTreeSet::new();
    for row in &rows {
        triples.insert(row.try_get("term_id")?);
        for prefix in ["", "old_"] {
            let s: Option<String> = row.try_get(format!("{prefix}subject_id").as_str())?;
            let p: Option<String> = row.try_get(format!("{prefix}predicate_id").as_str())?;
            let o: Option<String> = row.try_get(format!("{prefix}object_id").as_str())?;
            if let (Some(s), Some(p), Some(o)) = (s, p, o) {
                predicate_objects.insert((p.clone(), o));
                subject_predicates.insert((s, p));
            }
        }
    }
    if !triples.is_empty() {
        let (po_p, po_o): (Vec<&str>, Vec<&str>) = predicate_objects
            .iter()
            .map(|(p, o)| (p.as_str(), o.as_str()))
            .unzip();
        let (sp_s, sp_p): (Vec<&str>, Vec<&str>) = subject_predicates
            .iter()
            .map(|(s, p)| (s.as_str(), p.as_str()))
            .unzip();
        let triple_ids: Vec<&str> = triples.iter().map(String::as_str).collect();
        // Lock order: predicate_object, then subject_predicate, each in key order.
        sqlx::query(queries::LOCK_PREDICATE_OBJECTS)
            .bind(&po_p)
            .bind(&po_o)
            .execute(&mut **tx)
            .await?;
        sqlx::query(queries::LOCK_SUBJECT_PREDICATES)
            .bind(&sp_s)
            .bind(&sp_p)
            .execute(&mut **tx)
            .await?;
        sqlx::query(queries::RECOMPUTE_TRIPLES)
            .bind(&triple_ids)
            .execute(&mut **tx)
            .await?;
        sqlx::query(queries::RECOMPUTE_PREDICATE_OBJECTS)
            .bind(&po_p)
            .bind(&po_o)
            .execute(&mut **tx)
            .await?;
        sqlx::query(queries::RECOMPUTE_SUBJECT_PREDICATES)
            .bind(&sp_s)
            .bind(&sp_p)
            .execute(&mut **tx)
            .await?;
    }
    Ok(triples.len())
}

/// Gives parked terms a fresh set of attempts (all when `terms` is None).
pub async fn requeue_parked(pool: &PgPool, terms: Option<&[String]>) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(queries::REQUEUE_PARKED_TERMS)
        .bind(terms)
        .execute(pool)
        .await?
        .rows_affected())
}

/// Queue depth, parked terms and the oldest pending age in seconds.
pub async fn queue_stats(pool: &PgPool) -> Result<(i64, i64, f64), sqlx::Error> {
    let row = sqlx::query(queries::ANALYTICS_QUEUE_STATS)
        .fetch_one(pool)
        .await?;
    Ok((
        row.try_get("depth")?,
        row.try_get("parked")?,
        row.try_get("oldest_seconds")?,
    ))
}

/// Analytics loop number `index`: runs until `stop`, never interrupting a
/// transaction. Outages are waited out with backoff (health slot
/// [`Source::analytics`] unready meanwhile); per-term failures are shown there
/// until the loop's next batch without failures.
pub async fn run_loop(
    pool: PgPool,
    settings: AnalyticsSettings,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop: CancellationToken,
    index: usize,
) {
    let source = Source::analytics(index);
    let policy = Policy {
        conflicts: ConflictRetry::NONE,
        outages: Some(OutageRetry {
            metrics: &metrics,
            health: &health,
            source: &source,
            operation: "analytics",
            stop: Some(&stop),
            backoff: backoff::ANALYTICS_OUTAGE,
        }),
    };
    let mut limit = RateLimit::new(settings.max_terms_per_second);
    let mut backoff = Backoff::new(backoff::ANALYTICS_OUTAGE);
    while !stop.is_cancelled() {
        let started = Instant::now();
        match failure::retry(&policy, || process_batch(&pool, &settings)).await {
            Ok(done) if done.value.claimed == 0 => {
                backoff.reset();
                pause(&stop, idle_wait(&pool, &settings).await).await;
            }
            Ok(done) => {
                backoff.reset();
                let report = done.value;
                metrics
                    .analytics_terms_processed
                    .inc_by(report.completed as u64);
                metrics.analytics_batch_terms.observe(report.claimed as f64);
                metrics
                    .analytics_batch_duration
                    .observe(started.elapsed().as_secs_f64());
                metrics.analytics_retries.inc_by(report.retried as u64);
                metrics.analytics_parked.inc_by(report.parked as u64);
                if report.retried + report.parked > 0 {
                    health.warn(
                        &source,
                        format!(
                            "{} term(s) failed ({} parked); see analytics_queue.last_error",
                            report.retried + report.parked,
                            report.parked
                        ),
                    );
                }
                pause(&stop, limit.reserve(report.claimed)).await;
            }
            // Stopped during an outage, or a data error outside any term
            // (recording the terms' failures): shown, retried after a pause.
            Err(error) => {
                if stop.is_cancelled() {
                    break;
                }
                tracing::warn!(%error, "analytics batch could not run; retrying");
                health.warn(&source, error.to_string());
                pause(&stop, backoff.next_delay()).await;
            }
        }
    }
}
