//! Aggregates: the effect of newly stored events on the read model.
//!
//! In the batch transaction (ADR 0015) only insert-mostly rows are written:
//! `atom` and `triple` (newest creation event wins; a conflict means a
//! redelivered or repeated creation, never a hot row), and one insert-only
//! delta per fold partition ([`crate::partition`]) holding that partition's share
//! of the batch folded per key. No vault, position, term or analytics-queue
//! row is locked by a batch.
//!
//! The partition owner later merges deltas ([`Folded::merge`]) and applies
//! them ([`Folded::apply`]) with the keyed statements of ADR 0007/0008:
//! positions first (each records its exact change of `position_count` under
//! its own row lock), then vaults, terms, term totals and the analytics
//! queue. A folder owns every row it writes (one partition = a term, its
//! vaults and their positions), so the statements never wait on another
//! folder; "newest" columns are guarded by chain order and sums are exact
//! decimals, so the result is the same whatever the grouping of deltas.

use crate::catalog::EventBody;
use crate::columns::Columns;
use crate::copy::{self, CopyText};
use crate::decode::numbers::{add_decimal, is_positive};
use crate::decode::DecodedEvent;
use crate::partition::partition_of;
use crate::queries;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::{Postgres, Transaction};
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Applies `events` (only those just inserted, never redeliveries) inside the
/// batch transaction: atoms, triples and the fold deltas. Returns the number
/// of delta rows written.
pub async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    events: &[&DecodedEvent],
    trace_context: Option<&str>,
) -> Result<u64, sqlx::Error> {
    if events.is_empty() {
        return Ok(0);
    }
    let plan = Plan::from_events(events);
    plan.upsert_atoms(tx).await?;
    plan.upsert_triples(tx).await?;
    insert_deltas(tx, plan.deltas, trace_context).await
}

/// The delta format this binary writes and the newest it folds (ADR 0019):
/// 1 is the JSON of ADR 0015 ([`Changes`]), also written by binaries of
/// schema 10, which do not name it (the column's default). Deltas of a newer
/// format stay in `fold_delta` for a newer binary.
pub const DELTA_FORMAT: i16 = 1;

/// Writes one batch's deltas (one row per partition) in its transaction.
async fn insert_deltas(
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
        .bind(DELTA_FORMAT)
        .execute(&mut **tx)
        .await?;
    Ok(written.rows_affected())
}

/// Where an event sits in the chain; contract §3 "newest" is the greatest
/// (block_number, log_index), then transaction hash (0x + lowercase hex, so
/// byte order equals PostgreSQL's text order).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChainPos {
    #[serde(rename = "b")]
    pub block_number: i64,
    #[serde(rename = "l")]
    pub log_index: i64,
    #[serde(rename = "t")]
    pub transaction_hash: String,
}

impl ChainPos {
    fn of(event: &DecodedEvent) -> ChainPos {
        ChainPos {
            block_number: event.position.block_number,
            log_index: event.position.log_index,
            transaction_hash: event.position.transaction_hash.clone(),
        }
    }
}

/// What some events do to one position: the newest balance and the sums.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PositionDelta {
    #[serde(rename = "a")]
    pub account_id: String,
    #[serde(rename = "k")]
    pub term_id: String,
    #[serde(rename = "c")]
    pub curve_id: String,
    /// The newest Deposited/Redeemed among them.
    #[serde(rename = "at")]
    pub newest: ChainPos,
    /// The receiver's share balance after `newest`.
    #[serde(rename = "s")]
    pub shares: String,
    #[serde(rename = "d")]
    pub deposited: String,
    #[serde(rename = "r")]
    pub redeemed: String,
}

/// The newest SharePriceChanged of a vault among some events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceDelta {
    #[serde(rename = "at")]
    pub newest: ChainPos,
    #[serde(rename = "ts")]
    pub total_shares: String,
    #[serde(rename = "ta")]
    pub total_assets: String,
    #[serde(rename = "sp")]
    pub share_price: String,
    #[serde(rename = "vt")]
    pub vault_type: i16,
}

/// A vault named by some events, with the newest price among them, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultDelta {
    #[serde(rename = "k")]
    pub term_id: String,
    #[serde(rename = "c")]
    pub curve_id: String,
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub price: Option<PriceDelta>,
}

/// A claim on a term's type (Atom > Triple > CounterTriple > Unknown).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TermClaim {
    #[serde(rename = "k")]
    pub id: String,
    #[serde(rename = "y")]
    pub kind: String,
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub atom_id: Option<String>,
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub triple_id: Option<String>,
}

