//! The consumer's side of rindexer's control entries (ADR 0018): a batch is
//! cut at them ([`crate::reorg::segments`]) and each is handled here, in
//! stream order. A reorg notice waits until every earlier entry of its
//! stream is acknowledged, is applied ([`crate::reorg::apply`]) with the
//! batch's outage policy, then acknowledged; a malformed one is
//! dead-lettered; an unknown one is counted and acknowledged.

use super::Consumer;
use crate::backoff::{self, Backoff};
use crate::decode::{DeadLetter, DecodedEntry};
use crate::failure::{self, ConflictRetry, OutageRetry, Policy};
use crate::health::Source;
use crate::intake::{RawEntry, StreamIntake};
use crate::metrics::{EventNameLabel, NetworkLabel, OutcomeLabel};
use crate::reorg::{self, Applied, Control, ReorgNotice, REORG_NOTICE};
use std::time::{Duration, Instant};
use telemetry::ErrorChain;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Longest wait for earlier entries of the stream that live consumers are
/// still writing; after it the notice stays pending and is claimed again.
const BARRIER_WAIT: Duration = Duration::from_secs(30);

/// Handles one control entry of a batch: acknowledged once done; a reorg
/// notice whose stream still has earlier entries pending stays pending (it
/// is read again when claimed or at the next start).
pub async fn handle(
    consumer: &Consumer,
    intake: &mut StreamIntake,
    entry: RawEntry,
    control: Control,
    stop: &CancellationToken,
) {
    let metrics = &consumer.metrics.reorg;
    match control {
        Control::Unknown { event_name } => {
            tracing::warn!(stream = %entry.stream, entry_id = %entry.id, %event_name,
                "unknown rindexer control entry; acknowledging it without effect");
            metrics
                .control_entries_ignored
                .get_or_create(&EventNameLabel { event_name })
                .inc();
            ack(intake, &entry, stop).await;
        }
        Control::Malformed { reason, raw } => {
            tracing::warn!(stream = %entry.stream, entry_id = %entry.id, %reason,
                "reorg notice cannot be applied; dead-lettering it");
            let letter = DeadLetter {
                stream: entry.stream.clone(),
                entry_id: entry.id.clone(),
                item_index: None,
                event_name: Some(REORG_NOTICE.to_string()),
                reason,
                raw_payload: raw,
                envelope_network: None,
                event_signature_hash: None,
            };
            let dead = DecodedEntry {
                stream: entry.stream.clone(),
                entry_id: entry.id.clone(),
                raw_payload: Vec::new(),
                events: Vec::new(),
                dead_letters: vec![letter],
                address_checksum_mismatches: 0,
                mismatched_address: None,
            };
            let written = with_outage_retry(consumer, stop, "dead letter", || {
                crate::persistence::write_entries(
                    &consumer.pool,
                    std::slice::from_ref(&dead),
                    ConflictRetry::default(),
                    None,
                )
            })
            .await;
            if written.is_some() {
                consumer.metrics.dead_letters.inc();
                ack(intake, &entry, stop).await;
            }
        }
        Control::Reorg(notices) => {
            if !barrier(consumer, intake, &entry, stop).await {
                metrics.notices_held.inc();
                return;
            }
            for notice in &notices {
                if !apply_logged(consumer, &entry, notice, stop).await {
                    return;
                }
            }
            ack(intake, &entry, stop).await;
        }
    }
}

