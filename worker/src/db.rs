//! PostgreSQL pool and schema migrations.

use crate::queries;
use crate::tcp::{KEEPALIVE_COUNT, KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, TCP_USER_TIMEOUT_MS};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::ConnectOptions;
use sqlx::PgPool;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Schema version this binary expects (the newest embedded migration).
pub fn expected_schema_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("DATABASE_URL is not a valid PostgreSQL URL")]
    BadUrl(#[source] sqlx::Error),
    #[error(transparent)]
    Ca(#[from] crate::tls::CaFileError),
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Declaration(#[from] DeclarationError),
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

/// Where PostgreSQL is, how the pool is sized and how long a session may
/// hold locks (the DATABASE_* and DB_* settings, built from the command line
/// by `config`).
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub url: String,
    /// CA of PostgreSQL's TLS certificate (with sslmode verify-ca or verify-full).
    pub ca_file: Option<PathBuf>,
    pub min_connections: u32,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    pub statement_timeout_ms: u64,
    pub idle_in_transaction_timeout_ms: u64,
}

impl From<&DatabaseSettings> for DatabaseSettings {
    fn from(settings: &DatabaseSettings) -> Self {
        settings.clone()
    }
}

/// A pool that connects lazily: a database that is down at start-up makes the
/// process unready, not crash.
/// TLS follows the URL's `sslmode` and `sslrootcert`, with the CA of
/// `DATABASE_CA_FILE` when set. Every session gets the hold bounds that do
/// not cut long work short ([`hold_bounds`] without a statement timeout):
/// commands (`verify`, `rebuild`, `rollback`) run whole-table statements.
pub fn pool(
    settings: impl Into<DatabaseSettings>,
    application_name: &str,
) -> Result<PgPool, DbError> {
    pool_with(&settings.into(), application_name, false)
}

/// The pool of `run` and `analytics`: [`pool`] with every hold bound,
/// statement and lock timeouts included (ADR 0019).
pub fn worker_pool(
    settings: impl Into<DatabaseSettings>,
    application_name: &str,
) -> Result<PgPool, DbError> {
    pool_with(&settings.into(), application_name, true)
}

fn pool_with(
    settings: &DatabaseSettings,
    application_name: &str,
    statement_bound: bool,
) -> Result<PgPool, DbError> {
    let options = PgConnectOptions::from_str(&settings.url).map_err(DbError::BadUrl)?;
    let options = crate::tls::pg_with_ca(options, settings.ca_file.as_deref())?
        .application_name(application_name)
        .options(hold_bounds(settings, statement_bound))
        // A batch statement waiting a second for another batch's row locks is
        // normal under load; sqlx would log each one, SQL text included, at
        // WARN. Shown with RUST_LOG=sqlx=info; the batch metrics cover it.
        .log_slow_statements(log::LevelFilter::Info, std::time::Duration::from_secs(1));
    Ok(PgPoolOptions::new()
        .min_connections(settings.min_connections)
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .connect_lazy_with(options))
}

/// Session settings that bound how long a session can hold locks whatever
/// happens to its client (ADR 0019), sent at connection start-up so that
/// every pooled connection has them:
/// - `idle_in_transaction_session_timeout`: a frozen client (SIGSTOP, GC
///   pause, frozen node) whose session sits idle inside a transaction is
///   ended and its transaction rolled back;
/// - server-side TCP keepalives and `tcp_user_timeout`: a client whose node
///   or network is gone is noticed;
/// - with `statement_bound`, `statement_timeout` and `lock_timeout`: no
///   statement, nor a wait for a lock, outlasts the bound; and the plans of
///   keyed statements ([`KEYED_STATEMENT_PLANS`]).
pub fn hold_bounds(
    settings: &DatabaseSettings,
    statement_bound: bool,
) -> Vec<(&'static str, String)> {
    let mut options = vec![
        (
            "idle_in_transaction_session_timeout",
            settings.idle_in_transaction_timeout_ms.to_string(),
        ),
        ("tcp_keepalives_idle", KEEPALIVE_IDLE_S.to_string()),
        ("tcp_keepalives_interval", KEEPALIVE_INTERVAL_S.to_string()),
        ("tcp_keepalives_count", KEEPALIVE_COUNT.to_string()),
        ("tcp_user_timeout", TCP_USER_TIMEOUT_MS.to_string()),
    ];
    if statement_bound {
        options.push((
            "statement_timeout",
            settings.statement_timeout_ms.to_string(),
        ));
        options.push(("lock_timeout", settings.statement_timeout_ms.to_string()));
        options.extend(
            KEYED_STATEMENT_PLANS
                .iter()
                .map(|(name, value)| (*name, value.to_string())),
        );
    }
    options
}

/// How the sessions of `run` and `analytics` plan (ADR 0021). Every one of
/// their statements takes parameter arrays and reads rows by key through an
/// index (`LATERAL … OFFSET 0`, `ON CONFLICT`, ADR 0008), so the right plan
/// never depends on the values or on the tables' sizes:
/// - `plan_cache_mode`: each prepared statement is planned once per
///   connection, instead of on every execution (about 5 % of PostgreSQL's
///   CPU under load went to planning the same plans again);
/// - `enable_seqscan`: a plan made while a table is small (a fresh database,
///   or statistics not yet updated) still reads it by key, instead of
///   keeping a sequential scan of a table that has grown since;
/// - `jit`: off, as for any short keyed statement; and because a plan that
///   can only scan (a one-row table) carries the cost of a disabled scan,
///   which would otherwise JIT-compile it on every execution (~100 ms).
///
/// Commands (`verify`, `rebuild`, …) read whole tables and keep the defaults.
pub const KEYED_STATEMENT_PLANS: [(&str, &str); 3] = [
    ("plan_cache_mode", "force_generic_plan"),
    ("enable_seqscan", "off"),
    ("jit", "off"),
];

/// Applies pending migrations. sqlx holds a PostgreSQL advisory lock while it
/// migrates, so two pods running this at once apply each migration once. The
/// compatibility declarations are written before (so a running older binary
/// never sees a new migration without its declaration) and after (the first
/// time, the table is created by the migrations themselves).
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    let declared = declared_compatibility()?;
    record_compatibility(pool, &declared).await?;
    MIGRATOR.run(pool).await?;
    record_compatibility(pool, &declared).await?;
    Ok(())
}

/// The newest successfully applied migration, or `None` before the first.
pub async fn applied_schema_version(pool: &PgPool) -> Result<Option<i64>, sqlx::Error> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(None);
    }
    sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
}

