//! Settings: every setting is a CLI flag and an environment variable (contract §5),
//! validated at start-up with a message naming the variable, the bad value and
//! the allowed range. The README's settings table is generated from these
//! definitions (`postgres-writer settings`) and checked by a test.

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
    /// PostgreSQL URL; TLS per its `sslmode` (disable, prefer, require, verify-ca, verify-full) and `sslrootcert`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// PEM file of the CA that signed PostgreSQL's certificate (needs sslmode=verify-ca or verify-full); the operator mounts it from `spec.database.caSecretRef`.
    #[arg(long, env = "DATABASE_CA_FILE")]
    pub database_ca_file: Option<PathBuf>,
    /// Connections the pool keeps open.
    #[arg(long, env = "DB_POOL_MIN_CONNECTIONS", default_value_t = 1)]
    pub db_pool_min_connections: u32,
    /// Largest number of pooled connections.
    #[arg(long, env = "DB_POOL_MAX_CONNECTIONS", default_value_t = 10)]
    pub db_pool_max_connections: u32,
    /// Longest wait for a pooled connection, in milliseconds.
    #[arg(long, env = "DB_ACQUIRE_TIMEOUT_MS", default_value_t = 30_000)]
    pub db_acquire_timeout_ms: u64,
    /// Longest statement (and lock wait) of `run` and `analytics`, in milliseconds: with DB_IDLE_IN_TRANSACTION_TIMEOUT_MS and TCP keepalives it bounds how long a worker's transaction can hold row locks, fold partitions or analytics claims (ADR 0019); commands, which scan whole tables, do not apply it.
    #[arg(long, env = "DB_STATEMENT_TIMEOUT_MS", default_value_t = 20_000)]
    pub db_statement_timeout_ms: u64,
    /// Longest time a session may sit idle inside a transaction, in milliseconds, before PostgreSQL ends it and releases its locks (a frozen or partitioned worker; ADR 0019).
    #[arg(
        long,
        env = "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub db_idle_in_transaction_timeout_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// File that receives `schema version N` once the migrations are applied; the operator's migration Job sets it to the container's terminationMessagePath and reports N in `status.schemaVersion`.
    #[arg(long, env = "TERMINATION_MESSAGE_PATH")]
    pub termination_message_path: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct StreamArgs {
    /// Redis URL; `rediss://` for TLS.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,
    /// PEM file of the CA that signed Redis's certificate (needs a rediss:// URL); the operator mounts it from `spec.redis.caSecretRef`.
    #[arg(long, env = "REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
    /// Comma-separated stream names.
    #[arg(long, env = "REDIS_STREAMS", value_delimiter = ',', required = true)]
    pub redis_streams: Vec<String>,
    /// Consumer group (created at the start of each stream if missing).
    #[arg(long, env = "CONSUMER_GROUP", default_value = "postgres-writer")]
    pub consumer_group: String,
    /// This consumer's name; must be unique and stable per pod (the pod name).
    #[arg(long, env = "CONSUMER_NAME", default_value_t = default_consumer_name())]
    pub consumer_name: String,
    /// Entries read per stream and call; one batch is written in one transaction.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 300)]
    pub batch_size: usize,
    /// Longest wait for a batch to fill, in milliseconds.
    #[arg(long, env = "BATCH_TIMEOUT_MS", default_value_t = 1_000)]
    pub batch_timeout_ms: u64,
    /// Idle time after which another consumer's pending entries are taken over, in milliseconds.
    #[arg(long, env = "CLAIM_IDLE_MS", default_value_t = 60_000)]
    pub claim_idle_ms: u64,
    /// How often to look for pending entries of dead consumers, in milliseconds.
    #[arg(long, env = "CLAIM_INTERVAL_MS", default_value_t = 10_000)]
    pub claim_interval_ms: u64,
    /// Idle time after which a consumer of the group that holds no pending entries (a pod that is gone) is removed from it, in milliseconds (0 = never).
    #[arg(long, env = "CONSUMER_REAP_IDLE_MS", default_value_t = 3_600_000)]
    pub consumer_reap_idle_ms: u64,
    /// Rate limit on stream entries written per second (0 = unlimited).
    #[arg(long, env = "MAX_ENTRIES_PER_SECOND", default_value_t = 0)]
    pub max_entries_per_second: u32,
    /// Consumer loops in this process, each with its own transactions (consumer names `<CONSUMER_NAME>-<i>` when more than one).
    #[arg(long, env = "CONSUMER_CONCURRENCY", default_value_t = 2)]
    pub consumer_concurrency: u32,
    /// The consumer names of this process's other loops: never removed as idle
    /// (a loop that got nothing for a while still counts as idle on Redis < 7.2).
    #[arg(skip)]
    pub sibling_consumers: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct AnalyticsArgs {
    /// Run the analytics loop inside `run`.
    #[arg(long, env = "ANALYTICS_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub analytics_enabled: bool,
    /// Analytics loops per process (each claims its own batch of terms).
    #[arg(long, env = "ANALYTICS_CONCURRENCY", default_value_t = 1)]
    pub analytics_concurrency: u32,
    /// Terms claimed per analytics transaction.
    #[arg(long, env = "ANALYTICS_BATCH_SIZE", default_value_t = 200)]
    pub analytics_batch_size: u32,
    /// Wait between polls of an empty queue, in milliseconds.
    #[arg(long, env = "ANALYTICS_POLL_INTERVAL_MS", default_value_t = 200)]
    pub analytics_poll_interval_ms: u64,
    /// Attempts before a failing term is parked.
    #[arg(long, env = "ANALYTICS_MAX_ATTEMPTS", default_value_t = 8)]
    pub analytics_max_attempts: u32,
    /// First retry delay of a failing term, in milliseconds (doubles per attempt, jittered).
    #[arg(long, env = "ANALYTICS_BACKOFF_BASE_MS", default_value_t = 1_000)]
    pub analytics_backoff_base_ms: u64,
    /// Largest retry delay of a failing term, in milliseconds.
    #[arg(long, env = "ANALYTICS_BACKOFF_MAX_MS", default_value_t = 300_000)]
    pub analytics_backoff_max_ms: u64,
    /// Rate limit on terms processed per second per process (0 = unlimited).
    #[arg(long, env = "ANALYTICS_MAX_TERMS_PER_SECOND", default_value_t = 0)]
    pub analytics_max_terms_per_second: u32,
    /// How long a claimed term stays reserved for one worker, in milliseconds (a crashed worker's terms are retaken after it).
    #[arg(long, env = "ANALYTICS_CLAIM_LEASE_MS", default_value_t = 60_000)]
    pub analytics_claim_lease_ms: u64,
    /// How long a queued term waits before it is recomputed, in milliseconds, so that the changes of that window share one recomputation (bounds how stale analytics may be under load).
    #[arg(long, env = "ANALYTICS_COALESCE_MS", default_value_t = 250)]
    pub analytics_coalesce_ms: u64,
}

/// The fold loop of `run` (ADR 0015).
#[derive(Debug, Clone, Args)]
pub struct FoldArgs {
    /// Least time between the starts of two folds while deltas keep coming, in milliseconds: more batches merged into one row write per key, for a bounded delay of the base tables.
    #[arg(long, env = "FOLD_INTERVAL_MS", default_value_t = 50)]
    pub fold_interval_ms: u64,
    /// How often the fold loop looks for deltas written by other processes, in milliseconds (its own batches wake it at once).
    #[arg(long, env = "FOLD_POLL_INTERVAL_MS", default_value_t = 200)]
    pub fold_poll_interval_ms: u64,
    /// Fold partitions (of 32) one fold transaction takes; the others stay free for other processes.
    #[arg(long, env = "FOLD_MAX_PARTITIONS", default_value_t = 8)]
    pub fold_max_partitions: u32,
    /// Delta rows one fold transaction takes at most (a batch writes one per partition it touches).
    #[arg(long, env = "FOLD_MAX_DELTAS", default_value_t = 2_000)]
    pub fold_max_deltas: u32,
}

impl FoldArgs {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        in_range(
            "FOLD_INTERVAL_MS",
            "fold-interval-ms",
            self.fold_interval_ms,
            0..=10_000,
        )?;
        in_range(
            "FOLD_POLL_INTERVAL_MS",
            "fold-poll-interval-ms",
            self.fold_poll_interval_ms,
            10..=60_000,
        )?;
        in_range(
            "FOLD_MAX_PARTITIONS",
            "fold-max-partitions",
            self.fold_max_partitions,
            1..=crate::fold::PARTITIONS as u32,
        )?;
        in_range(
            "FOLD_MAX_DELTAS",
            "fold-max-deltas",
            self.fold_max_deltas,
            1..=100_000,
        )
    }
}

