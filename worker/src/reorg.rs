//! rindexer's own chain-reorganisation notices (issue 21, ADR 0018).
//!
//! With `reorg_handling`, rindexer writes `__rindexer_reorg` to every stream
//! of the network when a branch is dropped. Entries before a copy in a stream
//! may belong to the dropped branch; entries after it belong to the new one.
//! So each copy is a **fence of its own stream**: the network's events of
//! that stream's earlier entries at or above `fork_block` are removed, and
//! stay removed when they are delivered again.
//!
//! - A copy is applied only once every earlier entry of its stream is
//!   acknowledged (the consumer group's pending list has none before it): the
//!   earlier entries are committed first, whichever worker holds them.
//! - Applying it is one transaction: `reorg_fence` locked EXCLUSIVE (batches
//!   take ROW SHARE before reading fences), the stream's first copy of that
//!   reorg recorded in `reorg_fence`/`chain_reorg`, and the dropped events
//!   removed with the manual rollback's recomputation (pending fold deltas,
//!   base tables, terms, analytics). A later copy of the same reorg, a
//!   redelivered copy, or a notice of another network changes nothing.
//! - Every batch discards events of a stream's entries before a recorded
//!   fence at or above its fork block (a redelivery of the dropped branch).
//!
//! Other `__rindexer_*` entries are control entries this worker does not
//! know: logged, counted and acknowledged, never dead-lettered.

use crate::backoff::{self, Backoff};
use crate::decode::numbers::{self, Spelling};
use crate::decode::{DeadLetter, DecodedEntry, PAYLOAD_FIELDS};
use crate::failure::{self, ConflictRetry, OutageRetry, Policy};
use crate::health::Source;
use crate::intake::{RawEntry, StreamIntake};
use crate::pipeline::Consumer;
use crate::queries;
use crate::rollback::{self, Removal, RollbackReport};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, Postgres, Row, Transaction};
use std::borrow::Cow;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use telemetry::ErrorChain;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The prefix of rindexer's control entries.
pub const CONTROL_PREFIX: &str = "__rindexer_";
/// The event name of a reorg notice.
pub const REORG_NOTICE: &str = "__rindexer_reorg";
/// Longest wait for earlier entries of the stream that live consumers are
/// still writing; after it the notice stays pending and is claimed again.
const BARRIER_WAIT: Duration = Duration::from_secs(30);

/// One reorg as a notice announces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReorgNotice {
    pub network: String,
    /// The first block of the dropped branch.
    pub fork_block: i64,
    pub depth: i64,
    /// What rindexer says it deleted in its own storage (0 without storage).
    pub events_deleted: Option<i64>,
    pub affected_tx_hashes: Vec<String>,
}

/// A control entry: written by rindexer itself, not an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    Reorg(Vec<ReorgNotice>),
    /// A `__rindexer_*` entry this worker does not know.
    Unknown {
        event_name: String,
    },
    /// A reorg notice without what applying it needs (bad input).
    Malformed {
        reason: String,
        raw: Vec<u8>,
    },
}

/// The control entry `entry` is, if it is one (any payload field name the
/// decoder accepts; numbers in any of its spellings).
pub fn control_of(entry: &RawEntry) -> Option<Control> {
    let raw = PAYLOAD_FIELDS
        .iter()
        .find_map(|name| entry.fields.iter().find(|(f, _)| f == name).map(|(_, v)| v))?;
    // Cheap test first: almost every entry is an event.
    if !raw
        .windows(CONTROL_PREFIX.len())
        .any(|w| w == CONTROL_PREFIX.as_bytes())
    {
        return None;
    }
    let envelope: Value = serde_json::from_slice(raw).ok()?;
    let event_name = envelope.get("event_name")?.as_str()?;
    if !event_name.starts_with(CONTROL_PREFIX) {
        return None;
    }
    if event_name != REORG_NOTICE {
        return Some(Control::Unknown {
            event_name: event_name.to_string(),
        });
    }
    Some(match notices(&envelope) {
        Ok(notices) => Control::Reorg(notices),
        Err(reason) => Control::Malformed {
            reason: format!("{REORG_NOTICE}: {reason}"),
            raw: raw.clone(),
        },
    })
}

