//! Stream intake: consumer groups on the configured Redis streams (contract §4).
//!
//! Groups are created at the start of each stream (`0`) so entries written
//! before the first start are processed. A restarted consumer first re-reads
//! its own pending entries; entries pending on a dead consumer are taken over
//! with XAUTOCLAIM after a configurable idle time. Acks happen only after the
//! caller has committed the batch.
//!
//! A group can vanish under a running worker (a Redis restart without
//! persistence, XGROUP DESTROY, DEL of the stream): reads then fail with
//! NOGROUP, and the caller recreates it with `ensure_groups`, at `0` again.
//! Consumers of pods that are gone are removed once they hold no entries.

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// One raw stream entry.
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub stream: Arc<str>,
    pub id: Arc<str>,
    /// Empty for a pending entry the stream no longer holds ([`Self::is_trimmed`]).
    pub fields: Vec<(String, Vec<u8>)>,
}

impl RawEntry {
    /// A pending entry trimmed from the stream (XTRIM, MAXLEN, XDEL) before
    /// the group acknowledged it: Redis still lists its id but no longer has
    /// its fields. (XADD needs at least one field, so a held entry has some.)
    /// Own and claimed ones are returned alike and get one policy, in the
    /// pipeline (ADR 0013).
    pub fn is_trimmed(&self) -> bool {
        self.fields.is_empty()
    }

    fn trimmed(stream: &Arc<str>, id: &str) -> RawEntry {
        RawEntry {
            stream: stream.clone(),
            id: Arc::from(id),
            fields: Vec::new(),
        }
    }
}

/// An entry the group has delivered and nobody has acknowledged yet, with the
/// consumer holding it ([`StreamIntake::first_pending_before`]).
#[derive(Debug, Clone)]
pub struct PendingEntry {
    pub id: String,
    pub consumer: String,
    pub idle: Duration,
}

/// Per-stream backlog as reported by XINFO GROUPS.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StreamBacklog {
    pub stream: String,
    /// Entries not yet delivered to the group (None when Redis cannot tell).
    pub lag: Option<u64>,
    /// Entries delivered but not acknowledged.
    pub pending: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("Redis error")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Client(#[from] crate::tls::RedisClientError),
    #[error("unexpected Redis reply to {command}: {detail}")]
    Reply {
        command: &'static str,
        detail: String,
    },
}

impl IntakeError {
    /// The consumer group (or its stream) no longer exists: NOGROUP, or
    /// UNBLOCKED for a blocked read whose stream was deleted.
    pub fn group_lost(&self) -> bool {
        match self {
            IntakeError::Redis(e) => matches!(e.code(), Some("NOGROUP" | "UNBLOCKED")),
            IntakeError::Client(_) | IntakeError::Reply { .. } => false,
        }
    }
}

/// Removes idle consumers without pending entries, atomically (see the script).
const REMOVE_IDLE_CONSUMERS: &str = include_str!("lua/remove_idle_consumers.lua");

/// Where a read starts: this consumer's own pending entries, or new entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    OwnPending,
    New,
}

pub struct StreamIntake {
    client: Client,
    /// Used for blocking XREADGROUP only (a blocking call holds a multiplexed connection).
    reader: Option<MultiplexedConnection>,
    /// Acks, claims and introspection.
    commands: Option<MultiplexedConnection>,
    streams: Vec<Arc<str>>,
    group: String,
    consumer: String,
    batch_size: usize,
    block: Duration,
}

