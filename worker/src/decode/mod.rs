//! Event decoding: one Redis stream entry (rindexer format, contract §2) becomes
//! validated, normalised events plus dead letters for whatever could not be read.
//!
//! Decoding never fails as a whole: a bad entry or a bad array item becomes a
//! [`DeadLetter`] carrying the exact bytes and a reason naming the field, and
//! the good items beside it are kept.

pub mod ids;
mod members;
pub mod numbers;

pub use crate::catalog::EventBody;
use crate::catalog::{
    AtomCreated, Deposited, EventKind, GenericEvent, Redeemed, SharePriceChanged, TripleCreated,
};
use members::Members;
use numbers::Spelling;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::Arc;

/// 9999-12-31T23:59:59Z: PostgreSQL's timestamptz cannot go much further.
const MAX_TIMESTAMP: u64 = 253_402_300_799;

/// Field names under which producers put the JSON document (newest first).
pub const PAYLOAD_FIELDS: [&str; 3] = ["payload", "data", "event_data"];

/// Why one value could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("is missing")]
    Missing,
    #[error("expected {expected}, got {value}")]
    Number {
        value: String,
        expected: &'static str,
    },
    #[error("expected {expected}, got {value:?}")]
    Id {
        value: String,
        expected: &'static str,
    },
    #[error("expected {expected}, got JSON {value}")]
    Type {
        value: String,
        expected: &'static str,
    },
}

/// Why an entry or item went to the dead-letter table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A pending entry the stream no longer holds (`RawEntry::is_trimmed`).
    #[error("entry was trimmed from the stream (XTRIM, MAXLEN or XDEL) while pending, before it was acknowledged: its payload is gone, so it cannot be decoded or replayed; unless a worker stored it before it could acknowledge it, its events are missing and must be published again")]
    Trimmed,
    #[error("entry has none of the fields {PAYLOAD_FIELDS:?} (fields present: {0:?})")]
    NoPayloadField(Vec<String>),
    #[error("payload is not UTF-8 (invalid byte at offset {0})")]
    NotUtf8(usize),
    #[error("payload is not valid JSON: {0}")]
    NotJson(String),
    #[error("payload is not a JSON object with event_name and event_data: {0}")]
    NotEnvelope(String),
    #[error("event_data is empty")]
    EmptyEventData,
    #[error("{event}: item is not a JSON object: {detail}")]
    ItemNotObject { event: String, detail: String },
    #[error("{event}: field `{field}` {error}")]
    Field {
        event: String,
        field: String,
        error: FieldError,
    },
    #[error("{event}: event data contains \\u0000, which PostgreSQL cannot store")]
    NulCharacter { event: String },
}

/// Where a decoded item came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub stream: Arc<str>,
    pub entry_id: Arc<str>,
    /// Index in the entry's `event_data` array (0 for a single object).
    pub item_index: i32,
}

/// The `transaction_information` of an event, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainPosition {
    pub transaction_hash: String,
    pub log_index: i64,
    pub block_number: i64,
    pub network: String,
    pub block_hash: Option<String>,
    /// Unix seconds; `None` when the producer sent null (valid data).
    pub block_timestamp: Option<i64>,
    pub transaction_index: Option<i64>,
    pub contract_address: Option<String>,
}

impl ChainPosition {
    /// The primary key of every event table.
    pub fn key(&self) -> (&str, i64) {
        (&self.transaction_hash, self.log_index)
    }
    /// "Newest" ordering of contract §3.
    pub fn order(&self) -> (i64, i64) {
        (self.block_number, self.log_index)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedEvent {
    pub source: Source,
    pub position: ChainPosition,
    pub body: EventBody,
}

/// Input that could not be decoded, with exactly the bytes received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub stream: Arc<str>,
    pub entry_id: Arc<str>,
    /// `None` when the whole entry was unreadable.
    pub item_index: Option<i32>,
    pub event_name: Option<String>,
    pub reason: String,
    pub raw_payload: Vec<u8>,
    /// The envelope's `network` and `event_signature_hash`: an item's letter
    /// holds the item only, and a replay needs them to decode it again.
    pub envelope_network: Option<String>,
    pub event_signature_hash: Option<String>,
}

/// Everything one stream entry turned into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedEntry {
    pub stream: Arc<str>,
    pub entry_id: Arc<str>,
    /// The payload as received (kept so that an entry the database refuses can
    /// still be dead-lettered whole).
    pub raw_payload: Vec<u8>,
    pub events: Vec<DecodedEvent>,
    pub dead_letters: Vec<DeadLetter>,
    /// Addresses of the stored events spelt with a wrong EIP-55 checksum
    /// (stored normalised); the pipeline counts and logs them.
    pub address_checksum_mismatches: u32,
    /// The first such spelling, for the log line.
    pub mismatched_address: Option<String>,
}

