//! `postgres-writer dead-letters list | show | replay`: inspect dead letters
//! and, once their cause is fixed, send them back through the normal decode
//! and write path (`decode::decode_entry`, `persistence::write_in_transaction`).
//!
//! Each letter is replayed in its own transaction, which also marks it
//! replayed: a crash leaves a letter either applied and marked, or neither.
//! A replayed letter is kept for audit and never selected again, so a second
//! replay changes nothing. A letter that fails again stays pending with its
//! new reason (the first reason is kept in `first_reason`).

use crate::decode::{decode_entry, DecodedEntry};
use crate::failure::{self, classify, ConflictRetry, Failure, Policy};
use crate::network;
use crate::persistence::{self, WriteOutcome};
use crate::queries;
use sqlx::{PgPool, Postgres, Row, Transaction};
use std::fmt::Write as _;
use std::sync::Arc;

/// Which letters `list` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Not replayed yet.
    Pending,
    /// Replayed successfully.
    Replayed,
    /// Both.
    All,
}

impl Status {
    fn as_sql(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Replayed => "replayed",
            Status::All => "all",
        }
    }
}

/// Filters shared by `list` and `replay` (all given ones must match).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub ids: Vec<i64>,
    pub stream: Option<String>,
    /// Case-insensitive substring of the reason.
    pub reason_contains: Option<String>,
}

/// One row of `dead_letters`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Letter {
    pub id: i64,
    pub stream: String,
    pub entry_id: String,
    pub item_index: Option<i32>,
    pub event_name: Option<String>,
    pub reason: String,
    pub raw_payload: Vec<u8>,
    pub envelope_network: Option<String>,
    pub event_signature_hash: Option<String>,
    pub created_at: String,
    pub replay_attempts: i32,
    pub last_replay_at: Option<String>,
    pub first_reason: Option<String>,
    pub replayed_at: Option<String>,
    pub replay_result: Option<String>,
    pub replay_note: Option<String>,
}

/// Letters matching `filter` and `status`, newest first or oldest first.
pub async fn select(
    pool: &PgPool,
    filter: &Filter,
    status: Status,
    newest_first: bool,
    limit: i64,
) -> Result<Vec<Letter>, sqlx::Error> {
    let ids = (!filter.ids.is_empty()).then_some(&filter.ids);
    let rows = sqlx::query(queries::SELECT_DEAD_LETTERS)
        .bind(ids)
        .bind(filter.stream.as_deref())
        .bind(filter.reason_contains.as_deref())
        .bind(status.as_sql())
        .bind(newest_first)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Letter {
                id: r.try_get("id")?,
                stream: r.try_get("stream")?,
                entry_id: r.try_get("entry_id")?,
                item_index: r.try_get("item_index")?,
                event_name: r.try_get("event_name")?,
                reason: r.try_get("reason")?,
                raw_payload: r.try_get("raw_payload")?,
                envelope_network: r.try_get("envelope_network")?,
                event_signature_hash: r.try_get("event_signature_hash")?,
                created_at: r.try_get("created_at")?,
                replay_attempts: r.try_get("replay_attempts")?,
                last_replay_at: r.try_get("last_replay_at")?,
                first_reason: r.try_get("first_reason")?,
                replayed_at: r.try_get("replayed_at")?,
                replay_result: r.try_get("replay_result")?,
                replay_note: r.try_get("replay_note")?,
            })
        })
        .collect()
}

/// One letter by id.
pub async fn get(pool: &PgPool, id: i64) -> Result<Option<Letter>, sqlx::Error> {
    let filter = Filter {
        ids: vec![id],
        ..Filter::default()
    };
    Ok(select(pool, &filter, Status::All, false, 1).await?.pop())
}

