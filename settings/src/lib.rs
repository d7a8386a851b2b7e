//! The worker's settings, each defined once: its environment variable, its
//! flag, its default, the values it accepts and what it means.
//!
//! Everything that names a setting reads this catalog instead of repeating
//! it: the worker's command line (clap's `env`, `long`, default and help),
//! its start-up validation, the operator's CRD (schema ranges and defaults)
//! and the ConfigMap keys and environment it gives the pods, and the
//! README's settings table (`postgres-writer settings`). Tests in both crates
//! prove they agree (`worker::config`, `operator/tests/crd_schema.rs`).
//!
//! No dependencies: both binaries and every module may read it.
//!
//! Adding a setting: an entry here (and in [`ALL`]), the field in the
//! worker's `config.rs` that reads it, the domain settings struct that
//! carries it; if the operator passes it, the CRD field and its ConfigMap key.

use std::fmt::{Debug, Display};
use std::ops::RangeInclusive;

/// A numeric setting: accepted from `min` to `max`, and `off` (a value
/// outside the range that switches the feature off) when there is one.
#[derive(Debug, Clone, Copy)]
pub struct Number<T: 'static> {
    /// Environment variable, e.g. `BATCH_SIZE`.
    pub env: &'static str,
    /// Long flag without its dashes, e.g. `batch-size`.
    pub flag: &'static str,
    pub default: T,
    pub min: T,
    pub max: T,
    pub off: Option<Off<T>>,
    /// The meaning, as the CLI help and the README table show it.
    pub doc: &'static str,
}

/// A value outside a setting's range that means "off", e.g. 0 = never.
#[derive(Debug, Clone, Copy)]
pub struct Off<T> {
    pub value: T,
    /// What the value means, e.g. `never`.
    pub meaning: &'static str,
}

impl<T: Copy + PartialOrd> Number<T> {
    /// `min..=max` (without `off`).
    pub const fn range(&self) -> RangeInclusive<T> {
        RangeInclusive::new(self.min, self.max)
    }

    /// Whether the worker starts with `value`.
    pub fn accepts(&self, value: T) -> bool {
        self.off.is_some_and(|off| off.value == value) || self.range().contains(&value)
    }
}

impl<T: Copy + Display> Number<T> {
    /// The values accepted, as the worker's start-up error says it.
    pub fn allowed(&self) -> String {
        match self.off {
            Some(off) => format!(
                "{} ({}) or {}..={}",
                off.value, off.meaning, self.min, self.max
            ),
            None => format!("allowed range is {}..={}", self.min, self.max),
        }
    }
}

/// A text setting (URLs, names, paths, addresses, enumerations).
#[derive(Debug, Clone, Copy)]
pub struct Text {
    pub env: &'static str,
    pub flag: &'static str,
    pub default: TextDefault,
    pub doc: &'static str,
}

/// What a text setting is when it is not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextDefault {
    /// It must be given.
    Required,
    /// Unset; the text says what that means ("" when nothing to add).
    Unset(&'static str),
    /// This value.
    Value(&'static str),
    /// Computed at start-up, as described (e.g. the pod's host name).
    Computed(&'static str),
}

impl TextDefault {
    /// The value clap fills in, if any.
    pub const fn value(self) -> Option<&'static str> {
        match self {
            TextDefault::Value(value) => Some(value),
            _ => None,
        }
    }
}

/// An on/off setting.
#[derive(Debug, Clone, Copy)]
pub struct Switch {
    pub env: &'static str,
    pub flag: &'static str,
    pub default: bool,
    pub doc: &'static str,
}

/// Any setting, as the README table and the drift tests see it.
pub trait Setting: Sync {
    fn env(&self) -> &'static str;
    /// The long flag without its dashes (`None`: environment only).
    fn flag(&self) -> Option<&'static str>;
    fn doc(&self) -> &'static str;
    /// The default as the command line spells it (`None`: no literal default).
    fn default_value(&self) -> Option<String>;
    /// The default as the README table shows it.
    fn default_shown(&self) -> String {
        match self.default_value() {
            Some(value) => format!("`{value}`"),
            None => "unset".to_string(),
        }
    }
    /// The values accepted, as start-up errors say it (`None`: any the type parses).
    fn allowed(&self) -> Option<String>;
    /// Whether the range is not empty and holds the default.
    fn default_is_allowed(&self) -> bool {
        true
    }
}

impl<T: Copy + PartialOrd + Display + Debug + Sync + 'static> Setting for Number<T> {
    fn env(&self) -> &'static str {
        self.env
    }
    fn flag(&self) -> Option<&'static str> {
        Some(self.flag)
    }
    fn doc(&self) -> &'static str {
        self.doc
    }
    fn default_value(&self) -> Option<String> {
        Some(self.default.to_string())
    }
    fn allowed(&self) -> Option<String> {
        Some(Number::allowed(self))
    }
    fn default_is_allowed(&self) -> bool {
        self.min <= self.max && self.accepts(self.default)
    }
}