impl DecodedEntry {
    /// The whole entry as one dead letter (used when the database refuses it).
    pub fn into_dead_letter(self, reason: String) -> DeadLetter {
        let event_name = self
            .events
            .first()
            .map(|e| e.body.name().to_string())
            .or_else(|| self.dead_letters.first().and_then(|d| d.event_name.clone()));
        DeadLetter {
            stream: self.stream,
            entry_id: self.entry_id,
            item_index: None,
            event_name,
            reason,
            raw_payload: self.raw_payload,
            envelope_network: None,
            event_signature_hash: None,
        }
    }

    /// The events `events` of this entry (and its dead letters when
    /// `with_letters`) as an entry of their own, to write them apart from the
    /// rest when the database refused the whole entry.
    pub fn part(&self, events: std::ops::Range<usize>, with_letters: bool) -> DecodedEntry {
        DecodedEntry {
            stream: self.stream.clone(),
            entry_id: self.entry_id.clone(),
            raw_payload: Vec::new(),
            events: self.events[events].to_vec(),
            dead_letters: if with_letters {
                self.dead_letters.clone()
            } else {
                Vec::new()
            },
            address_checksum_mismatches: 0,
            mismatched_address: None,
        }
    }

    /// The letter of one item of this entry that the database refused: the
    /// item's exact bytes and its envelope's context, as for an item that
    /// did not decode, so that a replay re-applies that item alone. (The
    /// payload decoded once, so it parses again; were it not to, the letter
    /// holds the whole entry.)
    pub fn item_dead_letter(&self, item_index: i32, reason: String) -> DeadLetter {
        let item = std::str::from_utf8(&self.raw_payload)
            .ok()
            .and_then(|text| serde_json::from_str::<Members<'_>>(text).ok())
            .and_then(|envelope| {
                let event_data = envelope.get("event_data")?;
                let item: &RawValue = if event_data.get().trim_start().starts_with('[') {
                    let items: Vec<&RawValue> = serde_json::from_str(event_data.get()).ok()?;
                    items.get(usize::try_from(item_index).ok()?).copied()?
                } else {
                    event_data
                };
                let event_name = envelope
                    .get("event_name")
                    .and_then(|v| serde_json::from_str::<String>(v.get()).ok());
                Some(DeadLetter {
                    stream: self.stream.clone(),
                    entry_id: self.entry_id.clone(),
                    item_index: Some(item_index),
                    event_name,
                    reason: String::new(),
                    raw_payload: item.get().as_bytes().to_vec(),
                    envelope_network: optional_string(&envelope, "network"),
                    event_signature_hash: optional_string(&envelope, "event_signature_hash"),
                })
            });
        match item {
            Some(letter) => DeadLetter { reason, ..letter },
            None => self.clone().into_dead_letter(reason),
        }
    }
}

/// Decodes one stream entry given its field/value pairs.
pub fn decode_entry(
    stream: &Arc<str>,
    entry_id: &Arc<str>,
    fields: &[(String, Vec<u8>)],
) -> DecodedEntry {
    let whole_entry_dead =
        |reason: DecodeError, raw: Vec<u8>, event_name: Option<String>| DecodedEntry {
            stream: stream.clone(),
            entry_id: entry_id.clone(),
            raw_payload: raw.clone(),
            events: Vec::new(),
            dead_letters: vec![DeadLetter {
                stream: stream.clone(),
                entry_id: entry_id.clone(),
                item_index: None,
                event_name,
                reason: reason.to_string(),
                raw_payload: raw,
                envelope_network: None,
                event_signature_hash: None,
            }],
            address_checksum_mismatches: 0,
            mismatched_address: None,
        };

    if fields.is_empty() {
        return whole_entry_dead(DecodeError::Trimmed, Vec::new(), None);
    }
    let Some(raw) = PAYLOAD_FIELDS
        .iter()
        .find_map(|name| fields.iter().find(|(f, _)| f == name).map(|(_, v)| v))
    else {
        let names = fields.iter().map(|(f, _)| f.clone()).collect();
        let raw = render_fields(fields);
        return whole_entry_dead(DecodeError::NoPayloadField(names), raw, None);
    };
    let text = match std::str::from_utf8(raw) {
        Ok(text) => text,
        Err(e) => {
            return whole_entry_dead(DecodeError::NotUtf8(e.valid_up_to()), raw.clone(), None)
        }
    };
    let envelope: Members<'_> = match serde_json::from_str::<&RawValue>(text) {
        Err(e) => return whole_entry_dead(DecodeError::NotJson(e.to_string()), raw.clone(), None),
        Ok(value) => match serde_json::from_str(value.get()) {
            Ok(map) => map,
            Err(_) => {
                let detail = format!("top level is {}", json_kind(value));
                return whole_entry_dead(DecodeError::NotEnvelope(detail), raw.clone(), None);
            }
        },
    };
    let event_name = match envelope
        .get("event_name")
        .map(|v| serde_json::from_str::<String>(v.get()))
    {
        Some(Ok(name)) if !name.is_empty() && !name.contains('\0') => name,
        _ => {
            let detail = "event_name is missing or not a non-empty string".to_string();
            return whole_entry_dead(DecodeError::NotEnvelope(detail), raw.clone(), None);
        }
    };
    let Some(event_data) = envelope.get("event_data") else {
        let detail = "event_data is missing".to_string();
        return whole_entry_dead(
            DecodeError::NotEnvelope(detail),
            raw.clone(),
            Some(event_name),
        );
    };
    let items: Vec<&RawValue> = match event_data.get().trim_start().as_bytes().first() {
        Some(b'[') => match serde_json::from_str(event_data.get()) {
            Ok(items) => items,
            Err(e) => {
                return whole_entry_dead(
                    DecodeError::NotJson(e.to_string()),
                    raw.clone(),
                    Some(event_name),
                )
            }
        },
        _ => vec![event_data],
    };
    if items.is_empty() {
        return whole_entry_dead(DecodeError::EmptyEventData, raw.clone(), Some(event_name));
    }
    let envelope_context = EnvelopeContext {
        event_name: &event_name,
        event_signature_hash: optional_string(&envelope, "event_signature_hash"),
        network: optional_string(&envelope, "network"),
    };