/// Where a consumer reads and how (the REDIS_*, CONSUMER_*, BATCH_*, CLAIM_*
/// and MAX_ENTRIES_PER_SECOND settings, built from the command line by `config`).
#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub redis_url: String,
    /// CA of Redis's TLS certificate (with a `rediss://` URL).
    pub redis_ca_file: Option<PathBuf>,
    pub redis_streams: Vec<String>,
    pub consumer_group: String,
    pub consumer_name: String,
    /// Entries read per stream and call (one batch, one transaction).
    pub batch_size: usize,
    pub batch_timeout_ms: u64,
    /// Idle time after which another consumer's pending entries are taken over.
    pub claim_idle_ms: u64,
    pub claim_interval_ms: u64,
    /// Idle time after which an empty consumer of the group is removed (0 = never).
    pub consumer_reap_idle_ms: u64,
    /// 0 = unlimited.
    pub max_entries_per_second: u32,
    /// The consumer names of this process's other loops: never removed as idle
    /// (a loop that got nothing for a while still counts as idle on Redis < 7.2).
    pub sibling_consumers: Vec<String>,
}

impl StreamIntake {
    /// The intake of the consumer settings (TLS included).
    pub fn open(args: &StreamSettings) -> Result<Self, IntakeError> {
        let client = crate::tls::redis_client(&args.redis_url, args.redis_ca_file.as_deref())?;
        Ok(Self::with_client(
            client,
            &args.redis_streams,
            &args.consumer_group,
            &args.consumer_name,
            args.batch_size,
            Duration::from_millis(args.batch_timeout_ms),
        ))
    }

    /// An intake without a CA file (plain or public-CA TLS URLs).
    pub fn new(
        redis_url: &str,
        streams: &[String],
        group: &str,
        consumer: &str,
        batch_size: usize,
        block: Duration,
    ) -> Result<Self, IntakeError> {
        let client = crate::tls::redis_client(redis_url, None)?;
        Ok(Self::with_client(
            client, streams, group, consumer, batch_size, block,
        ))
    }

    fn with_client(
        client: Client,
        streams: &[String],
        group: &str,
        consumer: &str,
        batch_size: usize,
        block: Duration,
    ) -> Self {
        Self {
            client,
            reader: None,
            commands: None,
            streams: streams.iter().map(|s| Arc::from(s.as_str())).collect(),
            group: group.to_string(),
            consumer: consumer.to_string(),
            batch_size,
            block,
        }
    }

    pub fn streams(&self) -> &[Arc<str>] {
        &self.streams
    }

