//! The command line, at the edge of the worker: every setting is a CLI flag
//! and an environment variable (contract §5), validated at start-up with a
//! message naming the variable, the bad value and the allowed range. Each
//! setting's name, default, range and meaning come from the `settings`
//! catalog; the `From` impls below turn the parsed arguments into the plain
//! settings structs the modules take (they never see clap nor this module).
//! The README's settings table is generated from the catalog
//! (`postgres-writer settings`) and checked by a test.

use clap::{Args, CommandFactory, Parser, Subcommand};
use std::fmt::Display;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "postgres-writer",
    version,
    about = "Intuition events from Redis streams into an exact PostgreSQL read model"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume the streams (and, unless disabled, the analytics queue).
    Run(Box<RunArgs>),
    /// Process the analytics queue only.
    Analytics(AnalyticsOnlyArgs),
    /// Apply the database migrations and exit (safe to run concurrently).
    Migrate(MigrateArgs),
    /// Ask the local worker to stop consuming, wait until it has flushed, exit (preStop hook).
    Drain(DrainArgs),
    /// Compare every derived table with its definition, pending work counted (exit 0 exact, 1 drift, 2 error, 3 pending past --max-wait, 4 newer delta format).
    Verify(VerifyArgs),
    /// Rewrite derived tables from the events in one transaction.
    Rebuild(RebuildArgs),
    /// Chain reorganisation: remove a network's events above a block and recompute what they touched.
    Rollback(RollbackArgs),
    /// Write realistic sample rindexer entries to Redis streams.
    Generate(GenerateArgs),
    /// Give parked analytics terms a fresh set of attempts (all, or the listed ones).
    Requeue(RequeueArgs),
    /// Print row counts of the read model.
    Summary(DatabaseArgs),
    /// Inspect dead letters and replay them once their cause is fixed.
    #[command(subcommand)]
    DeadLetters(DeadLettersCommand),
    /// Inspect fold deltas parked because they cannot be folded, and replay them once their cause is fixed.
    #[command(subcommand)]
    FoldDeltas(FoldDeltasCommand),
    /// Print the settings table (Markdown) documented in the README.
    Settings,
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    #[arg(
        long = settings::DATABASE_URL.flag,
        env = settings::DATABASE_URL.env,
        help = settings::DATABASE_URL.doc,
        hide_env_values = true
    )]
    pub database_url: String,
    #[arg(
        long = settings::DATABASE_CA_FILE.flag,
        env = settings::DATABASE_CA_FILE.env,
        help = settings::DATABASE_CA_FILE.doc
    )]
    pub database_ca_file: Option<PathBuf>,
    #[arg(
        long = settings::DB_POOL_MIN_CONNECTIONS.flag,
        env = settings::DB_POOL_MIN_CONNECTIONS.env,
        default_value_t = settings::DB_POOL_MIN_CONNECTIONS.default,
        help = settings::DB_POOL_MIN_CONNECTIONS.doc
    )]
    pub db_pool_min_connections: u32,
    #[arg(
        long = settings::DB_POOL_MAX_CONNECTIONS.flag,
        env = settings::DB_POOL_MAX_CONNECTIONS.env,
        default_value_t = settings::DB_POOL_MAX_CONNECTIONS.default,
        help = settings::DB_POOL_MAX_CONNECTIONS.doc
    )]
    pub db_pool_max_connections: u32,
    #[arg(
        long = settings::DB_ACQUIRE_TIMEOUT_MS.flag,
        env = settings::DB_ACQUIRE_TIMEOUT_MS.env,
        default_value_t = settings::DB_ACQUIRE_TIMEOUT_MS.default,
        help = settings::DB_ACQUIRE_TIMEOUT_MS.doc
    )]
    pub db_acquire_timeout_ms: u64,
    #[arg(
        long = settings::DB_STATEMENT_TIMEOUT_MS.flag,
        env = settings::DB_STATEMENT_TIMEOUT_MS.env,
        default_value_t = settings::DB_STATEMENT_TIMEOUT_MS.default,
        help = settings::DB_STATEMENT_TIMEOUT_MS.doc
    )]
    pub db_statement_timeout_ms: u64,
    #[arg(
        long = settings::DB_IDLE_IN_TRANSACTION_TIMEOUT_MS.flag,
        env = settings::DB_IDLE_IN_TRANSACTION_TIMEOUT_MS.env,
        default_value_t = settings::DB_IDLE_IN_TRANSACTION_TIMEOUT_MS.default,
        help = settings::DB_IDLE_IN_TRANSACTION_TIMEOUT_MS.doc
    )]
    pub db_idle_in_transaction_timeout_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[arg(
        long = settings::TERMINATION_MESSAGE_PATH.flag,
        env = settings::TERMINATION_MESSAGE_PATH.env,
        help = settings::TERMINATION_MESSAGE_PATH.doc
    )]
    pub termination_message_path: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct StreamArgs {
    #[arg(
        long = settings::REDIS_URL.flag,
        env = settings::REDIS_URL.env,
        help = settings::REDIS_URL.doc,
        default_value = settings::REDIS_URL.default.value(),
        hide_env_values = true
    )]
    pub redis_url: String,
    #[arg(
        long = settings::REDIS_CA_FILE.flag,
        env = settings::REDIS_CA_FILE.env,
        help = settings::REDIS_CA_FILE.doc
    )]
    pub redis_ca_file: Option<PathBuf>,
    #[arg(
        long = settings::REDIS_STREAMS.flag,
        env = settings::REDIS_STREAMS.env,
        help = settings::REDIS_STREAMS.doc,
        value_delimiter = ',',
        required = true
    )]
    pub redis_streams: Vec<String>,
    #[arg(
        long = settings::CONSUMER_GROUP.flag,
        env = settings::CONSUMER_GROUP.env,
        help = settings::CONSUMER_GROUP.doc,
        default_value = settings::CONSUMER_GROUP.default.value()
    )]
    pub consumer_group: String,
    #[arg(
        long = settings::CONSUMER_NAME.flag,
        env = settings::CONSUMER_NAME.env,
        help = settings::CONSUMER_NAME.doc,
        default_value_t = default_consumer_name()
    )]
    pub consumer_name: String,
    #[arg(
        long = settings::BATCH_SIZE.flag,
        env = settings::BATCH_SIZE.env,
        default_value_t = settings::BATCH_SIZE.default,
        help = settings::BATCH_SIZE.doc
    )]
    pub batch_size: usize,
    #[arg(
        long = settings::BATCH_TIMEOUT_MS.flag,
        env = settings::BATCH_TIMEOUT_MS.env,
        default_value_t = settings::BATCH_TIMEOUT_MS.default,
        help = settings::BATCH_TIMEOUT_MS.doc
    )]
    pub batch_timeout_ms: u64,
    #[arg(
        long = settings::CLAIM_IDLE_MS.flag,
        env = settings::CLAIM_IDLE_MS.env,
        default_value_t = settings::CLAIM_IDLE_MS.default,
        help = settings::CLAIM_IDLE_MS.doc
    )]
    pub claim_idle_ms: u64,
    #[arg(
        long = settings::CLAIM_INTERVAL_MS.flag,
        env = settings::CLAIM_INTERVAL_MS.env,
        default_value_t = settings::CLAIM_INTERVAL_MS.default,
        help = settings::CLAIM_INTERVAL_MS.doc
    )]
    pub claim_interval_ms: u64,
    #[arg(
        long = settings::CONSUMER_REAP_IDLE_MS.flag,
        env = settings::CONSUMER_REAP_IDLE_MS.env,
        default_value_t = settings::CONSUMER_REAP_IDLE_MS.default,
        help = settings::CONSUMER_REAP_IDLE_MS.doc
    )]
    pub consumer_reap_idle_ms: u64,
    #[arg(
        long = settings::MAX_ENTRIES_PER_SECOND.flag,
        env = settings::MAX_ENTRIES_PER_SECOND.env,
        default_value_t = settings::MAX_ENTRIES_PER_SECOND.default,
        help = settings::MAX_ENTRIES_PER_SECOND.doc
    )]
    pub max_entries_per_second: u32,
    #[arg(
        long = settings::CONSUMER_CONCURRENCY.flag,
        env = settings::CONSUMER_CONCURRENCY.env,
        default_value_t = settings::CONSUMER_CONCURRENCY.default,
        help = settings::CONSUMER_CONCURRENCY.doc
    )]
    pub consumer_concurrency: u32,
}

