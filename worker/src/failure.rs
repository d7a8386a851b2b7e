//! The one failure policy for database work: how an error is classified,
//! and [`retry`], the loop that applies it to a database operation (batches,
//! persistence's conflict reruns, reorgs and control entries, analytics,
//! rollback). Its delays come from [`crate::backoff`], as do those of the
//! loops that retry something else (Redis reads and acknowledgements) or
//! report failures their own way (the fold loop: ADR 0020).
//!
//! Only data errors that belong to an entry may cost that entry: SQLSTATE
//! classes 22 (data exception) and 23 (integrity constraint violation).
//! Everything else (statement or lock timeouts, revoked privileges, a missing
//! table or column, a read-only database, internal errors, connection loss and
//! every error that does not come from the server) is an outage of the
//! database or of the deployment: it is retried with jittered backoff until it
//! works or the process stops, it makes `/readyz` false while it lasts, and a
//! metric and a WARN line name its SQLSTATE. Nothing is acknowledged and
//! nothing is dead-lettered because of an outage.

use crate::backoff::{self, Backoff, BackoffPolicy};
use crate::health::{Health, Source};
use crate::lifecycle;
use crate::metrics::{Metrics, OutageLabel};
use std::borrow::Cow;
use std::future::Future;
use tokio_util::sync::CancellationToken;

/// What a failed database operation means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Serialization failure (40001) or deadlock (40P01): run it again soon.
    Conflict,
    /// The database refused the data itself (SQLSTATE class 22 or 23): the
    /// entry responsible is isolated and dead-lettered.
    Data,
    /// Anything else: wait, retry, stay unready; never dead-letter.
    Outage,
}

/// An error that can be classified by the failure policy.
pub trait Classify: std::error::Error {
    fn failure(&self) -> Failure;
    /// The SQLSTATE, or a short name for errors that do not come from the server.
    fn sqlstate(&self) -> Cow<'static, str>;
}

impl Classify for sqlx::Error {
    fn failure(&self) -> Failure {
        match self {
            sqlx::Error::Database(db) => classify_sqlstate(db.code().as_deref()),
            _ => Failure::Outage,
        }
    }

    fn sqlstate(&self) -> Cow<'static, str> {
        let name = match self {
            sqlx::Error::Database(db) => {
                return db
                    .code()
                    .map_or(Cow::Borrowed("unknown"), |c| Cow::Owned(c.into_owned()))
            }
            sqlx::Error::Io(_) => "io",
            sqlx::Error::Tls(_) => "tls",
            sqlx::Error::Protocol(_) => "protocol",
            sqlx::Error::PoolTimedOut => "pool_timed_out",
            sqlx::Error::PoolClosed => "pool_closed",
            sqlx::Error::WorkerCrashed => "worker_crashed",
            sqlx::Error::Configuration(_) => "configuration",
            sqlx::Error::RowNotFound => "row_not_found",
            sqlx::Error::TypeNotFound { .. } => "type_not_found",
            sqlx::Error::ColumnIndexOutOfBounds { .. } => "column_index_out_of_bounds",
            sqlx::Error::ColumnNotFound(_) => "column_not_found",
            sqlx::Error::ColumnDecode { .. } => "column_decode",
            sqlx::Error::Decode(_) => "decode",
            sqlx::Error::Encode(_) => "encode",
            sqlx::Error::Migrate(_) => "migrate",
            _ => "other",
        };
        Cow::Borrowed(name)
    }
}

/// The policy on a SQLSTATE (PostgreSQL appendix A).
pub fn classify_sqlstate(code: Option<&str>) -> Failure {
    match code {
        Some("40001" | "40P01") => Failure::Conflict,
        Some(code) if code.starts_with("22") || code.starts_with("23") => Failure::Data,
        _ => Failure::Outage,
    }
}