/// Decodes a letter again, as the pipeline decoded it the first time.
///
/// A whole-entry letter holds the entry's payload and decodes as that entry.
/// An item's letter holds that item only: it is wrapped in its envelope again
/// (event name, network, signature hash) as the only element of an array, and
/// the result carries the item's original index, so only that item is
/// re-applied, never its neighbours.
pub fn decode_letter(letter: &Letter) -> DecodedEntry {
    let stream: Arc<str> = Arc::from(letter.stream.as_str());
    let entry_id: Arc<str> = Arc::from(letter.entry_id.as_str());
    let Some(index) = letter.item_index else {
        let fields = if letter.raw_payload.is_empty() {
            // The entry was deleted from the stream: nothing to decode.
            Vec::new()
        } else {
            vec![("payload".to_string(), letter.raw_payload.clone())]
        };
        return decode_entry(&stream, &entry_id, &fields);
    };
    // The item's exact text (a letter's item came from a valid UTF-8 payload;
    // anything else decodes to a "not valid JSON" reason below).
    let item = String::from_utf8_lossy(&letter.raw_payload);
    let json = |v: Option<&str>| serde_json::to_string(&v).unwrap_or_else(|_| "null".into());
    let envelope = format!(
        r#"{{"event_name":{},"event_signature_hash":{},"network":{},"event_data":[{}]}}"#,
        json(letter.event_name.as_deref()),
        json(letter.event_signature_hash.as_deref()),
        json(letter.envelope_network.as_deref()),
        item
    );
    let mut decoded = decode_entry(
        &stream,
        &entry_id,
        &[("payload".to_string(), envelope.into_bytes())],
    );
    for event in &mut decoded.events {
        event.source.item_index = index;
    }
    for dead in &mut decoded.dead_letters {
        dead.item_index = Some(index);
        dead.raw_payload = letter.raw_payload.clone();
    }
    decoded.raw_payload = letter.raw_payload.clone();
    decoded
}

/// Why a decoded letter still cannot be stored, if it cannot: the letter's
/// own unit (the whole entry, or its one item) failed again. An entry whose
/// items partly fail is applied; those items become letters of their own.
fn still_failing(letter: &Letter, decoded: &DecodedEntry) -> Option<String> {
    decoded
        .dead_letters
        .iter()
        .find(|d| letter.item_index.is_some() || d.item_index.is_none())
        .map(|d| d.reason.clone())
}

/// What happened to one letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied and marked replayed (`result` says what it stored).
    Replayed { result: String },
    /// Failed again; the letter stays pending with this reason.
    FailedAgain { reason: String },
    /// Already replayed earlier (nothing done).
    AlreadyReplayed,
    /// `--dry-run`: would be applied.
    WouldReplay { result: String },
    /// `--dry-run`: would fail again.
    WouldFail { reason: String },
}

/// The result of `replay`, one line per letter plus counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    pub dry_run: bool,
    pub letters: Vec<(Letter, Outcome)>,
    /// New events stored by the replayed letters (would be, in a dry run).
    pub events_stored: u64,
}

impl ReplayReport {
    pub fn selected(&self) -> usize {
        self.letters.len()
    }
    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.letters.iter().filter(|(_, o)| f(o)).count()
    }
    pub fn replayed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Replayed { .. } | Outcome::WouldReplay { .. }))
    }
    pub fn failed_again(&self) -> usize {
        self.count(|o| matches!(o, Outcome::FailedAgain { .. } | Outcome::WouldFail { .. }))
    }
    pub fn already_replayed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::AlreadyReplayed))
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for (letter, outcome) in &self.letters {
            let what = match outcome {
                Outcome::Replayed { result } => format!("replayed: {result}"),
                Outcome::FailedAgain { reason } => format!("failed again: {reason}"),
                Outcome::AlreadyReplayed => "already replayed; nothing to do".to_string(),
                Outcome::WouldReplay { result } => format!("would replay: {result}"),
                Outcome::WouldFail { reason } => format!("would fail again: {reason}"),
            };
            let _ = writeln!(out, "{:>8} {} {what}", letter.id, source(letter));
        }
        let (replayed, failed) = if self.dry_run {
            ("would replay", "would fail again")
        } else {
            ("replayed", "failed again")
        };
        let _ = writeln!(
            out,
            "{}selected {}: {replayed} {}, {failed} {}, already replayed {}; events stored {}",
            if self.dry_run {
                "dry run (nothing written): "
            } else {
                ""
            },
            self.selected(),
            self.replayed(),
            self.failed_again(),
            self.already_replayed(),
            self.events_stored,
        );
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// An outage, not a problem of the letter: stop, nothing half-done (each
    /// letter's transaction either committed or rolled back).
    #[error("PostgreSQL is unavailable while replaying letter {id}: {source}")]
    Unavailable {
        id: i64,
        #[source]
        source: sqlx::Error,
    },
    #[error("selecting dead letters: {0}")]
    Select(#[source] sqlx::Error),
    /// The letters are replayed (committed); folding their effect into the
    /// base tables failed and is left to the running workers.
    #[error("folding the replayed events into the base tables: {source}")]
    Fold {
        #[source]
        source: sqlx::Error,
    },
}