#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Port of /livez, /readyz, /health, /metrics and the local /drain.
    #[arg(long, env = "HTTP_PORT", default_value_t = 8080)]
    pub http_port: u32,
    /// Address the HTTP server binds to.
    #[arg(long, env = "HTTP_BIND_ADDRESS", default_value = "0.0.0.0")]
    pub http_bind_address: std::net::IpAddr,
    /// Longest time a drain (SIGTERM or `drain`) may take before the worker gives up waiting, in milliseconds.
    #[arg(long, env = "DRAIN_TIMEOUT_MS", default_value_t = 60_000)]
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
    /// Port of the local worker's HTTP server.
    #[arg(long, env = "HTTP_PORT", default_value_t = 8080)]
    pub http_port: u32,
    /// Longest time a drain may take, in milliseconds.
    #[arg(long, env = "DRAIN_TIMEOUT_MS", default_value_t = 60_000)]
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
    /// Redis URL; `rediss://` for TLS.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,
    /// PEM file of the CA that signed Redis's certificate (needs a rediss:// URL); the operator mounts it from `spec.redis.caSecretRef`.
    #[arg(long, env = "REDIS_CA_FILE")]
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

#[derive(Debug, Clone, Args)]
pub struct DeadLetterListArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub filter: DeadLetterFilterArgs,
    /// Which letters: not yet replayed, replayed, or both.
    #[arg(long, value_enum, default_value = "all")]
    pub status: crate::dead_letters::Status,
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