    let mut out = DecodedEntry {
        stream: stream.clone(),
        entry_id: entry_id.clone(),
        raw_payload: raw.clone(),
        events: Vec::with_capacity(items.len()),
        dead_letters: Vec::new(),
        address_checksum_mismatches: 0,
        mismatched_address: None,
    };
    for (index, item) in items.iter().enumerate() {
        let item_index = i32::try_from(index).unwrap_or(i32::MAX);
        let source = Source {
            stream: stream.clone(),
            entry_id: entry_id.clone(),
            item_index,
        };
        let mismatches = AddressMismatches::default();
        match decode_item(&envelope_context, item, &mismatches) {
            Ok((position, body)) => {
                out.events.push(DecodedEvent {
                    source,
                    position,
                    body,
                });
                out.address_checksum_mismatches += mismatches.count.get();
                if out.mismatched_address.is_none() {
                    out.mismatched_address = mismatches.first.take();
                }
            }
            Err(reason) => out.dead_letters.push(DeadLetter {
                stream: stream.clone(),
                entry_id: entry_id.clone(),
                item_index: Some(item_index),
                event_name: Some(event_name.clone()),
                reason: reason.to_string(),
                raw_payload: item.get().as_bytes().to_vec(),
                envelope_network: envelope_context.network.clone(),
                event_signature_hash: envelope_context.event_signature_hash.clone(),
            }),
        }
    }
    out
}

/// Addresses of one item spelt with a wrong checksum (see [`ids::Address`]).
#[derive(Default)]
struct AddressMismatches {
    count: std::cell::Cell<u32>,
    first: std::cell::RefCell<Option<String>>,
}

struct EnvelopeContext<'a> {
    event_name: &'a str,
    event_signature_hash: Option<String>,
    network: Option<String>,
}

fn optional_string(map: &Members<'_>, key: &str) -> Option<String> {
    map.get(key)
        .and_then(json_string)
        .filter(|s| !s.is_empty() && !s.contains('\0'))
        .map(Cow::into_owned)
}

/// A JSON string's value: borrowed from the input when it holds no escapes
/// (ids and numbers never do), decoded otherwise; `None` when not a string.
fn json_string(raw: &RawValue) -> Option<Cow<'_, str>> {
    let json = raw.get();
    if let Some(inner) = json.strip_prefix('"').and_then(|j| j.strip_suffix('"')) {
        if !inner.contains(['\\', '"']) {
            return Some(Cow::Borrowed(inner));
        }
    }
    serde_json::from_str::<String>(json).ok().map(Cow::Owned)
}

