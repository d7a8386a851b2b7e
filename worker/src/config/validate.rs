//! Start-up checks of the command line: each setting against its catalog
//! range, URLs and CA files, with a message naming the variable, the bad
//! value and what is allowed.

use super::*;

/// A setting outside its allowed range: the message names all three.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {variable} (--{flag}) = {value}: {allowed}")]
pub struct InvalidSetting {
    pub variable: &'static str,
    pub flag: &'static str,
    pub value: String,
    pub allowed: String,
}

/// A setting of the catalog outside the values it accepts.
pub(super) fn check<T: Copy + PartialOrd + Display>(
    setting: &settings::Number<T>,
    value: T,
) -> Result<(), InvalidSetting> {
    if setting.accepts(value) {
        Ok(())
    } else {
        Err(invalid(
            setting.env,
            setting.flag,
            value,
            &setting.allowed(),
        ))
    }
}

/// A setting of the catalog whose range here depends on another setting
/// (e.g. at most the pool's maximum).
pub(super) fn check_within<T: PartialOrd + Display + Copy>(
    setting: &settings::Number<T>,
    value: T,
    range: RangeInclusive<T>,
) -> Result<(), InvalidSetting> {
    in_range(setting.env, setting.flag, value, range)
}

/// A command's argument (not a setting) outside its range.
pub(super) fn in_range<T: PartialOrd + Display + Copy>(
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

pub(super) fn invalid(
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
pub(super) fn check_ca_file(
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
pub(super) fn validate_redis(url: &str, ca_file: Option<&Path>) -> Result<(), InvalidSetting> {
    let tls = url.starts_with("rediss://");
    if !(tls || url.starts_with("redis://")) {
        return Err(invalid(
            settings::REDIS_URL.env,
            settings::REDIS_URL.flag,
            redact_url(url),
            "must start with redis:// or rediss://",
        ));
    }
    match ca_file {
        Some(path) if !tls => Err(invalid(
            settings::REDIS_CA_FILE.env,
            settings::REDIS_CA_FILE.flag,
            path.display(),
            "is set, so REDIS_URL must start with rediss:// (TLS)",
        )),
        Some(path) => check_ca_file(
            settings::REDIS_CA_FILE.env,
            settings::REDIS_CA_FILE.flag,
            path,
        ),
        None => Ok(()),
    }
}

impl DatabaseArgs {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if !(self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://"))
        {
            return Err(invalid(
                settings::DATABASE_URL.env,
                settings::DATABASE_URL.flag,
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
                        settings::DATABASE_URL.env,
                        settings::DATABASE_URL.flag,
                        redact_url(&self.database_url),
                        &format!(
                            "is not a valid PostgreSQL URL ({})",
                            telemetry::ErrorChain(&e)
                        ),
                    )
                })?;
            if !crate::tls::pg_mode_verifies(mode) {
                return Err(invalid(
                    settings::DATABASE_CA_FILE.env,
                    settings::DATABASE_CA_FILE.flag,
                    path.display(),
                    &format!(
                        "is set, so DATABASE_URL needs sslmode=verify-full or verify-ca (it has {})",
                        pg_mode_name(mode)
                    ),
                ));
            }
            check_ca_file(
                settings::DATABASE_CA_FILE.env,
                settings::DATABASE_CA_FILE.flag,
                path,
            )?;
        }
        check(
            &settings::DB_POOL_MAX_CONNECTIONS,
            self.db_pool_max_connections,
        )?;
        check_within(
            &settings::DB_POOL_MIN_CONNECTIONS,
            self.db_pool_min_connections,
            settings::DB_POOL_MIN_CONNECTIONS.min..=self.db_pool_max_connections,
        )?;
        check(
            &settings::DB_STATEMENT_TIMEOUT_MS,
            self.db_statement_timeout_ms,
        )?;
        check(
            &settings::DB_IDLE_IN_TRANSACTION_TIMEOUT_MS,
            self.db_idle_in_transaction_timeout_ms,
        )?;
        check(&settings::DB_ACQUIRE_TIMEOUT_MS, self.db_acquire_timeout_ms)
    }
}

// The domain modules' settings, from the command line. Modules below this
// one take these plain structs and never see clap.

/// The `sslmode` spelling of a mode, for messages.
pub(super) fn pg_mode_name(mode: sqlx::postgres::PgSslMode) -> &'static str {
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
                settings::REDIS_STREAMS.env,
                settings::REDIS_STREAMS.flag,
                format!("{streams:?}"),
                "a comma-separated list of non-empty stream names",
            ));
        }
        let mut unique = self.redis_streams.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != self.redis_streams.len() {
            return Err(invalid(
                settings::REDIS_STREAMS.env,
                settings::REDIS_STREAMS.flag,
                format!("{streams:?}"),
                "stream names must be distinct",
            ));
        }
        for (variable, flag, value) in [
            (
                settings::CONSUMER_GROUP.env,
                settings::CONSUMER_GROUP.flag,
                &self.consumer_group,
            ),
            (
                settings::CONSUMER_NAME.env,
                settings::CONSUMER_NAME.flag,
                &self.consumer_name,
            ),
        ] {
            let max = settings::CONSUMER_NAME_MAX_CHARS;
            if value.trim().is_empty() || value.len() > max || value.chars().any(char::is_control) {
                return Err(invalid(
                    variable,
                    flag,
                    format!("{value:?}"),
                    &format!("1 to {max} printable characters"),
                ));
            }
        }
        check(&settings::BATCH_SIZE, self.batch_size)?;
        check(&settings::BATCH_TIMEOUT_MS, self.batch_timeout_ms)?;
        check(&settings::CLAIM_IDLE_MS, self.claim_idle_ms)?;
        check(&settings::CLAIM_INTERVAL_MS, self.claim_interval_ms)?;
        check(&settings::CONSUMER_REAP_IDLE_MS, self.consumer_reap_idle_ms)?;
        check(&settings::CONSUMER_CONCURRENCY, self.consumer_concurrency)?;
        check(
            &settings::MAX_ENTRIES_PER_SECOND,
            self.max_entries_per_second,
        )
    }
}