    async fn connect(
        &self,
        response_timeout: Duration,
    ) -> Result<MultiplexedConnection, IntakeError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(response_timeout));
        Ok(self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }

    async fn commands(&mut self) -> Result<MultiplexedConnection, IntakeError> {
        if self.commands.is_none() {
            self.commands = Some(self.connect(Duration::from_secs(10)).await?);
        }
        Ok(self.commands.clone().expect("connected above"))
    }

    /// Forgets connections after an error so the next call reconnects.
    fn reset_on_error<T>(&mut self, result: Result<T, IntakeError>) -> Result<T, IntakeError> {
        if result.is_err() {
            self.reader = None;
            self.commands = None;
        }
        result
    }

    /// Creates the consumer group on every stream (at id 0, creating the stream
    /// if needed); an existing group is left as it is. Returns the streams
    /// whose group was created.
    pub async fn ensure_groups(&mut self) -> Result<Vec<Arc<str>>, IntakeError> {
        let result = async {
            let mut con = self.commands().await?;
            let mut created_on = Vec::new();
            for stream in &self.streams {
                let created: redis::RedisResult<Value> = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&**stream)
                    .arg(&self.group)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async(&mut con)
                    .await;
                match created {
                    Ok(_) => {
                        tracing::info!(stream = %stream, group = %self.group, "created consumer group at 0");
                        created_on.push(stream.clone());
                    }
                    Err(e) if e.code() == Some("BUSYGROUP") => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(created_on)
        }
        .await;
        self.reset_on_error(result)
    }

    /// Reads up to `batch_size` entries per stream. `New` blocks for at most
    /// the batch timeout; `OwnPending` returns this consumer's unacknowledged
    /// entries (after a restart) without blocking.
    pub async fn read(&mut self, from: ReadFrom) -> Result<Vec<RawEntry>, IntakeError> {
        let result = async {
            if self.reader.is_none() {
                self.reader = Some(self.connect(self.block + Duration::from_secs(10)).await?);
            }
            let mut con = self.reader.clone().expect("connected above");
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(&self.group)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(self.batch_size);
            if from == ReadFrom::New {
                cmd.arg("BLOCK").arg(self.block.as_millis() as u64);
            }
            cmd.arg("STREAMS");
            for stream in &self.streams {
                cmd.arg(&**stream);
            }
            let id = if from == ReadFrom::New { ">" } else { "0" };
            for _ in &self.streams {
                cmd.arg(id);
            }
            let reply: Value = cmd.query_async(&mut con).await?;
            parse_read_reply(reply)
        }
        .await;
        self.reset_on_error(result)
    }

    /// Takes over entries idle for at least `min_idle` on any consumer of the
    /// group (dead pods), up to `batch_size` per stream. Entries trimmed from
    /// the stream while pending are returned without fields
    /// ([`RawEntry::is_trimmed`]), as a read of this consumer's own pending
    /// entries returns them, so that both get the same policy.
    pub async fn claim_stale(&mut self, min_idle: Duration) -> Result<Vec<RawEntry>, IntakeError> {
        let result = async {
            let mut con = self.commands().await?;
            let mut claimed = Vec::new();
            for stream in self.streams.clone() {
                let reply: Value = redis::cmd("XAUTOCLAIM")
                    .arg(&*stream)
                    .arg(&self.group)
                    .arg(&self.consumer)
                    .arg(min_idle.as_millis() as u64)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(self.batch_size)
                    .query_async(&mut con)
                    .await?;
                let (entries, deleted) = parse_autoclaim_reply(&stream, reply)?;
                claimed.extend(entries);
                claimed.extend(deleted.iter().map(|id| RawEntry::trimmed(&stream, id)));
            }
            Ok(claimed)
        }
        .await;
        self.reset_on_error(result)
    }

    /// Removes the group's consumers that hold no pending entries and have
    /// been idle for at least `min_idle` (pods that are gone), never this
    /// consumer nor those named in `keep`; returns (stream, consumer) of each
    /// one removed.
    pub async fn remove_idle_consumers(
        &mut self,
        min_idle: Duration,
        keep: &[String],
    ) -> Result<Vec<(Arc<str>, String)>, IntakeError> {
        let result = async {
            let mut con = self.commands().await?;
            let mut removed = Vec::new();
            for stream in &self.streams {
                let names: Vec<String> = redis::cmd("EVAL")
                    .arg(REMOVE_IDLE_CONSUMERS)
                    .arg(1)
                    .arg(&**stream)
                    .arg(&self.group)
                    .arg(min_idle.as_millis() as u64)
                    .arg(&self.consumer)
                    .arg(keep)
                    .query_async(&mut con)
                    .await?;
                removed.extend(names.into_iter().map(|n| (stream.clone(), n)));
            }
            Ok(removed)
        }
        .await;
        self.reset_on_error(result)
    }

    /// Acknowledges entries (call only after their transaction committed).
    pub async fn ack(&mut self, entries: &[(Arc<str>, Arc<str>)]) -> Result<(), IntakeError> {
        let result = async {
            let mut con = self.commands().await?;
            for stream in &self.streams {
                let ids: Vec<&str> = entries
                    .iter()
                    .filter(|(s, _)| s == stream)
                    .map(|(_, id)| &**id)
                    .collect();
                if !ids.is_empty() {
                    self.ack_with(&mut con, stream, &ids).await?;
                }
            }
            Ok(())
        }
        .await;
        self.reset_on_error(result)
    }

    async fn ack_with(
        &self,
        con: &mut MultiplexedConnection,
        stream: &str,
        ids: &[&str],
    ) -> Result<(), IntakeError> {
        let _: i64 = redis::cmd("XACK")
            .arg(stream)
            .arg(&self.group)
            .arg(ids)
            .query_async(con)
            .await?;
        Ok(())
    }

    /// The first entry of `stream` before `entry_id` that the group has
    /// delivered but nobody has acknowledged (a reorg notice waits for it,
    /// ADR 0018).
    pub async fn first_pending_before(
        &mut self,
        stream: &str,
        entry_id: &str,
    ) -> Result<Option<PendingEntry>, IntakeError> {
        let result = async {
            let mut con = self.commands().await?;
            let reply: Value = redis::cmd("XPENDING")
                .arg(stream)
                .arg(&self.group)
                .arg("-")
                .arg(format!("({entry_id}"))
                .arg(1)
                .query_async(&mut con)
                .await?;
            parse_first_pending(reply)
        }
        .await;
        self.reset_on_error(result)
    }

    /// Lag and pending count of the group on each stream.
    pub async fn backlog(&mut self) -> Result<Vec<StreamBacklog>, IntakeError> {
        let result = async {
            let mut con = self.commands().await?;
            let mut out = Vec::new();
            for stream in &self.streams {
                let reply: Value = redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&**stream)
                    .query_async(&mut con)
                    .await?;
                let (mut backlog, last_delivered) = parse_group_info(stream, &self.group, reply);
                if backlog.lag.is_none() {
                    // Redis cannot always count the lag (e.g. after entries were
                    // deleted or a restart); it is 0 when nothing is undelivered.
                    let info: Value = redis::cmd("XINFO")
                        .arg("STREAM")
                        .arg(&**stream)
                        .query_async(&mut con)
                        .await?;
                    let last_generated = pairs(info)
                        .into_iter()
                        .find(|(k, _)| text(k).as_deref() == Some("last-generated-id"))
                        .and_then(|(_, v)| text(&v));
                    if last_generated.is_some() && last_generated == last_delivered {
                        backlog.lag = Some(0);
                    }
                }
                out.push(backlog);
            }
            Ok(out)
        }
        .await;
        self.reset_on_error(result)
    }

    /// PING on the command connection.
    pub async fn ping(&mut self) -> Result<(), IntakeError> {
        let result = async {
            let mut con = self.commands().await?;
            let _: String = redis::cmd("PING").query_async(&mut con).await?;
            Ok(())
        }
        .await;
        self.reset_on_error(result)
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn bytes(value: Value) -> Vec<u8> {
    match value {
        Value::BulkString(bytes) => bytes,
        Value::SimpleString(s) => s.into_bytes(),
        Value::VerbatimString { text, .. } => text.into_bytes(),
        Value::Int(i) => i.to_string().into_bytes(),
        _ => Vec::new(),
    }
}

fn pairs(value: Value) -> Vec<(Value, Value)> {
    match value {
        Value::Map(map) => map,
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len() / 2);
            let mut iter = items.into_iter();
            while let (Some(k), Some(v)) = (iter.next(), iter.next()) {
                out.push((k, v));
            }
            out
        }
        _ => Vec::new(),
    }
}