/// The comment line by which a migration declares the oldest binary schema it
/// keeps working (migrations/README.md): `-- compatible-with-binaries-from: N`.
pub const COMPATIBILITY_HEADER: &str = "-- compatible-with-binaries-from:";

/// The first migration that must declare its compatibility; older ones predate
/// the rule and are never newer than a binary that reads the declarations.
pub const FIRST_DECLARING_MIGRATION: i64 = 7;

/// A migration's compatibility declaration that is missing or unreadable.
#[derive(Debug, thiserror::Error)]
#[error("migration {version} ({description}) needs a line `{COMPATIBILITY_HEADER} N` with 1 <= N <= {version}: {problem}")]
pub struct DeclarationError {
    pub version: i64,
    pub description: String,
    pub problem: &'static str,
}

/// (version, oldest compatible binary schema) of every embedded migration from
/// [`FIRST_DECLARING_MIGRATION`] on, read from their header lines.
pub fn declared_compatibility() -> Result<Vec<(i64, i64)>, DeclarationError> {
    MIGRATOR
        .iter()
        .filter(|m| m.version >= FIRST_DECLARING_MIGRATION)
        .map(|m| {
            let error = |problem| DeclarationError {
                version: m.version,
                description: m.description.to_string(),
                problem,
            };
            let value = m
                .sql
                .lines()
                .find_map(|l| l.trim().strip_prefix(COMPATIBILITY_HEADER))
                .ok_or_else(|| error("no such line"))?;
            let oldest: i64 = value
                .trim()
                .parse()
                .map_err(|_| error("N is not a number"))?;
            if !(1..=m.version).contains(&oldest) {
                return Err(error("N is out of range"));
            }
            Ok((m.version, oldest))
        })
        .collect()
}

/// Where the database's schema stands for this binary (readiness).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaState {
    /// No migration applied yet.
    Empty,
    /// Older than this binary's schema.
    Older { applied: i64 },
    /// Exactly this binary's schema.
    Current,
    /// Newer, and every newer migration keeps this binary working.
    NewerCompatible { applied: i64 },
    /// Newer, and migration `version` needs binaries of schema
    /// `oldest_compatible` or later (`None`: it declares nothing).
    NewerIncompatible {
        applied: i64,
        version: i64,
        oldest_compatible: Option<i64>,
    },
}

impl SchemaState {
    /// Whether this binary may work on the schema (and be ready).
    pub fn is_usable(&self) -> bool {
        matches!(
            self,
            SchemaState::Current | SchemaState::NewerCompatible { .. }
        )
    }
}

impl std::fmt::Display for SchemaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let own = expected_schema_version();
        match self {
            SchemaState::Empty => write!(f, "no migration applied; run `postgres-writer migrate`"),
            SchemaState::Older { applied } => write!(
                f,
                "schema version {applied} is older than this binary's {own}; run `postgres-writer migrate`"
            ),
            SchemaState::Current => write!(f, "schema version {own}"),
            SchemaState::NewerCompatible { applied } => write!(
                f,
                "schema version {applied} is newer than this binary's {own} and declared compatible with it"
            ),
            SchemaState::NewerIncompatible {
                applied,
                version,
                oldest_compatible: Some(oldest),
            } => write!(
                f,
                "schema version {applied} is newer than this binary's {own}; migration {version} needs binaries of schema {oldest} or later"
            ),
            SchemaState::NewerIncompatible {
                applied, version, ..
            } => write!(
                f,
                "schema version {applied} is newer than this binary's {own}; migration {version} declares no compatibility"
            ),
        }
    }
}