/// CONSUMER_REAP_IDLE_MS other than 0 (never): a second to a week.
pub const CONSUMER_REAP_IDLE_MS_RANGE: RangeInclusive<u64> = 1_000..=604_800_000;

fn default_consumer_name() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| format!("postgres-writer-{}", std::process::id()))
}

/// A setting outside its allowed range: the message names all three.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {variable} (--{flag}) = {value}: {allowed}")]
pub struct InvalidSetting {
    pub variable: &'static str,
    pub flag: &'static str,
    pub value: String,
    pub allowed: String,
}

fn in_range<T: PartialOrd + Display + Copy>(
    variable: &'static str,
    flag: &'static str,
    value: T,
    range: RangeInclusive<T>,
) -> Result<(), InvalidSetting> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(InvalidSetting {
            variable,
            flag,
            value: value.to_string(),
            allowed: format!("allowed range is {}..={}", range.start(), range.end()),
        })
    }
}

fn invalid(
    variable: &'static str,
    flag: &'static str,
    value: impl Display,
    allowed: &str,
) -> InvalidSetting {
    InvalidSetting {
        variable,
        flag,
        value: value.to_string(),
        allowed: allowed.to_string(),
    }
}

/// A CA file that cannot be used: named with the reason.
fn check_ca_file(
    variable: &'static str,
    flag: &'static str,
    path: &Path,
) -> Result<(), InvalidSetting> {
    crate::tls::read_ca_file(path).map(drop).map_err(|error| {
        invalid(
            variable,
            flag,
            path.display(),
            &format!(
                "must be a readable PEM file of CA certificates ({})",
                telemetry::ErrorChain(&error)
            ),
        )
    })
}