impl Setting for Text {
    fn env(&self) -> &'static str {
        self.env
    }
    fn flag(&self) -> Option<&'static str> {
        (!self.flag.is_empty()).then_some(self.flag)
    }
    fn doc(&self) -> &'static str {
        self.doc
    }
    fn default_value(&self) -> Option<String> {
        self.default.value().map(str::to_string)
    }
    fn default_shown(&self) -> String {
        match self.default {
            TextDefault::Required => "required".to_string(),
            TextDefault::Unset("") => "unset".to_string(),
            TextDefault::Unset(meaning) => format!("unset ({meaning})"),
            TextDefault::Value(value) => format!("`{value}`"),
            TextDefault::Computed(how) => format!("`{how}`"),
        }
    }
    fn allowed(&self) -> Option<String> {
        None
    }
}

impl Setting for Switch {
    fn env(&self) -> &'static str {
        self.env
    }
    fn flag(&self) -> Option<&'static str> {
        Some(self.flag)
    }
    fn doc(&self) -> &'static str {
        self.doc
    }
    fn default_value(&self) -> Option<String> {
        Some(self.default.to_string())
    }
    fn allowed(&self) -> Option<String> {
        None
    }
}

/// Fold partitions: migration 0010 creates exactly this many
/// `fold_partition` rows, and `partition::partition_of` hashes terms onto them.
/// Not a setting (every binary must agree on it), but the upper bound of
/// [`FOLD_MAX_PARTITIONS`].
pub const FOLD_PARTITIONS: u32 = 32;

// PostgreSQL.

pub const DATABASE_URL: Text = Text {
    env: "DATABASE_URL",
    flag: "database-url",
    default: TextDefault::Required,
    doc: "PostgreSQL URL; TLS per its `sslmode` (disable, prefer, require, verify-ca, verify-full) and `sslrootcert`",
};
pub const DATABASE_CA_FILE: Text = Text {
    env: "DATABASE_CA_FILE",
    flag: "database-ca-file",
    default: TextDefault::Unset(""),
    doc: "PEM file of the CA that signed PostgreSQL's certificate (needs sslmode=verify-ca or verify-full); the operator mounts it from `spec.database.caSecretRef`",
};
/// Its upper bound is also DB_POOL_MAX_CONNECTIONS (checked at start-up).
pub const DB_POOL_MIN_CONNECTIONS: Number<u32> = Number {
    env: "DB_POOL_MIN_CONNECTIONS",
    flag: "db-pool-min-connections",
    default: 1,
    min: 0,
    max: DB_POOL_MAX_CONNECTIONS.max,
    off: None,
    doc: "Connections the pool keeps open",
};
pub const DB_POOL_MAX_CONNECTIONS: Number<u32> = Number {
    env: "DB_POOL_MAX_CONNECTIONS",
    flag: "db-pool-max-connections",
    default: 10,
    min: 1,
    max: 1_000,
    off: None,
    doc: "Largest number of pooled connections",
};
pub const DB_ACQUIRE_TIMEOUT_MS: Number<u64> = Number {
    env: "DB_ACQUIRE_TIMEOUT_MS",
    flag: "db-acquire-timeout-ms",
    default: 30_000,
    min: 100,
    max: 600_000,
    off: None,
    doc: "Longest wait for a pooled connection, in milliseconds",
};
pub const DB_STATEMENT_TIMEOUT_MS: Number<u64> = Number {
    env: "DB_STATEMENT_TIMEOUT_MS",
    flag: "db-statement-timeout-ms",
    default: 20_000,
    min: 100,
    max: 600_000,
    off: None,
    doc: "Longest statement (and lock wait) of `run` and `analytics`, in milliseconds: with DB_IDLE_IN_TRANSACTION_TIMEOUT_MS and TCP keepalives it bounds how long a worker's transaction can hold row locks, fold partitions or analytics claims (ADR 0019); commands, which scan whole tables, do not apply it",
};
pub const DB_IDLE_IN_TRANSACTION_TIMEOUT_MS: Number<u64> = Number {
    env: "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
    flag: "db-idle-in-transaction-timeout-ms",
    default: 10_000,
    min: 100,
    max: 600_000,
    off: None,
    doc: "Longest time a session may sit idle inside a transaction, in milliseconds, before PostgreSQL ends it and releases its locks (a frozen or partitioned worker; ADR 0019)",
};

