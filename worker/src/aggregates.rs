//! Aggregates: applies newly stored events to the base tables (`atom`,
//! `triple`, `vault`, `position`), the `term` aggregates and the analytics
//! queue, inside the batch's transaction.
//!
//! Concurrency (ADR 0002, 0007): statements run in one global lock order —
//! atom, triple, position, vault, term, analytics_queue — each locking its
//! rows in key order. `vault.position_count` moves by the exact change each
//! position write made to the row it replaced (under that row's lock); `term`
//! totals are recomputed by a statement that runs after the term row is
//! locked, so its snapshot sees every committed vault change. Everything else is "newest wins" or commutative. The worker folds
//! a batch per row first (newest balance, sums), so every statement gets one
//! row per key (ADR 0007).

use crate::decode::numbers::add_decimal;
use crate::decode::{DecodedEvent, EventBody};
use crate::queries;
use sqlx::Row;
use sqlx::{Postgres, Transaction};
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Applies `events` (only those just inserted, never redeliveries) and
/// returns the number of terms put on the analytics queue.
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
    let position_counts = plan.upsert_positions(tx).await?;
    plan.upsert_vaults(tx, &position_counts).await?;
    plan.upsert_terms(tx).await?;
    plan.enqueue_analytics(tx, trace_context).await
}

/// The column arrays of every statement, gathered in one pass over the events.
#[derive(Default)]
struct Plan<'a> {
    atoms: Vec<&'a DecodedEvent>,
    triples: Vec<&'a DecodedEvent>,
    /// Every (term, curve) named by Deposited/Redeemed/SharePriceChanged, with
    /// the batch's newest SharePriceChanged for it, if any.
    vaults: BTreeMap<(&'a str, &'a str), Option<PriceChange<'a>>>,
    /// Deposited/Redeemed folded per position (account, term, curve).
    positions: BTreeMap<(&'a str, &'a str, &'a str), PositionChange<'a>>,
    /// (id, type, atom_id, triple_id) claims for `term`.
    term_claims: Vec<(&'a str, &'static str, Option<&'a str>, Option<&'a str>)>,
    /// Terms whose vault totals changed.
    totals: BTreeSet<&'a str>,
    /// Terms whose analytics inputs changed.
    analytics: BTreeSet<&'a str>,
}

/// A SharePriceChanged with the event that carried it.
type PriceChange<'a> = (&'a DecodedEvent, &'a crate::decode::SharePriceChanged);

/// What a batch does to one position: the newest balance and the sums.
struct PositionChange<'a> {
    /// The newest Deposited/Redeemed of the batch for this position.
    newest: &'a DecodedEvent,
    /// The receiver's share balance after `newest`.
    shares: &'a str,
    deposited: String,
    redeemed: String,
}

impl<'a> PositionChange<'a> {
    fn add(&mut self, event: &'a DecodedEvent, shares: &'a str, deposited: &str, redeemed: &str) {
        if newer(event, self.newest) {
            self.newest = event;
            self.shares = shares;
        }
        self.deposited = add_decimal(&self.deposited, deposited);
        self.redeemed = add_decimal(&self.redeemed, redeemed);
    }
}

/// SPEC §3 "newest": higher (block_number, log_index), then transaction hash
/// (0x + lowercase hex, so byte order equals PostgreSQL's text order).
fn newer(a: &DecodedEvent, b: &DecodedEvent) -> bool {
    fn key(e: &DecodedEvent) -> (i64, i64, &[u8]) {
        (
            e.position.block_number,
            e.position.log_index,
            e.position.transaction_hash.as_bytes(),
        )
    }
    key(a) > key(b)
}

