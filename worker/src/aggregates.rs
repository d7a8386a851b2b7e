//! Aggregates: applies newly stored events to the base tables (`atom`,
//! `triple`, `vault`, `position`), the `term` aggregates and the analytics
//! queue, inside the batch's transaction.
//!
//! Concurrency (ADR 0002): statements run in one global lock order — atom,
//! triple, vault, position, term, analytics_queue — each locking its rows in
//! key order. Counts and sums that depend on rows other batches may change
//! (`vault.position_count`, `term` totals) are recomputed by a separate
//! statement after the parent row is locked, so its snapshot sees every
//! committed change. Everything else is "newest wins" or commutative.

use crate::decode::{DecodedEvent, EventBody};
use crate::queries;
use sqlx::{Postgres, Transaction};
use std::collections::BTreeSet;

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
    plan.upsert_vaults(tx).await?;
    plan.upsert_positions(tx).await?;
    plan.upsert_terms(tx).await?;
    plan.enqueue_analytics(tx, trace_context).await
}

/// The column arrays of every statement, gathered in one pass over the events.
#[derive(Default)]
struct Plan<'a> {
    atoms: Vec<&'a DecodedEvent>,
    triples: Vec<&'a DecodedEvent>,
    /// (term, curve) named by Deposited/Redeemed/SharePriceChanged.
    vault_touches: Vec<VaultTouch<'a>>,
    /// Deposited/Redeemed moves.
    moves: Vec<Move<'a>>,
    /// Vaults whose positions changed: position_count is recounted.
    recount: BTreeSet<(&'a str, &'a str)>,
    /// (id, type, atom_id, triple_id) claims for `term`.
    term_claims: Vec<(&'a str, &'static str, Option<&'a str>, Option<&'a str>)>,
    /// Terms whose vault totals changed.
    totals: BTreeSet<&'a str>,
    /// Terms whose analytics inputs changed.
    analytics: BTreeSet<&'a str>,
}

struct VaultTouch<'a> {
    term_id: &'a str,
    curve_id: &'a str,
    /// Set for SharePriceChanged only.
    price: Option<(&'a DecodedEvent, &'a crate::decode::SharePriceChanged)>,
}

struct Move<'a> {
    event: &'a DecodedEvent,
    account_id: &'a str,
    term_id: &'a str,
    curve_id: &'a str,
    total_shares: &'a str,
    deposited: &'a str,
    redeemed: &'a str,
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
                    plan.moves.push(Move {
                        event,
                        account_id: &d.receiver,
                        term_id: &d.term_id,
                        curve_id: &d.curve_id,
                        total_shares: &d.total_shares,
                        deposited: &d.assets_after_fees,
                        redeemed: "0",
                    });
                    plan.recount.insert((&d.term_id, &d.curve_id));
                }
                EventBody::Redeemed(r) => {
                    plan.touch_vault(&r.term_id, &r.curve_id, None);
                    plan.moves.push(Move {
                        event,
                        account_id: &r.receiver,
                        term_id: &r.term_id,
                        curve_id: &r.curve_id,
                        total_shares: &r.total_shares,
                        deposited: "0",
                        redeemed: &r.assets,
                    });
                    plan.recount.insert((&r.term_id, &r.curve_id));
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

    fn touch_vault(
        &mut self,
        term_id: &'a str,
        curve_id: &'a str,
        price: Option<(&'a DecodedEvent, &'a crate::decode::SharePriceChanged)>,
    ) {
        self.vault_touches.push(VaultTouch {
            term_id,
            curve_id,
            price,
        });
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

    async fn upsert_vaults(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
        if self.vault_touches.is_empty() {
            return Ok(());
        }
        let t = &self.vault_touches;
        let price = |f: fn(&crate::decode::SharePriceChanged) -> &str| -> Vec<Option<&str>> {
            t.iter().map(|v| v.price.map(|(_, s)| f(s))).collect()
        };
        sqlx::query(queries::UPSERT_VAULTS)
            .bind(t.iter().map(|v| v.term_id).collect::<Vec<_>>())
            .bind(t.iter().map(|v| v.curve_id).collect::<Vec<_>>())
            .bind(
                t.iter()
                    .map(|v| v.price.map(|(e, _)| e.position.block_number))
                    .collect::<Vec<_>>(),
            )
            .bind(
                t.iter()
                    .map(|v| v.price.map(|(e, _)| e.position.log_index))
                    .collect::<Vec<_>>(),
            )
            .bind(
                t.iter()
                    .map(|v| v.price.map(|(e, _)| e.position.transaction_hash.as_str()))
                    .collect::<Vec<_>>(),
            )
            .bind(price(|s| &s.total_shares))
            .bind(price(|s| &s.total_assets))
            .bind(price(|s| &s.share_price))
            .bind(
                t.iter()
                    .map(|v| v.price.map(|(_, s)| s.vault_type))
                    .collect::<Vec<_>>(),
            )
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn upsert_positions(
        &self,
        tx: &mut Transaction<'_, Postgres>,
    ) -> Result<(), sqlx::Error> {
        if self.moves.is_empty() {
            return Ok(());
        }
        let m = &self.moves;
        sqlx::query(queries::UPSERT_POSITIONS)
            .bind(m.iter().map(|m| m.account_id).collect::<Vec<_>>())
            .bind(m.iter().map(|m| m.term_id).collect::<Vec<_>>())
            .bind(m.iter().map(|m| m.curve_id).collect::<Vec<_>>())
            .bind(
                m.iter()
                    .map(|m| m.event.position.block_number)
                    .collect::<Vec<_>>(),
            )
            .bind(
                m.iter()
                    .map(|m| m.event.position.log_index)
                    .collect::<Vec<_>>(),
            )
            .bind(
                m.iter()
                    .map(|m| m.event.position.transaction_hash.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(m.iter().map(|m| m.total_shares).collect::<Vec<_>>())
            .bind(m.iter().map(|m| m.deposited).collect::<Vec<_>>())
            .bind(m.iter().map(|m| m.redeemed).collect::<Vec<_>>())
            .execute(&mut **tx)
            .await?;
        sqlx::query(queries::RECOUNT_VAULT_POSITIONS)
            .bind(self.recount.iter().map(|(t, _)| *t).collect::<Vec<_>>())
            .bind(self.recount.iter().map(|(_, c)| *c).collect::<Vec<_>>())
            .execute(&mut **tx)
            .await?;
        Ok(())
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
        sqlx::query(queries::ENQUEUE_ANALYTICS)
            .bind(self.analytics.iter().copied().collect::<Vec<_>>())
            .bind(trace_context)
            .execute(&mut **tx)
            .await?;
        Ok(self.analytics.len() as u64)
    }
}