/// The Redis URL's scheme, and a CA file only with TLS (`rediss://`).
fn validate_redis(url: &str, ca_file: Option<&Path>) -> Result<(), InvalidSetting> {
    let tls = url.starts_with("rediss://");
    if !(tls || url.starts_with("redis://")) {
        return Err(invalid(
            "REDIS_URL",
            "redis-url",
            redact_url(url),
            "must start with redis:// or rediss://",
        ));
    }
    match ca_file {
        Some(path) if !tls => Err(invalid(
            "REDIS_CA_FILE",
            "redis-ca-file",
            path.display(),
            "is set, so REDIS_URL must start with rediss:// (TLS)",
        )),
        Some(path) => check_ca_file("REDIS_CA_FILE", "redis-ca-file", path),
        None => Ok(()),
    }
}

impl DatabaseArgs {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if !(self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "DATABASE_URL",
                "database-url",
                redact_url(&self.database_url),
                "must start with postgres:// or postgresql://",
            ));
        }
        if let Some(path) = &self.database_ca_file {
            // A CA that is never checked would be a silent downgrade.
            let mode = sqlx::postgres::PgConnectOptions::from_str(&self.database_url)
                .map(|o| o.get_ssl_mode())
                .map_err(|e| {
                    invalid(
                        "DATABASE_URL",
                        "database-url",
                        redact_url(&self.database_url),
                        &format!(
                            "is not a valid PostgreSQL URL ({})",
                            telemetry::ErrorChain(&e)
                        ),
                    )
                })?;
            if !crate::tls::pg_mode_verifies(mode) {
                return Err(invalid(
                    "DATABASE_CA_FILE",
                    "database-ca-file",
                    path.display(),
                    &format!(
                        "is set, so DATABASE_URL needs sslmode=verify-full or verify-ca (it has {})",
                        pg_mode_name(mode)
                    ),
                ));
            }
            check_ca_file("DATABASE_CA_FILE", "database-ca-file", path)?;
        }
        in_range(
            "DB_POOL_MAX_CONNECTIONS",
            "db-pool-max-connections",
            self.db_pool_max_connections,
            1..=1000,
        )?;
        in_range(
            "DB_POOL_MIN_CONNECTIONS",
            "db-pool-min-connections",
            self.db_pool_min_connections,
            0..=self.db_pool_max_connections,
        )?;
        in_range(
            "DB_STATEMENT_TIMEOUT_MS",
            "db-statement-timeout-ms",
            self.db_statement_timeout_ms,
            100..=600_000,
        )?;
        in_range(
            "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
            "db-idle-in-transaction-timeout-ms",
            self.db_idle_in_transaction_timeout_ms,
            100..=600_000,
        )?;
        in_range(
            "DB_ACQUIRE_TIMEOUT_MS",
            "db-acquire-timeout-ms",
            self.db_acquire_timeout_ms,
            100..=600_000,
        )
    }

    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.db_acquire_timeout_ms)
    }
}

/// The `sslmode` spelling of a mode, for messages.
fn pg_mode_name(mode: sqlx::postgres::PgSslMode) -> &'static str {
    use sqlx::postgres::PgSslMode::*;
    match mode {
        Disable => "disable",
        Allow => "allow",
        Prefer => "prefer",
        Require => "require",
        VerifyCa => "verify-ca",
        VerifyFull => "verify-full",
    }
}

impl GenerateArgs {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        validate_redis(&self.redis_url, self.redis_ca_file.as_deref())
    }
}

