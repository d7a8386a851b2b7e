//! One database (or schema) holds one network. The base tables have no
//! network column, so the events of two networks in one database would mix
//! their positions, vaults and terms. The first write records the database's
//! network (migration 0009); every batch then checks its events against it
//! inside its own transaction, and a batch with events of another network is
//! refused whole: nothing of it is written or acknowledged, and the worker
//! turns unready until its configuration is fixed.

use crate::decode::DecodedEntry;
use crate::queries;
use sqlx::{Postgres, Transaction};

/// A batch whose events do not belong to this database's network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct NetworkRefused {
    /// The database's network (None: not recorded yet, and the batch mixes several).
    pub bound: Option<String>,
    /// The networks the batch's events carry, sorted.
    pub batch: Vec<String>,
}

impl NetworkRefused {
    fn describe(&self) -> String {
        let quoted = |names: &[&String]| {
            names
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match &self.bound {
            Some(bound) => {
                let others: Vec<&String> = self.batch.iter().filter(|n| *n != bound).collect();
                format!(
                    "this database holds network {bound:?}, refusing a batch with events of network {}: \
                     one database (or schema) per network; nothing of the batch is written or acknowledged",
                    quoted(&others)
                )
            }
            None => format!(
                "a batch mixes events of networks {}: one database (or schema) per network; \
                 nothing of the batch is written or acknowledged",
                quoted(&self.batch.iter().collect::<Vec<_>>())
            ),
        }
    }
}

/// The distinct networks of the batch's events, sorted.
pub fn batch_networks(entries: &[DecodedEntry]) -> Vec<&str> {
    let mut networks: Vec<&str> = entries
        .iter()
        .flat_map(|e| &e.events)
        .map(|e| e.position.network.as_str())
        .collect();
    networks.sort_unstable();
    networks.dedup();
    networks
}

/// Checks the batch against the database's network, recording it on the
/// first write. The outer error is the database's; the inner one says the
/// batch must not be written. A batch without events (dead letters only)
/// passes.
pub async fn check(
    tx: &mut Transaction<'_, Postgres>,
    entries: &[DecodedEntry],
) -> Result<Result<(), NetworkRefused>, sqlx::Error> {
    let networks = batch_networks(entries);
    if networks.is_empty() {
        return Ok(Ok(()));
    }
    let refused = |bound: Option<String>| NetworkRefused {
        bound,
        batch: networks.iter().map(|n| n.to_string()).collect(),
    };
    let bound = loop {
        let bound: Option<String> = sqlx::query_scalar(queries::SELECT_DATABASE_NETWORK)
            .fetch_optional(&mut **tx)
            .await?;
        if let Some(bound) = bound {
            break bound;
        }
        if networks.len() > 1 {
            return Ok(Err(refused(None)));
        }
        // First write: the database decides between concurrent first writes.
        let inserted: Option<String> = sqlx::query_scalar(queries::BIND_DATABASE_NETWORK)
            .bind(networks[0])
            .fetch_optional(&mut **tx)
            .await?;
        if let Some(network) = inserted {
            tracing::info!(%network, "first write: recording this database's network");
            break network;
        }
        // Another first write committed meanwhile: read it (a new statement sees it).
    };
    if networks.iter().all(|n| *n == bound) {
        Ok(Ok(()))
    } else {
        Ok(Err(refused(Some(bound))))
    }
}

/// The database's network, if recorded.
pub async fn database_network<'e, E>(executor: E) -> Result<Option<String>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    sqlx::query_scalar(queries::SELECT_DATABASE_NETWORK)
        .fetch_optional(executor)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_both_networks() {
        let other = NetworkRefused {
            bound: Some("mainnet".into()),
            batch: vec!["mainnet".into(), "testnet".into()],
        }
        .to_string();
        assert!(
            other.contains("holds network \"mainnet\"") && other.contains("of network \"testnet\""),
            "{other}"
        );
        let mixed = NetworkRefused {
            bound: None,
            batch: vec!["a".into(), "b".into()],
        }
        .to_string();
        assert!(mixed.contains("\"a\", \"b\""), "{mixed}");
    }
}