/// One delta row's content: one partition's share of one batch (or of
/// several deltas merged), one entry per key. Stored as JSON text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    #[serde(rename = "p", default, skip_serializing_if = "Vec::is_empty")]
    pub positions: Vec<PositionDelta>,
    #[serde(rename = "v", default, skip_serializing_if = "Vec::is_empty")]
    pub vaults: Vec<VaultDelta>,
    #[serde(rename = "c", default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<TermClaim>,
    /// W3C traceparent of the batch, carried to the analytics queue.
    #[serde(rename = "tc", default, skip_serializing_if = "Option::is_none")]
    pub trace_context: Option<String>,
}

/// Deltas merged per key: what one fold writes.
#[derive(Debug, Default)]
pub struct Folded {
    positions: BTreeMap<(String, String, String), PositionDelta>,
    vaults: BTreeMap<(String, String), Option<PriceDelta>>,
    claims: BTreeSet<TermClaim>,
    trace_context: Option<String>,
}

impl Folded {
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty() && self.vaults.is_empty() && self.claims.is_empty()
    }

    /// Adds one delta's changes: newest wins by chain order, sums add up
    /// exactly; the result does not depend on the order of merges.
    pub fn merge(&mut self, changes: Changes) {
        for p in changes.positions {
            self.add_position(p);
        }
        for v in changes.vaults {
            self.add_vault(v.term_id, v.curve_id, v.price);
        }
        self.claims.extend(changes.claims);
        if changes.trace_context.is_some() {
            self.trace_context = changes.trace_context;
        }
    }

    fn add_position(&mut self, p: PositionDelta) {
        let key = (p.account_id.clone(), p.term_id.clone(), p.curve_id.clone());
        match self.positions.entry(key) {
            Entry::Vacant(slot) => {
                slot.insert(p);
            }
            Entry::Occupied(mut slot) => {
                let held = slot.get_mut();
                held.deposited = add_decimal(&held.deposited, &p.deposited);
                held.redeemed = add_decimal(&held.redeemed, &p.redeemed);
                if p.newest > held.newest {
                    held.newest = p.newest;
                    held.shares = p.shares;
                }
            }
        }
    }

    fn add_vault(&mut self, term_id: String, curve_id: String, price: Option<PriceDelta>) {
        let held = self.vaults.entry((term_id, curve_id)).or_default();
        if let Some(price) = price {
            if held.as_ref().is_none_or(|h| price.newest > h.newest) {
                *held = Some(price);
            }
        }
    }

    /// The merged changes as one delta (used by the batch to store them).
    pub fn into_changes(self) -> Changes {
        Changes {
            positions: self.positions.into_values().collect(),
            vaults: self
                .vaults
                .into_iter()
                .map(|((term_id, curve_id), price)| VaultDelta {
                    term_id,
                    curve_id,
                    price,
                })
                .collect(),
            claims: self.claims.into_iter().collect(),
            trace_context: self.trace_context,
        }
    }

    /// Writes the merged changes to the base tables and the analytics queue,
    /// in the global lock order (position, vault, term, analytics_queue), each
    /// statement in key order. Returns the number of terms queued.
    pub async fn apply(&self, tx: &mut Transaction<'_, Postgres>) -> Result<u64, sqlx::Error> {
        let position_counts = self.upsert_positions(tx).await?;
        self.upsert_vaults(tx, &position_counts).await?;
        self.upsert_terms(tx).await?;
        self.enqueue_analytics(tx).await
    }

    /// Positions; returns the change of position_count per (term, curve).
    /// Those stored already are upserted; new ones are COPYed (ADR 0022).
    async fn upsert_positions(
        &self,
        tx: &mut Transaction<'_, Postgres>,
    ) -> Result<HashMap<(String, String), i64>, sqlx::Error> {
        let positions: Vec<&PositionDelta> = self.positions.values().collect();
        let stored = stored_rows(tx, queries::SELECT_STORED_POSITIONS, &positions, |p| {
            [&p.account_id, &p.term_id, &p.curve_id]
        })
        .await?;
        let (updated, new) = split(&positions, &stored);

        let mut counts: HashMap<(String, String), i64> = HashMap::new();
        if !updated.is_empty() {
            let rows = Columns::new(queries::UPSERT_POSITIONS, updated.iter().copied())
                .column(|p| p.account_id.as_str())
                .column(|p| p.term_id.as_str())
                .column(|p| p.curve_id.as_str())
                .column(|p| p.newest.block_number)
                .column(|p| p.newest.log_index)
                .column(|p| p.newest.transaction_hash.as_str())
                .column(|p| p.shares.as_str())
                .column(|p| p.deposited.as_str())
                .column(|p| p.redeemed.as_str())
                .query()
                .fetch_all(&mut **tx)
                .await?;
            for row in &rows {
                let key = (row.try_get("term_id")?, row.try_get("curve_id")?);
                *counts.entry(key).or_default() += row.try_get::<i64, _>("change")?;
            }
        }
        if !new.is_empty() {
            let mut data = CopyText::with_capacity(new.len() * 320);
            for p in &new {
                // A new position is active (counted in its vault) when it holds shares.
                let active = is_positive(&p.shares);
                data.text(&p.account_id)
                    .text(&p.term_id)
                    .text(&p.curve_id)
                    .text(&p.shares)
                    .text(&p.deposited)
                    .text(&p.redeemed)
                    .int(p.newest.block_number)
                    .int(p.newest.log_index)
                    .text(&p.newest.transaction_hash)
                    .int(i64::from(active));
                data.end_row();
                if active {
                    *counts
                        .entry((p.term_id.clone(), p.curve_id.clone()))
                        .or_default() += 1;
                }
            }
            copy::copy_in(tx, queries::COPY_POSITIONS, data).await?;
        }
        counts.retain(|_, change| *change != 0);
        Ok(counts)
    }

    /// Vaults, with the position_count changes `upsert_positions` returned.
    /// New vaults are COPYed; stored ones are upserted, except those the
    /// fold only names (nothing to change) (ADR 0022).
    async fn upsert_vaults(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        position_counts: &HashMap<(String, String), i64>,
    ) -> Result<(), sqlx::Error> {
        let vaults: Vec<VaultRow<'_>> = self
            .vaults
            .iter()
            .map(|(key, price)| VaultRow {
                term_id: &key.0,
                curve_id: &key.1,
                price: price.as_ref(),
                position_count_change: position_counts.get(key).copied().unwrap_or(0),
            })
            .collect();
        let stored = stored_rows(tx, queries::SELECT_STORED_VAULTS, &vaults, |v| {
            [v.term_id, v.curve_id]
        })
        .await?;
        let (updated, new) = split(&vaults, &stored);
        let updated: Vec<&VaultRow<'_>> = updated
            .into_iter()
            .filter(|v| v.price.is_some() || v.position_count_change != 0)
            .collect();

        if !updated.is_empty() {
            Columns::new(queries::UPSERT_VAULTS, updated.iter().copied())
                .column(|v| v.term_id)
                .column(|v| v.curve_id)
                .column(|v| v.price.map(|p| p.newest.block_number))
                .column(|v| v.price.map(|p| p.newest.log_index))
                .column(|v| v.price.map(|p| p.newest.transaction_hash.as_str()))
                .column(|v| v.price.map(|p| p.total_shares.as_str()))
                .column(|v| v.price.map(|p| p.total_assets.as_str()))
                .column(|v| v.price.map(|p| p.share_price.as_str()))
                .column(|v| v.price.map(|p| p.vault_type))
                .column(|v| v.position_count_change)
                .query()
                .execute(&mut **tx)
                .await?;
        }
        if !new.is_empty() {
            let mut data = CopyText::with_capacity(new.len() * 256);
            for v in &new {
                data.text(v.term_id).text(v.curve_id);
                match v.price {
                    Some(p) => data
                        .text(&p.total_shares)
                        .text(&p.total_assets)
                        .text(&p.share_price)
                        .int(i64::from(p.vault_type))
                        .int(p.newest.block_number)
                        .int(p.newest.log_index)
                        .text(&p.newest.transaction_hash),
                    None => data.int(0).int(0).int(0).int(0).null().null().null(),
                };
                data.int(v.position_count_change);
                data.end_row();
            }
            copy::copy_in(tx, queries::COPY_VAULTS, data).await?;
        }
        Ok(())
    }

    /// Term rows and their type claims (every vault's term is claimed
    /// Unknown), then the totals of terms whose vault prices changed.
    async fn upsert_terms(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
        let vault_terms: BTreeSet<&str> = self.vaults.keys().map(|k| k.0.as_str()).collect();
        let claimed: BTreeSet<&str> = self.claims.iter().map(|c| c.id.as_str()).collect();
        let unknown: Vec<&str> = vault_terms
            .iter()
            .copied()
            .filter(|t| !claimed.contains(t))
            .collect();
        if self.claims.is_empty() && unknown.is_empty() {
            return Ok(());
        }
        let claims = || self.claims.iter();
        let ids: Vec<&str> = claims()
            .map(|c| c.id.as_str())
            .chain(unknown.iter().copied())
            .collect();
        let kinds: Vec<&str> = claims()
            .map(|c| c.kind.as_str())
            .chain(unknown.iter().map(|_| "Unknown"))
            .collect();
        let atom_ids: Vec<Option<&str>> = claims()
            .map(|c| c.atom_id.as_deref())
            .chain(unknown.iter().map(|_| None))
            .collect();
        let triple_ids: Vec<Option<&str>> = claims()
            .map(|c| c.triple_id.as_deref())
            .chain(unknown.iter().map(|_| None))
            .collect();
        sqlx::query(queries::UPSERT_TERMS)
            .bind(ids)
            .bind(kinds)
            .bind(atom_ids)
            .bind(triple_ids)
            .execute(&mut **tx)
            .await?;
        let totals: BTreeSet<&str> = self
            .vaults
            .iter()
            .filter(|(_, price)| price.is_some())
            .map(|(k, _)| k.0.as_str())
            .collect();
        if !totals.is_empty() {
            sqlx::query(queries::RECOMPUTE_TERM_TOTALS)
                .bind(totals.into_iter().collect::<Vec<_>>())
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Terms whose analytics inputs changed: every vault's term and every
    /// term claimed Triple; a term claimed CounterTriple too if it has a
    /// vault (folded before its claim, so not queued then). The queue
    /// statement keeps only triples and counter triples.
    async fn enqueue_analytics(
        &self,
        tx: &mut Transaction<'_, Postgres>,
    ) -> Result<u64, sqlx::Error> {
        let claimed = |kind: &str| -> BTreeSet<&str> {
            self.claims
                .iter()
                .filter(|c| c.kind == kind)
                .map(|c| c.id.as_str())
                .collect()
        };
        let terms: BTreeSet<&str> = self
            .vaults
            .keys()
            .map(|k| k.0.as_str())
            .chain(claimed("Triple"))
            .collect();
        let counters: Vec<&str> = claimed("CounterTriple")
            .into_iter()
            .filter(|t| !terms.contains(t))
            .collect();
        if terms.is_empty() && counters.is_empty() {
            return Ok(0);
        }
        let queued = sqlx::query(queries::ENQUEUE_ANALYTICS)
            .bind(terms.into_iter().collect::<Vec<_>>())
            .bind(self.trace_context.as_deref())
            .bind(counters)
            .execute(&mut **tx)
            .await?;
        Ok(queued.rows_affected())
    }
}

/// A vault as one fold writes it.
struct VaultRow<'a> {
    term_id: &'a str,
    curve_id: &'a str,
    /// The newest SharePriceChanged folded (none: the vault is only named).
    price: Option<&'a PriceDelta>,
    position_count_change: i64,
}