// Redis streams.

pub const REDIS_URL: Text = Text {
    env: "REDIS_URL",
    flag: "redis-url",
    default: TextDefault::Value("redis://127.0.0.1:6379"),
    doc: "Redis URL; `rediss://` for TLS",
};
pub const REDIS_CA_FILE: Text = Text {
    env: "REDIS_CA_FILE",
    flag: "redis-ca-file",
    default: TextDefault::Unset(""),
    doc: "PEM file of the CA that signed Redis's certificate (needs a rediss:// URL); the operator mounts it from `spec.redis.caSecretRef`",
};
pub const REDIS_STREAMS: Text = Text {
    env: "REDIS_STREAMS",
    flag: "redis-streams",
    default: TextDefault::Required,
    doc: "Comma-separated stream names",
};
/// Consumer group and consumer names: 1 to this many printable characters.
pub const CONSUMER_NAME_MAX_CHARS: usize = 200;
pub const CONSUMER_GROUP: Text = Text {
    env: "CONSUMER_GROUP",
    flag: "consumer-group",
    default: TextDefault::Value("postgres-writer"),
    doc: "Consumer group (created at the start of each stream if missing)",
};
pub const CONSUMER_NAME: Text = Text {
    env: "CONSUMER_NAME",
    flag: "consumer-name",
    default: TextDefault::Computed("$HOSTNAME"),
    doc: "This consumer's name; must be unique and stable per pod (the pod name)",
};
pub const BATCH_SIZE: Number<usize> = Number {
    env: "BATCH_SIZE",
    flag: "batch-size",
    default: 300,
    min: 1,
    max: 10_000,
    off: None,
    doc: "Entries read per stream and call; one batch is written in one transaction",
};
pub const BATCH_TIMEOUT_MS: Number<u64> = Number {
    env: "BATCH_TIMEOUT_MS",
    flag: "batch-timeout-ms",
    default: 1_000,
    min: 1,
    max: 60_000,
    off: None,
    doc: "Longest wait for a batch to fill, in milliseconds",
};
pub const CLAIM_IDLE_MS: Number<u64> = Number {
    env: "CLAIM_IDLE_MS",
    flag: "claim-idle-ms",
    default: 60_000,
    min: 1_000,
    max: 86_400_000,
    off: None,
    doc: "Idle time after which another consumer's pending entries are taken over, in milliseconds",
};
pub const CLAIM_INTERVAL_MS: Number<u64> = Number {
    env: "CLAIM_INTERVAL_MS",
    flag: "claim-interval-ms",
    default: 10_000,
    min: 100,
    max: 3_600_000,
    off: None,
    doc: "How often to look for pending entries of dead consumers, in milliseconds",
};
/// Other than 0 (never): a second to a week.
pub const CONSUMER_REAP_IDLE_MS: Number<u64> = Number {
    env: "CONSUMER_REAP_IDLE_MS",
    flag: "consumer-reap-idle-ms",
    default: 3_600_000,
    min: 1_000,
    max: 604_800_000,
    off: Some(Off {
        value: 0,
        meaning: "never",
    }),
    doc: "Idle time after which a consumer of the group that holds no pending entries (a pod that is gone) is removed from it, in milliseconds (0 = never)",
};
pub const MAX_ENTRIES_PER_SECOND: Number<u32> = Number {
    env: "MAX_ENTRIES_PER_SECOND",
    flag: "max-entries-per-second",
    default: 0,
    min: 0,
    max: 10_000_000,
    off: None,
    doc: "Rate limit on stream entries written per second (0 = unlimited)",
};
pub const CONSUMER_CONCURRENCY: Number<u32> = Number {
    env: "CONSUMER_CONCURRENCY",
    flag: "consumer-concurrency",
    default: 2,
    min: 1,
    max: 32,
    off: None,
    doc: "Consumer loops in this process, each with its own transactions (consumer names `<CONSUMER_NAME>-<i>` when more than one)",
};