impl StreamArgs {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        validate_redis(&self.redis_url, self.redis_ca_file.as_deref())?;
        let streams = self.redis_streams.join(",");
        if self.redis_streams.is_empty() || self.redis_streams.iter().any(|s| s.trim().is_empty()) {
            return Err(invalid(
                "REDIS_STREAMS",
                "redis-streams",
                format!("{streams:?}"),
                "a comma-separated list of non-empty stream names",
            ));
        }
        let mut unique = self.redis_streams.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != self.redis_streams.len() {
            return Err(invalid(
                "REDIS_STREAMS",
                "redis-streams",
                format!("{streams:?}"),
                "stream names must be distinct",
            ));
        }
        for (variable, flag, value) in [
            ("CONSUMER_GROUP", "consumer-group", &self.consumer_group),
            ("CONSUMER_NAME", "consumer-name", &self.consumer_name),
        ] {
            if value.trim().is_empty() || value.len() > 200 || value.chars().any(char::is_control) {
                return Err(invalid(
                    variable,
                    flag,
                    format!("{value:?}"),
                    "1 to 200 printable characters",
                ));
            }
        }
        in_range("BATCH_SIZE", "batch-size", self.batch_size, 1..=10_000)?;
        in_range(
            "BATCH_TIMEOUT_MS",
            "batch-timeout-ms",
            self.batch_timeout_ms,
            1..=60_000,
        )?;
        in_range(
            "CLAIM_IDLE_MS",
            "claim-idle-ms",
            self.claim_idle_ms,
            1_000..=86_400_000,
        )?;
        in_range(
            "CLAIM_INTERVAL_MS",
            "claim-interval-ms",
            self.claim_interval_ms,
            100..=3_600_000,
        )?;
        if self.consumer_reap_idle_ms != 0
            && !CONSUMER_REAP_IDLE_MS_RANGE.contains(&self.consumer_reap_idle_ms)
        {
            return Err(invalid(
                "CONSUMER_REAP_IDLE_MS",
                "consumer-reap-idle-ms",
                self.consumer_reap_idle_ms,
                &format!(
                    "0 (never) or {}..={}",
                    CONSUMER_REAP_IDLE_MS_RANGE.start(),
                    CONSUMER_REAP_IDLE_MS_RANGE.end()
                ),
            ));
        }
        in_range(
            "CONSUMER_CONCURRENCY",
            "consumer-concurrency",
            self.consumer_concurrency,
            1..=32,
        )?;
        in_range(
            "MAX_ENTRIES_PER_SECOND",
            "max-entries-per-second",
            self.max_entries_per_second,
            0..=10_000_000,
        )
    }
}

impl AnalyticsArgs {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        in_range(
            "ANALYTICS_CONCURRENCY",
            "analytics-concurrency",
            self.analytics_concurrency,
            1..=64,
        )?;
        in_range(
            "ANALYTICS_BATCH_SIZE",
            "analytics-batch-size",
            self.analytics_batch_size,
            1..=100_000,
        )?;
        in_range(
            "ANALYTICS_POLL_INTERVAL_MS",
            "analytics-poll-interval-ms",
            self.analytics_poll_interval_ms,
            10..=60_000,
        )?;
        in_range(
            "ANALYTICS_MAX_ATTEMPTS",
            "analytics-max-attempts",
            self.analytics_max_attempts,
            1..=1_000,
        )?;
        in_range(
            "ANALYTICS_BACKOFF_BASE_MS",
            "analytics-backoff-base-ms",
            self.analytics_backoff_base_ms,
            1..=3_600_000,
        )?;
        in_range(
            "ANALYTICS_BACKOFF_MAX_MS",
            "analytics-backoff-max-ms",
            self.analytics_backoff_max_ms,
            self.analytics_backoff_base_ms..=86_400_000,
        )?;
        in_range(
            "ANALYTICS_CLAIM_LEASE_MS",
            "analytics-claim-lease-ms",
            self.analytics_claim_lease_ms,
            1_000..=3_600_000,
        )?;
        in_range(
            "ANALYTICS_COALESCE_MS",
            "analytics-coalesce-ms",
            self.analytics_coalesce_ms,
            0..=60_000,
        )?;
        in_range(
            "ANALYTICS_MAX_TERMS_PER_SECOND",
            "analytics-max-terms-per-second",
            self.analytics_max_terms_per_second,
            0..=10_000_000,
        )
    }
}

impl HttpArgs {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        in_range("HTTP_PORT", "http-port", self.http_port, 1..=65_535)?;
        in_range(
            "DRAIN_TIMEOUT_MS",
            "drain-timeout-ms",
            self.drain_timeout_ms,
            1_000..=3_600_000,
        )
    }
}