/// Accessor over one JSON object's fields, producing errors that name the field.
struct Fields<'a> {
    event: &'a str,
    prefix: &'static str,
    map: Members<'a>,
    mismatches: &'a AddressMismatches,
}

impl<'a> Fields<'a> {
    fn error(&self, field: &str, error: FieldError) -> DecodeError {
        DecodeError::Field {
            event: self.event.to_string(),
            field: format!("{}{}", self.prefix, field),
            error,
        }
    }

    /// The raw JSON of a field; `None` when absent or null.
    fn raw(&self, field: &str) -> Option<&'a RawValue> {
        self.map.get(field).filter(|v| v.get() != "null")
    }

    fn string(&self, field: &str) -> Result<String, DecodeError> {
        self.text(field).map(Cow::into_owned)
    }

    /// A string field's value (see `json_string`).
    fn text(&self, field: &str) -> Result<Cow<'a, str>, DecodeError> {
        let raw = self
            .raw(field)
            .ok_or_else(|| self.error(field, FieldError::Missing))?;
        json_string(raw).ok_or_else(|| {
            self.error(
                field,
                FieldError::Type {
                    value: ids::truncate(raw.get()),
                    expected: "a string",
                },
            )
        })
    }

    fn spelling<T>(
        &self,
        field: &str,
        parse: impl FnOnce(Spelling<'_>) -> Result<T, FieldError>,
    ) -> Result<T, DecodeError> {
        let raw = self
            .raw(field)
            .ok_or_else(|| self.error(field, FieldError::Missing))?;
        let text = raw.get();
        let result = if text.starts_with('"') {
            let inner = self.text(field)?;
            parse(Spelling::Text(&inner))
        } else if text.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
            parse(Spelling::Literal(text))
        } else {
            Err(FieldError::Type {
                value: ids::truncate(text),
                expected: "a number or a numeric string",
            })
        };
        result.map_err(|e| self.error(field, e))
    }

    fn u256(&self, field: &str) -> Result<String, DecodeError> {
        self.spelling(field, numbers::parse_u256)
    }

    fn small(&self, field: &str, max: u64, expected: &'static str) -> Result<i64, DecodeError> {
        self.spelling(field, |s| numbers::parse_small(s, max, expected))
    }

    fn optional_small(
        &self,
        field: &str,
        expected: &'static str,
    ) -> Result<Option<i64>, DecodeError> {
        match self.raw(field) {
            None => Ok(None),
            Some(_) => self.small(field, i64::MAX as u64, expected).map(Some),
        }
    }

    fn vault_type(&self) -> Result<i16, DecodeError> {
        self.small(
            "vaultType",
            2,
            "a vault type: 0 (Atom), 1 (Triple) or 2 (CounterTriple)",
        )
        .map(|v| v as i16)
    }

    fn with<T>(
        &self,
        field: &str,
        f: impl FnOnce(&str) -> Result<T, FieldError>,
    ) -> Result<T, DecodeError> {
        let value = self.text(field)?;
        f(&value).map_err(|e| self.error(field, e))
    }

    fn term_id(&self, field: &str) -> Result<String, DecodeError> {
        self.with(field, ids::term_id)
    }

    fn address(&self, field: &str) -> Result<String, DecodeError> {
        let value = self.text(field)?;
        let address = ids::address(&value).map_err(|e| self.error(field, e))?;
        if address.checksum_mismatch {
            self.mismatches.count.set(self.mismatches.count.get() + 1);
            let mut first = self.mismatches.first.borrow_mut();
            if first.is_none() {
                *first = Some(value.into_owned());
            }
        }
        Ok(address.checksummed)
    }
}

fn object<'a>(
    event: &'a str,
    prefix: &'static str,
    raw: &'a RawValue,
    mismatches: &'a AddressMismatches,
) -> Result<Fields<'a>, DecodeError> {
    let map = serde_json::from_str(raw.get()).map_err(|_| DecodeError::ItemNotObject {
        event: event.to_string(),
        detail: format!("{}is {}", prefix, json_kind(raw)),
    })?;
    Ok(Fields {
        event,
        prefix,
        map,
        mismatches,
    })
}

