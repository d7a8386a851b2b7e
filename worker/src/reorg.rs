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
//!
//! This module parses notices, applies them and reads fences; the consumer's
//! side (waiting for earlier entries, retrying, acknowledging) is in
//! `pipeline/control.rs`, above it.

use crate::decode::numbers::{self, Spelling};
use crate::decode::{DecodedEntry, PAYLOAD_FIELDS};
use crate::health::{LatestReorg, ReorgHealth};
use crate::intake::RawEntry;
use crate::queries;
use crate::rollback::{self, Removal, RollbackReport};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Row, Transaction};
use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Instant;

/// The prefix of rindexer's control entries.
pub const CONTROL_PREFIX: &str = "__rindexer_";
/// The event name of a reorg notice.
pub const REORG_NOTICE: &str = "__rindexer_reorg";

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
    memchr::memmem::find(raw, CONTROL_PREFIX.as_bytes())?;
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
    /// The `outcome` label of the `reorg_notices` metric.
    pub fn outcome(&self) -> &'static str {
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
