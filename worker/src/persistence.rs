//! Persistence: writes a batch of decoded stream entries in ONE PostgreSQL
//! transaction (event rows, dead letters, atoms, triples and the insert-only
//! fold deltas that carry the batch's effect on the other base tables, the
//! aggregates and the analytics queue; ADR 0015).
//!
//! Failures follow the one policy of [`crate::failure`]: a deadlock or
//! serialization failure reruns the transaction (bounded, quick); a data error
//! (SQLSTATE class 22 or 23) splits the batch until the entry responsible is
//! alone, and an entry of several items until the item responsible is alone;
//! that entry or item alone is dead-lettered with the database's message;
//! every other error is an outage, returned to the caller (the pipeline
//! retries the whole batch until it commits, acknowledging nothing meanwhile).

use crate::aggregates;
use crate::catalog::{EventKind, EVENT_TABLES};
use crate::columns::Columns;
use crate::copy::{self, CopyText};
use crate::decode::{DeadLetter, DecodedEntry, DecodedEvent};
use crate::failure::{self, Classify, Failure, Policy};
use crate::network::{self, NetworkRefused};
use crate::queries;
use sqlx::{PgPool, Postgres, Row, Transaction};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

pub use crate::failure::ConflictRetry;

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("PostgreSQL is unavailable")]
    Outage(#[source] sqlx::Error),
    #[error("transaction kept conflicting after {attempts} attempts")]
    Conflicts {
        attempts: u32,
        #[source]
        source: sqlx::Error,
    },
    /// Events of another network than the database's: an outage of the
    /// configuration, retried, never dead-lettered.
    #[error(transparent)]
    NetworkRefused(NetworkRefused),
}

impl PersistError {
    /// The database error behind it (none for a network refusal).
    fn cause(&self) -> Option<&sqlx::Error> {
        match self {
            PersistError::Outage(e) | PersistError::Conflicts { source: e, .. } => Some(e),
            PersistError::NetworkRefused(_) => None,
        }
    }
}

impl Classify for PersistError {
    fn failure(&self) -> Failure {
        match self {
            // A configuration problem: waited out like an outage, never dead-lettered.
            PersistError::Outage(_) | PersistError::NetworkRefused(_) => Failure::Outage,
            PersistError::Conflicts { .. } => Failure::Conflict,
        }
    }

    fn sqlstate(&self) -> Cow<'static, str> {
        match self.cause() {
            Some(cause) => cause.sqlstate(),
            None => Cow::Borrowed("network"),
        }
    }
}

/// What one committed write did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Newly stored events by kind (AtomCreated, …, Generic).
    pub new_events: BTreeMap<&'static str, u64>,
    /// Events already stored (redeliveries), skipped without effect.
    pub duplicate_events: u64,
    /// Dead letters written (decode failures and refused entries).
    pub dead_letters: u64,
    /// Entries the database refused, dead-lettered whole (single-item entries).
    pub refused_entries: u64,
    /// Items of multi-item entries the database refused, each dead-lettered
    /// alone while its neighbours were stored.
    pub refused_items: u64,
    /// Fold delta rows written (one per partition the batch touches).
    pub fold_deltas: u64,
    /// Transactions rolled back on conflict and run again.
    pub conflict_retries: u64,
    /// Events of dropped branches delivered again, discarded (ADR 0018).
    pub fenced_events: u64,
}

impl WriteOutcome {
    pub fn merge(&mut self, other: WriteOutcome) {
        for (kind, n) in other.new_events {
            *self.new_events.entry(kind).or_default() += n;
        }
        self.duplicate_events += other.duplicate_events;
        self.dead_letters += other.dead_letters;
        self.refused_entries += other.refused_entries;
        self.refused_items += other.refused_items;
        self.fold_deltas += other.fold_deltas;
        self.conflict_retries += other.conflict_retries;
        self.fenced_events += other.fenced_events;
    }

    pub fn stored_events(&self) -> u64 {
        self.new_events.values().sum()
    }
}