/// Whether `error` is a unique violation (23505) on one of `tables`: a
/// COPY of events meeting an event already stored (a redelivery), which
/// persistence answers by writing the batch again with
/// `ON CONFLICT DO NOTHING` (ADR 0022), not as a refusal of the data.
pub fn is_duplicate_key(error: &sqlx::Error, tables: &[&str]) -> bool {
    let sqlx::Error::Database(db) = error else {
        return false;
    };
    db.code().as_deref() == Some("23505")
        && db
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .and_then(|pg| pg.table())
            .is_some_and(|table| tables.contains(&table))
}

/// SQLSTATEs of text the database cannot hold in its encoding: 22021
/// (character_not_in_repertoire: invalid byte sequence) and 22P05
/// (untranslatable_character). Data errors; whether they happen depends on
/// the database's encoding, which their dead letter therefore names.
pub const ENCODING_SQLSTATES: [&str; 2] = ["22021", "22P05"];

/// Why the database refused `subject` (an entry, an item of one), for its
/// dead letter: the server's message and detail and the SQLSTATE, plus the
/// database's encoding for an encoding error.
pub fn refusal_reason(
    subject: &str,
    error: &sqlx::Error,
    database_encoding: Option<&str>,
) -> String {
    let reason = match error {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            let detail = db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .and_then(|pg| pg.detail())
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            let encoding = match database_encoding {
                Some(encoding) if ENCODING_SQLSTATES.contains(&code.as_ref()) => {
                    format!("; the database's encoding is {encoding}")
                }
                _ => String::new(),
            };
            format!(
                "database refused {subject}: {}{detail} (SQLSTATE {code}{encoding})",
                db.message()
            )
        }
        other => format!("database refused {subject}: {other}"),
    };
    reason.replace('\0', "")
}

/// Shorthand for [`Classify::failure`].
pub fn classify<E: Classify + ?Sized>(error: &E) -> Failure {
    error.failure()
}

/// Bounded, quick reruns of conflicting transactions.
#[derive(Debug, Clone, Copy)]
pub struct ConflictRetry {
    /// Attempts in all (the first included) before the conflict is returned.
    pub max_attempts: u32,
    /// The pauses between reruns (one of [`crate::backoff`]'s policies).
    pub backoff: BackoffPolicy,
}

impl ConflictRetry {
    /// Run once: a conflict is returned to the caller at once.
    pub const NONE: ConflictRetry = ConflictRetry {
        max_attempts: 1,
        backoff: BackoffPolicy::NONE,
    };
}

impl Default for ConflictRetry {
    /// A batch transaction's reruns.
    fn default() -> Self {
        Self {
            max_attempts: 20,
            backoff: backoff::BATCH_CONFLICT,
        }
    }
}

/// Where an outage is reported while it is retried.
pub struct OutageRetry<'a> {
    pub metrics: &'a Metrics,
    pub health: &'a Health,
    /// The health slot of this task (one per loop), unready while the outage lasts.
    pub source: &'a Source,
    /// The `operation` label of the outage metric (`batch`, `analytics`, …).
    pub operation: &'static str,
    /// Stops the retries (the last error is returned); `None`: retry until it works.
    pub stop: Option<&'a CancellationToken>,
    /// The pauses between retries (one of [`crate::backoff`]'s policies).
    pub backoff: BackoffPolicy,
}

/// How [`retry`] treats each kind of failure.
pub struct Policy<'a> {
    pub conflicts: ConflictRetry,
    /// `None`: an outage is returned to the caller (an outer [`retry`] handles it).
    pub outages: Option<OutageRetry<'a>>,
}

/// A result of [`retry`] with the number of conflicting attempts rerun.
#[derive(Debug)]
pub struct Retried<T> {
    pub value: T,
    pub conflict_retries: u32,
}