/// Which of `rows` are stored already (ADR 0022): `sql` takes one text
/// array per key column (`key` gives a row's key) and returns the 1-based
/// ordinal of each key it finds. The fold holds these rows' partition, so
/// the answer stays true until it commits (ADR 0015).
async fn stored_rows<R, const N: usize>(
    tx: &mut Transaction<'_, Postgres>,
    sql: &str,
    rows: &[R],
    key: impl Fn(&R) -> [&str; N],
) -> Result<Vec<bool>, sqlx::Error> {
    let mut stored = vec![false; rows.len()];
    if rows.is_empty() {
        return Ok(stored);
    }
    let mut query = Columns::new(sql, rows.iter());
    for column in 0..N {
        query = query.column(|row| key(row)[column]);
    }
    let found: Vec<i64> = query
        .query()
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    for ordinal in found {
        if let Some(slot) = usize::try_from(ordinal - 1)
            .ok()
            .and_then(|i| stored.get_mut(i))
        {
            *slot = true;
        }
    }
    Ok(stored)
}

/// `rows` split by `stored` into (stored, new), each in `rows`' order.
fn split<'r, R>(rows: &'r [R], stored: &[bool]) -> (Vec<&'r R>, Vec<&'r R>) {
    let (old, new): (Vec<_>, Vec<_>) = rows.iter().zip(stored).partition(|(_, s)| **s);
    (
        old.into_iter().map(|(r, _)| r).collect(),
        new.into_iter().map(|(r, _)| r).collect(),
    )
}