/// Writes the entries; returns once everything is committed (acks may follow).
///
/// Normally one transaction. If the database refuses the data (SQLSTATE class
/// 22 or 23 only), the batch is split in halves until the refused entry is
/// alone, and an entry of several items is split the same way until the
/// refused item is alone. That item (or a single-item entry, whole) is then
/// dead-lettered with the database's message, and its neighbours are
/// written. An outage returns at once: nothing is dead-lettered because of
/// it, and parts already committed are idempotent when rerun.
pub async fn write_entries(
    pool: &PgPool,
    entries: &[DecodedEntry],
    retry: ConflictRetry,
    trace_context: Option<&str>,
) -> Result<WriteOutcome, PersistError> {
    let mut outcome = WriteOutcome::default();
    // Parts of the batch still to write; split in halves when refused.
    let mut pending: Vec<Part> = vec![Part::Entries(0..entries.len())];
    while let Some(part) = pending.pop() {
        let piece;
        let chunk: &[DecodedEntry] = match &part {
            Part::Entries(range) | Part::Items { events: range, .. } if range.is_empty() => {
                continue
            }
            Part::Entries(range) => &entries[range.clone()],
            Part::Items { entry, events } => {
                piece = entries[*entry].part(events.clone(), false);
                std::slice::from_ref(&piece)
            }
            Part::DecodeLetters(entry) => {
                piece = entries[*entry].part(0..0, true);
                std::slice::from_ref(&piece)
            }
        };
        let error = match write_with_retries(pool, chunk, retry, trace_context).await {
            Ok(done) => {
                outcome.merge(done);
                continue;
            }
            Err(WriteError::Fatal(e)) => return Err(e),
            Err(WriteError::Rejected(error)) => error,
        };
        match part {
            Part::Entries(range) if range.len() > 1 => {
                tracing::info!(entries = range.len(), %error, "database refused a batch; splitting it to find the entry");
                let middle = range.start + range.len() / 2;
                pending.push(Part::Entries(middle..range.end));
                pending.push(Part::Entries(range.start..middle));
            }
            Part::Entries(range) => {
                let index = range.start;
                let entry = &entries[index];
                let items = entry.events.len() + entry.dead_letters.len();
                if entry.events.is_empty() || items == 1 {
                    let reason = failure::refusal_reason(
                        "the entry",
                        &error,
                        encoding(pool).await.as_deref(),
                    );
                    tracing::warn!(stream = %entry.stream, entry_id = %entry.entry_id, %error,
                        "database refused entry; dead-lettering it");
                    write_refusal(
                        pool,
                        entry.clone().into_dead_letter(reason),
                        retry,
                        trace_context,
                        &mut outcome,
                    )
                    .await?;
                    outcome.refused_entries += 1;
                } else {
                    tracing::info!(stream = %entry.stream, entry_id = %entry.entry_id, items, %error,
                        "database refused an entry of several items; splitting it to find the item");
                    if !entry.dead_letters.is_empty() {
                        pending.push(Part::DecodeLetters(index));
                    }
                    let (n, middle) = (entry.events.len(), entry.events.len() / 2);
                    for events in [middle..n, 0..middle] {
                        pending.push(Part::Items {
                            entry: index,
                            events,
                        });
                    }
                }
            }
            Part::Items { entry, events } if events.len() > 1 => {
                let middle = events.start + events.len() / 2;
                pending.push(Part::Items {
                    entry,
                    events: middle..events.end,
                });
                pending.push(Part::Items {
                    entry,
                    events: events.start..middle,
                });
            }
            Part::Items { entry, events } => {
                let entry = &entries[entry];
                let item_index = entry.events[events.start].source.item_index;
                let subject = format!("item {item_index} of the entry");
                let reason =
                    failure::refusal_reason(&subject, &error, encoding(pool).await.as_deref());
                tracing::warn!(stream = %entry.stream, entry_id = %entry.entry_id, item_index, %error,
                    "database refused an item; dead-lettering it, storing its neighbours");
                write_refusal(
                    pool,
                    entry.item_dead_letter(item_index, reason),
                    retry,
                    trace_context,
                    &mut outcome,
                )
                .await?;
                outcome.refused_items += 1;
            }
            // Even the decoder's dead letters cannot be written: an outage, retried later.
            Part::DecodeLetters(_) => return Err(PersistError::Outage(error)),
        }
    }
    Ok(outcome)
}

/// A part of a batch still to write (see [`write_entries`]).
enum Part {
    /// Whole entries.
    Entries(std::ops::Range<usize>),
    /// Some events (by position in its `events`) of the one entry `entry`,
    /// which the database refused as a whole.
    Items {
        entry: usize,
        events: std::ops::Range<usize>,
    },
    /// The decoder's dead letters of entry `entry`, when its events are
    /// written apart.
    DecodeLetters(usize),
}

/// The database's encoding, for the reason of an encoding error; `None`
/// when it cannot be read (the reason is written without it).
async fn encoding(pool: &PgPool) -> Option<String> {
    sqlx::query_scalar(queries::DATABASE_ENCODING)
        .fetch_one(pool)
        .await
        .ok()
}