/// The one retry loop: runs `attempt` until it succeeds, reruns conflicts
/// (bounded), and with `policy.outages` waits out outages with jittered
/// backoff, reporting each one. Data errors are returned at once, as are
/// conflicts once their attempts are spent (without an outage policy) and
/// outages when stopped. Conflicts that outlast their attempts under an
/// outage policy are waited out like an outage: something holds the rows.
pub async fn retry<T, E, F, Fut>(policy: &Policy<'_>, mut attempt: F) -> Result<Retried<T>, E>
where
    E: Classify,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut conflicts = Backoff::new(policy.conflicts.backoff);
    let mut outages = Backoff::new(
        policy
            .outages
            .as_ref()
            .map_or(BackoffPolicy::NONE, |o| o.backoff),
    );
    loop {
        let error = match attempt().await {
            Ok(value) => {
                if let Some(o) = &policy.outages {
                    if outages.failures() > 0 {
                        tracing::info!(
                            operation = o.operation,
                            attempts = outages.failures() + 1,
                            "database usable again after an outage; continuing"
                        );
                    }
                    o.health.clear(o.source);
                }
                return Ok(Retried {
                    value,
                    conflict_retries: conflicts.failures(),
                });
            }
            Err(error) => error,
        };
        let failure = error.failure();
        if failure == Failure::Conflict && conflicts.failures() + 1 < policy.conflicts.max_attempts
        {
            let delay = conflicts.next_delay();
            tracing::debug!(attempt = conflicts.failures(), %error, "transaction conflict; retrying");
            tokio::time::sleep(delay).await;
            continue;
        }
        let Some(o) = &policy.outages else {
            return Err(error);
        };
        if failure == Failure::Data {
            return Err(error);
        }
        let delay = outages.next_delay();
        report_outage(o.metrics, o.health, o.source, o.operation, &error);
        match o.stop {
            Some(stop) => {
                if !lifecycle::pause(stop, delay).await {
                    return Err(error);
                }
            }
            None => tokio::time::sleep(delay).await,
        }
    }
}