// Analytics.

pub const ANALYTICS_ENABLED: Switch = Switch {
    env: "ANALYTICS_ENABLED",
    flag: "analytics-enabled",
    default: true,
    doc: "Run the analytics loop inside `run`",
};
pub const ANALYTICS_CONCURRENCY: Number<u32> = Number {
    env: "ANALYTICS_CONCURRENCY",
    flag: "analytics-concurrency",
    default: 1,
    min: 1,
    max: 64,
    off: None,
    doc: "Analytics loops per process (each claims its own batch of terms)",
};
pub const ANALYTICS_BATCH_SIZE: Number<u32> = Number {
    env: "ANALYTICS_BATCH_SIZE",
    flag: "analytics-batch-size",
    default: 200,
    min: 1,
    max: 100_000,
    off: None,
    doc: "Terms claimed per analytics transaction",
};
pub const ANALYTICS_POLL_INTERVAL_MS: Number<u64> = Number {
    env: "ANALYTICS_POLL_INTERVAL_MS",
    flag: "analytics-poll-interval-ms",
    default: 200,
    min: 10,
    max: 60_000,
    off: None,
    doc: "Wait between polls of an empty queue, in milliseconds",
};
pub const ANALYTICS_MAX_ATTEMPTS: Number<u32> = Number {
    env: "ANALYTICS_MAX_ATTEMPTS",
    flag: "analytics-max-attempts",
    default: 8,
    min: 1,
    max: 1_000,
    off: None,
    doc: "Attempts before a failing term is parked",
};
pub const ANALYTICS_BACKOFF_BASE_MS: Number<u64> = Number {
    env: "ANALYTICS_BACKOFF_BASE_MS",
    flag: "analytics-backoff-base-ms",
    default: 1_000,
    min: 1,
    max: 3_600_000,
    off: None,
    doc: "First retry delay of a failing term, in milliseconds (doubles per attempt, jittered)",
};
/// Its lower bound is also ANALYTICS_BACKOFF_BASE_MS (checked at start-up).
pub const ANALYTICS_BACKOFF_MAX_MS: Number<u64> = Number {
    env: "ANALYTICS_BACKOFF_MAX_MS",
    flag: "analytics-backoff-max-ms",
    default: 300_000,
    min: ANALYTICS_BACKOFF_BASE_MS.min,
    max: 86_400_000,
    off: None,
    doc: "Largest retry delay of a failing term, in milliseconds",
};
pub const ANALYTICS_MAX_TERMS_PER_SECOND: Number<u32> = Number {
    env: "ANALYTICS_MAX_TERMS_PER_SECOND",
    flag: "analytics-max-terms-per-second",
    default: 0,
    min: 0,
    max: 10_000_000,
    off: None,
    doc: "Rate limit on terms processed per second per process (0 = unlimited)",
};
pub const ANALYTICS_CLAIM_LEASE_MS: Number<u64> = Number {
    env: "ANALYTICS_CLAIM_LEASE_MS",
    flag: "analytics-claim-lease-ms",
    default: 60_000,
    min: 1_000,
    max: 3_600_000,
    off: None,
    doc: "How long a claimed term stays reserved for one worker, in milliseconds (a crashed worker's terms are retaken after it)",
};
pub const ANALYTICS_COALESCE_MS: Number<u64> = Number {
    env: "ANALYTICS_COALESCE_MS",
    flag: "analytics-coalesce-ms",
    default: 250,
    min: 0,
    max: 60_000,
    off: None,
    doc: "How long a queued term waits before it is recomputed, in milliseconds, so that the changes of that window share one recomputation (bounds how stale analytics may be under load)",
};

// Folding (ADR 0015).