fn notices(envelope: &Value) -> Result<Vec<ReorgNotice>, String> {
    let items: Vec<&Value> = match envelope.get("event_data") {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(item @ Value::Object(_)) => vec![item],
        Some(other) => {
            return Err(format!(
                "event_data is {}, not an object or array",
                kind(other)
            ))
        }
        None => return Err("event_data is missing".into()),
    };
    if items.is_empty() {
        return Err("event_data is empty".into());
    }
    let envelope_network = envelope.get("network").and_then(Value::as_str);
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            notice(item, envelope_network).map_err(|e| format!("item {index}: {e}"))
        })
        .collect()
}

fn notice(item: &Value, envelope_network: Option<&str>) -> Result<ReorgNotice, String> {
    let Value::Object(fields) = item else {
        return Err(format!("is {}, not an object", kind(item)));
    };
    if let Some(kind_field) = fields.get("type") {
        if kind_field.as_str() != Some("reorg") {
            return Err(format!("field `type` is {kind_field}, expected \"reorg\""));
        }
    }
    let network = match fields.get("network") {
        Some(Value::String(n)) if !n.is_empty() && !n.contains('\0') => n.clone(),
        Some(other) => {
            return Err(format!(
                "field `network` expected a network name, got {other}"
            ))
        }
        None => envelope_network
            .filter(|n| !n.is_empty() && !n.contains('\0'))
            .map(str::to_string)
            .ok_or("field `network` is missing")?,
    };
    let number = |name: &str| -> Result<Option<i64>, String> {
        let parsed = match fields.get(name) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(s)) => {
                numbers::parse_small(Spelling::Text(s), i64::MAX as u64, "a block number")
            }
            Some(Value::Number(n)) => {
                let text = n.to_string();
                numbers::parse_small(Spelling::Literal(&text), i64::MAX as u64, "a block number")
            }
            Some(other) => return Err(format!("field `{name}` expected a number, got {other}")),
        };
        parsed.map(Some).map_err(|e| format!("field `{name}` {e}"))
    };
    let fork_block = number("fork_block")?.ok_or("field `fork_block` is missing")?;
    let affected_tx_hashes = match fields.get("affected_tx_hashes") {
        Some(Value::Array(hashes)) => hashes
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    };
    Ok(ReorgNotice {
        network,
        fork_block,
        depth: number("depth")?.unwrap_or(0),
        events_deleted: number("events_deleted")?,
        affected_tx_hashes,
    })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A batch cut at its control entries, in stream order.
#[derive(Debug)]
pub enum Segment {
    Data(Vec<RawEntry>),
    Control(RawEntry, Control),
}

/// Cuts a batch at its control entries; runs of events stay one segment.
pub fn segments(raw: Vec<RawEntry>) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    for entry in raw {
        match control_of(&entry) {
            Some(control) => out.push(Segment::Control(entry, control)),
            None => match out.last_mut() {
                Some(Segment::Data(run)) => run.push(entry),
                _ => out.push(Segment::Data(vec![entry])),
            },
        }
    }
    out
}