fn decode_item<'a>(
    envelope: &EnvelopeContext<'_>,
    item: &'a RawValue,
    mismatches: &'a AddressMismatches,
) -> Result<(ChainPosition, EventBody), DecodeError> {
    let event = envelope.event_name;
    let fields = object(event, "", item, mismatches)?;
    let info_raw = fields
        .raw("transaction_information")
        .ok_or_else(|| fields.error("transaction_information", FieldError::Missing))?;
    let info = object(event, "transaction_information.", info_raw, mismatches)?;

    let network = match info.raw("network") {
        Some(_) => info.string("network")?,
        None => envelope
            .network
            .clone()
            .ok_or_else(|| info.error("network", FieldError::Missing))?,
    };
    let position = ChainPosition {
        transaction_hash: info.with("transaction_hash", |v| {
            ids::term_id(v).map_err(|_| FieldError::Id {
                value: ids::truncate(v),
                expected: "a transaction hash: 0x followed by 64 hex digits",
            })
        })?,
        log_index: info.small("log_index", i64::MAX as u64, "a log index")?,
        block_number: info.small("block_number", i64::MAX as u64, "a block number")?,
        network,
        block_hash: match info.raw("block_hash") {
            None => None,
            Some(_) => Some(info.term_id("block_hash")?),
        },
        block_timestamp: match info.raw("block_timestamp") {
            None => None,
            Some(_) => Some(info.small(
                "block_timestamp",
                MAX_TIMESTAMP,
                "a unix timestamp before year 10000",
            )?),
        },
        transaction_index: info.optional_small("transaction_index", "a transaction index")?,
        contract_address: match info.raw("address") {
            None => None,
            Some(_) => Some(info.address("address")?),
        },
    };
    if position.network.contains('\0') {
        return Err(info.error(
            "network",
            FieldError::Id {
                value: position.network.clone(),
                expected: "a network name without NUL",
            },
        ));
    }

    let body = match EventKind::named(event) {
        Some(EventKind::AtomCreated) => {
            let atom_data = fields.with("atomData", ids::hex_bytes)?;
            EventBody::AtomCreated(AtomCreated {
                creator: fields.address("creator")?,
                term_id: fields.term_id("termId")?,
                atom_data_text: ids::atom_text(&atom_data),
                atom_data,
                atom_wallet: fields.address("atomWallet")?,
            })
        }
        Some(EventKind::TripleCreated) => {
            let term_id = fields.term_id("termId")?;
            EventBody::TripleCreated(TripleCreated {
                creator: fields.address("creator")?,
                counter_term_id: ids::counter_term_id(&term_id),
                term_id,
                subject_id: fields.term_id("subjectId")?,
                predicate_id: fields.term_id("predicateId")?,
                object_id: fields.term_id("objectId")?,
            })
        }
        Some(EventKind::Deposited) => EventBody::Deposited(Deposited {
            sender: fields.address("sender")?,
            receiver: fields.address("receiver")?,
            term_id: fields.term_id("termId")?,
            curve_id: fields.u256("curveId")?,
            assets: fields.u256("assets")?,
            assets_after_fees: fields.u256("assetsAfterFees")?,
            shares: fields.u256("shares")?,
            total_shares: fields.u256("totalShares")?,
            vault_type: fields.vault_type()?,
        }),
        Some(EventKind::Redeemed) => EventBody::Redeemed(Redeemed {
            sender: fields.address("sender")?,
            receiver: fields.address("receiver")?,
            term_id: fields.term_id("termId")?,
            curve_id: fields.u256("curveId")?,
            shares: fields.u256("shares")?,
            total_shares: fields.u256("totalShares")?,
            assets: fields.u256("assets")?,
            fees: fields.u256("fees")?,
            vault_type: fields.vault_type()?,
        }),
        Some(EventKind::SharePriceChanged) => EventBody::SharePriceChanged(SharePriceChanged {
            term_id: fields.term_id("termId")?,
            curve_id: fields.u256("curveId")?,
            share_price: fields.u256("sharePrice")?,
            total_assets: fields.u256("totalAssets")?,
            total_shares: fields.u256("totalShares")?,
            vault_type: fields.vault_type()?,
        }),
        // A producer's event literally named "Generic" is one of these too.
        Some(EventKind::Generic) | None => {
            // jsonb cannot hold U+0000; refuse it here rather than fail the batch.
            if item.get().contains("\\u0000") {
                return Err(DecodeError::NulCharacter {
                    event: event.to_string(),
                });
            }
            EventBody::Generic(GenericEvent {
                event_name: event.to_string(),
                event_signature_hash: envelope.event_signature_hash.clone(),
                event_data: item.get().to_string(),
            })
        }
    };
    Ok((position, body))
}

fn json_kind(raw: &RawValue) -> &'static str {
    match raw.get().trim_start().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// The raw bytes of an entry without a payload field: `field=value` lines.
fn render_fields(fields: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.extend_from_slice(name.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests;