/// Replays the letters matching `filter`, oldest first, one transaction each.
/// With `dry_run` each transaction is rolled back instead of committed, so
/// the report says what the database would do without writing anything.
pub async fn replay(
    pool: &PgPool,
    filter: &Filter,
    dry_run: bool,
    note: Option<&str>,
) -> Result<ReplayReport, ReplayError> {
    // Replayed letters are selected too (by id, stream or reason) so that the
    // report can say they were already replayed.
    let letters = select(pool, filter, Status::All, false, i64::MAX)
        .await
        .map_err(ReplayError::Select)?;
    let mut report = ReplayReport {
        dry_run,
        ..ReplayReport::default()
    };
    for letter in letters {
        if letter.replayed_at.is_some() {
            report.letters.push((letter, Outcome::AlreadyReplayed));
            continue;
        }
        let decoded = decode_letter(&letter);
        // The one failure policy (crate::failure): conflicts rerun, data errors
        // fail the letter again, an outage stops the replay.
        let policy = Policy {
            conflicts: ConflictRetry::default(),
            outages: None,
        };
        let outcome = match failure::retry(&policy, || {
            replay_one(pool, &letter, &decoded, dry_run, note)
        })
        .await
        {
            Ok(done) => {
                let (outcome, stored) = done.value;
                report.events_stored += stored;
                outcome
            }
            Err(error) if classify(&error) == Failure::Data => {
                let subject = match letter.item_index {
                    Some(index) => format!("item {index} of the entry"),
                    None => "the entry".to_string(),
                };
                let encoding: Option<String> = sqlx::query_scalar(queries::DATABASE_ENCODING)
                    .fetch_one(pool)
                    .await
                    .ok();
                let reason = failure::refusal_reason(&subject, &error, encoding.as_deref());
                if dry_run {
                    Outcome::WouldFail { reason }
                } else {
                    mark_failed(pool, letter.id, &reason, note)
                        .await
                        .map_err(|source| ReplayError::Unavailable {
                            id: letter.id,
                            source,
                        })?;
                    Outcome::FailedAgain { reason }
                }
            }
            Err(error) => {
                return Err(ReplayError::Unavailable {
                    id: letter.id,
                    source: error,
                })
            }
        };
        report.letters.push((letter, outcome));
    }
    // Replayed events reach the base tables by folding (ADR 0015): fold now,
    // so that the replay's effect is visible when this returns.
    if !dry_run && report.events_stored > 0 {
        crate::fold::fold_until_empty(pool)
            .await
            .map_err(|source| ReplayError::Fold { source })?;
    }
    Ok(report)
}

