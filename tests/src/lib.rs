//! Test support: a fresh database and fresh stream names per test, on the one
//! PostgreSQL and Redis that `scripts/test.sh` starts (PGW_TEST_DATABASE_URL,
//! PGW_TEST_REDIS_URL), plus helpers to feed entries, run workers in-process
//! or as processes, and compare whole read models.

use redis::AsyncConnectionConfig;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use worker::health::Health;
use worker::intake::StreamSettings;
use worker::metrics::Metrics;
use worker::pipeline::Consumer;

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with scripts/test.sh, which starts PostgreSQL and Redis")
    })
}

/// A name unique to this test run and call.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!("{prefix}_{}_{n}_{nanos:x}", std::process::id())
}

/// A freshly created and migrated database.
pub struct TestDb {
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn new() -> TestDb {
        TestDb::create_in(&env("PGW_TEST_DATABASE_URL")).await
    }

    /// A fresh database on the server of `admin_url` (a database URL).
    pub async fn create_in(admin_url: &str) -> TestDb {
        TestDb::create_with(admin_url, "").await
    }

    /// A fresh database whose server encoding is `encoding` (C locale), for
    /// text that encoding cannot hold.
    pub async fn with_encoding(encoding: &str) -> TestDb {
        let options =
            format!("ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0");
        TestDb::create_with(&env("PGW_TEST_DATABASE_URL"), &options).await
    }