#[derive(Debug, Clone, Args)]
pub struct AnalyticsArgs {
    #[arg(
        long = settings::ANALYTICS_ENABLED.flag,
        env = settings::ANALYTICS_ENABLED.env,
        default_value_t = settings::ANALYTICS_ENABLED.default,
        help = settings::ANALYTICS_ENABLED.doc,
        action = clap::ArgAction::Set
    )]
    pub analytics_enabled: bool,
    #[arg(
        long = settings::ANALYTICS_CONCURRENCY.flag,
        env = settings::ANALYTICS_CONCURRENCY.env,
        default_value_t = settings::ANALYTICS_CONCURRENCY.default,
        help = settings::ANALYTICS_CONCURRENCY.doc
    )]
    pub analytics_concurrency: u32,
    #[arg(
        long = settings::ANALYTICS_BATCH_SIZE.flag,
        env = settings::ANALYTICS_BATCH_SIZE.env,
        default_value_t = settings::ANALYTICS_BATCH_SIZE.default,
        help = settings::ANALYTICS_BATCH_SIZE.doc
    )]
    pub analytics_batch_size: u32,
    #[arg(
        long = settings::ANALYTICS_POLL_INTERVAL_MS.flag,
        env = settings::ANALYTICS_POLL_INTERVAL_MS.env,
        default_value_t = settings::ANALYTICS_POLL_INTERVAL_MS.default,
        help = settings::ANALYTICS_POLL_INTERVAL_MS.doc
    )]
    pub analytics_poll_interval_ms: u64,
    #[arg(
        long = settings::ANALYTICS_MAX_ATTEMPTS.flag,
        env = settings::ANALYTICS_MAX_ATTEMPTS.env,
        default_value_t = settings::ANALYTICS_MAX_ATTEMPTS.default,
        help = settings::ANALYTICS_MAX_ATTEMPTS.doc
    )]
    pub analytics_max_attempts: u32,
    #[arg(
        long = settings::ANALYTICS_BACKOFF_BASE_MS.flag,
        env = settings::ANALYTICS_BACKOFF_BASE_MS.env,
        default_value_t = settings::ANALYTICS_BACKOFF_BASE_MS.default,
        help = settings::ANALYTICS_BACKOFF_BASE_MS.doc
    )]
    pub analytics_backoff_base_ms: u64,
    #[arg(
        long = settings::ANALYTICS_BACKOFF_MAX_MS.flag,
        env = settings::ANALYTICS_BACKOFF_MAX_MS.env,
        default_value_t = settings::ANALYTICS_BACKOFF_MAX_MS.default,
        help = settings::ANALYTICS_BACKOFF_MAX_MS.doc
    )]
    pub analytics_backoff_max_ms: u64,
    #[arg(
        long = settings::ANALYTICS_MAX_TERMS_PER_SECOND.flag,
        env = settings::ANALYTICS_MAX_TERMS_PER_SECOND.env,
        default_value_t = settings::ANALYTICS_MAX_TERMS_PER_SECOND.default,
        help = settings::ANALYTICS_MAX_TERMS_PER_SECOND.doc
    )]
    pub analytics_max_terms_per_second: u32,
    #[arg(
        long = settings::ANALYTICS_CLAIM_LEASE_MS.flag,
        env = settings::ANALYTICS_CLAIM_LEASE_MS.env,
        default_value_t = settings::ANALYTICS_CLAIM_LEASE_MS.default,
        help = settings::ANALYTICS_CLAIM_LEASE_MS.doc
    )]
    pub analytics_claim_lease_ms: u64,
    #[arg(
        long = settings::ANALYTICS_COALESCE_MS.flag,
        env = settings::ANALYTICS_COALESCE_MS.env,
        default_value_t = settings::ANALYTICS_COALESCE_MS.default,
        help = settings::ANALYTICS_COALESCE_MS.doc
    )]
    pub analytics_coalesce_ms: u64,
}