/// Waits until no earlier entry of the notice's stream is pending in the
/// group. False: the notice stays pending (an earlier entry sits with a
/// consumer that is gone, or with a live one for longer than
/// [`BARRIER_WAIT`], or the worker is stopping).
async fn barrier(
    consumer: &Consumer,
    intake: &mut StreamIntake,
    entry: &RawEntry,
    stop: &CancellationToken,
) -> bool {
    let started = Instant::now();
    let claim_idle = Duration::from_millis(consumer.args.claim_idle_ms);
    let mut pause = Duration::from_millis(20);
    loop {
        match intake.first_pending_before(&entry.stream, &entry.id).await {
            Ok(None) => return true,
            Ok(Some(pending)) => {
                let gone = pending.idle >= claim_idle;
                if gone || started.elapsed() >= BARRIER_WAIT || stop.is_cancelled() {
                    tracing::info!(stream = %entry.stream, entry_id = %entry.id,
                        earlier = %pending.id, held_by = %pending.consumer, idle_ms = pending.idle.as_millis() as u64,
                        "reorg notice waits for an earlier entry of its stream; it stays pending and is applied once that entry is committed (claimed after the claim idle time)");
                    return false;
                }
            }
            Err(error) => {
                tracing::warn!(error = %ErrorChain(&error), stream = %entry.stream,
                    "cannot read the stream's pending entries; the reorg notice stays pending");
                return false;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.cancelled() => {}
        }
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// Applies one notice with the batch's outage policy, then logs and counts
/// it. False when stopping before it committed.
async fn apply_logged(
    consumer: &Consumer,
    entry: &RawEntry,
    notice: &ReorgNotice,
    stop: &CancellationToken,
) -> bool {
    let span = tracing::info_span!(
        "reorg.apply",
        network = %notice.network,
        fork_block = notice.fork_block,
        depth = notice.depth,
        stream = %entry.stream,
        entry_id = %entry.id,
        outcome = tracing::field::Empty,
        events_removed = tracing::field::Empty,
    );
    let started = Instant::now();
    let applied = with_outage_retry(consumer, stop, "reorg", || {
        reorg::apply(&consumer.pool, &entry.stream, &entry.id, notice)
    })
    .instrument(span.clone())
    .await;
    let Some(applied) = applied else {
        return false;
    };
    let elapsed = started.elapsed();
    let metrics = &consumer.metrics.reorg;
    span.record("outcome", applied.outcome());
    metrics
        .notices
        .get_or_create(&OutcomeLabel {
            outcome: applied.outcome().into(),
        })
        .inc();
    match &applied {
        Applied::Fenced {
            report,
            streams_passed,
        } => {
            let removed = report.events_removed_total();
            span.record("events_removed", removed);
            // The span names every removed entry (up to the sample size).
            for event in &report.removed_sample {
                tracing::info!(parent: &span, table = event.table, stream = %event.stream,
                    entry_id = %event.entry_id, item_index = event.item_index,
                    tx = %event.transaction_hash, log_index = event.log_index,
                    block = event.block_number, "removed event of the dropped branch");
            }
            metrics.apply_seconds.observe(elapsed.as_secs_f64());
            metrics.events_removed.inc_by(removed);
            if *streams_passed == 1 {
                metrics
                    .reorgs_applied
                    .get_or_create(&NetworkLabel {
                        network: notice.network.clone(),
                    })
                    .inc();
            }
            tracing::info!(network = %notice.network, fork_block = notice.fork_block,
                depth = notice.depth, stream = %entry.stream, entry_id = %entry.id,
                events_removed = removed, streams_passed, triples_recomputed = report.triples_recomputed,
                rindexer_events_deleted = notice.events_deleted, affected_txs = notice.affected_tx_hashes.len(),
                apply_ms = elapsed.as_millis() as u64,
                "chain reorganisation applied to this stream: dropped-branch events removed, derived rows recomputed");
        }
        Applied::Duplicate { first_copy } => {
            tracing::debug!(network = %notice.network, fork_block = notice.fork_block,
                stream = %entry.stream, entry_id = %entry.id, %first_copy,
                "repeated reorg notice: the stream already passed this reorg; nothing to do");
        }
        Applied::OtherNetwork { database } => {
            tracing::info!(network = %notice.network, %database, fork_block = notice.fork_block,
                stream = %entry.stream, entry_id = %entry.id,
                "reorg notice of another network than this database holds; nothing to do");
        }
        Applied::NoPosition => {
            tracing::warn!(stream = %entry.stream, entry_id = %entry.id,
                "reorg notice with an entry id that is not a stream id; nothing to fence");
        }
    }
    true
}

/// Runs `write` until it commits, waiting out outages like a batch does;
/// `None` only when stopping.
async fn with_outage_retry<T, E, F, Fut>(
    consumer: &Consumer,
    stop: &CancellationToken,
    operation: &'static str,
    write: F,
) -> Option<T>
where
    E: failure::Classify + std::error::Error,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let source = Source::batch(&consumer.args.consumer_name);
    let policy = Policy {
        conflicts: ConflictRetry {
            max_attempts: 20,
            backoff: backoff::REORG_CONFLICT,
        },
        outages: Some(OutageRetry {
            metrics: &consumer.metrics,
            health: &consumer.health,
            source: &source,
            operation,
            stop: Some(stop),
            backoff: backoff::BATCH_OUTAGE,
        }),
    };
    let mut write = write;
    loop {
        match failure::retry(&policy, &mut write).await {
            Ok(done) => return Some(done.value),
            Err(error) => {
                if stop.is_cancelled() {
                    tracing::warn!(error = %ErrorChain(&error), operation,
                        "stopping before the control entry committed; it stays pending");
                    return None;
                }
                tracing::error!(error = %ErrorChain(&error), operation, "control entry not committed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn ack(intake: &mut StreamIntake, entry: &RawEntry, stop: &CancellationToken) {
    let key = [(entry.stream.clone(), entry.id.clone())];
    let mut backoff = Backoff::new(backoff::REDIS_ACK);
    loop {
        match intake.ack(&key).await {
            Ok(()) => return,
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %ErrorChain(&error), "could not acknowledge a control entry; retrying");
                // Applying a control entry again changes nothing.
                if stop.is_cancelled() && backoff.failures() >= 5 {
                    return;
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}