/// Writes the dead letter of something the database refused.
async fn write_refusal(
    pool: &PgPool,
    letter: DeadLetter,
    retry: ConflictRetry,
    trace_context: Option<&str>,
    outcome: &mut WriteOutcome,
) -> Result<(), PersistError> {
    let dead = DecodedEntry {
        stream: letter.stream.clone(),
        entry_id: letter.entry_id.clone(),
        raw_payload: Vec::new(),
        events: Vec::new(),
        dead_letters: vec![letter],
        address_checksum_mismatches: 0,
        mismatched_address: None,
    };
    match write_with_retries(pool, std::slice::from_ref(&dead), retry, trace_context).await {
        Ok(done) => {
            outcome.merge(done);
            Ok(())
        }
        // Even the dead letter cannot be written: treat as an outage, retry later.
        Err(WriteError::Rejected(e)) => Err(PersistError::Outage(e)),
        Err(WriteError::Fatal(e)) => Err(e),
    }
}

enum WriteError {
    Rejected(sqlx::Error),
    Fatal(PersistError),
}

async fn write_with_retries(
    pool: &PgPool,
    entries: &[DecodedEntry],
    retry: ConflictRetry,
    trace_context: Option<&str>,
) -> Result<WriteOutcome, WriteError> {
    let policy = Policy {
        conflicts: retry,
        outages: None,
    };
    let result = failure::retry(&policy, || async {
        match write_once(pool, entries, Insert::Copy, trace_context).await {
            // A redelivery: some of these events are stored already.
            Err(e) if failure::is_duplicate_key(&e, &EVENT_TABLES) => {
                tracing::debug!(%e, "batch meets events already stored; writing it again without them");
                write_once(pool, entries, Insert::SkipStored, trace_context).await
            }
            other => other,
        }
    })
    .await;
    match result {
        Ok(done) => {
            let mut outcome = done
                .value
                .map_err(|refused| WriteError::Fatal(PersistError::NetworkRefused(refused)))?;
            outcome.conflict_retries = u64::from(done.conflict_retries);
            Ok(outcome)
        }
        Err(error) => Err(match error.failure() {
            Failure::Data => WriteError::Rejected(error),
            Failure::Conflict => WriteError::Fatal(PersistError::Conflicts {
                attempts: retry.max_attempts,
                source: error,
            }),
            Failure::Outage => WriteError::Fatal(PersistError::Outage(error)),
        }),
    }
}

/// One transaction writing `entries`: reorg fences, the network check,
/// then [`write_in_transaction`].
async fn write_once(
    pool: &PgPool,
    entries: &[DecodedEntry],
    insert: Insert,
    trace_context: Option<&str>,
) -> Result<Result<WriteOutcome, NetworkRefused>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Reorg fences first (ADR 0018): events their stream's notice cut off go.
    let (entries, fenced_events) = crate::reorg::discard_fenced(&mut tx, entries).await?;
    // One network per database (crate::network): checked first, refused whole.
    if let Err(refused) = network::check(&mut tx, &entries).await? {
        return Ok(Err(refused));
    }
    let mut outcome = write_in_transaction(&mut tx, &entries, insert, trace_context).await?;
    outcome.fenced_events = fenced_events;
    tx.commit().await?;
    Ok(Ok(outcome))
}

/// How a batch's events reach their tables (ADR 0022).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    /// `COPY`, about half the server CPU per event: every event must be new.
    /// One already stored fails the transaction with a unique violation
    /// ([`failure::is_duplicate_key`]), and the batch is written again with
    /// [`Insert::SkipStored`].
    Copy,
    /// `INSERT … ON CONFLICT DO NOTHING`: events already stored are skipped
    /// (and have no effect).
    SkipStored,
}