pub const FOLD_INTERVAL_MS: Number<u64> = Number {
    env: "FOLD_INTERVAL_MS",
    flag: "fold-interval-ms",
    default: 50,
    min: 0,
    max: 10_000,
    off: None,
    doc: "Least time between two folds of one partition while deltas keep coming, in milliseconds, however many processes fold: more batches merged into one row write per key, for a bounded delay of the base tables",
};
pub const FOLD_POLL_INTERVAL_MS: Number<u64> = Number {
    env: "FOLD_POLL_INTERVAL_MS",
    flag: "fold-poll-interval-ms",
    default: 200,
    min: 10,
    max: 60_000,
    off: None,
    doc: "How often the fold loop looks for deltas written by other processes, in milliseconds (its own batches wake it at once)",
};
/// The doc names [`FOLD_PARTITIONS`] (a test checks it).
pub const FOLD_MAX_PARTITIONS: Number<u32> = Number {
    env: "FOLD_MAX_PARTITIONS",
    flag: "fold-max-partitions",
    default: 8,
    min: 1,
    max: FOLD_PARTITIONS,
    off: None,
    doc: "Fold partitions (of 32) one fold transaction takes; the others stay free for other processes",
};
pub const FOLD_MAX_DELTAS: Number<u32> = Number {
    env: "FOLD_MAX_DELTAS",
    flag: "fold-max-deltas",
    default: 2_000,
    min: 1,
    max: 100_000,
    off: None,
    doc: "Delta rows one fold transaction takes at most (a batch writes one per partition it touches)",
};

// HTTP and drain.

pub const HTTP_PORT: Number<u32> = Number {
    env: "HTTP_PORT",
    flag: "http-port",
    default: 8080,
    min: 1,
    max: 65_535,
    off: None,
    doc: "Port of /livez, /readyz, /health, /metrics and the local /drain",
};
pub const HTTP_BIND_ADDRESS: Text = Text {
    env: "HTTP_BIND_ADDRESS",
    flag: "http-bind-address",
    default: TextDefault::Value("0.0.0.0"),
    doc: "Address the HTTP server binds to",
};
pub const DRAIN_TIMEOUT_MS: Number<u64> = Number {
    env: "DRAIN_TIMEOUT_MS",
    flag: "drain-timeout-ms",
    default: 60_000,
    min: 1_000,
    max: 3_600_000,
    off: None,
    doc: "Longest time a drain (SIGTERM or `drain`) may take before the worker gives up waiting, in milliseconds",
};

// Telemetry (the `telemetry` crate, both binaries).

pub const OTEL_EXPORTER_OTLP_ENDPOINT: Text = Text {
    env: "OTEL_EXPORTER_OTLP_ENDPOINT",
    flag: "otel-exporter-otlp-endpoint",
    default: TextDefault::Unset("no export"),
    doc: "OTLP endpoint for traces, e.g. http://otel-collector:4318; tracing export is off when unset",
};
pub const OTEL_EXPORTER_OTLP_PROTOCOL: Text = Text {
    env: "OTEL_EXPORTER_OTLP_PROTOCOL",
    flag: "otel-exporter-otlp-protocol",
    default: TextDefault::Value("http/protobuf"),
    doc: "OTLP protocol: grpc or http/protobuf",
};
pub const OTEL_SERVICE_NAME: Text = Text {
    env: "OTEL_SERVICE_NAME",
    flag: "otel-service-name",
    default: TextDefault::Computed("postgres-writer-<command>"),
    doc: "Service name on exported spans (default: the binary's role)",
};
pub const OTEL_TRACES_SAMPLER_ARG: Number<f64> = Number {
    env: "OTEL_TRACES_SAMPLER_ARG",
    flag: "otel-traces-sampler-arg",
    default: 1.0,
    min: 0.0,
    max: 1.0,
    off: None,
    doc: "Fraction of new traces sampled (parent-based trace-id ratio), 0.0 to 1.0",
};

// `migrate`.

pub const TERMINATION_MESSAGE_PATH: Text = Text {
    env: "TERMINATION_MESSAGE_PATH",
    flag: "termination-message-path",
    default: TextDefault::Unset(""),
    doc: "File that receives `schema version N` once the migrations are applied; the operator's migration Job sets it to the container's terminationMessagePath and reports N in `status.schemaVersion`",
};