fn reply_error(command: &'static str, detail: impl Into<String>) -> IntakeError {
    IntakeError::Reply {
        command,
        detail: detail.into(),
    }
}

/// Parses `[id, [field, value, …]]` items; an item whose fields are nil (an
/// entry trimmed while pending: XREADGROUP of pending entries, XAUTOCLAIM
/// before Redis 7) is returned with no fields.
fn parse_entries(
    stream: &Arc<str>,
    items: Value,
    command: &'static str,
) -> Result<Vec<RawEntry>, IntakeError> {
    let Value::Array(items) = items else {
        return Err(reply_error(command, "entry list is not an array"));
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(mut parts) = item else {
            return Err(reply_error(command, "entry is not an array"));
        };
        if parts.len() != 2 {
            return Err(reply_error(
                command,
                format!("entry has {} parts", parts.len()),
            ));
        }
        let fields_value = parts.pop().expect("two parts");
        let id = text(&parts[0]).ok_or_else(|| reply_error(command, "entry id is not a string"))?;
        let fields = pairs(fields_value)
            .into_iter()
            .map(|(k, v)| (text(&k).unwrap_or_default(), bytes(v)))
            .collect();
        out.push(RawEntry {
            stream: stream.clone(),
            id: Arc::from(id.as_str()),
            fields,
        });
    }
    Ok(out)
}

