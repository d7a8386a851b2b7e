//! The consumer loop of `postgres-writer run`: read a batch from the streams,
//! decode it, write it in one transaction, acknowledge it, repeat.
//!
//! Stopping (SIGTERM or drain) is checked only between batches: a batch that
//! was read is always committed and acknowledged before the loop returns.

use crate::backoff;
use crate::config::StreamArgs;
use crate::decode::{decode_entry, DecodedEntry};
use crate::health::Health;
use crate::intake::{RawEntry, ReadFrom, StreamIntake};
use crate::metrics::{Metrics, OutcomeLabel, StreamLabel};
use crate::persistence::{self, ConflictRetry, PersistError};
use crate::ratelimit::RateLimit;
use sqlx::PgPool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use telemetry::ErrorChain;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Longest pause between retries while PostgreSQL or Redis is down.
const MAX_OUTAGE_BACKOFF: Duration = Duration::from_secs(30);

pub struct Consumer {
    pub args: StreamArgs,
    pub pool: PgPool,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

impl Consumer {
    /// Runs until `stop` is cancelled; returns after the in-flight batch is
    /// committed and acknowledged.
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        let args = &self.args;
        let mut intake = StreamIntake::open(args)?;
        let mut failures = 0u32;
        while let Err(e) = intake.ensure_groups().await {
            self.redis_down(&ErrorChain(&e).to_string());
            failures += 1;
            if !pause(
                &stop,
                backoff::jittered(Duration::from_millis(200), failures, MAX_OUTAGE_BACKOFF),
            )
            .await
            {
                return Ok(());
            }
        }
        tracing::info!(streams = ?args.redis_streams, group = %args.consumer_group,
            consumer = %args.consumer_name, "consuming streams");

        let claim_interval = Duration::from_millis(args.claim_interval_ms);
        let claim_idle = Duration::from_millis(args.claim_idle_ms);
        let mut last_claim = Instant::now();
        let mut from = ReadFrom::OwnPending;
        let mut limit = RateLimit::new(args.max_entries_per_second);
        let mut failures = 0u32;
        while !stop.is_cancelled() {
            let claiming = from == ReadFrom::New && last_claim.elapsed() >= claim_interval;
            let read = if claiming {
                last_claim = Instant::now();
                intake.claim_stale(claim_idle).await
            } else {
                intake.read(from).await
            };
            let entries = match read {
                Ok(entries) => {
                    failures = 0;
                    self.health.redis_ok.store(true, Ordering::Relaxed);
                    entries
                }
                Err(e) => {
                    self.redis_down(&ErrorChain(&e).to_string());
                    failures += 1;
                    pause(
                        &stop,
                        backoff::jittered(Duration::from_millis(200), failures, MAX_OUTAGE_BACKOFF),
                    )
                    .await;
                    continue;
                }
            };
            if entries.is_empty() {
                if from == ReadFrom::OwnPending {
                    tracing::debug!("own pending entries done; reading new entries");
                    from = ReadFrom::New;
                }
                continue;
            }
            if claiming {
                tracing::info!(
                    entries = entries.len(),
                    "took over pending entries of idle consumers"
                );
                self.metrics.entries_claimed.inc_by(entries.len() as u64);
            }
            let count = entries.len();
            self.process(&mut intake, entries, &stop).await;
            pause(&stop, limit.reserve(count)).await;
        }
        tracing::info!("consumer stopped");
        Ok(())
    }

    fn redis_down(&self, error: &str) {
        tracing::warn!(%error, "Redis unavailable; retrying");
        self.health.redis_ok.store(false, Ordering::Relaxed);
        self.health.set_error(Some(format!("redis: {error}")));
    }

    /// Decodes, commits and acknowledges one batch, in a `batch` span with
    /// `db.transaction` and `redis.ack` children. Keeps retrying while
    /// PostgreSQL is unavailable: nothing is acknowledged before it commits.
    async fn process(
        &self,
        intake: &mut StreamIntake,
        raw: Vec<RawEntry>,
        stop: &CancellationToken,
    ) {
        let mut streams: Vec<&str> = raw.iter().map(|e| &*e.stream).collect();
        streams.sort_unstable();
        streams.dedup();
        let span = tracing::info_span!(
            "batch",
            streams = %streams.join(","),
            entries = raw.len(),
            events = tracing::field::Empty,
            events.stored = tracing::field::Empty,
            events.duplicate = tracing::field::Empty,
            events.AtomCreated = tracing::field::Empty,
            events.TripleCreated = tracing::field::Empty,
            events.Deposited = tracing::field::Empty,
            events.Redeemed = tracing::field::Empty,
            events.SharePriceChanged = tracing::field::Empty,
            events.Generic = tracing::field::Empty,
            dead_letters = tracing::field::Empty,
            terms_enqueued = tracing::field::Empty,
        );
        self.process_in(intake, raw, stop, &span)
            .instrument(span.clone())
            .await
    }