/// Counts the outage by SQLSTATE and operation, logs it at WARN, and marks
/// the source unready until its next success.
pub fn report_outage<E: Classify>(
    metrics: &Metrics,
    health: &Health,
    source: &Source,
    operation: &'static str,
    error: &E,
) {
    let sqlstate = error.sqlstate();
    metrics
        .database_outage_errors
        .get_or_create(&OutageLabel {
            sqlstate: sqlstate.to_string(),
            operation: operation.to_string(),
        })
        .inc();
    // With its causes: a wrapper such as "PostgreSQL is unavailable" says little alone.
    let error = telemetry::ErrorChain(error);
    tracing::warn!(%sqlstate, operation, %error,
        "database outage; retrying with backoff (nothing acknowledged or dead-lettered)");
    health.outage(source, format!("SQLSTATE {sqlstate}: {error}"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    #[test]
    fn only_classes_22_and_23_are_data() {
        for code in ["22003", "22P02", "22001", "23505", "23502", "23514"] {
            assert_eq!(classify_sqlstate(Some(code)), Failure::Data, "{code}");
        }
        for code in ["40001", "40P01"] {
            assert_eq!(classify_sqlstate(Some(code)), Failure::Conflict, "{code}");
        }
        for code in [
            "57014", "55P03", "42501", "42P01", "42703", "25006", "XX000", "08006", "53300",
            "57P01", "0A000", "42804",
        ] {
            assert_eq!(classify_sqlstate(Some(code)), Failure::Outage, "{code}");
        }
        assert_eq!(classify_sqlstate(None), Failure::Outage);
    }

    #[test]
    fn errors_not_from_the_server_are_outages() {
        let errors = [
            sqlx::Error::Io(std::io::Error::other("reset")),
            sqlx::Error::Protocol("bad".into()),
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::ColumnNotFound("x".into()),
            sqlx::Error::RowNotFound,
            sqlx::Error::Decode("bad".into()),
        ];
        for error in &errors {
            assert_eq!(classify(error), Failure::Outage, "{error}");
        }
        assert_eq!(sqlx::Error::PoolTimedOut.sqlstate(), "pool_timed_out");
        assert_eq!(sqlx::Error::Io(std::io::Error::other("x")).sqlstate(), "io");
    }

    /// A stand-in error carrying a SQLSTATE, for exercising the loop.
    #[derive(Debug)]
    struct Coded(&'static str);
    impl std::fmt::Display for Coded {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "error {}", self.0)
        }
    }
    impl std::error::Error for Coded {}
    impl Classify for Coded {
        fn failure(&self) -> Failure {
            classify_sqlstate(Some(self.0))
        }
        fn sqlstate(&self) -> Cow<'static, str> {
            Cow::Borrowed(self.0)
        }
    }

    const QUICK: BackoffPolicy =
        BackoffPolicy::new(Duration::from_millis(1), Duration::from_millis(2));

    fn quick_conflicts(max_attempts: u32) -> ConflictRetry {
        ConflictRetry {
            max_attempts,
            backoff: QUICK,
        }
    }

    #[tokio::test]
    async fn conflicts_are_rerun_then_returned() {
        let calls = AtomicU32::new(0);
        let policy = Policy {
            conflicts: quick_conflicts(3),
            outages: None,
        };
        let result: Result<Retried<()>, Coded> = retry(&policy, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Coded("40P01"))
        })
        .await;
        assert_eq!(result.unwrap_err().0, "40P01");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn data_errors_return_at_once_even_with_an_outage_policy() {
        let (metrics, health, source) =
            (Metrics::new(), Health::new(true, false), Source::batch("t"));
        let calls = AtomicU32::new(0);
        let policy = Policy {
            conflicts: quick_conflicts(3),
            outages: Some(OutageRetry {
                metrics: &metrics,
                health: &health,
                source: &source,
                operation: "test",
                stop: None,
                backoff: QUICK,
            }),
        };
        let result: Result<Retried<()>, Coded> = retry(&policy, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Coded("23505"))
        })
        .await;
        assert_eq!(result.unwrap_err().0, "23505");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn outages_are_waited_out_unready_and_counted_by_sqlstate() {
        let (metrics, health, source) =
            (Metrics::new(), Health::new(true, false), Source::batch("t"));
        health.probe_ok(&Source::postgres_probe());
        health.probe_ok(&Source::redis_probe());
        health.set_schema_usable(true);
        assert!(health.ready());
        let calls = AtomicU32::new(0);
        let policy = Policy {
            conflicts: quick_conflicts(3),
            outages: Some(OutageRetry {
                metrics: &metrics,
                health: &health,
                source: &source,
                operation: "batch",
                stop: None,
                backoff: QUICK,
            }),
        };
        let seen_unready = AtomicU32::new(0);
        let result: Result<Retried<u32>, Coded> = retry(&policy, || async {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            if n > 0 && !health.ready() {
                seen_unready.fetch_add(1, Ordering::SeqCst);
            }
            match n {
                0 | 1 => Err(Coded("57014")),
                2 => Err(Coded("42501")),
                _ => Ok(n),
            }
        })
        .await;
        assert_eq!(result.unwrap().value, 3);
        assert_eq!(seen_unready.load(Ordering::SeqCst), 3);
        assert!(health.ready(), "ready again after the outage");
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"pgw_database_outage_errors_total{sqlstate="57014",operation="batch"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"sqlstate="42501""#), "{text}");
    }

    #[tokio::test]
    async fn a_stop_ends_the_outage_wait_with_the_error() {
        let (metrics, health, source) = (
            Metrics::new(),
            Health::new(false, true),
            Source::analytics(0),
        );
        let stop = CancellationToken::new();
        stop.cancel();
        let policy = Policy {
            conflicts: ConflictRetry::NONE,
            outages: Some(OutageRetry {
                metrics: &metrics,
                health: &health,
                source: &source,
                operation: "analytics",
                stop: Some(&stop),
                backoff: QUICK,
            }),
        };
        let result: Result<Retried<()>, Coded> =
            retry(&policy, || async { Err(Coded("25006")) }).await;
        assert_eq!(result.unwrap_err().0, "25006");
    }
}