/// Read by the log subscriber, not the command line.
pub const RUST_LOG: Text = Text {
    env: "RUST_LOG",
    flag: "",
    default: TextDefault::Value("info,sqlx=warn"),
    doc: "Log filter (tracing EnvFilter syntax), logs go to stderr; `sqlx=info` adds statements slower than 1 s.",
};

/// Every setting, in the README table's order.
pub static ALL: &[&dyn Setting] = &[
    &DATABASE_URL,
    &DATABASE_CA_FILE,
    &DB_POOL_MIN_CONNECTIONS,
    &DB_POOL_MAX_CONNECTIONS,
    &DB_ACQUIRE_TIMEOUT_MS,
    &DB_STATEMENT_TIMEOUT_MS,
    &DB_IDLE_IN_TRANSACTION_TIMEOUT_MS,
    &REDIS_URL,
    &REDIS_CA_FILE,
    &REDIS_STREAMS,
    &CONSUMER_GROUP,
    &CONSUMER_NAME,
    &BATCH_SIZE,
    &BATCH_TIMEOUT_MS,
    &CLAIM_IDLE_MS,
    &CLAIM_INTERVAL_MS,
    &CONSUMER_REAP_IDLE_MS,
    &MAX_ENTRIES_PER_SECOND,
    &CONSUMER_CONCURRENCY,
    &ANALYTICS_ENABLED,
    &ANALYTICS_CONCURRENCY,
    &ANALYTICS_BATCH_SIZE,
    &ANALYTICS_POLL_INTERVAL_MS,
    &ANALYTICS_MAX_ATTEMPTS,
    &ANALYTICS_BACKOFF_BASE_MS,
    &ANALYTICS_BACKOFF_MAX_MS,
    &ANALYTICS_MAX_TERMS_PER_SECOND,
    &ANALYTICS_CLAIM_LEASE_MS,
    &ANALYTICS_COALESCE_MS,
    &FOLD_INTERVAL_MS,
    &FOLD_POLL_INTERVAL_MS,
    &FOLD_MAX_PARTITIONS,
    &FOLD_MAX_DELTAS,
    &HTTP_PORT,
    &HTTP_BIND_ADDRESS,
    &DRAIN_TIMEOUT_MS,
    &OTEL_EXPORTER_OTLP_ENDPOINT,
    &OTEL_EXPORTER_OTLP_PROTOCOL,
    &OTEL_SERVICE_NAME,
    &OTEL_TRACES_SAMPLER_ARG,
    &TERMINATION_MESSAGE_PATH,
    &RUST_LOG,
];

/// The setting read from `env`.
pub fn by_env(env: &str) -> Option<&'static dyn Setting> {
    ALL.iter().copied().find(|s| s.env() == env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_flags_spell_the_variable() {
        for (i, setting) in ALL.iter().enumerate() {
            assert!(
                ALL[i + 1..].iter().all(|s| s.env() != setting.env()),
                "{} twice",
                setting.env()
            );
            if let Some(flag) = setting.flag() {
                assert_eq!(
                    flag,
                    setting.env().to_lowercase().replace('_', "-"),
                    "{}",
                    setting.env()
                );
            }
            assert!(!setting.doc().is_empty(), "{} has no doc", setting.env());
        }
    }

    #[test]
    fn defaults_are_accepted() {
        for setting in ALL {
            assert!(
                setting.default_is_allowed(),
                "{}: default {:?} outside {:?}",
                setting.env(),
                setting.default_value(),
                setting.allowed()
            );
        }
    }

    #[test]
    fn off_values_lie_outside_the_range() {
        let reap = CONSUMER_REAP_IDLE_MS;
        assert!(reap.accepts(0) && !reap.accepts(1) && reap.accepts(1_000));
        assert_eq!(
            reap.allowed(),
            "0 (never) or 1000..=604800000",
            "the message the worker prints"
        );
        assert_eq!(BATCH_SIZE.allowed(), "allowed range is 1..=10000");
    }

    #[test]
    fn the_partition_count_is_named_where_it_is_explained() {
        assert!(FOLD_MAX_PARTITIONS
            .doc
            .contains(&format!("(of {FOLD_PARTITIONS})")));
    }
}