/// The fold loop of `run` (ADR 0015).
#[derive(Debug, Clone, Args)]
pub struct FoldArgs {
    #[arg(
        long = settings::FOLD_INTERVAL_MS.flag,
        env = settings::FOLD_INTERVAL_MS.env,
        default_value_t = settings::FOLD_INTERVAL_MS.default,
        help = settings::FOLD_INTERVAL_MS.doc
    )]
    pub fold_interval_ms: u64,
    #[arg(
        long = settings::FOLD_POLL_INTERVAL_MS.flag,
        env = settings::FOLD_POLL_INTERVAL_MS.env,
        default_value_t = settings::FOLD_POLL_INTERVAL_MS.default,
        help = settings::FOLD_POLL_INTERVAL_MS.doc
    )]
    pub fold_poll_interval_ms: u64,
    #[arg(
        long = settings::FOLD_MAX_PARTITIONS.flag,
        env = settings::FOLD_MAX_PARTITIONS.env,
        default_value_t = settings::FOLD_MAX_PARTITIONS.default,
        help = settings::FOLD_MAX_PARTITIONS.doc
    )]
    pub fold_max_partitions: u32,
    #[arg(
        long = settings::FOLD_MAX_DELTAS.flag,
        env = settings::FOLD_MAX_DELTAS.env,
        default_value_t = settings::FOLD_MAX_DELTAS.default,
        help = settings::FOLD_MAX_DELTAS.doc
    )]
    pub fold_max_deltas: u32,
}

