//! Prometheus metrics of the worker (contract §7), served on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabel {
    pub stream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

/// A database outage: its SQLSTATE (or error name) and the operation it hit.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutageLabel {
    pub sqlstate: String,
    pub operation: String,
}

/// Every metric the worker exports. Cheap to clone (handles are shared).
pub struct Metrics {
    registry: Registry,
    pub events_stored: Family<KindLabel, Counter>,
    pub events_duplicate: Counter,
    pub entries_processed: Family<StreamLabel, Counter>,
    pub dead_letters: Counter,
    pub refused_entries: Counter,
    pub refused_items: Counter,
    pub address_checksum_mismatches: Family<StreamLabel, Counter>,
    pub batches: Counter,
    pub batch_entries: Histogram,
    pub batch_events: Histogram,
    pub batch_duration: Histogram,
    pub transaction_duration: Histogram,
    pub transaction_retries: Counter,
    pub write_failures: Family<OutcomeLabel, Counter>,
    pub database_outage_errors: Family<OutageLabel, Counter>,
    pub entries_claimed: Counter,
    pub consumer_groups_recreated: Family<StreamLabel, Counter>,
    pub consumers_removed: Family<StreamLabel, Counter>,
    pub entries_trimmed: Family<StreamLabel, Counter>,
    pub stream_lag: Family<StreamLabel, Gauge>,
    pub stream_pending: Family<StreamLabel, Gauge>,
    pub entry_to_commit_seconds: Histogram,
    pub block_to_commit_seconds: Histogram,
    pub analytics_queue_depth: Gauge,
    pub analytics_queue_parked: Gauge,
    pub analytics_oldest_pending_seconds: Gauge<f64, AtomicU64>,
    pub analytics_terms_processed: Counter,
    pub analytics_batch_terms: Histogram,
    pub analytics_batch_duration: Histogram,
    pub analytics_retries: Counter,
    pub analytics_parked: Counter,
    pub fold_pending_deltas: Gauge,
    pub fold_lag_seconds: Gauge<f64, AtomicU64>,
    pub fold_delay_seconds: Histogram,
    pub fold_duration: Histogram,
    pub fold_transactions: Counter,
    pub fold_deltas: Counter,
    pub fold_failures: Counter,
    pub fold_parked: Counter,
    pub fold_parked_deltas: Gauge,
    pub fold_newer_format_deltas: Gauge,
    /// rindexer reorg notices and control entries (ADR 0018).
    pub reorg: ReorgMetrics,
}