fn parse_read_reply(reply: Value) -> Result<Vec<RawEntry>, IntakeError> {
    if matches!(reply, Value::Nil) {
        return Ok(Vec::new());
    }
    let streams: Vec<(Value, Value)> = match reply {
        Value::Map(map) => map,
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::Array(mut kv) if kv.len() == 2 => {
                    let v = kv.pop().expect("two");
                    let k = kv.pop().expect("two");
                    Ok((k, v))
                }
                _ => Err(reply_error(
                    "XREADGROUP",
                    "stream reply is not [name, entries]",
                )),
            })
            .collect::<Result<_, _>>()?,
        other => return Err(reply_error("XREADGROUP", format!("{other:?}"))),
    };
    let mut out = Vec::new();
    for (name, entries) in streams {
        let name: Arc<str> = Arc::from(text(&name).unwrap_or_default().as_str());
        out.extend(parse_entries(&name, entries, "XREADGROUP")?);
    }
    Ok(out)
}

fn parse_autoclaim_reply(
    stream: &Arc<str>,
    reply: Value,
) -> Result<(Vec<RawEntry>, Vec<String>), IntakeError> {
    let Value::Array(mut parts) = reply else {
        return Err(reply_error("XAUTOCLAIM", "reply is not an array"));
    };
    if parts.len() < 2 {
        return Err(reply_error("XAUTOCLAIM", "reply too short"));
    }
    let deleted = if parts.len() >= 3 {
        match parts.remove(2) {
            Value::Array(ids) => ids.iter().filter_map(text).collect(),
            _ => Vec::new(),
        }
    } else {
        Vec::new()
    };
    let entries = parse_entries(stream, parts.remove(1), "XAUTOCLAIM")?;
    // Redis 6.2 reports deleted entries with nil fields instead.
    let (present, nil): (Vec<RawEntry>, Vec<RawEntry>) =
        entries.into_iter().partition(|e| !e.fields.is_empty());
    let mut deleted = deleted;
    deleted.extend(nil.into_iter().map(|e| e.id.to_string()));
    Ok((present, deleted))
}

/// The first `[id, consumer, idle ms, deliveries]` of an extended XPENDING reply.
fn parse_first_pending(reply: Value) -> Result<Option<PendingEntry>, IntakeError> {
    let Value::Array(items) = reply else {
        return Err(reply_error("XPENDING", "reply is not an array"));
    };
    let Some(Value::Array(fields)) = items.into_iter().next() else {
        return Ok(None);
    };
    match fields.as_slice() {
        [id, consumer, idle, ..] => Ok(Some(PendingEntry {
            id: text(id).unwrap_or_default(),
            consumer: text(consumer).unwrap_or_default(),
            idle: Duration::from_millis(text(idle).and_then(|i| i.parse().ok()).unwrap_or(0)),
        })),
        _ => Err(reply_error(
            "XPENDING",
            "pending entry has fewer than 3 fields",
        )),
    }
}

/// The group's backlog and its last-delivered-id.
fn parse_group_info(stream: &str, group: &str, reply: Value) -> (StreamBacklog, Option<String>) {
    let mut backlog = StreamBacklog {
        stream: stream.to_string(),
        ..Default::default()
    };
    let mut last_delivered = None;
    let groups = match reply {
        Value::Array(groups) => groups,
        _ => return (backlog, None),
    };
    for info in groups {
        let fields: Vec<(String, Value)> = pairs(info)
            .into_iter()
            .filter_map(|(k, v)| text(&k).map(|k| (k, v)))
            .collect();
        let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        if get("name").and_then(text).as_deref() != Some(group) {
            continue;
        }
        backlog.pending = get("pending")
            .and_then(text)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        backlog.lag = get("lag").and_then(text).and_then(|s| s.parse().ok());
        last_delivered = get("last-delivered-id").and_then(text);
    }
    (backlog, last_delivered)
}