/// One letter in one transaction: lock it, write what it decodes to (or
/// record that it failed again), mark it, commit (roll back in a dry run).
/// The letter still fails: keep it pending with its new reason (committed),
/// or only report that in a dry run.
async fn fail_again(
    mut tx: Transaction<'_, Postgres>,
    letter: &Letter,
    reason: String,
    dry_run: bool,
    note: Option<&str>,
) -> Result<(Outcome, u64), sqlx::Error> {
    if dry_run {
        return Ok((Outcome::WouldFail { reason }, 0));
    }
    sqlx::query(queries::MARK_DEAD_LETTER_FAILED)
        .bind(letter.id)
        .bind(&reason)
        .bind(note)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((Outcome::FailedAgain { reason }, 0))
}

async fn replay_one(
    pool: &PgPool,
    letter: &Letter,
    decoded: &DecodedEntry,
    dry_run: bool,
    note: Option<&str>,
) -> Result<(Outcome, u64), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let replayed: Option<bool> = sqlx::query_scalar(queries::LOCK_DEAD_LETTER)
        .bind(letter.id)
        .fetch_optional(&mut *tx)
        .await?;
    // Replayed (or deleted) by someone else since it was selected.
    if replayed != Some(false) {
        return Ok((Outcome::AlreadyReplayed, 0));
    }
    if let Some(reason) = still_failing(letter, decoded) {
        return fail_again(tx, letter, reason, dry_run, note).await;
    }
    // One network per database (crate::network), as for the pipeline's batches.
    if let Err(refused) = network::check(&mut tx, std::slice::from_ref(decoded)).await? {
        let reason = refused.to_string();
        return fail_again(tx, letter, reason, dry_run, note).await;
    }
    let written = persistence::write_in_transaction(
        &mut tx,
        std::slice::from_ref(decoded),
        persistence::Insert::SkipStored,
        None,
    )
    .await?;
    let result = describe(&written);
    let stored = written.stored_events();
    if dry_run {
        tx.rollback().await?;
        return Ok((Outcome::WouldReplay { result }, stored));
    }
    sqlx::query(queries::MARK_DEAD_LETTER_REPLAYED)
        .bind(letter.id)
        .bind(&result)
        .bind(note)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((Outcome::Replayed { result }, stored))
}

async fn mark_failed(
    pool: &PgPool,
    id: i64,
    reason: &str,
    note: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(queries::MARK_DEAD_LETTER_FAILED)
        .bind(id)
        .bind(reason)
        .bind(note)
        .execute(pool)
        .await?;
    Ok(())
}

/// What a replayed write did, as kept in `replay_result`.
fn describe(outcome: &WriteOutcome) -> String {
    let mut out = format!("stored {} new event(s)", outcome.stored_events());
    if !outcome.new_events.is_empty() {
        let kinds: Vec<String> = outcome
            .new_events
            .iter()
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect();
        let _ = write!(out, " ({})", kinds.join(", "));
    }
    if outcome.duplicate_events > 0 {
        let _ = write!(out, ", {} already stored", outcome.duplicate_events);
    }
    if outcome.dead_letters > 0 {
        let _ = write!(
            out,
            ", {} item(s) dead-lettered as letters of their own",
            outcome.dead_letters
        );
    }
    out
}

fn source(letter: &Letter) -> String {
    match letter.item_index {
        Some(i) => format!("{} {} item {i}", letter.stream, letter.entry_id),
        None => format!("{} {}", letter.stream, letter.entry_id),
    }
}

/// A letter's state in one word or two.
fn status(letter: &Letter) -> String {
    match (&letter.replayed_at, letter.replay_attempts) {
        (Some(at), _) => format!("replayed {at}"),
        (None, 0) => "pending".to_string(),
        (None, n) => format!("pending ({n} failed replay(s))"),
    }
}