/// Fine buckets (x1.2 from 0.5 ms to ~3 min) for the stream-entry latency,
/// so that percentiles read from /metrics are within ~10 %.
fn fine_latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 1.2, 70))
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~9 h
    Histogram::new(exponential_buckets(0.001, 2.0, 25))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pgw");
        let m = Metrics {
            events_stored: Family::default(),
            events_duplicate: Counter::default(),
            entries_processed: Family::default(),
            dead_letters: Counter::default(),
            refused_entries: Counter::default(),
            refused_items: Counter::default(),
            address_checksum_mismatches: Family::default(),
            batches: Counter::default(),
            batch_entries: Histogram::new(exponential_buckets(1.0, 2.0, 15)),
            batch_events: Histogram::new(exponential_buckets(1.0, 2.0, 18)),
            batch_duration: latency_histogram(),
            transaction_duration: latency_histogram(),
            transaction_retries: Counter::default(),
            write_failures: Family::default(),
            database_outage_errors: Family::default(),
            entries_claimed: Counter::default(),
            consumer_groups_recreated: Family::default(),
            consumers_removed: Family::default(),
            entries_trimmed: Family::default(),
            stream_lag: Family::default(),
            stream_pending: Family::default(),
            entry_to_commit_seconds: fine_latency_histogram(),
            block_to_commit_seconds: latency_histogram(),
            analytics_queue_depth: Gauge::default(),
            analytics_queue_parked: Gauge::default(),
            analytics_oldest_pending_seconds: Gauge::default(),
            analytics_terms_processed: Counter::default(),
            analytics_batch_terms: Histogram::new(exponential_buckets(1.0, 2.0, 18)),
            analytics_batch_duration: latency_histogram(),
            analytics_retries: Counter::default(),
            analytics_parked: Counter::default(),
            fold_pending_deltas: Gauge::default(),
            fold_lag_seconds: Gauge::default(),
            fold_delay_seconds: fine_latency_histogram(),
            fold_duration: latency_histogram(),
            fold_transactions: Counter::default(),
            fold_deltas: Counter::default(),
            fold_failures: Counter::default(),
            fold_parked: Counter::default(),
            fold_parked_deltas: Gauge::default(),
            fold_newer_format_deltas: Gauge::default(),
            reorg: ReorgMetrics::default(),
            registry: Registry::default(),
        };
        registry.register(
            "events_stored",
            "Events newly stored, by event kind",
            m.events_stored.clone(),
        );
        registry.register(
            "events_duplicate",
            "Redelivered events skipped without effect",
            m.events_duplicate.clone(),
        );
        registry.register(
            "entries_processed",
            "Stream entries committed and acknowledged",
            m.entries_processed.clone(),
        );
        registry.register(
            "dead_letters",
            "Entries or items written to dead_letters",
            m.dead_letters.clone(),
        );
        registry.register(
            "refused_entries",
            "Entries the database refused, dead-lettered whole",
            m.refused_entries.clone(),
        );
        registry.register(
            "refused_items",
            "Items of multi-item entries the database refused, each dead-lettered alone (its neighbours stored)",
            m.refused_items.clone(),
        );
        registry.register(
            "address_checksum_mismatches",
            "Addresses of stored events spelt with a wrong EIP-55 checksum (stored checksummed), by stream",
            m.address_checksum_mismatches.clone(),
        );
        registry.register("batches", "Batches committed", m.batches.clone());
        registry.register(
            "batch_entries",
            "Stream entries per batch",
            m.batch_entries.clone(),
        );
        registry.register(
            "batch_events",
            "Decoded events per batch",
            m.batch_events.clone(),
        );
        registry.register(
            "batch_duration_seconds",
            "Time from read to ack of a batch",
            m.batch_duration.clone(),
        );
        registry.register(
            "transaction_duration_seconds",
            "Time to write and commit a batch",
            m.transaction_duration.clone(),
        );
        registry.register(
            "transaction_retries",
            "Transactions rerun after a deadlock or serialization failure",
            m.transaction_retries.clone(),
        );
        registry.register(
            "write_failures",
            "Batch writes that failed, by cause",
            m.write_failures.clone(),
        );
        registry.register(
            "database_outage_errors",
            "Failed database operations retried as an outage, by SQLSTATE and operation",
            m.database_outage_errors.clone(),
        );
        registry.register(
            "entries_claimed",
            "Pending entries taken over from idle consumers",
            m.entries_claimed.clone(),
        );
        registry.register(
            "consumer_groups_recreated",
            "Consumer groups found missing (NOGROUP) and created again at 0",
            m.consumer_groups_recreated.clone(),
        );
        registry.register(
            "consumers_removed",
            "Idle consumers without pending entries removed from the group",
            m.consumers_removed.clone(),
        );
        registry.register(
            "entries_trimmed",
            "Pending entries trimmed from the stream before they were acknowledged (own or taken over), dead-lettered without payload, by stream",
            m.entries_trimmed.clone(),
        );
        registry.register(
            "stream_lag",
            "Entries not yet delivered to the consumer group",
            m.stream_lag.clone(),
        );
        registry.register(
            "stream_pending",
            "Entries delivered but not acknowledged",
            m.stream_pending.clone(),
        );
        registry.register(
            "entry_to_commit_seconds",
            "Time from stream entry creation to commit",
            m.entry_to_commit_seconds.clone(),
        );
        registry.register(
            "block_to_commit_seconds",
            "Time from block timestamp to commit",
            m.block_to_commit_seconds.clone(),
        );
        registry.register(
            "analytics_queue_depth",
            "Terms waiting in the analytics queue (not parked)",
            m.analytics_queue_depth.clone(),
        );
        registry.register(
            "analytics_queue_parked",
            "Terms parked after too many failed attempts",
            m.analytics_queue_parked.clone(),
        );
        registry.register(
            "analytics_oldest_pending_seconds",
            "Age of the oldest pending analytics term",
            m.analytics_oldest_pending_seconds.clone(),
        );
        registry.register(
            "analytics_terms_processed",
            "Analytics terms processed",
            m.analytics_terms_processed.clone(),
        );
        registry.register(
            "analytics_batch_terms",
            "Terms per analytics batch",
            m.analytics_batch_terms.clone(),
        );
        registry.register(
            "analytics_batch_duration_seconds",
            "Time to process one analytics batch",
            m.analytics_batch_duration.clone(),
        );
        registry.register(
            "analytics_retries",
            "Analytics terms scheduled for retry after a failure",
            m.analytics_retries.clone(),
        );
        registry.register(
            "analytics_parked",
            "Analytics terms parked after the last allowed attempt",
            m.analytics_parked.clone(),
        );
        registry.register(
            "fold_pending_deltas",
            "Fold deltas committed but not yet folded into the base tables (all processes)",
            m.fold_pending_deltas.clone(),
        );
        registry.register(
            "fold_lag_seconds",
            "Age of the oldest unfolded delta: how far the base tables may be behind the events",
            m.fold_lag_seconds.clone(),
        );
        registry.register(
            "fold_delay_seconds",
            "Time from a delta's insert (its batch's commit) to the commit of the fold that applied it",
            m.fold_delay_seconds.clone(),
        );
        registry.register(
            "fold_duration_seconds",
            "Time of one fold transaction",
            m.fold_duration.clone(),
        );
        registry.register(
            "fold_transactions",
            "Fold transactions committed by this process",
            m.fold_transactions.clone(),
        );
        registry.register(
            "fold_deltas",
            "Deltas folded by this process",
            m.fold_deltas.clone(),
        );
        registry.register(
            "fold_failures",
            "Fold transactions that failed (retried)",
            m.fold_failures.clone(),
        );
        registry.register(
            "fold_parked",
            "Deltas this process parked because they cannot be folded (ADR 0019)",
            m.fold_parked.clone(),
        );
        registry.register(
            "fold_parked_deltas",
            "Deltas in fold_delta_parked (all processes): effects missing from the base tables until replayed",
            m.fold_parked_deltas.clone(),
        );
        registry.register(
            "fold_newer_format_deltas",
            "Deltas of a newer format than this binary folds, left for a newer binary (a rolling upgrade)",
            m.fold_newer_format_deltas.clone(),
        );
        m.reorg.register(&mut registry);
        Metrics { registry, ..m }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NetworkLabel {
    pub network: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventNameLabel {
    pub event_name: String,
}

/// The metrics of rindexer's reorg notices and control entries (ADR 0018;
/// counted by [`crate::pipeline`], part of [`Metrics`]).
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