/// A stream entry id `<ms>-<seq>` as a comparable pair.
pub fn entry_position(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// One recorded fence, as batches read it.
#[derive(Debug, Clone)]
struct Fence {
    network: String,
    fork_block: i64,
    position: (u64, u64),
}

/// Inside a batch's transaction, before anything is written: drops the
/// events of entries that a recorded fence of their stream has cut off (the
/// dropped branch, delivered again). Returns the entries to write and how
/// many events were discarded.
pub async fn discard_fenced<'a>(
    tx: &mut Transaction<'_, Postgres>,
    entries: &'a [DecodedEntry],
) -> Result<(Cow<'a, [DecodedEntry]>, u64), sqlx::Error> {
    sqlx::query(queries::LOCK_REORG_FENCE_SHARED)
        .execute(&mut **tx)
        .await?;
    let mut streams: Vec<&str> = Vec::new();
    let mut first_ms: Option<u64> = None;
    for entry in entries.iter().filter(|e| !e.events.is_empty()) {
        if let Some((ms, _)) = entry_position(&entry.entry_id) {
            if !streams.contains(&&*entry.stream) {
                streams.push(&entry.stream);
            }
            first_ms = Some(first_ms.map_or(ms, |m| m.min(ms)));
        }
    }
    let Some(first_ms) = first_ms else {
        return Ok((Cow::Borrowed(entries), 0));
    };
    let rows = sqlx::query(queries::SELECT_REORG_FENCES)
        .bind(&streams)
        .bind(first_ms.to_string())
        .fetch_all(&mut **tx)
        .await?;
    if rows.is_empty() {
        return Ok((Cow::Borrowed(entries), 0));
    }
    let mut fences: HashMap<String, Vec<Fence>> = HashMap::new();
    for row in rows {
        let ms: String = row.try_get(3)?;
        let seq: String = row.try_get(4)?;
        let (Ok(ms), Ok(seq)) = (ms.parse::<u64>(), seq.parse::<u64>()) else {
            continue;
        };
        fences.entry(row.try_get(0)?).or_default().push(Fence {
            network: row.try_get(1)?,
            fork_block: row.try_get(2)?,
            position: (ms, seq),
        });
    }
    let cut_off = |entry: &DecodedEntry, network: &str, block: i64| -> bool {
        let Some(position) = entry_position(&entry.entry_id) else {
            return false;
        };
        fences.get(&*entry.stream).is_some_and(|fences| {
            fences
                .iter()
                .any(|f| f.network == network && block >= f.fork_block && position < f.position)
        })
    };
    let any = entries.iter().any(|e| {
        e.events
            .iter()
            .any(|ev| cut_off(e, &ev.position.network, ev.position.block_number))
    });
    if !any {
        return Ok((Cow::Borrowed(entries), 0));
    }
    let mut discarded = 0u64;
    let kept: Vec<DecodedEntry> = entries
        .iter()
        .map(|e| {
            let mut e2 = e.clone();
            e2.events.retain(|ev| {
                let cut = cut_off(e, &ev.position.network, ev.position.block_number);
                if cut {
                    discarded += 1;
                    tracing::info!(stream = %e.stream, entry_id = %e.entry_id,
                        block = ev.position.block_number, tx = %ev.position.transaction_hash,
                        log_index = ev.position.log_index,
                        "discarding an event of a dropped branch delivered again (its stream's reorg notice came later)");
                }
                !cut
            });
            e2
        })
        .collect();
    Ok((Cow::Owned(kept), discarded))
}

/// What one copy of a notice did.
#[derive(Debug, Clone)]
pub enum Applied {
    /// This stream's first copy of the reorg: its dropped events are gone.
    Fenced {
        report: RollbackReport,
        /// Streams that have passed this reorg so far (1: the first one).
        streams_passed: i32,
    },
    /// The stream already passed this reorg (a repeated or redelivered copy).
    Duplicate { first_copy: String },
    /// The notice names another network than the database holds.
    OtherNetwork { database: String },
    /// The entry id is not a stream id (`<ms>-<seq>`): nothing to fence.
    NoPosition,
}

impl Applied {
    fn outcome(&self) -> &'static str {
        match self {
            Applied::Fenced { .. } => "applied",
            Applied::Duplicate { .. } => "duplicate",
            Applied::OtherNetwork { .. } => "other_network",
            Applied::NoPosition => "no_position",
        }
    }
}

/// Applies one copy of a notice read at `entry_id` of `stream`, in one
/// transaction (see the module comment). The caller has checked that every
/// earlier entry of the stream is acknowledged.
pub async fn apply(
    pool: &PgPool,
    stream: &str,
    entry_id: &str,
    notice: &ReorgNotice,
) -> Result<Applied, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let applied = apply_in(&mut tx, stream, entry_id, notice).await?;
    tx.commit().await?;
    Ok(applied)
}