    async fn create_with(admin_url: &str, options: &str) -> TestDb {
        let admin_url = admin_url.to_string();
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&admin_url)
            .await
            .expect("connect to the test PostgreSQL");
        let name = unique("pgw");
        sqlx::query(&format!("CREATE DATABASE {name} {options}"))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let url = match admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("PGW_TEST_DATABASE_URL has no database part"),
        };
        let pool = PgPoolOptions::new()
            .max_connections(20)
            .connect(&url)
            .await
            .expect("connect to test database");
        worker::db::migrate(&pool).await.expect("migrations");
        TestDb { url, pool }
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Every event table's rows as sorted text, one `row` expression per
    /// row (over the table aliased `e`), for comparing two databases.
    pub async fn event_rows(&self, row: &str) -> String {
        let mut out = String::new();
        for table in worker::catalog::EVENT_TABLES {
            let rows: Vec<String> = sqlx::query_scalar(&format!(
                "SELECT {row} FROM {table} e ORDER BY e.transaction_hash, e.log_index"
            ))
            .fetch_all(&self.pool)
            .await
            .unwrap();
            out.push_str(&format!(
                "## {table} ({} rows)\n{}\n",
                rows.len(),
                rows.join("\n")
            ));
        }
        out
    }

    /// Every derived table as sorted text, for comparing two databases.
    pub async fn snapshot(&self) -> String {
        let mut out = String::new();
        for table in worker::catalog::DERIVED_TABLES {
            let cols = table.columns.join(", ");
            let rows = sqlx::query(&format!(
                "SELECT row_to_json(x)::text FROM (SELECT {cols} FROM {} ORDER BY {cols}) x",
                table.name
            ))
            .fetch_all(&self.pool)
            .await
            .unwrap();
            out.push_str(&format!("## {} ({} rows)\n", table.name, rows.len()));
            for row in rows {
                out.push_str(&row.get::<String, _>(0));
                out.push('\n');
            }
        }
        out
    }

    /// Folds every pending delta into the base tables (ADR 0015), waiting
    /// for folders that hold a partition; returns the number folded here.
    pub async fn fold(&self) -> u64 {
        worker::fold::fold_until_empty(&self.pool).await.unwrap()
    }

    /// Unfolded deltas (all partitions).
    pub async fn pending_deltas(&self) -> i64 {
        worker::fold::stats(&self.pool).await.unwrap().0
    }

    /// Waits until running workers have folded every delta (they are woken
    /// by their own commits); panics after `timeout`.
    pub async fn wait_folded(&self, timeout: Duration) {
        let started = std::time::Instant::now();
        while self.pending_deltas().await > 0 {
            assert!(
                started.elapsed() < timeout,
                "deltas still unfolded after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Folds pending deltas (their analytics enqueue happens there), then
    /// runs the analytics queue until it is empty.
    pub async fn drain_analytics(&self) {
        self.fold().await;
        let settings = test_analytics_settings();
        loop {
            let report = worker::analytics::process_batch(&self.pool, &settings)
                .await
                .unwrap();
            if report.claimed == 0 {
                let left: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM analytics_queue WHERE parked_at IS NULL",
                )
                .fetch_one(&self.pool)
                .await
                .unwrap();
                if left == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Asserts `verify` finds no drift (analytics included).
    pub async fn assert_verified(&self) {
        let report = worker::verify::verify(&self.pool, 5).await.unwrap();
        assert!(
            report.is_clean(),
            "verify found drift:\n{}",
            report.render()
        );
    }
}

/// Asserts two snapshots are equal, showing the first differing line only.
pub fn assert_same_tables(actual: &str, expected: &str, what: &str) {
    if actual == expected {
        return;
    }
    let mut section = "";
    for (a, e) in actual.lines().zip(expected.lines()) {
        if e.starts_with("## ") {
            section = e;
        }
        if a != e {
            panic!("{what}: tables differ in {section}\n  got:      {a}\n  expected: {e}");
        }
    }
    panic!(
        "{what}: tables differ in length ({} vs {} lines)",
        actual.lines().count(),
        expected.lines().count()
    );
}

pub fn test_analytics_settings() -> worker::analytics::AnalyticsSettings {
    worker::analytics::AnalyticsSettings {
        batch_size: 200,
        poll_interval: Duration::from_millis(20),
        max_attempts: 3,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        max_terms_per_second: 0,
        claim_lease: Duration::from_secs(30),
        coalesce: Duration::ZERO,
    }
}

/// Fresh stream names on the test Redis.
pub struct TestRedis {
    pub url: String,
    pub con: redis::aio::MultiplexedConnection,
}

impl TestRedis {
    pub async fn new() -> TestRedis {
        let url = env("PGW_TEST_REDIS_URL");
        let client = redis::Client::open(url.as_str()).unwrap();
        let config =
            AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
        let con = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("connect to the test Redis");
        TestRedis { url, con }
    }

    pub async fn xadd(&mut self, stream: &str, field: &str, payload: &[u8]) -> String {
        redis::cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg(field)
            .arg(payload)
            .query_async(&mut self.con)
            .await
            .unwrap()
    }

    pub async fn xadd_all<'a>(&mut self, entries: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let mut pipe = redis::pipe();
        let mut n = 0;
        for (stream, payload) in entries {
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("payload")
                .arg(payload)
                .ignore();
            n += 1;
            if n % 500 == 0 {
                pipe.query_async::<()>(&mut self.con).await.unwrap();
                pipe = redis::pipe();
            }
        }
        if n % 500 != 0 {
            pipe.query_async::<()>(&mut self.con).await.unwrap();
        }
    }

    /// XADDs generated entries (each to its own stream).
    pub async fn publish(&mut self, entries: &[worker::generate::GeneratedEntry]) {
        self.xadd_all(
            entries
                .iter()
                .map(|e| (e.stream.as_str(), e.payload.as_str())),
        )
        .await;
    }

    /// (lag, pending) of a group on a stream.
    pub async fn backlog(&mut self, stream: &str, group: &str) -> (Option<u64>, u64) {
        let mut intake = worker::intake::StreamIntake::new(
            &self.url,
            &[stream.to_string()],
            group,
            "observer",
            10,
            Duration::from_millis(10),
        )
        .unwrap();
        let b = intake.backlog().await.unwrap().remove(0);
        (b.lag, b.pending)
    }

    /// Waits until every stream's group has neither lag nor pending entries.
    pub async fn wait_until_idle(&mut self, streams: &[String], group: &str, timeout: Duration) {
        let started = std::time::Instant::now();
        loop {
            let mut idle = true;
            for s in streams {
                if self.backlog(s, group).await != (Some(0), 0) {
                    idle = false;
                }
            }
            if idle {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "streams not drained within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Settings for a consumer in tests: small batches, quick claims.
pub fn stream_args(
    redis_url: &str,
    streams: &[String],
    group: &str,
    consumer: &str,
) -> StreamSettings {
    StreamSettings {
        redis_url: redis_url.to_string(),
        redis_streams: streams.to_vec(),
        consumer_group: group.to_string(),
        consumer_name: consumer.to_string(),
        batch_size: 50,
        batch_timeout_ms: 50,
        claim_idle_ms: 1_000,
        claim_interval_ms: 200,
        consumer_reap_idle_ms: 3_600_000,
        max_entries_per_second: 0,
        sibling_consumers: Vec::new(),
        redis_ca_file: None,
    }
}

/// In-process consumers on the same group, stopped once every stream is
/// fully delivered and acknowledged.
pub async fn consume_until_idle(db: &TestDb, args: Vec<StreamSettings>, timeout: Duration) {
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for a in args.iter().cloned() {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&db.url)
            .await
            .unwrap();
        let consumer = Consumer {
            args: a,
            pool,
            metrics: Arc::new(Metrics::new()),
            health: Arc::new(Health::new(true, false)),
            fold_wake: None,
        };
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move { consumer.run(stop).await }));
    }
    let first = &args[0];
    let mut redis = TestRedis::new().await;
    let started = Instant::now();
    // Let consumers create their groups.
    tokio::time::sleep(Duration::from_millis(100)).await;
    loop {
        let mut idle = true;
        for stream in &first.redis_streams {
            let (lag, pending) = redis.backlog(stream, &first.consumer_group).await;
            if lag != Some(0) || pending != 0 {
                idle = false;
            }
        }
        if idle {
            break;
        }
        assert!(
            started.elapsed() < timeout,
            "consumers did not drain the streams within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    // In-process consumers run no fold loop: fold their deltas here, as a
    // `run` process's fold loop would (ADR 0015).
    db.fold().await;
}

/// The postgres-writer binary (built by scripts/test.sh).
pub fn worker_binary() -> std::path::PathBuf {
    if let Ok(path) = std::env::var("POSTGRES_WRITER_BIN") {
        return path.into();
    }
    // target/debug/deps/<test> -> target/debug/postgres-writer
    let exe = std::env::current_exe().unwrap();
    let candidate = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("postgres-writer"));
    match candidate {
        Some(path) if path.exists() => path,
        _ => panic!("postgres-writer binary not found: run scripts/test.sh (it builds it) or set POSTGRES_WRITER_BIN"),
    }
}

/// The previous release's worker binary (scripts/previous-release.sh builds
/// it; scripts/test.sh sets `PGW_PREVIOUS_RELEASE_BIN`), for tests of a
/// rolling upgrade between it and this build.
pub fn previous_release_binary() -> std::path::PathBuf {
    match std::env::var("PGW_PREVIOUS_RELEASE_BIN") {
        Ok(path) if std::path::Path::new(&path).exists() => path.into(),
        _ => panic!(
            "the previous release's binary is missing: run scripts/test.sh (it builds it with scripts/previous-release.sh) or set PGW_PREVIOUS_RELEASE_BIN"
        ),
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Builders of rindexer payloads for hand-written cases.
pub mod payload {
    use serde_json::{json, Value};

    pub const ADDR_A: &str = "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed";
    pub const ADDR_A_CHECKSUM: &str = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed";
    pub const ADDR_B: &str = "0xfb6916095ca1df60bb79ce92ce3ea74c37c5d359";
    pub const ADDR_B_CHECKSUM: &str = "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359";

    pub fn term(n: u64) -> String {
        format!("0x{n:064x}")
    }

    pub fn tx(n: u64) -> String {
        format!("0x{:064x}", n + 0xabc000)
    }

    /// transaction_information with the given chain position.
    pub fn info(tx_n: u64, block: u64, log_index: u64) -> Value {
        json!({
            "address": ADDR_B, "block_hash": term(block + 7), "block_number": block,
            "block_timestamp": format!("0x{:x}", 1_756_000_000 + block), "log_index": format!("0x{log_index:x}"),
            "network": "testnet", "transaction_hash": tx(tx_n), "transaction_index": 0
        })
    }

    pub fn with_info(mut fields: Value, tx_n: u64, block: u64, log_index: u64) -> Value {
        fields["transaction_information"] = info(tx_n, block, log_index);
        fields
    }

    pub fn envelope(event_name: &str, event_data: Value) -> String {
        json!({"event_name": event_name, "event_signature_hash": "0x00", "network": "testnet", "event_data": event_data})
            .to_string()
    }
}

/// Private server instances for fault tests that restart them (the shared
/// instances of scripts/test.sh must never go down under other tests).
pub mod servers;

/// A Redis of its own that speaks TLS only (`--port 0 --tls-port P`).
pub mod tls_redis {
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::{Duration, Instant};

    pub struct TlsRedis {
        dir: PathBuf,
        pub port: u16,
        ca_file: PathBuf,
    }

    impl TlsRedis {
        /// Serves `cert_file`/`key_file`; clients need no certificate of their own.
        pub fn start(cert_file: &Path, key_file: &Path, ca_file: &Path) -> TlsRedis {
            let dir = std::env::temp_dir().join(super::unique("pgw-tls-redis"));
            std::fs::create_dir_all(&dir).unwrap();
            let redis = TlsRedis {
                dir,
                port: super::free_port(),
                ca_file: ca_file.to_path_buf(),
            };
            let status = Command::new("redis-server")
                .args(["--port", "0", "--tls-port", &redis.port.to_string()])
                .args(["--bind", "127.0.0.1", "--daemonize", "yes"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--tls-cert-file")
                .arg(cert_file)
                .arg("--tls-key-file")
                .arg(key_file)
                .arg("--tls-ca-cert-file")
                .arg(ca_file)
                .args(["--tls-auth-clients", "no"])
                .arg("--dir")
                .arg(&redis.dir)
                .arg("--pidfile")
                .arg(redis.dir.join("redis.pid"))
                .arg("--logfile")
                .arg(redis.dir.join("redis.log"))
                .status()
                .expect("redis-server");
            assert!(status.success(), "redis-server with TLS did not start");
            let started = Instant::now();
            while !redis.cli(&["ping"]).starts_with("PONG") {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "redis (TLS) did not start: {}",
                    std::fs::read_to_string(redis.dir.join("redis.log")).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            redis
        }

        pub fn url(&self) -> String {
            format!("rediss://127.0.0.1:{}", self.port)
        }

        fn cli(&self, args: &[&str]) -> String {
            Command::new("redis-cli")
                .args(["--tls", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .arg("--cacert")
                .arg(&self.ca_file)
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        }
    }

    impl Drop for TlsRedis {
        fn drop(&mut self) {
            self.cli(&["shutdown", "nosave"]);
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The worker binary as a process, with the test's settings.
pub struct WorkerProcess {
    pub child: std::process::Child,
    pub port: u16,
}

impl WorkerProcess {
    /// `postgres-writer run` with small batches; `extra` env vars override.
    pub fn start(
        database_url: &str,
        redis_url: &str,
        streams: &[String],
        group: &str,
        consumer: &str,
        extra: &[(&str, &str)],
    ) -> WorkerProcess {
        WorkerProcess::start_binary(
            &worker_binary(),
            database_url,
            redis_url,
            streams,
            group,
            consumer,
            extra,
        )
    }

    /// [`WorkerProcess::start`] of another build of the worker (the previous
    /// release, for rolling-upgrade tests).
    pub fn start_binary(
        binary: &std::path::Path,
        database_url: &str,
        redis_url: &str,
        streams: &[String],
        group: &str,
        consumer: &str,
        extra: &[(&str, &str)],
    ) -> WorkerProcess {
        let port = free_port();
        let mut cmd = std::process::Command::new(binary);
        cmd.arg("run")
            .env("DATABASE_URL", database_url)
            .env("REDIS_URL", redis_url)
            .env("REDIS_STREAMS", streams.join(","))
            .env("CONSUMER_GROUP", group)
            .env("CONSUMER_NAME", consumer)
            .env("BATCH_SIZE", "20")
            .env("BATCH_TIMEOUT_MS", "50")
            .env("HTTP_PORT", port.to_string())
            .env("HTTP_BIND_ADDRESS", "127.0.0.1")
            .env("ANALYTICS_POLL_INTERVAL_MS", "50")
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn postgres-writer");
        WorkerProcess { child, port }
    }

    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        worker::http::request(addr, "GET", path, Duration::from_secs(2))
            .await
            .ok()
    }

    pub async fn wait_http(&self) {
        let started = Instant::now();
        while self.get("/livez").await.is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "worker HTTP did not come up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < timeout,
                "worker did not exit within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