impl FoldArgs {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        check(&settings::FOLD_INTERVAL_MS, self.fold_interval_ms)?;
        check(&settings::FOLD_POLL_INTERVAL_MS, self.fold_poll_interval_ms)?;
        check(&settings::FOLD_MAX_PARTITIONS, self.fold_max_partitions)?;
        check(&settings::FOLD_MAX_DELTAS, self.fold_max_deltas)
    }
}

#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    #[arg(
        long = settings::HTTP_PORT.flag,
        env = settings::HTTP_PORT.env,
        default_value_t = settings::HTTP_PORT.default,
        help = settings::HTTP_PORT.doc
    )]
    pub http_port: u32,
    #[arg(
        long = settings::HTTP_BIND_ADDRESS.flag,
        env = settings::HTTP_BIND_ADDRESS.env,
        help = settings::HTTP_BIND_ADDRESS.doc,
        default_value = settings::HTTP_BIND_ADDRESS.default.value()
    )]
    pub http_bind_address: std::net::IpAddr,
    #[arg(
        long = settings::DRAIN_TIMEOUT_MS.flag,
        env = settings::DRAIN_TIMEOUT_MS.env,
        default_value_t = settings::DRAIN_TIMEOUT_MS.default,
        help = settings::DRAIN_TIMEOUT_MS.doc
    )]
    pub drain_timeout_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub streams: StreamArgs,
    #[command(flatten)]
    pub analytics: AnalyticsArgs,
    #[command(flatten)]
    pub fold: FoldArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub telemetry: telemetry::TelemetryArgs,
}

#[derive(Debug, Clone, Args)]
pub struct AnalyticsOnlyArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub analytics: AnalyticsArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub telemetry: telemetry::TelemetryArgs,
}

#[derive(Debug, Clone, Args)]
pub struct DrainArgs {
    #[arg(
        long = settings::HTTP_PORT.flag,
        env = settings::HTTP_PORT.env,
        default_value_t = settings::HTTP_PORT.default,
        help = settings::HTTP_PORT.doc
    )]
    pub http_port: u32,
    #[arg(
        long = settings::DRAIN_TIMEOUT_MS.flag,
        env = settings::DRAIN_TIMEOUT_MS.env,
        default_value_t = settings::DRAIN_TIMEOUT_MS.default,
        help = settings::DRAIN_TIMEOUT_MS.doc
    )]
    pub drain_timeout_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Differences printed per table.
    #[arg(long, default_value_t = 10)]
    pub show: i64,
    /// For alerting: after comparing, wait up to this many seconds for the work pending in the compared snapshot (unfolded deltas, queued analytics terms) to be done; exit 3 ("pending, not drift") if it is not.
    #[arg(long, value_name = "SECONDS")]
    pub max_wait: Option<u64>,
}

impl VerifyArgs {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        self.database.validate()?;
        if let Some(seconds) = self.max_wait {
            in_range("--max-wait", "max-wait", seconds, 0..=86_400)?;
        }
        in_range("--show", "show", self.show, 0..=1_000_000)
    }
}

#[derive(Debug, Subcommand)]
pub enum FoldDeltasCommand {
    /// List parked fold deltas with their reasons, oldest first.
    List(FoldDeltasListArgs),
    /// Move parked fold deltas back to be folded (all, or the given ids); one that still cannot be folded is parked again (exit 2).
    Replay(FoldDeltasReplayArgs),
}