/// Atoms and triples of a batch (written in it) and its deltas by partition.
#[derive(Default)]
struct Plan<'a> {
    atoms: Vec<&'a DecodedEvent>,
    triples: Vec<&'a DecodedEvent>,
    deltas: BTreeMap<i16, Folded>,
}

impl<'a> Plan<'a> {
    fn from_events(events: &[&'a DecodedEvent]) -> Self {
        let mut plan = Plan::default();
        for &event in events {
            match &event.body {
                EventBody::AtomCreated(a) => {
                    plan.atoms.push(event);
                    plan.claim(&a.term_id, "Atom", Some(&a.term_id), None);
                }
                EventBody::TripleCreated(t) => {
                    plan.triples.push(event);
                    plan.claim(&t.term_id, "Triple", None, Some(&t.term_id));
                    plan.claim(&t.counter_term_id, "CounterTriple", None, Some(&t.term_id));
                }
                EventBody::Deposited(d) => {
                    plan.position(
                        event,
                        (&d.receiver, &d.term_id, &d.curve_id),
                        &d.total_shares,
                        &d.assets_after_fees,
                        "0",
                    );
                }
                EventBody::Redeemed(r) => {
                    plan.position(
                        event,
                        (&r.receiver, &r.term_id, &r.curve_id),
                        &r.total_shares,
                        "0",
                        &r.assets,
                    );
                }
                EventBody::SharePriceChanged(s) => {
                    plan.partition(&s.term_id).add_vault(
                        s.term_id.clone(),
                        s.curve_id.clone(),
                        Some(PriceDelta {
                            newest: ChainPos::of(event),
                            total_shares: s.total_shares.clone(),
                            total_assets: s.total_assets.clone(),
                            share_price: s.share_price.clone(),
                            vault_type: s.vault_type,
                        }),
                    );
                }
                EventBody::Generic(_) => {}
            }
        }
        plan
    }

    fn partition(&mut self, term_id: &str) -> &mut Folded {
        self.deltas.entry(partition_of(term_id)).or_default()
    }

    fn claim(&mut self, id: &str, kind: &str, atom_id: Option<&str>, triple_id: Option<&str>) {
        self.partition(id).claims.insert(TermClaim {
            id: id.to_string(),
            kind: kind.to_string(),
            atom_id: atom_id.map(str::to_string),
            triple_id: triple_id.map(str::to_string),
        });
    }

    fn position(
        &mut self,
        event: &'a DecodedEvent,
        (account, term, curve): (&str, &str, &str),
        shares: &str,
        deposited: &str,
        redeemed: &str,
    ) {
        let folded = self.partition(term);
        folded.add_vault(term.to_string(), curve.to_string(), None);
        folded.add_position(PositionDelta {
            account_id: account.to_string(),
            term_id: term.to_string(),
            curve_id: curve.to_string(),
            newest: ChainPos::of(event),
            shares: shares.to_string(),
            deposited: deposited.to_string(),
            redeemed: redeemed.to_string(),
        });
    }

    async fn upsert_atoms(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
        if self.atoms.is_empty() {
            return Ok(());
        }
        let atoms = self.atoms.iter().filter_map(|e| match &e.body {
            EventBody::AtomCreated(a) => Some((*e, a)),
            _ => None,
        });
        Columns::new(queries::UPSERT_ATOMS, atoms)
            .column(|(_, a)| a.term_id.as_str())
            .column(|(_, a)| a.creator.as_str())
            .column(|(_, a)| a.atom_wallet.as_str())
            .column(|(_, a)| a.atom_data_text.as_deref())
            .column(|(_, a)| a.atom_data_text.is_none().then_some(a.atom_data.as_slice()))
            .column(|(e, _)| e.position.block_number)
            .column(|(e, _)| e.position.log_index)
            .column(|(e, _)| e.position.transaction_hash.as_str())
            .column(|(e, _)| e.position.block_timestamp)
            .query()
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn upsert_triples(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
        if self.triples.is_empty() {
            return Ok(());
        }
        let triples = self.triples.iter().filter_map(|e| match &e.body {
            EventBody::TripleCreated(t) => Some((*e, t)),
            _ => None,
        });
        Columns::new(queries::UPSERT_TRIPLES, triples)
            .column(|(_, t)| t.term_id.as_str())
            .column(|(_, t)| t.subject_id.as_str())
            .column(|(_, t)| t.predicate_id.as_str())
            .column(|(_, t)| t.object_id.as_str())
            .column(|(_, t)| t.creator.as_str())
            .column(|(_, t)| t.counter_term_id.as_str())
            .column(|(e, _)| e.position.block_number)
            .column(|(e, _)| e.position.log_index)
            .column(|(e, _)| e.position.transaction_hash.as_str())
            .column(|(e, _)| e.position.block_timestamp)
            .query()
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}