    async fn process_in(
        &self,
        intake: &mut StreamIntake,
        raw: Vec<RawEntry>,
        stop: &CancellationToken,
        span: &tracing::Span,
    ) {
        let started = Instant::now();
        let entries: Vec<DecodedEntry> = raw
            .iter()
            .map(|e| decode_entry(&e.stream, &e.id, &e.fields))
            .collect();
        drop(raw);
        let event_count: usize = entries.iter().map(|e| e.events.len()).sum();
        span.record("events", event_count);
        let mut by_kind: std::collections::BTreeMap<&'static str, u64> = Default::default();
        for event in entries.iter().flat_map(|e| &e.events) {
            *by_kind.entry(event.body.kind()).or_default() += 1;
        }
        for (kind, n) in &by_kind {
            span.record(format!("events.{kind}").as_str(), *n);
        }
        // Carried in the analytics-queue rows so the analytics work links back here.
        let trace_context = telemetry::traceparent(span);

        let mut failures = 0u32;
        let outcome = loop {
            let tx_started = Instant::now();
            let write = persistence::write_entries(
                &self.pool,
                &entries,
                ConflictRetry::default(),
                trace_context.as_deref(),
            )
            .instrument(tracing::info_span!(
                "db.transaction",
                entries = entries.len(),
                attempt = failures + 1
            ));
            match write.await {
                Ok(outcome) => {
                    self.metrics
                        .transaction_duration
                        .observe(tx_started.elapsed().as_secs_f64());
                    break outcome;
                }
                Err(error) => {
                    failures += 1;
                    let cause = match &error {
                        PersistError::Unavailable(_) => "unavailable",
                        PersistError::Conflicts { .. } => "conflicts",
                    };
                    self.metrics
                        .write_failures
                        .get_or_create(&OutcomeLabel {
                            outcome: cause.into(),
                        })
                        .inc();
                    if matches!(error, PersistError::Unavailable(_)) {
                        self.health.postgres_ok.store(false, Ordering::Relaxed);
                    }
                    let error = ErrorChain(&error).to_string();
                    self.health.set_error(Some(format!("postgres: {error}")));
                    tracing::warn!(%error, attempt = failures, entries = entries.len(),
                        "batch not committed; retrying (nothing was acknowledged)");
                    let delay =
                        backoff::jittered(Duration::from_millis(100), failures, MAX_OUTAGE_BACKOFF);
                    // Keep the batch even when stopping: the process's drain timeout bounds this.
                    tokio::time::sleep(delay).await;
                }
            }
        };
        span.record("events.stored", outcome.stored_events());
        span.record("events.duplicate", outcome.duplicate_events);
        span.record("dead_letters", outcome.dead_letters);
        span.record("terms_enqueued", outcome.terms_enqueued);
        self.health.postgres_ok.store(true, Ordering::Relaxed);
        let committed_at = SystemTime::now();
        let now_ms = committed_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        self.health
            .last_commit_unix_ms
            .store(now_ms, Ordering::Relaxed);
        self.record(&entries, &outcome, event_count, now_ms);

        let keys: Vec<(Arc<str>, Arc<str>)> = entries
            .iter()
            .map(|e| (e.stream.clone(), e.entry_id.clone()))
            .collect();
        let mut failures = 0u32;
        loop {
            let ack = intake
                .ack(&keys)
                .instrument(tracing::info_span!("redis.ack", entries = keys.len()));
            match ack.await {
                Ok(()) => break,
                Err(error) => {
                    failures += 1;
                    self.redis_down(&ErrorChain(&error).to_string());
                    // Committed work is idempotent: an unacknowledged entry is
                    // redelivered and changes nothing. Give up only when stopping.
                    if stop.is_cancelled() && failures >= 5 {
                        tracing::warn!(error = %ErrorChain(&error), "could not acknowledge committed entries before stopping; they will be redelivered as no-ops");
                        break;
                    }
                    tokio::time::sleep(backoff::jittered(
                        Duration::from_millis(100),
                        failures,
                        Duration::from_secs(5),
                    ))
                    .await;
                }
            }
        }
        self.health.set_error(None);
        self.metrics
            .batch_duration
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(
            entries = entries.len(),
            events = event_count,
            stored = outcome.stored_events(),
            duplicates = outcome.duplicate_events,
            dead_letters = outcome.dead_letters,
            "batch committed"
        );
    }

    fn record(
        &self,
        entries: &[DecodedEntry],
        outcome: &persistence::WriteOutcome,
        event_count: usize,
        now_ms: u64,
    ) {
        let m = &self.metrics;
        m.batches.inc();
        m.batch_entries.observe(entries.len() as f64);
        m.batch_events.observe(event_count as f64);
        for (kind, n) in &outcome.new_events {
            m.events_stored
                .get_or_create(&crate::metrics::KindLabel {
                    kind: (*kind).into(),
                })
                .inc_by(*n);
        }
        m.events_duplicate.inc_by(outcome.duplicate_events);
        m.dead_letters.inc_by(outcome.dead_letters);
        m.refused_entries.inc_by(outcome.refused_entries);
        m.transaction_retries.inc_by(outcome.conflict_retries);
        for entry in entries {
            m.entries_processed
                .get_or_create(&StreamLabel {
                    stream: entry.stream.to_string(),
                })
                .inc();
            if let Some(created_ms) = entry_time_ms(&entry.entry_id) {
                m.entry_to_commit_seconds
                    .observe(now_ms.saturating_sub(created_ms) as f64 / 1000.0);
            }
            for event in &entry.events {
                if let Some(ts) = event.position.block_timestamp {
                    let age = (now_ms as i64 / 1000).saturating_sub(ts).max(0);
                    m.block_to_commit_seconds.observe(age as f64);
                }
            }
        }
    }
}

/// The creation time encoded in a stream entry id (`<ms>-<seq>`).
pub fn entry_time_ms(id: &str) -> Option<u64> {
    id.split_once('-').and_then(|(ms, _)| ms.parse().ok())
}

/// Sleeps unless stopped; returns false when `stop` fired first.
pub async fn pause(stop: &CancellationToken, duration: Duration) -> bool {
    if duration.is_zero() {
        return !stop.is_cancelled();
    }
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(duration) => true,
    }
}