impl DrainArgs {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        in_range("HTTP_PORT", "http-port", self.http_port, 1..=65_535)?;
        in_range(
            "DRAIN_TIMEOUT_MS",
            "drain-timeout-ms",
            self.drain_timeout_ms,
            1_000..=3_600_000,
        )
    }
}

impl RunArgs {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        self.database.validate()?;
        self.streams.validate()?;
        self.analytics.validate()?;
        self.fold.validate()?;
        self.http.validate()
    }
}

impl AnalyticsOnlyArgs {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        self.database.validate()?;
        self.analytics.validate()?;
        self.http.validate()
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

/// The Markdown table of every environment-backed setting, generated from the
/// CLI definitions (one row per variable, with the subcommands that read it).
pub fn settings_table() -> String {
    let command = Cli::command();
    let mut rows: Vec<(String, String, String, String, Vec<String>)> = Vec::new();
    for sub in command.get_subcommands() {
        // `dead-letters list|show|replay` read their settings as `dead-letters`.
        let nested = sub.get_subcommands().flat_map(|s| s.get_arguments());
        for arg in sub.get_arguments().chain(nested) {
            let Some(env) = arg.get_env() else { continue };
            let env = env.to_string_lossy().to_string();
            if let Some(row) = rows.iter_mut().find(|r| r.0 == env) {
                if !row.4.iter().any(|s| s == sub.get_name()) {
                    row.4.push(sub.get_name().to_string());
                }
                continue;
            }
            let flag = arg
                .get_long()
                .map(|l| format!("`--{l}`"))
                .unwrap_or_default();
            let default = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().to_string())
                .collect::<Vec<_>>()
                .join(",");
            let default = match (env.as_str(), default.as_str()) {
                ("CONSUMER_NAME", _) => "`$HOSTNAME`".to_string(),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", _) => "unset (no export)".to_string(),
                ("OTEL_SERVICE_NAME", _) => "`postgres-writer-<command>`".to_string(),
                (_, "") if arg.is_required_set() => "required".to_string(),
                (_, "") => "unset".to_string(),
                (_, d) => format!("`{d}`"),
            };
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            rows.push((env, flag, default, help, vec![sub.get_name().to_string()]));
        }
    }
    let mut out =
        String::from("| variable | flag | default | meaning | read by |\n|---|---|---|---|---|\n");
    for (env, flag, default, help, subs) in rows {
        out.push_str(&format!(
            "| `{env}` | {flag} | {default} | {help} | {} |\n",
            subs.join(", ")
        ));
    }
    out.push_str("| `RUST_LOG` |  | `info,sqlx=warn` | Log filter (tracing EnvFilter syntax), logs go to stderr; `sqlx=info` adds statements slower than 1 s. | all |\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_args(extra: &[&str]) -> Result<RunArgs, String> {
        let mut argv = vec![
            "postgres-writer",
            "run",
            "--database-url",
            "postgres://u:secret@localhost/db",
            "--redis-streams",
            "a,b",
        ];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .command
        {
            Command::Run(args) => Ok(*args),
            _ => unreachable!(),
        }
    }

    #[test]
    fn defaults_are_valid() {
        let args = run_args(&[]).unwrap();
        args.validate().unwrap();
        assert_eq!(args.streams.redis_streams, vec!["a", "b"]);
        assert_eq!(args.streams.batch_size, 300);
        assert_eq!(args.streams.consumer_concurrency, 2);
        assert_eq!(args.analytics.analytics_coalesce_ms, 250);
        assert_eq!(args.streams.consumer_reap_idle_ms, 3_600_000);
    }

