//! The catalog of the read model's tables: one entry per event kind, and
//! the derived tables that `verify` compares with their definitions and
//! `rebuild` and `rollback` rewrite from them.
//!
//! An event kind's entry gives everything the worker knows about it apart
//! from how it is decoded: its name (metrics, logs and the batch span's
//! `events.<Kind>` field), its event table, its insert statement
//! (`sql/insert_<table>.sql`, a named query like those of
//! [`crate::queries`]), and its own fields, which are both the decoded
//! body's fields and, in order, the statement's parameters after the eleven
//! common ones (chain position and source). Adding a kind is an entry here,
//! its insert statement, a migration creating its table, and its arms in
//! [`crate::decode`] and [`crate::aggregates`] (README, Layout).

use crate::columns::{AsValue, Value};

/// The columns every event table starts with (chain position and source),
/// in the order of parameters $1..$11 of each insert statement.
macro_rules! common_columns {
    () => {
        "transaction_hash, log_index, network, block_number, block_hash, block_timestamp, \
         transaction_index, contract_address, stream, entry_id, item_index"
    };
}

/// [`common_columns!`] as a constant.
pub const COMMON_COLUMNS: &str = common_columns!();

macro_rules! event_catalog {
    ($(
        $(#[$doc:meta])*
        $kind:ident in $table:literal => $body:ident {
            $($(#[$field_doc:meta])* $field:ident: $ty:ty),* $(,)?
        }
    )*) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, Default, PartialEq, Eq)]
            pub struct $body {
                $($(#[$field_doc])* pub $field: $ty,)*
            }
        )*

        /// A decoded event's own fields, by kind.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum EventBody {
            $($kind($body),)*
        }

        impl EventBody {
            /// Its kind: which table it is stored in.
            pub fn kind(&self) -> EventKind {
                match self {
                    $(EventBody::$kind(_) => EventKind::$kind,)*
                }
            }

            /// The event's own fields in the column order of its kind's
            /// insert statement.
            pub fn values(&self) -> Vec<Value<'_>> {
                match self {
                    $(EventBody::$kind(body) => vec![$(body.$field.as_value()),*],)*
                }
            }

            /// A body of `kind` with every field empty (for tests of the catalog).
            #[cfg(test)]
            fn empty(kind: EventKind) -> EventBody {
                match kind {
                    $(EventKind::$kind => EventBody::$kind($body::default()),)*
                }
            }
        }

        /// The kinds of events, in the order a batch writes their tables
        /// (part of the global lock order, ADR 0015).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventKind {
            $($kind,)*
        }

        impl EventKind {
            pub const ALL: [EventKind; [$(EventKind::$kind),*].len()] = [$(EventKind::$kind),*];

            /// Stable name used in metrics, logs and spans.
            pub const fn name(self) -> &'static str {
                match self {
                    $(EventKind::$kind => stringify!($kind),)*
                }
            }

            /// The kind an event name of the contract stands for (`None`:
            /// an event stored as [`EventKind::Generic`]).
            pub fn named(name: &str) -> Option<EventKind> {
                match name {
                    $(stringify!($kind) => Some(EventKind::$kind),)*
                    _ => None,
                }
            }

            /// The table its events are stored in.
            pub const fn table(self) -> &'static str {
                match self {
                    $(EventKind::$kind => $table,)*
                }
            }

            /// The statement inserting a batch of its events
            /// (`sql/insert_<table>.sql`): parameters $1..$11 are the common
            /// columns, then one per field of its body.
            pub const fn insert_statement(self) -> &'static str {
                match self {
                    $(EventKind::$kind => include_str!(concat!("sql/insert_", $table, ".sql")),)*
                }
            }
            /// The statement that COPYs a batch of its events (ADR 0022):
            /// [`COMMON_COLUMNS`], then one column per field of its body, the
            /// insert statement's columns in its order.
            pub const fn copy_statement(self) -> &'static str {
                match self {
                    $(EventKind::$kind => concat!(
                        "COPY ", $table, " (", common_columns!() $(, ", ", stringify!($field))*, ") FROM STDIN"
                    ),)*
                }
            }
        }

        /// The event tables (level 0), in [`EventKind::ALL`]'s order; every
        /// row carries (network, block_number).
        pub const EVENT_TABLES: [&str; EventKind::ALL.len()] = [$($table),*];

        event_catalog!(@span ($) $($kind)*);
    };

    // `$d` is a `$` for the macro defined here (a macro cannot write one itself).
    (@span ($d:tt) $($kind:ident)*) => {
        /// `tracing::info_span!` with the fields given (each followed by a
        /// comma) and one empty `events.<Kind>` field per event kind, for the
        /// batch to record how many events of each kind it decoded.
        macro_rules! info_span_with_kinds {
            ($d name:literal, $d($d field:tt)*) => {
                ::tracing::info_span!(
                    $d name,
                    $d($d field)*
                    $(events.$kind = ::tracing::field::Empty,)*
                )
            };
        }
        pub(crate) use info_span_with_kinds;
    };
}