/// Cuts `text` to `max` characters on one line.
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// `list`: one row per letter, columns padded to their widest value.
pub fn render_list(letters: &[Letter]) -> String {
    const REASON_WIDTH: usize = 70;
    let header = [
        "id", "stream", "entry", "item", "created", "status", "reason",
    ];
    let rows: Vec<[String; 7]> = letters
        .iter()
        .map(|l| {
            [
                l.id.to_string(),
                l.stream.clone(),
                l.entry_id.clone(),
                l.item_index.map(|i| i.to_string()).unwrap_or("-".into()),
                l.created_at.clone(),
                status(l),
                one_line(&l.reason, REASON_WIDTH),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let pad = w.saturating_sub(cell.chars().count());
                text.push_str(cell);
                text.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    out.push_str(&format!("{} letter(s)\n", letters.len()));
    out
}

/// `show`: every column, the payload as indented JSON when it is JSON.
pub fn render_show(letter: &Letter) -> String {
    let mut out = String::new();
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut fields: Vec<(&str, String)> = vec![
        ("id", letter.id.to_string()),
        ("stream", letter.stream.clone()),
        ("entry id", letter.entry_id.clone()),
        (
            "item index",
            letter
                .item_index
                .map(|i| i.to_string())
                .unwrap_or_else(|| "- (whole entry)".into()),
        ),
        ("event name", opt(&letter.event_name)),
        ("created", letter.created_at.clone()),
        ("reason", letter.reason.clone()),
        ("first reason", opt(&letter.first_reason)),
        ("status", status(letter)),
        ("replay attempts", letter.replay_attempts.to_string()),
        ("last replay", opt(&letter.last_replay_at)),
        ("replay result", opt(&letter.replay_result)),
        ("replay note", opt(&letter.replay_note)),
    ];
    // An item's letter holds the item only; its envelope is kept beside it.
    if letter.item_index.is_some() {
        fields.push((
            "envelope",
            format!(
                "network {}, event_signature_hash {}",
                opt(&letter.envelope_network),
                opt(&letter.event_signature_hash)
            ),
        ));
    }
    for (name, value) in fields {
        let _ = writeln!(out, "{name:<16} {value}");
    }
    let _ = writeln!(out, "payload ({} bytes):", letter.raw_payload.len());
    out.push_str(&render_payload(&letter.raw_payload));
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// The payload for a human: indented JSON when it parses (re-indented as
/// text, so numbers and key order stay exactly as received), UTF-8 text
/// otherwise, hex when not UTF-8.
pub fn render_payload(raw: &[u8]) -> String {
    match std::str::from_utf8(raw) {
        Ok(text) if serde_json::from_str::<&serde_json::value::RawValue>(text).is_ok() => {
            indent_json(text)
        }
        Ok(text) => text.to_string(),
        Err(_) => format!("(not UTF-8) 0x{}", hex::encode(raw)),
    }
}

/// Re-indents valid JSON text: two spaces per level, one member per line.
fn indent_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = text.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                // Keep empty objects and arrays on one line.
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                if matches!(chars.peek(), Some('}' | ']')) {
                    if let Some(close) = chars.next() {
                        out.push(close);
                    }
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(item_index: Option<i32>, raw: &str) -> Letter {
        Letter {
            id: 7,
            stream: "s".into(),
            entry_id: "1-0".into(),
            item_index,
            event_name: Some("Deposited".into()),
            reason: "r".into(),
            raw_payload: raw.as_bytes().to_vec(),
            envelope_network: Some("base".into()),
            event_signature_hash: Some("0xfeed".into()),
            created_at: "2026-01-01T00:00:00Z".into(),
            replay_attempts: 0,
            last_replay_at: None,
            first_reason: None,
            replayed_at: None,
            replay_result: None,
            replay_note: None,
        }
    }

    const ADDR_BAD_CHECKSUM: &str = "0x742d35Cc6634C0532925a3b844Bc9e7595f0bEb0";

    fn deposit_item(assets: &str) -> String {
        format!(
            r#"{{"sender":"{ADDR_BAD_CHECKSUM}","receiver":"{ADDR_BAD_CHECKSUM}","termId":"0x{:064x}","curveId":"1",
            "assets":{assets},"assetsAfterFees":"1","shares":"1","totalShares":"1","vaultType":0,
            "transaction_information":{{"block_number":5,"log_index":2,"transaction_hash":"0x{:064x}"}}}}"#,
            1, 2
        )
    }

    #[test]
    fn an_items_letter_decodes_as_that_item_with_its_index_and_envelope() {
        let decoded = decode_letter(&letter(Some(3), &deposit_item("\"10\"")));
        assert!(
            decoded.dead_letters.is_empty(),
            "{:?}",
            decoded.dead_letters
        );
        assert_eq!(decoded.events.len(), 1);
        let event = &decoded.events[0];
        assert_eq!(event.source.item_index, 3);
        assert_eq!(&*event.source.entry_id, "1-0");
        // The network came from the envelope kept with the letter.
        assert_eq!(event.position.network, "base");
        assert_eq!(decoded.address_checksum_mismatches, 2);
    }

    #[test]
    fn an_item_that_still_fails_keeps_its_index_bytes_and_new_reason() {
        let raw = deposit_item("\"12x\"");
        let l = letter(Some(1), &raw);
        let decoded = decode_letter(&l);
        assert!(decoded.events.is_empty());
        let dead = &decoded.dead_letters[0];
        assert_eq!(dead.item_index, Some(1));
        assert_eq!(dead.raw_payload, raw.as_bytes());
        let reason = still_failing(&l, &decoded).unwrap();
        assert!(reason.contains("assets"), "{reason}");
    }

    #[test]
    fn an_item_that_is_itself_an_array_stays_one_item() {
        let l = letter(Some(0), "[1,2]");
        let decoded = decode_letter(&l);
        assert_eq!(decoded.dead_letters.len(), 1);
        assert!(still_failing(&l, &decoded)
            .unwrap()
            .contains("not a JSON object"));
    }

    #[test]
    fn a_whole_entry_letter_decodes_as_the_entry() {
        let payload = format!(
            r#"{{"event_name":"Deposited","network":"n","event_data":[{},{}]}}"#,
            deposit_item("1"),
            deposit_item("\"bad\"")
        );
        let l = letter(None, &payload);
        let decoded = decode_letter(&l);
        assert_eq!(decoded.events.len(), 1);
        assert_eq!(decoded.dead_letters[0].item_index, Some(1));
        // The entry is applied; its bad item becomes a letter of its own.
        assert_eq!(still_failing(&l, &decoded), None);

        let broken = letter(None, "{not json");
        let reason = still_failing(&broken, &decode_letter(&broken)).unwrap();
        assert!(reason.contains("not valid JSON"), "{reason}");
        let deleted = letter(None, "");
        let reason = still_failing(&deleted, &decode_letter(&deleted)).unwrap();
        assert!(reason.contains("trimmed from the stream"), "{reason}");
    }

    #[test]
    fn payloads_are_shown_indented_exactly() {
        let shown =
            render_payload(br#"{"a":[1,{"b":"x,\"y"}],"n":123456789012345678901234567890,"e":{}}"#);
        assert_eq!(
            shown,
            "{\n  \"a\": [\n    1,\n    {\n      \"b\": \"x,\\\"y\"\n    }\n  ],\n  \"n\": 123456789012345678901234567890,\n  \"e\": {}\n}\n"
        );
        assert_eq!(render_payload(b"{not json"), "{not json");
        assert_eq!(render_payload(&[0xff, 0x01]), "(not UTF-8) 0xff01");
    }

    #[test]
    fn list_rows_are_aligned_and_reasons_cut() {
        let mut a = letter(None, "x");
        a.reason = "r".repeat(200);
        let mut b = letter(Some(12), "x");
        b.id = 1234;
        b.replayed_at = Some("2026-01-02T00:00:00Z".into());
        let out = render_list(&[a, b]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        let col = lines[0].find("stream").unwrap();
        assert_eq!(lines[1].find('s'), Some(col), "{out}");
        assert!(
            lines[1].contains('…') && lines[1].contains("pending"),
            "{out}"
        );
        assert!(lines[2].contains("replayed 2026-01-02"), "{out}");
        assert_eq!(lines[3], "2 letter(s)");
    }
}