/// Everything a batch does inside its transaction, in the global lock order:
/// event tables, dead letters, then the derived tables (see `aggregates`).
pub async fn write_in_transaction(
    tx: &mut Transaction<'_, Postgres>,
    entries: &[DecodedEntry],
    insert: Insert,
    trace_context: Option<&str>,
) -> Result<WriteOutcome, sqlx::Error> {
    let mut outcome = WriteOutcome::default();

    // Deduplicate by primary key (first occurrence wins) and sort by it, so
    // concurrent batches take unique-index locks in the same order.
    let mut seen = HashSet::new();
    let mut events: Vec<&DecodedEvent> = Vec::new();
    for event in entries.iter().flat_map(|e| e.events.iter()) {
        if seen.insert(event.position.key()) {
            events.push(event);
        } else {
            outcome.duplicate_events += 1;
        }
    }
    events.sort_by(|a, b| a.position.key().cmp(&b.position.key()));

    // Keys of the new events when some may be stored already (SkipStored).
    let mut new_keys: HashSet<(String, i64)> = HashSet::new();
    for kind in EventKind::ALL {
        let rows: Vec<&DecodedEvent> = events
            .iter()
            .copied()
            .filter(|e| e.body.kind() == kind)
            .collect();
        if rows.is_empty() {
            continue;
        }
        let stored = match insert {
            // All new, or the COPY fails.
            Insert::Copy => copy_events(tx, kind, &rows).await?,
            Insert::SkipStored => {
                let inserted = insert_events(tx, kind, &rows).await?;
                let n = inserted.len();
                new_keys.extend(inserted);
                n
            }
        };
        outcome.duplicate_events += (rows.len() - stored) as u64;
        if stored > 0 {
            *outcome.new_events.entry(kind.name()).or_default() += stored as u64;
        }
    }
    // Usually every event is new; only a redelivery needs the lookup.
    let new_events: Vec<&DecodedEvent> = if insert == Insert::Copy || new_keys.len() == events.len()
    {
        events
    } else {
        events
            .into_iter()
            .filter(|e| {
                new_keys.contains(&(e.position.transaction_hash.clone(), e.position.log_index))
            })
            .collect()
    };

    let dead_letters: Vec<&DeadLetter> =
        entries.iter().flat_map(|e| e.dead_letters.iter()).collect();
    if !dead_letters.is_empty() {
        outcome.dead_letters = insert_dead_letters(tx, &dead_letters).await?;
    }

    outcome.fold_deltas = aggregates::apply(tx, &new_events, trace_context).await?;
    Ok(outcome)
}

/// COPYs events of one kind, all new (see [`Insert::Copy`]): the common
/// columns (chain position and source), then the kind's own fields
/// ([`crate::catalog`]). Returns how many it stored (all of them).
async fn copy_events(
    tx: &mut Transaction<'_, Postgres>,
    kind: EventKind,
    rows: &[&DecodedEvent],
) -> Result<usize, sqlx::Error> {
    // About 400 bytes per event row (ids and hashes are 42 to 66 characters).
    let mut data = CopyText::with_capacity(rows.len() * 512);
    for e in rows {
        let (position, source) = (&e.position, &e.source);
        data.text(&position.transaction_hash)
            .int(position.log_index)
            .text(&position.network)
            .int(position.block_number)
            .opt_text(position.block_hash.as_deref())
            .opt_unix_timestamp(position.block_timestamp)
            .opt_int(position.transaction_index)
            .opt_text(position.contract_address.as_deref())
            .text(&source.stream)
            .text(&source.entry_id)
            .int(i64::from(source.item_index));
        for value in e.body.values() {
            data.value(value);
        }
        data.end_row();
    }
    copy::copy_in(tx, kind.copy_statement(), data).await?;
    Ok(rows.len())
}

/// Inserts events of one kind, skipping those already stored (see
/// [`Insert::SkipStored`]); columns as [`copy_events`]. Returns the keys
/// of the new ones.
async fn insert_events(
    tx: &mut Transaction<'_, Postgres>,
    kind: EventKind,
    rows: &[&DecodedEvent],
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let inserted = Columns::new(kind.insert_statement(), rows.iter().copied())
        .column(|e| e.position.transaction_hash.as_str())
        .column(|e| e.position.log_index)
        .column(|e| e.position.network.as_str())
        .column(|e| e.position.block_number)
        .column(|e| e.position.block_hash.as_deref())
        .column(|e| e.position.block_timestamp)
        .column(|e| e.position.transaction_index)
        .column(|e| e.position.contract_address.as_deref())
        .column(|e| &*e.source.stream)
        .column(|e| &*e.source.entry_id)
        .column(|e| e.source.item_index)
        .values(|e| e.body.values())
        .query()
        .fetch_all(&mut **tx)
        .await?;
    inserted
        .iter()
        .map(|row| Ok((row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?)))
        .collect()
}

async fn insert_dead_letters(
    tx: &mut Transaction<'_, Postgres>,
    letters: &[&DeadLetter],
) -> Result<u64, sqlx::Error> {
    let result = Columns::new(queries::INSERT_DEAD_LETTERS, letters.iter().copied())
        .column(|d| &*d.stream)
        .column(|d| &*d.entry_id)
        .column(|d| d.item_index)
        .column(|d| d.event_name.as_deref())
        .column(|d| d.reason.as_str())
        .column(|d| d.raw_payload.as_slice())
        .column(|d| d.envelope_network.as_deref())
        .column(|d| d.event_signature_hash.as_deref())
        .query()
        .execute(&mut **tx)
        .await?;
    Ok(result.rows_affected())
}