event_catalog! {
    /// An atom created: a term holding data.
    AtomCreated in "atom_created_events" => AtomCreated {
        creator: String,
        term_id: String,
        atom_data: Vec<u8>,
        atom_data_text: Option<String>,
        atom_wallet: String,
    }

    /// A triple (and its counter triple) created from three terms.
    TripleCreated in "triple_created_events" => TripleCreated {
        creator: String,
        term_id: String,
        subject_id: String,
        predicate_id: String,
        object_id: String,
        counter_term_id: String,
    }

    /// Shares bought in a vault. uint256 quantities are canonical decimal
    /// text (bound as NUMERIC).
    Deposited in "deposited_events" => Deposited {
        sender: String,
        receiver: String,
        term_id: String,
        curve_id: String,
        assets: String,
        assets_after_fees: String,
        shares: String,
        total_shares: String,
        vault_type: i16,
    }

    /// Shares sold back to a vault.
    Redeemed in "redeemed_events" => Redeemed {
        sender: String,
        receiver: String,
        term_id: String,
        curve_id: String,
        shares: String,
        total_shares: String,
        assets: String,
        fees: String,
        vault_type: i16,
    }

    /// A vault's new share price and totals.
    SharePriceChanged in "share_price_changed_events" => SharePriceChanged {
        term_id: String,
        curve_id: String,
        share_price: String,
        total_assets: String,
        total_shares: String,
        vault_type: i16,
    }

    /// Any event without defined effects, stored verbatim.
    Generic in "generic_events" => GenericEvent {
        event_name: String,
        event_signature_hash: Option<String>,
        /// The item's JSON exactly as received.
        event_data: String,
    }
}

impl EventBody {
    /// The event's name as the contract spells it.
    pub fn name(&self) -> &str {
        match self {
            EventBody::Generic(g) => &g.event_name,
            other => other.kind().name(),
        }
    }
}

/// A derived table and the columns that define it.
#[derive(Debug, Clone, Copy)]
pub struct DerivedTable {
    pub name: &'static str,
    /// Primary key columns.
    pub key: &'static [&'static str],
    /// Columns compared by `verify` and written by `rebuild`.
    pub columns: &'static [&'static str],
    /// Level 3 (eventually consistent; exact once the analytics queue is empty).
    pub analytics: bool,
}

impl DerivedTable {
    /// Its from-scratch definition (the `*_expected` views of migration 0003).
    pub fn expected_view(&self) -> String {
        format!("{}_expected", self.name)
    }
}