async fn apply_in(
    tx: &mut Transaction<'_, Postgres>,
    stream: &str,
    entry_id: &str,
    notice: &ReorgNotice,
) -> Result<Applied, sqlx::Error> {
    if entry_position(entry_id).is_none() {
        return Ok(Applied::NoPosition);
    }
    let started = Instant::now();
    sqlx::query(queries::LOCK_REORG_FENCE_EXCLUSIVE)
        .execute(&mut **tx)
        .await?;
    if let Some(database) = crate::network::database_network(&mut **tx).await? {
        if database != notice.network {
            return Ok(Applied::OtherNetwork { database });
        }
    }
    let first: Option<String> = sqlx::query_scalar(queries::SELECT_REORG_FENCE_COPY)
        .bind(stream)
        .bind(&notice.network)
        .bind(notice.fork_block)
        .bind(notice.depth)
        .fetch_optional(&mut **tx)
        .await?;
    if let Some(first_copy) = first {
        return Ok(Applied::Duplicate { first_copy });
    }
    let removal = Removal {
        network: &notice.network,
        min_block: notice.fork_block,
        before_entry: Some((stream, entry_id)),
    };
    let report = rollback::remove_and_recompute(tx, &removal).await?;
    let removed = report.events_removed_total() as i64;
    let streams_passed: i32 = sqlx::query_scalar(queries::RECORD_CHAIN_REORG)
        .bind(&notice.network)
        .bind(notice.fork_block)
        .bind(notice.depth)
        .bind(removed)
        .fetch_one(&mut **tx)
        .await?;
    sqlx::query(queries::INSERT_REORG_FENCE)
        .bind(stream)
        .bind(&notice.network)
        .bind(notice.fork_block)
        .bind(notice.depth)
        .bind(entry_id)
        .bind(removed)
        .bind(started.elapsed().as_millis() as i64)
        .execute(&mut **tx)
        .await?;
    Ok(Applied::Fenced {
        report,
        streams_passed,
    })
}

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
        apply(&consumer.pool, &entry.stream, &entry.id, notice)
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

/// The stream entries (and their consumer) that a notice waits for.
#[derive(Debug, Clone)]
pub struct PendingEntry {
    pub id: String,
    pub consumer: String,
    pub idle: Duration,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NetworkLabel {
    pub network: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventNameLabel {
    pub event_name: String,
}

/// The reorg metrics (part of [`crate::metrics::Metrics`]).
pub struct ReorgMetrics {
    pub reorgs_applied: Family<NetworkLabel, Counter>,
    pub notices: Family<OutcomeLabel, Counter>,
    pub notices_held: Counter,
    pub events_removed: Counter,
    pub events_discarded: Counter,
    pub apply_seconds: Histogram,
    pub control_entries_ignored: Family<EventNameLabel, Counter>,
}

impl Default for ReorgMetrics {
    fn default() -> Self {
        ReorgMetrics {
            reorgs_applied: Family::default(),
            notices: Family::default(),
            notices_held: Counter::default(),
            events_removed: Counter::default(),
            events_discarded: Counter::default(),
            // 1 ms .. ~9 h
            apply_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 25)),
            control_entries_ignored: Family::default(),
        }
    }
}

impl ReorgMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "chain_reorgs_applied",
            "Chain reorganisations (rindexer notices) whose first copy this process applied, by network",
            self.reorgs_applied.clone(),
        );
        registry.register(
            "reorg_notices",
            "Copies of rindexer reorg notices handled, by outcome (applied, duplicate, other_network, no_position)",
            self.notices.clone(),
        );
        registry.register(
            "reorg_notices_held",
            "Reorg notices left pending because an earlier entry of their stream was not yet committed",
            self.notices_held.clone(),
        );
        registry.register(
            "reorg_events_removed",
            "Stored events of dropped branches removed by reorg notices",
            self.events_removed.clone(),
        );
        registry.register(
            "reorg_events_discarded",
            "Events of dropped branches delivered again after their stream's notice, discarded",
            self.events_discarded.clone(),
        );
        registry.register(
            "reorg_apply_seconds",
            "Time to apply one stream's copy of a reorg notice (removal and recomputation)",
            self.apply_seconds.clone(),
        );
        registry.register(
            "control_entries_ignored",
            "Unknown rindexer control entries (__rindexer_*) acknowledged without effect, by event name",
            self.control_entries_ignored.clone(),
        );
    }
}