/// Compares the applied schema with this binary's: equal, or newer with every
/// newer migration declaring it keeps this binary working, is usable.
pub async fn schema_state(pool: &PgPool) -> Result<SchemaState, sqlx::Error> {
    let own = expected_schema_version();
    let Some(applied) = applied_schema_version(pool).await? else {
        return Ok(SchemaState::Empty);
    };
    if applied < own {
        return Ok(SchemaState::Older { applied });
    }
    if applied == own {
        return Ok(SchemaState::Current);
    }
    let has_table: bool =
        sqlx::query_scalar("SELECT to_regclass('schema_compatibility') IS NOT NULL")
            .fetch_one(pool)
            .await?;
    let newer: Vec<(i64, Option<i64>)> = if has_table {
        sqlx::query_as(queries::SCHEMA_NEWER_MIGRATIONS)
            .bind(own)
            .fetch_all(pool)
            .await?
    } else {
        vec![(applied, None)]
    };
    Ok(
        match newer
            .into_iter()
            .find(|(_, oldest)| oldest.is_none_or(|n| n > own))
        {
            Some((version, oldest_compatible)) => SchemaState::NewerIncompatible {
                applied,
                version,
                oldest_compatible,
            },
            None => SchemaState::NewerCompatible { applied },
        },
    )
}

/// Why a one-shot command did not run on this database's schema.
#[derive(Debug, thiserror::Error)]
pub enum SchemaRefusal {
    #[error("refusing to run `{command}`: {state}")]
    Unusable {
        command: &'static str,
        state: SchemaState,
    },
    #[error("reading the schema version for `{command}`")]
    Unreadable {
        command: &'static str,
        #[source]
        source: sqlx::Error,
    },
}

/// The check `/readyz` makes ([`SchemaState::is_usable`]), for the one-shot
/// commands that read or rewrite the read model (`verify`, `rebuild`,
/// `rollback`, `requeue`, `dead-letters replay`): on a schema this binary
/// does not know to be compatible they would misread or damage it, so they
/// refuse before touching anything (issue 22).
pub async fn require_usable_schema(
    pool: &PgPool,
    command: &'static str,
) -> Result<SchemaState, SchemaRefusal> {
    let state = schema_state(pool)
        .await
        .map_err(|source| SchemaRefusal::Unreadable { command, source })?;
    if state.is_usable() {
        Ok(state)
    } else {
        Err(SchemaRefusal::Unusable { command, state })
    }
}

/// Writes the embedded migrations' declarations into `schema_compatibility`
/// (nothing while the table does not exist yet).
async fn record_compatibility(pool: &PgPool, declared: &[(i64, i64)]) -> Result<(), sqlx::Error> {
    let has_table: bool =
        sqlx::query_scalar("SELECT to_regclass('schema_compatibility') IS NOT NULL")
            .fetch_one(pool)
            .await?;
    if has_table {
        let (versions, oldest): (Vec<i64>, Vec<i64>) = declared.iter().copied().unzip();
        sqlx::query(queries::RECORD_SCHEMA_COMPATIBILITY)
            .bind(versions)
            .bind(oldest)
            .execute(pool)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every migration from 0007 on declares its compatibility (migrations/README.md).
    #[test]
    fn every_new_migration_declares_its_compatibility() {
        let declared = declared_compatibility().expect("declarations");
        let versions: Vec<i64> = declared.iter().map(|d| d.0).collect();
        let expected: Vec<i64> = MIGRATOR
            .iter()
            .map(|m| m.version)
            .filter(|v| *v >= FIRST_DECLARING_MIGRATION)
            .collect();
        assert_eq!(versions, expected);
        assert!(declared.contains(&(8, 6)), "{declared:?}");
    }

    #[test]
    fn only_the_current_or_a_compatible_newer_schema_is_usable() {
        assert!(SchemaState::Current.is_usable());
        assert!(SchemaState::NewerCompatible { applied: 99 }.is_usable());
        assert!(!SchemaState::Empty.is_usable());
        assert!(!SchemaState::Older { applied: 1 }.is_usable());
        let blocked = SchemaState::NewerIncompatible {
            applied: 99,
            version: 98,
            oldest_compatible: None,
        };
        assert!(!blocked.is_usable());
        assert!(blocked
            .to_string()
            .contains("migration 98 declares no compatibility"));
    }
}