#[derive(Debug, Clone, Args)]
pub struct FoldDeltasListArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Most deltas listed.
    #[arg(long, default_value_t = 100)]
    pub limit: i64,
}

#[derive(Debug, Clone, Args)]
pub struct FoldDeltasReplayArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Only these delta ids (repeatable); all parked deltas when none is given.
    #[arg(long = "id")]
    pub ids: Vec<i64>,
}

#[derive(Debug, Clone, Args)]
pub struct RebuildArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Rebuild only the analytics tables.
    #[arg(long)]
    pub analytics_only: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Network whose events are rolled back (as in transaction_information.network).
    #[arg(long)]
    pub network: String,
    /// Keep events up to and including this block; remove the ones above it.
    #[arg(long)]
    pub to_block: i64,
}

#[derive(Debug, Clone, Args)]
pub struct RequeueArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Term ids to requeue (default: every parked term).
    #[arg(long = "term")]
    pub terms: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    #[arg(
        long = settings::REDIS_URL.flag,
        env = settings::REDIS_URL.env,
        help = settings::REDIS_URL.doc,
        default_value = settings::REDIS_URL.default.value(),
        hide_env_values = true
    )]
    pub redis_url: String,
    #[arg(
        long = settings::REDIS_CA_FILE.flag,
        env = settings::REDIS_CA_FILE.env,
        help = settings::REDIS_CA_FILE.doc
    )]
    pub redis_ca_file: Option<PathBuf>,
    /// Prefix of the generated streams (`<prefix>_atom_created`, `<prefix>_deposited`, …).
    #[arg(long, default_value = "intuition_testnet")]
    pub stream_prefix: String,
    /// Number of events to generate.
    #[arg(long, default_value_t = 10_000)]
    pub events: u64,
    /// Events per stream entry (rindexer batches several events in one entry).
    #[arg(long, default_value_t = 10)]
    pub events_per_entry: u32,
    /// Random seed (the same seed gives the same events).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Number of distinct accounts.
    #[arg(long, default_value_t = 50)]
    pub accounts: u32,
    /// Number of bonding curves.
    #[arg(long, default_value_t = 2)]
    pub curves: u32,
    /// Network name written into the events.
    #[arg(long, default_value = "intuition-testnet")]
    pub network: String,
}

#[derive(Debug, Clone, Subcommand)]
pub enum DeadLettersCommand {
    /// List dead letters, newest first.
    List(DeadLetterListArgs),
    /// Show one dead letter in full, its payload included.
    Show(DeadLetterShowArgs),
    /// Send dead letters back through decode and the write path, one transaction each (exit 2 if any fails again).
    Replay(DeadLetterReplayArgs),
}

/// Which dead letters a command works on (every given filter must match).
#[derive(Debug, Clone, Args)]
pub struct DeadLetterFilterArgs {
    /// Only these letter ids (repeatable).
    #[arg(long = "id")]
    pub ids: Vec<i64>,
    /// Only letters of this stream.
    #[arg(long)]
    pub stream: Option<String>,
    /// Only letters whose reason contains this text (case-insensitive).
    #[arg(long)]
    pub reason_contains: Option<String>,
}

impl DeadLetterFilterArgs {
    pub fn filter(&self) -> crate::dead_letters::Filter {
        crate::dead_letters::Filter {
            ids: self.ids.clone(),
            stream: self.stream.clone(),
            reason_contains: self.reason_contains.clone(),
        }
    }
}

/// Which letters `dead-letters list` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeadLetterStatus {
    /// Not replayed yet.
    Pending,
    /// Replayed successfully.
    Replayed,
    /// Both.
    All,
}

impl From<DeadLetterStatus> for crate::dead_letters::Status {
    fn from(status: DeadLetterStatus) -> Self {
        match status {
            DeadLetterStatus::Pending => Self::Pending,
            DeadLetterStatus::Replayed => Self::Replayed,
            DeadLetterStatus::All => Self::All,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct DeadLetterListArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub filter: DeadLetterFilterArgs,
    /// Which letters: not yet replayed, replayed, or both.
    #[arg(long, value_enum, default_value = "all")]
    pub status: DeadLetterStatus,
    /// Most letters listed.
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
}

impl DeadLetterListArgs {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        self.database.validate()?;
        in_range("limit", "limit", self.limit, 1..=1_000_000)
    }
}

#[derive(Debug, Clone, Args)]
pub struct DeadLetterShowArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The letter's id (first column of `dead-letters list`).
    pub id: i64,
}