/// `/health`'s view of the applied reorgs (all workers, from `chain_reorg`).
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReorgHealth {
    pub applied: i64,
    pub latest: Option<LatestReorg>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatestReorg {
    pub network: String,
    pub fork_block: i64,
    pub depth: i64,
    pub applied_unix: f64,
    pub events_removed: i64,
    pub streams_passed: i32,
}

/// Reads [`ReorgHealth`] (the monitor calls it).
pub async fn stats(pool: &PgPool) -> Result<ReorgHealth, sqlx::Error> {
    let row = sqlx::query(queries::REORG_STATS).fetch_one(pool).await?;
    let network: Option<String> = row.try_get(1)?;
    let latest = match network {
        None => None,
        Some(network) => Some(LatestReorg {
            network,
            fork_block: row.try_get(2)?,
            depth: row.try_get(3)?,
            applied_unix: row.try_get(4)?,
            events_removed: row.try_get(5)?,
            streams_passed: row.try_get(6)?,
        }),
    };
    Ok(ReorgHealth {
        applied: row.try_get(0)?,
        latest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn raw(field: &str, payload: &str) -> RawEntry {
        RawEntry {
            stream: Arc::from("s"),
            id: Arc::from("5-0"),
            fields: vec![(field.to_string(), payload.as_bytes().to_vec())],
        }
    }

    /// Exactly the shape of rindexer's `stream_reorg` (issue 21).
    const NOTICE: &str = r#"{"event_name":"__rindexer_reorg","event_data":[{"type":"reorg","network":"base","fork_block":27,"depth":12,"events_deleted":0,"affected_tx_hashes":[],"affected_events":[{"indexer":"i","contract":"MultiVault","event":"Deposited","schema":"s","table":"t","rows_deleted":0}]}],"event_signature_hash":"0x0000000000000000000000000000000000000000000000000000000000000000","block_number":0,"network":"base","message_id":"reorg_base_27"}"#;

    #[test]
    fn the_notice_is_recognised_under_every_payload_field() {
        for field in PAYLOAD_FIELDS {
            let control = control_of(&raw(field, NOTICE)).expect("a control entry");
            assert_eq!(
                control,
                Control::Reorg(vec![ReorgNotice {
                    network: "base".into(),
                    fork_block: 27,
                    depth: 12,
                    events_deleted: Some(0),
                    affected_tx_hashes: vec![],
                }])
            );
        }
    }

    #[test]
    fn numbers_in_every_spelling_and_the_envelope_network() {
        let notice = r#"{"event_name":"__rindexer_reorg","network":"base","event_data":{"type":"reorg","fork_block":"0x1b","depth":"12"}}"#;
        let Some(Control::Reorg(notices)) = control_of(&raw("data", notice)) else {
            panic!("not a reorg notice");
        };
        assert_eq!(
            (
                notices[0].network.as_str(),
                notices[0].fork_block,
                notices[0].depth
            ),
            ("base", 27, 12)
        );
    }

    #[test]
    fn unknown_control_entries_and_events_are_told_apart() {
        let other = r#"{"event_name":"__rindexer_heartbeat","event_data":[]}"#;
        assert_eq!(
            control_of(&raw("payload", other)),
            Some(Control::Unknown {
                event_name: "__rindexer_heartbeat".into()
            })
        );
        // An event whose data merely mentions the prefix is an event.
        let event = r#"{"event_name":"Deposited","event_data":{"note":"__rindexer_reorg"}}"#;
        assert_eq!(control_of(&raw("payload", event)), None);
        assert_eq!(control_of(&raw("payload", "not json __rindexer_")), None);
    }

    #[test]
    fn a_notice_without_a_fork_block_names_the_field() {
        let notice = r#"{"event_name":"__rindexer_reorg","event_data":[{"type":"reorg","network":"base","depth":1}]}"#;
        let Some(Control::Malformed { reason, .. }) = control_of(&raw("payload", notice)) else {
            panic!("not malformed");
        };
        assert_eq!(
            reason,
            "__rindexer_reorg: item 0: field `fork_block` is missing"
        );
        let notice = r#"{"event_name":"__rindexer_reorg","event_data":[{"type":"reorg","network":"base","fork_block":"x"}]}"#;
        let Some(Control::Malformed { reason, .. }) = control_of(&raw("payload", notice)) else {
            panic!("not malformed");
        };
        assert!(reason.contains("`fork_block`"), "{reason}");
    }

    #[test]
    fn segments_keep_stream_order() {
        let event = r#"{"event_name":"Deposited","event_data":{}}"#;
        let entries = vec![
            raw("payload", event),
            raw("payload", event),
            raw("payload", NOTICE),
            raw("payload", event),
        ];
        let cut = segments(entries);
        assert!(matches!(
            cut.as_slice(),
            [Segment::Data(a), Segment::Control(..), Segment::Data(b)] if a.len() == 2 && b.len() == 1
        ));
    }

    #[test]
    fn entry_positions_compare_numerically() {
        assert!(entry_position("9-5") < entry_position("10-0"));
        assert!(entry_position("10-2") < entry_position("10-10"));
        assert_eq!(entry_position("replay"), None);
    }
}
