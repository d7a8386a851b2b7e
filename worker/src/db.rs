//! PostgreSQL pool and schema migrations.

use crate::config::DatabaseArgs;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::ConnectOptions;
use sqlx::PgPool;
use std::str::FromStr;

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
    Sql(#[from] sqlx::Error),
}

/// A pool that connects lazily: a database that is down at start-up makes the
/// process unready, not crash.
/// TLS follows the URL's `sslmode` and `sslrootcert`, with the CA of
/// `DATABASE_CA_FILE` when set.
pub fn pool(args: &DatabaseArgs, application_name: &str) -> Result<PgPool, DbError> {
    let options = PgConnectOptions::from_str(&args.database_url).map_err(DbError::BadUrl)?;
    let options = crate::tls::pg_with_ca(options, args.database_ca_file.as_deref())?
        .application_name(application_name)
        // A batch statement waiting a second for another batch's row locks is
        // normal under load; sqlx would log each one, SQL text included, at
        // WARN. Shown with RUST_LOG=sqlx=info; the batch metrics cover it.
        .log_slow_statements(log::LevelFilter::Info, std::time::Duration::from_secs(1));
    Ok(PgPoolOptions::new()
        .min_connections(args.db_pool_min_connections)
        .max_connections(args.db_pool_max_connections)
        .acquire_timeout(args.acquire_timeout())
        .connect_lazy_with(options))
}

/// Applies pending migrations. sqlx holds a PostgreSQL advisory lock while it
/// migrates, so two pods running this at once apply each migration once.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
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
