//! The consumer loop of `postgres-writer run`: read a batch from the streams,
//! decode it, write it in one transaction, acknowledge it, repeat.
//!
//! Stopping (SIGTERM or drain) is checked only between batches: a batch that
//! was read is always committed and acknowledged before the loop returns.

mod control;

use crate::backoff::{self, Backoff};
use crate::decode::{decode_entry, DecodedEntry};
use crate::failure::{self, ConflictRetry, OutageRetry, Policy};
use crate::health::{Health, Source};
use crate::intake::{IntakeError, RawEntry, ReadFrom, StreamIntake, StreamSettings};
use crate::lifecycle::pause;
use crate::metrics::{Metrics, OutcomeLabel, StreamLabel};
use crate::persistence::{self, PersistError};
use crate::ratelimit::RateLimit;
use sqlx::PgPool;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use telemetry::ErrorChain;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub struct Consumer {
    pub args: StreamSettings,
    pub pool: PgPool,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// Woken after each commit, so that the fold loop applies the deltas at once.
    pub fold_wake: Option<Arc<tokio::sync::Notify>>,
}

impl Consumer {
    /// Runs until `stop` is cancelled; returns after the in-flight batch is
    /// committed and acknowledged.
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        let args = &self.args;
        let mut intake = StreamIntake::open(args)?;
        let mut backoff = Backoff::new(backoff::REDIS_OUTAGE);
        while let Err(e) = intake.ensure_groups().await {
            self.redis_down(&ErrorChain(&e).to_string());
            if !pause(&stop, backoff.next_delay()).await {
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
        let mut backoff = Backoff::new(backoff::REDIS_OUTAGE);
        while !stop.is_cancelled() {
            let claiming = from == ReadFrom::New && last_claim.elapsed() >= claim_interval;
            let read = if claiming {
                last_claim = Instant::now();
                let claimed = intake.claim_stale(claim_idle).await;
                if claimed.is_ok() {
                    // After the claim: a dead consumer emptied by it goes in the same pass.
                    self.remove_idle_consumers(&mut intake).await;
                }
                claimed
            } else {
                intake.read(from).await
            };
            let entries = match read {
                Ok(entries) => {
                    backoff.reset();
                    self.health.clear(&self.stream_source());
                    entries
                }
                Err(e) if e.group_lost() => {
                    if self.recreate_groups(&mut intake, &e).await {
                        backoff.reset();
                        // The new group has no pending entries of ours; read from the start.
                        from = ReadFrom::OwnPending;
                    } else {
                        pause(&stop, backoff.next_delay()).await;
                    }
                    continue;
                }
                Err(e) => {
                    self.redis_down(&ErrorChain(&e).to_string());
                    pause(&stop, backoff.next_delay()).await;
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

    /// This loop's health slot for Redis (reads and acknowledgements).
    fn stream_source(&self) -> Source {
        Source::stream(&self.args.consumer_name)
    }

    /// The group is gone (NOGROUP): create it again at `0`, as at start-up.
    /// Entries still in the stream are then delivered again; those already
    /// stored are duplicates that change nothing (event primary keys), and
    /// acknowledging them settles the new group. Returns false when Redis
    /// could not be reached.
    async fn recreate_groups(&self, intake: &mut StreamIntake, lost: &IntakeError) -> bool {
        tracing::warn!(error = %lost, group = %self.args.consumer_group,
            "consumer group lost (Redis restarted without persistence, or the group or its stream was deleted); creating it again at 0: entries still in the stream are read again and those already stored change nothing");
        match intake.ensure_groups().await {
            Ok(created) => {
                for stream in created {
                    self.metrics
                        .consumer_groups_recreated
                        .get_or_create(&StreamLabel {
                            stream: stream.to_string(),
                        })
                        .inc();
                }
                self.health.clear(&self.stream_source());
                true
            }
            Err(e) => {
                self.redis_down(&ErrorChain(&e).to_string());
                false
            }
        }
    }

    /// Removes consumers of pods that are gone (idle, no pending entries), if enabled.
    async fn remove_idle_consumers(&self, intake: &mut StreamIntake) {
        if self.args.consumer_reap_idle_ms == 0 {
            return;
        }
        let min_idle = Duration::from_millis(self.args.consumer_reap_idle_ms);
        match intake
            .remove_idle_consumers(min_idle, &self.args.sibling_consumers)
            .await
        {
            Ok(removed) => {
                for (stream, consumer) in removed {
                    tracing::info!(stream = %stream, %consumer, ?min_idle,
                        "removed idle consumer without pending entries from the group");
                    self.metrics
                        .consumers_removed
                        .get_or_create(&StreamLabel {
                            stream: stream.to_string(),
                        })
                        .inc();
                }
            }
            // The next read reports Redis problems (and a lost group) itself.
            Err(error) => {
                tracing::warn!(error = %ErrorChain(&error), "could not remove idle consumers")
            }
        }
    }

    fn redis_down(&self, error: &str) {
        tracing::warn!(%error, "Redis unavailable; retrying");
        self.health
            .outage(&self.stream_source(), format!("redis: {error}"));
    }

    /// Processes a batch in stream order: runs of events as batches, rindexer
    /// control entries (reorg notices) one by one between them (ADR 0018).
    async fn process(
        &self,
        intake: &mut StreamIntake,
        raw: Vec<RawEntry>,
        stop: &CancellationToken,
    ) {
        for segment in crate::reorg::segments(raw) {
            match segment {
                crate::reorg::Segment::Data(raw) => self.process_events(intake, raw, stop).await,
                crate::reorg::Segment::Control(entry, control) => {
                    control::handle(self, intake, entry, control, stop).await
                }
            }
        }
    }

    /// Decodes, commits and acknowledges one batch, in a `batch` span with
    /// `db.transaction` and `redis.ack` children. Keeps retrying while
    /// PostgreSQL is unavailable: nothing is acknowledged before it commits.
    async fn process_events(
        &self,
        intake: &mut StreamIntake,
        raw: Vec<RawEntry>,
        stop: &CancellationToken,
    ) {
        let mut streams: Vec<&str> = raw.iter().map(|e| &*e.stream).collect();
        streams.sort_unstable();
        streams.dedup();
        // With an `events.<Kind>` field per event kind (crate::catalog).
        let span = crate::catalog::info_span_with_kinds!(
            "batch",
            streams = %streams.join(","),
            entries = raw.len(),
            events = tracing::field::Empty,
            events.stored = tracing::field::Empty,
            events.duplicate = tracing::field::Empty,
            dead_letters = tracing::field::Empty,
            fold_deltas = tracing::field::Empty,
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
        self.count_trimmed(&raw);
        let entries: Vec<DecodedEntry> = raw
            .iter()
            .map(|e| decode_entry(&e.stream, &e.id, &e.fields))
            .collect();
        drop(raw);
        let event_count: usize = entries.iter().map(|e| e.events.len()).sum();
        span.record("events", event_count);
        let mut by_kind: std::collections::BTreeMap<&'static str, u64> = Default::default();
        for event in entries.iter().flat_map(|e| &e.events) {
            *by_kind.entry(event.body.kind().name()).or_default() += 1;
        }
        for (kind, n) in &by_kind {
            span.record(format!("events.{kind}").as_str(), *n);
        }
        // Carried in the analytics-queue rows so the analytics work links back here.
        let trace_context = telemetry::traceparent(span);

        // Outages are waited out here, batch kept, even when stopping: the
        // process's drain timeout bounds this.
        let source = Source::batch(&self.args.consumer_name);
        let policy = Policy {
            conflicts: ConflictRetry::NONE,
            outages: Some(OutageRetry {
                metrics: &self.metrics,
                health: &self.health,
                source: &source,
                operation: "batch",
                stop: None,
                backoff: backoff::BATCH_OUTAGE,
            }),
        };
        let attempts = AtomicU32::new(0);
        let outcome = loop {
            let written = failure::retry(&policy, || {
                let attempt = attempts.fetch_add(1, Ordering::Relaxed) + 1;
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
                    attempt
                ));
                async move {
                    let result = write.await;
                    match &result {
                        Ok(_) => self
                            .metrics
                            .transaction_duration
                            .observe(tx_started.elapsed().as_secs_f64()),
                        Err(error) => {
                            let cause = match error {
                                PersistError::Outage(_) => "outage",
                                PersistError::Conflicts { .. } => "conflicts",
                                PersistError::NetworkRefused(_) => "network",
                            };
                            self.metrics
                                .write_failures
                                .get_or_create(&OutcomeLabel {
                                    outcome: cause.into(),
                                })
                                .inc();
                        }
                    }
                    result
                }
            })
            .await;
            match written {
                Ok(done) => break done.value,
                // Not reached: without a stop, `retry` returns only data errors,
                // which `write_entries` handles itself. Keep the batch anyway.
                Err(error) => {
                    tracing::error!(error = %ErrorChain(&error), "batch not committed; retrying (nothing was acknowledged)");
                    tokio::time::sleep(backoff::MAX_OUTAGE_DELAY).await;
                }
            }
        };
        span.record("events.stored", outcome.stored_events());
        span.record("events.duplicate", outcome.duplicate_events);
        span.record("dead_letters", outcome.dead_letters);
        span.record("fold_deltas", outcome.fold_deltas);
        let committed_at = SystemTime::now();
        let now_ms = committed_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        self.health.record_commit(now_ms);
        if outcome.fold_deltas > 0 {
            if let Some(wake) = &self.fold_wake {
                wake.notify_one();
            }
        }
        self.record(&entries, &outcome, event_count, now_ms);

        let keys: Vec<(Arc<str>, Arc<str>)> = entries
            .iter()
            .map(|e| (e.stream.clone(), e.entry_id.clone()))
            .collect();
        let mut backoff = Backoff::new(backoff::REDIS_ACK);
        loop {
            let ack = intake
                .ack(&keys)
                .instrument(tracing::info_span!("redis.ack", entries = keys.len()));
            match ack.await {
                Ok(()) => {
                    self.health.clear(&self.stream_source());
                    break;
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    self.redis_down(&ErrorChain(&error).to_string());
                    // Committed work is idempotent: an unacknowledged entry is
                    // redelivered and changes nothing. Give up only when stopping.
                    if stop.is_cancelled() && backoff.failures() >= 5 {
                        tracing::warn!(error = %ErrorChain(&error), "could not acknowledge committed entries before stopping; they will be redelivered as no-ops");
                        break;
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
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

    /// Pending entries trimmed from the stream before they were acknowledged
    /// (this consumer's own or taken over from another): one policy for both.
    /// The decoder dead-letters each with that reason (nothing to decode or
    /// replay), the batch acknowledges it, and it is counted and logged here.
    fn count_trimmed(&self, raw: &[RawEntry]) {
        let mut trimmed: std::collections::BTreeMap<&str, (u64, &str)> = Default::default();
        for entry in raw.iter().filter(|e| e.is_trimmed()) {
            trimmed.entry(&entry.stream).or_insert((0, &entry.id)).0 += 1;
        }
        for (stream, (count, first)) in trimmed {
            self.metrics
                .entries_trimmed
                .get_or_create(&StreamLabel {
                    stream: stream.to_string(),
                })
                .inc_by(count);
            tracing::warn!(stream, count, first_entry_id = first,
                "pending entries were trimmed from the stream before they were acknowledged; dead-lettering them (their payload is gone)");
        }
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
        m.reorg.events_discarded.inc_by(outcome.fenced_events);
        m.dead_letters.inc_by(outcome.dead_letters);
        m.refused_entries.inc_by(outcome.refused_entries);
        m.refused_items.inc_by(outcome.refused_items);
        m.transaction_retries.inc_by(outcome.conflict_retries);
        for entry in entries {
            let label = StreamLabel {
                stream: entry.stream.to_string(),
            };
            m.entries_processed.get_or_create(&label).inc();
            if entry.address_checksum_mismatches > 0 {
                let before = m
                    .address_checksum_mismatches
                    .get_or_create(&label)
                    .inc_by(u64::from(entry.address_checksum_mismatches));
                // Once per producer (stream) and process, not per event.
                if before == 0 {
                    tracing::warn!(stream = %entry.stream, entry_id = %entry.entry_id,
                        address = entry.mismatched_address.as_deref().unwrap_or_default(),
                        "producer spells addresses with a wrong EIP-55 checksum; storing them checksummed (counted in pgw_address_checksum_mismatches_total, logged once per stream)");
                }
            }
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
#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wrong_checksums_are_counted_per_stream() {
        let deposit = |log_index: u32| {
            format!(
                r#"{{"sender":"0x742d35Cc6634C0532925a3b844Bc9e7595f0bEb0","receiver":"0x742d35Cc6634C0532925a3b844Bc9e7595f0bEb0",
                "termId":"0x{:064x}","curveId":"1","assets":"1","assetsAfterFees":"1","shares":"1","totalShares":"1","vaultType":0,
                "transaction_information":{{"block_number":1,"log_index":{log_index},"network":"n","transaction_hash":"0x{:064x}"}}}}"#,
                1, 2
            )
        };
        let payload = format!(
            r#"{{"event_name":"Deposited","event_data":[{},{}]}}"#,
            deposit(0),
            deposit(1)
        );
        let entry = decode_entry(
            &Arc::from("s"),
            &Arc::from("1-0"),
            &[("payload".to_string(), payload.into_bytes())],
        );
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://localhost/unused")
            .expect("a lazy pool never connects here");
        let consumer = Consumer {
            args: StreamSettings {
                redis_url: String::new(),
                redis_streams: vec!["s".into()],
                consumer_group: "g".into(),
                consumer_name: "c".into(),
                batch_size: 1,
                batch_timeout_ms: 1,
                claim_idle_ms: 1,
                claim_interval_ms: 1,
                max_entries_per_second: 0,
                consumer_reap_idle_ms: 0,
                sibling_consumers: Vec::new(),
                redis_ca_file: None,
            },
            pool,
            metrics: Arc::new(Metrics::new()),
            health: Arc::new(Health::new(true, false)),
            fold_wake: None,
        };
        let outcome = persistence::WriteOutcome::default();
        consumer.record(std::slice::from_ref(&entry), &outcome, 2, 0);
        consumer.record(std::slice::from_ref(&entry), &outcome, 2, 0);
        let text = consumer.metrics.encode();
        assert!(
            text.contains(r#"pgw_address_checksum_mismatches_total{stream="s"} 8"#),
            "{text}"
        );
    }
}