    #[test]
    fn consumer_reap_idle_is_off_or_in_its_range() {
        for ok in ["0", "1000", "604800000"] {
            run_args(&["--consumer-reap-idle-ms", ok])
                .unwrap()
                .validate()
                .unwrap();
        }
        for bad in ["1", "999", "604800001"] {
            let err = run_args(&["--consumer-reap-idle-ms", bad])
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("CONSUMER_REAP_IDLE_MS")
                    && err.contains("0 (never) or 1000..=604800000"),
                "{err}"
            );
        }
    }

    #[test]
    fn out_of_range_settings_name_variable_value_and_range() {
        let cases: [(&[&str], &str, &str); 5] = [
            (&["--batch-size", "0"], "BATCH_SIZE", "1..=10000"),
            (&["--http-port", "70000"], "HTTP_PORT", "1..=65535"),
            (
                &["--db-pool-max-connections", "0"],
                "DB_POOL_MAX_CONNECTIONS",
                "1..=1000",
            ),
            (
                &["--db-pool-min-connections", "20"],
                "DB_POOL_MIN_CONNECTIONS",
                "0..=10",
            ),
            (
                &["--analytics-concurrency", "100"],
                "ANALYTICS_CONCURRENCY",
                "1..=64",
            ),
        ];
        for (flags, variable, range) in cases {
            let err = run_args(flags).unwrap().validate().unwrap_err().to_string();
            assert!(
                err.contains(variable) && err.contains(range) && err.contains(flags[1]),
                "{err}"
            );
        }
    }

    #[test]
    fn bad_urls_and_streams_are_refused_without_leaking_passwords() {
        let mut args = run_args(&[]).unwrap();
        args.database.database_url = "mysql://u:secret@host/db".into();
        let err = args.validate().unwrap_err().to_string();
        assert!(
            err.contains("DATABASE_URL") && !err.contains("secret"),
            "{err}"
        );
        let args = run_args(&["--redis-streams", "a,,b"]);
        let err = args.unwrap().validate().unwrap_err().to_string();
        assert!(err.contains("REDIS_STREAMS"), "{err}");
        let err = run_args(&["--redis-streams", "a,a"])
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("distinct"), "{err}");
    }

    #[test]
    fn ca_files_are_checked_at_start_up() {
        let missing = "/nonexistent/pgw/ca.crt";
        let mut args = run_args(&["--database-ca-file", missing]).unwrap();
        args.database.database_url = "postgres://u@db/x?sslmode=verify-full".into();
        let err = args.validate().unwrap_err().to_string();
        assert!(
            err.contains("DATABASE_CA_FILE")
                && err.contains(missing)
                && err.contains("No such file"),
            "{err}"
        );
        // A CA with a mode that never checks it is a silent downgrade.
        args.database.database_url = "postgres://u@db/x?sslmode=require".into();
        let err = args.validate().unwrap_err().to_string();
        assert!(
            err.contains("DATABASE_CA_FILE")
                && err.contains("verify-full")
                && err.contains("require"),
            "{err}"
        );
        let err = run_args(&["--redis-ca-file", missing])
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("REDIS_CA_FILE") && err.contains("rediss://"),
            "{err}"
        );
        let err = run_args(&["--redis-url", "rediss://r:6380", "--redis-ca-file", missing])
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("REDIS_CA_FILE") && err.contains("No such file"),
            "{err}"
        );
    }

    #[test]
    fn settings_table_lists_every_spec_variable() {
        let table = settings_table();
        for variable in [
            "DATABASE_URL",
            "REDIS_URL",
            "REDIS_STREAMS",
            "CONSUMER_GROUP",
            "CONSUMER_NAME",
            "BATCH_SIZE",
            "BATCH_TIMEOUT_MS",
            "HTTP_PORT",
        ] {
            assert!(
                table.contains(&format!("| `{variable}` |")),
                "{variable} missing"
            );
        }
    }

    #[test]
    fn readme_settings_table_is_current() {
        let readme = include_str!("../../README.md");
        let begin = "<!-- settings:begin -->\n";
        let end = "<!-- settings:end -->";
        let start = readme
            .find(begin)
            .expect("README has a settings:begin marker")
            + begin.len();
        let stop = readme.find(end).expect("README has a settings:end marker");
        assert_eq!(
            &readme[start..stop],
            settings_table(),
            "README settings table is stale: regenerate it with `postgres-writer settings`"
        );
    }
}