#[derive(Debug, Clone, Args)]
pub struct DeadLetterReplayArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub filter: DeadLetterFilterArgs,
    /// Decode and write each letter in a transaction that is rolled back: reports what would happen, writes nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Why the letters are replayed, kept with each letter for audit.
    #[arg(long)]
    pub note: Option<String>,
}

fn default_consumer_name() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| format!("postgres-writer-{}", std::process::id()))
}

mod validate;
pub use validate::InvalidSetting;
use validate::*;

impl From<&DatabaseArgs> for crate::db::DatabaseSettings {
    fn from(a: &DatabaseArgs) -> Self {
        Self {
            url: a.database_url.clone(),
            ca_file: a.database_ca_file.clone(),
            min_connections: a.db_pool_min_connections,
            max_connections: a.db_pool_max_connections,
            acquire_timeout: Duration::from_millis(a.db_acquire_timeout_ms),
            statement_timeout_ms: a.db_statement_timeout_ms,
            idle_in_transaction_timeout_ms: a.db_idle_in_transaction_timeout_ms,
        }
    }
}

impl From<&StreamArgs> for crate::intake::StreamSettings {
    fn from(a: &StreamArgs) -> Self {
        Self {
            redis_url: a.redis_url.clone(),
            redis_ca_file: a.redis_ca_file.clone(),
            redis_streams: a.redis_streams.clone(),
            consumer_group: a.consumer_group.clone(),
            consumer_name: a.consumer_name.clone(),
            batch_size: a.batch_size,
            batch_timeout_ms: a.batch_timeout_ms,
            claim_idle_ms: a.claim_idle_ms,
            claim_interval_ms: a.claim_interval_ms,
            consumer_reap_idle_ms: a.consumer_reap_idle_ms,
            max_entries_per_second: a.max_entries_per_second,
            sibling_consumers: Vec::new(),
        }
    }
}

impl From<&AnalyticsArgs> for crate::analytics::AnalyticsSettings {
    fn from(a: &AnalyticsArgs) -> Self {
        Self {
            batch_size: i64::from(a.analytics_batch_size),
            poll_interval: Duration::from_millis(a.analytics_poll_interval_ms),
            max_attempts: a.analytics_max_attempts as i32,
            backoff_base: Duration::from_millis(a.analytics_backoff_base_ms),
            backoff_max: Duration::from_millis(a.analytics_backoff_max_ms),
            max_terms_per_second: a.analytics_max_terms_per_second,
            claim_lease: Duration::from_millis(a.analytics_claim_lease_ms),
            coalesce: Duration::from_millis(a.analytics_coalesce_ms),
        }
    }
}

impl From<&FoldArgs> for crate::fold::FoldSettings {
    fn from(a: &FoldArgs) -> Self {
        Self {
            interval: Duration::from_millis(a.fold_interval_ms),
            poll_interval: Duration::from_millis(a.fold_poll_interval_ms),
            max_partitions: i64::from(a.fold_max_partitions),
            max_deltas: i64::from(a.fold_max_deltas),
        }
    }
}

/// Hides the password of a URL in messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &credentials[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// The Markdown table of every setting: the catalog ([`settings::ALL`]),
/// with the subcommands whose arguments read each variable.
pub fn settings_table() -> String {
    let command = Cli::command();
    let mut out =
        String::from("| variable | flag | default | meaning | read by |\n|---|---|---|---|---|\n");
    for setting in settings::ALL {
        let flag = setting
            .flag()
            .map(|flag| format!("`--{flag}`"))
            .unwrap_or_default();
        let mut readers: Vec<&str> = command
            .get_subcommands()
            .filter(|sub| {
                // `dead-letters list|show|replay` read their settings as `dead-letters`.
                let nested = sub.get_subcommands().flat_map(|s| s.get_arguments());
                sub.get_arguments()
                    .chain(nested)
                    .any(|arg| arg.get_env().is_some_and(|env| env == setting.env()))
            })
            .map(|sub| sub.get_name())
            .collect();
        if setting.flag().is_none() {
            readers.push("all"); // read by the log subscriber of every command
        }
        out.push_str(&format!(
            "| `{}` | {flag} | {} | {} | {} |\n",
            setting.env(),
            setting.default_shown(),
            setting.doc(),
            readers.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests;