impl AnalyticsArgs {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        check(&settings::ANALYTICS_CONCURRENCY, self.analytics_concurrency)?;
        check(&settings::ANALYTICS_BATCH_SIZE, self.analytics_batch_size)?;
        check(
            &settings::ANALYTICS_POLL_INTERVAL_MS,
            self.analytics_poll_interval_ms,
        )?;
        check(
            &settings::ANALYTICS_MAX_ATTEMPTS,
            self.analytics_max_attempts,
        )?;
        check(
            &settings::ANALYTICS_BACKOFF_BASE_MS,
            self.analytics_backoff_base_ms,
        )?;
        check_within(
            &settings::ANALYTICS_BACKOFF_MAX_MS,
            self.analytics_backoff_max_ms,
            self.analytics_backoff_base_ms..=settings::ANALYTICS_BACKOFF_MAX_MS.max,
        )?;
        check(
            &settings::ANALYTICS_CLAIM_LEASE_MS,
            self.analytics_claim_lease_ms,
        )?;
        check(&settings::ANALYTICS_COALESCE_MS, self.analytics_coalesce_ms)?;
        check(
            &settings::ANALYTICS_MAX_TERMS_PER_SECOND,
            self.analytics_max_terms_per_second,
        )
    }
}

impl HttpArgs {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        check(&settings::HTTP_PORT, self.http_port)?;
        check(&settings::DRAIN_TIMEOUT_MS, self.drain_timeout_ms)
    }
}

impl DrainArgs {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        check(&settings::HTTP_PORT, self.http_port)?;
        check(&settings::DRAIN_TIMEOUT_MS, self.drain_timeout_ms)
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