impl<'a> Plan<'a> {
    fn from_events(events: &[&'a DecodedEvent]) -> Self {
        let mut plan = Plan::default();
        for &event in events {
            match &event.body {
                EventBody::AtomCreated(a) => {
                    plan.atoms.push(event);
                    plan.term_claims
                        .push((&a.term_id, "Atom", Some(&a.term_id), None));
                }
                EventBody::TripleCreated(t) => {
                    plan.triples.push(event);
                    plan.term_claims
                        .push((&t.term_id, "Triple", None, Some(&t.term_id)));
                    plan.term_claims.push((
                        &t.counter_term_id,
                        "CounterTriple",
                        None,
                        Some(&t.term_id),
                    ));
                    plan.analytics.insert(&t.term_id);
                }
                EventBody::Deposited(d) => {
                    plan.touch_vault(&d.term_id, &d.curve_id, None);
                    plan.move_position(
                        event,
                        (&d.receiver, &d.term_id, &d.curve_id),
                        &d.total_shares,
                        &d.assets_after_fees,
                        "0",
                    );
                }
                EventBody::Redeemed(r) => {
                    plan.touch_vault(&r.term_id, &r.curve_id, None);
                    plan.move_position(
                        event,
                        (&r.receiver, &r.term_id, &r.curve_id),
                        &r.total_shares,
                        "0",
                        &r.assets,
                    );
                }
                EventBody::SharePriceChanged(s) => {
                    plan.touch_vault(&s.term_id, &s.curve_id, Some((event, s)));
                    plan.totals.insert(&s.term_id);
                }
                EventBody::Generic(_) => {}
            }
        }
        plan
    }

    fn move_position(
        &mut self,
        event: &'a DecodedEvent,
        key: (&'a str, &'a str, &'a str),
        shares: &'a str,
        deposited: &str,
        redeemed: &str,
    ) {
        match self.positions.entry(key) {
            Entry::Occupied(mut change) => change.get_mut().add(event, shares, deposited, redeemed),
            Entry::Vacant(slot) => {
                slot.insert(PositionChange {
                    newest: event,
                    shares,
                    deposited: deposited.to_string(),
                    redeemed: redeemed.to_string(),
                });
            }
        }
    }

    fn touch_vault(&mut self, term_id: &'a str, curve_id: &'a str, price: Option<PriceChange<'a>>) {
        let newest = self.vaults.entry((term_id, curve_id)).or_default();
        if let Some((event, _)) = price {
            if newest.is_none_or(|(current, _)| newer(event, current)) {
                *newest = price;
            }
        }
        self.term_claims.push((term_id, "Unknown", None, None));
        self.analytics.insert(term_id);
    }

    async fn upsert_atoms(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
        if self.atoms.is_empty() {
            return Ok(());
        }
        let atoms: Vec<(&DecodedEvent, &crate::decode::AtomCreated)> = self
            .atoms
            .iter()
            .filter_map(|e| match &e.body {
                EventBody::AtomCreated(a) => Some((*e, a)),
                _ => None,
            })
            .collect();
        sqlx::query(queries::UPSERT_ATOMS)
            .bind(
                atoms
                    .iter()
                    .map(|(_, a)| a.term_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                atoms
                    .iter()
                    .map(|(_, a)| a.creator.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                atoms
                    .iter()
                    .map(|(_, a)| a.atom_wallet.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                atoms
                    .iter()
                    .map(|(_, a)| a.atom_data_text.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(
                atoms
                    .iter()
                    .map(|(_, a)| a.atom_data_text.is_none().then_some(a.atom_data.as_slice()))
                    .collect::<Vec<_>>(),
            )
            .bind(
                atoms
                    .iter()
                    .map(|(e, _)| e.position.block_number)
                    .collect::<Vec<_>>(),
            )
            .bind(
                atoms
                    .iter()
                    .map(|(e, _)| e.position.log_index)
                    .collect::<Vec<_>>(),
            )
            .bind(
                atoms
                    .iter()
                    .map(|(e, _)| e.position.transaction_hash.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                atoms
                    .iter()
                    .map(|(e, _)| e.position.block_timestamp)
                    .collect::<Vec<_>>(),
            )
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn upsert_triples(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
        if self.triples.is_empty() {
            return Ok(());
        }
        let triples: Vec<(&DecodedEvent, &crate::decode::TripleCreated)> = self
            .triples
            .iter()
            .filter_map(|e| match &e.body {
                EventBody::TripleCreated(t) => Some((*e, t)),
                _ => None,
            })
            .collect();
        sqlx::query(queries::UPSERT_TRIPLES)
            .bind(
                triples
                    .iter()
                    .map(|(_, t)| t.term_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                triples
                    .iter()
                    .map(|(_, t)| t.subject_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                triples
                    .iter()
                    .map(|(_, t)| t.predicate_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                triples
                    .iter()
                    .map(|(_, t)| t.object_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                triples
                    .iter()
                    .map(|(_, t)| t.creator.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                triples
                    .iter()
                    .map(|(_, t)| t.counter_term_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                triples
                    .iter()
                    .map(|(e, _)| e.position.block_number)
                    .collect::<Vec<_>>(),
            )
            .bind(
                triples
                    .iter()
                    .map(|(e, _)| e.position.log_index)
                    .collect::<Vec<_>>(),
            )
            .bind(
                triples
                    .iter()
                    .map(|(e, _)| e.position.transaction_hash.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                triples
                    .iter()
                    .map(|(e, _)| e.position.block_timestamp)
                    .collect::<Vec<_>>(),
            )
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Vaults, with the position_count changes `upsert_positions` returned.
    async fn upsert_vaults(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        position_counts: &HashMap<(String, String), i64>,
    ) -> Result<(), sqlx::Error> {
        if self.vaults.is_empty() {
            return Ok(());
        }
        let keys = self.vaults.keys();
        let prices = self.vaults.values();
        let price = |f: fn(&crate::decode::SharePriceChanged) -> &str| -> Vec<Option<&str>> {
            prices.clone().map(|p| p.map(|(_, s)| f(s))).collect()
        };
        let chain = |f: fn(&'a DecodedEvent) -> i64| -> Vec<Option<i64>> {
            prices.clone().map(|p| p.map(|(e, _)| f(e))).collect()
        };
        sqlx::query(queries::UPSERT_VAULTS)
            .bind(keys.clone().map(|k| k.0).collect::<Vec<_>>())
            .bind(keys.map(|k| k.1).collect::<Vec<_>>())
            .bind(chain(|e| e.position.block_number))
            .bind(chain(|e| e.position.log_index))
            .bind(
                prices
                    .clone()
                    .map(|p| p.map(|(e, _)| e.position.transaction_hash.as_str()))
                    .collect::<Vec<_>>(),
            )
            .bind(price(|s| &s.total_shares))
            .bind(price(|s| &s.total_assets))
            .bind(price(|s| &s.share_price))
            .bind(
                prices
                    .map(|p| p.map(|(_, s)| s.vault_type))
                    .collect::<Vec<_>>(),
            )
            .bind(
                self.vaults
                    .keys()
                    .map(|(t, c)| {
                        position_counts
                            .get(&(t.to_string(), c.to_string()))
                            .copied()
                            .unwrap_or(0)
                    })
                    .collect::<Vec<i64>>(),
            )
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Positions; returns the change of position_count per (term, curve).
    async fn upsert_positions(
        &self,
        tx: &mut Transaction<'_, Postgres>,
    ) -> Result<HashMap<(String, String), i64>, sqlx::Error> {
        if self.positions.is_empty() {
            return Ok(HashMap::new());
        }
        let keys = self.positions.keys();
        let changes = self.positions.values();
        sqlx::query(queries::UPSERT_POSITIONS)
            .bind(keys.clone().map(|k| k.0).collect::<Vec<_>>())
            .bind(keys.clone().map(|k| k.1).collect::<Vec<_>>())
            .bind(keys.map(|k| k.2).collect::<Vec<_>>())
            .bind(
                changes
                    .clone()
                    .map(|c| c.newest.position.block_number)
                    .collect::<Vec<_>>(),
            )
            .bind(
                changes
                    .clone()
                    .map(|c| c.newest.position.log_index)
                    .collect::<Vec<_>>(),
            )
            .bind(
                changes
                    .clone()
                    .map(|c| c.newest.position.transaction_hash.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(changes.clone().map(|c| c.shares).collect::<Vec<_>>())
            .bind(
                changes
                    .clone()
                    .map(|c| c.deposited.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(changes.map(|c| c.redeemed.as_str()).collect::<Vec<_>>())
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    (row.try_get("term_id")?, row.try_get("curve_id")?),
                    row.try_get("change")?,
                ))
            })
            .collect()
    }

    async fn upsert_terms(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
        if self.term_claims.is_empty() {
            return Ok(());
        }
        let c = &self.term_claims;
        sqlx::query(queries::UPSERT_TERMS)
            .bind(c.iter().map(|c| c.0).collect::<Vec<_>>())
            .bind(c.iter().map(|c| c.1).collect::<Vec<_>>())
            .bind(c.iter().map(|c| c.2).collect::<Vec<_>>())
            .bind(c.iter().map(|c| c.3).collect::<Vec<_>>())
            .execute(&mut **tx)
            .await?;
        if !self.totals.is_empty() {
            sqlx::query(queries::RECOMPUTE_TERM_TOTALS)
                .bind(self.totals.iter().copied().collect::<Vec<_>>())
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    async fn enqueue_analytics(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        trace_context: Option<&str>,
    ) -> Result<u64, sqlx::Error> {
        if self.analytics.is_empty() {
            return Ok(0);
        }
        let queued = sqlx::query(queries::ENQUEUE_ANALYTICS)
            .bind(self.analytics.iter().copied().collect::<Vec<_>>())
            .bind(trace_context)
            .execute(&mut **tx)
            .await?;
        Ok(queued.rows_affected())
    }
}