/// Every derived table, in dependency order.
pub const DERIVED_TABLES: &[DerivedTable] = &[
    DerivedTable {
        name: "atom",
        key: &["term_id"],
        columns: &[
            "term_id",
            "creator_id",
            "wallet_id",
            "data",
            "raw_data",
            "block_number",
            "log_index",
            "transaction_hash",
            "created_at",
        ],
        analytics: false,
    },
    DerivedTable {
        name: "triple",
        key: &["term_id"],
        columns: &[
            "term_id",
            "subject_id",
            "predicate_id",
            "object_id",
            "creator_id",
            "counter_term_id",
            "block_number",
            "log_index",
            "transaction_hash",
            "created_at",
        ],
        analytics: false,
    },
    DerivedTable {
        name: "position",
        key: &["account_id", "term_id", "curve_id"],
        columns: &[
            "account_id",
            "term_id",
            "curve_id",
            "shares",
            "total_deposit_assets_after_total_fees",
            "total_redeem_assets_for_receiver",
            "block_number",
            "log_index",
            "transaction_hash",
        ],
        analytics: false,
    },
    DerivedTable {
        name: "vault",
        key: &["term_id", "curve_id"],
        columns: &[
            "term_id",
            "curve_id",
            "total_shares",
            "total_assets",
            "current_share_price",
            "vault_type",
            "position_count",
            "price_block_number",
            "price_log_index",
            "price_transaction_hash",
        ],
        analytics: false,
    },
    DerivedTable {
        name: "term",
        key: &["id"],
        columns: &[
            "id",
            "type",
            "atom_id",
            "triple_id",
            "total_assets",
            "total_market_cap",
        ],
        analytics: false,
    },
    DerivedTable {
        name: "triple_vault",
        key: &["term_id", "counter_term_id", "curve_id"],
        columns: &[
            "term_id",
            "counter_term_id",
            "curve_id",
            "total_shares",
            "total_assets",
            "position_count",
            "market_cap",
        ],
        analytics: true,
    },
    DerivedTable {
        name: "triple_term",
        key: &["term_id", "counter_term_id"],
        columns: &[
            "term_id",
            "counter_term_id",
            "total_assets",
            "total_market_cap",
            "total_position_count",
            "subject_id",
            "predicate_id",
            "object_id",
        ],
        analytics: true,
    },
    DerivedTable {
        name: "predicate_object",
        key: &["predicate_id", "object_id"],
        columns: &[
            "predicate_id",
            "object_id",
            "triple_count",
            "total_position_count",
            "total_market_cap",
        ],
        analytics: true,
    },
    DerivedTable {
        name: "subject_predicate",
        key: &["subject_id", "predicate_id"],
        columns: &[
            "subject_id",
            "predicate_id",
            "triple_count",
            "total_position_count",
            "total_market_cap",
        ],
        analytics: true,
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_tables_and_statements_agree() {
        assert_eq!(EventKind::ALL.map(EventKind::table), EVENT_TABLES);
        for kind in EventKind::ALL {
            let statement = kind.insert_statement();
            assert!(
                statement.contains(&format!("INSERT INTO {} (", kind.table())),
                "{}'s statement inserts into another table:\n{statement}",
                kind.name()
            );
        }
    }

    /// The COPY of a kind names the insert statement's columns, in order.
    #[test]
    fn copy_and_insert_statements_name_the_same_columns() {
        let columns = |statement: &str, after: &str| -> Vec<String> {
            let rest = &statement[statement.find(after).expect(after) + after.len()..];
            rest[..rest.find(')').expect(")")]
                .split(',')
                .map(|c| c.trim().to_string())
                .collect()
        };
        for kind in EventKind::ALL {
            let insert = columns(
                kind.insert_statement(),
                &format!("INSERT INTO {} (", kind.table()),
            );
            let copy = columns(kind.copy_statement(), &format!("COPY {} (", kind.table()));
            assert_eq!(copy, insert, "{}", kind.name());
            assert!(kind.copy_statement().ends_with(") FROM STDIN"));
            assert_eq!(copy[..11].join(", "), COMMON_COLUMNS);
        }
    }

    /// Each statement takes the eleven common parameters, then one per
    /// field of the body, in the body's order and of a type its cast takes.
    #[test]
    fn each_statement_takes_the_common_columns_then_the_fields() {
        for kind in EventKind::ALL {
            let statement = kind.insert_statement();
            let body = EventBody::empty(kind);
            assert_eq!(body.kind(), kind);
            let values = body.values();
            let cast = |n: usize| {
                let at = statement.find(&format!("${n}::"))?;
                let rest = &statement[at + format!("${n}::").len()..];
                Some(rest[..rest.find("[]")?].to_string())
            };
            for (i, value) in values.iter().enumerate() {
                let n = 12 + i;
                let cast = cast(n).unwrap_or_else(|| panic!("{}: no parameter ${n}", kind.name()));
                let takes: &[&str] = match value {
                    Value::Text(_) => &["text", "numeric", "jsonb"],
                    Value::OptText(_) => &["text"],
                    Value::Bytes(_) => &["bytea"],
                    Value::SmallInt(_) => &["int2"],
                };
                assert!(
                    takes.contains(&cast.as_str()),
                    "{}: field {} binds {value:?} to ${n}::{cast}[]",
                    kind.name(),
                    i + 1
                );
            }
            let extra = 12 + values.len();
            assert!(
                cast(extra).is_none(),
                "{}: parameter ${extra} has no field",
                kind.name()
            );
        }
    }
}
