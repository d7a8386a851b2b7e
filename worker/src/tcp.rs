//! TCP settings every connection to PostgreSQL and Redis carries (ADR 0019),
//! in one place below both `db` and `tls`, which apply them.

/// How an idle connection is probed: first probe after this many seconds of
/// silence, then every [`KEEPALIVE_INTERVAL_S`], giving up after
/// [`KEEPALIVE_COUNT`] unanswered ones; unacknowledged data is given up after
/// [`TCP_USER_TIMEOUT_MS`]. A vanished node or a partition ends the session,
/// and its transaction, within about 25 s instead of the kernel's 2 hours.
pub const KEEPALIVE_IDLE_S: u32 = 10;
pub const KEEPALIVE_INTERVAL_S: u32 = 5;
pub const KEEPALIVE_COUNT: u32 = 3;
pub const TCP_USER_TIMEOUT_MS: u32 = 25_000;
