//! Fault injection under continuous load (issue 8). Each scenario feeds
//! generated events mixed with malformed entries while a fault happens, then
//! proves: every valid event stored exactly once, derived tables equal
//! `verify`'s recomputation, the dead-letter table holds exactly the bad
//! entries, and no entry is left pending. Each prints its figures.
//! `PGW_FAULT_LONG=1` runs ten times the load.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use system_tests::servers::{OwnPostgres, OwnRedis};
use system_tests::{unique, TestDb, WorkerProcess};
use worker::generate::{generate, stream_names, GeneratorSpec};

/// Generated entries with malformed ones mixed in.
struct Load {
    prefix: String,
    entries: Vec<(String, String)>,
    /// Expected rows per event table.
    expected: Vec<(&'static str, i64)>,
    bad_entries: usize,
}

fn load(seed: u64) -> Load {
    let long = std::env::var("PGW_FAULT_LONG").is_ok_and(|v| v == "1");
    let prefix = unique("fault");
    let generated = generate(&GeneratorSpec {
        events: if long { 40_000 } else { 4_000 },
        events_per_entry: 4,
        seed,
        accounts: 20,
        curves: 2,
        network: "testnet".into(),
        stream_prefix: prefix.clone(),
    });
    // Expected rows per event table, from the decoder itself on the clean entries.
    let mut counts = std::collections::BTreeMap::<&'static str, i64>::new();
    let mut keys = std::collections::HashSet::new();
    for e in &generated {
        let decoded = worker::decode::decode_entry(
            &Arc::from("s"),
            &Arc::from("0-0"),
            &[("payload".into(), e.payload.clone().into_bytes())],
        );
        for ev in decoded.events {
            if keys.insert((ev.position.transaction_hash.clone(), ev.position.log_index)) {
                *counts.entry(ev.body.kind().table()).or_default() += 1;
            }
        }
    }
    let expected = counts.into_iter().collect();
    let deposited_stream = format!("{prefix}_deposited");
    let mut entries = Vec::new();
    let mut bad_entries = 0;
    for (i, e) in generated.into_iter().enumerate() {
        entries.push((e.stream, e.payload));
        if i % 40 == 7 {
            let bad = match (i / 40) % 3 {
                0 => format!("{{not json {i}"),
                1 => format!(r#"{{"event_name":"Deposited","event_data":{{"termId":"0x{i:x}"}}}}"#),
                _ => format!(
                    r#"{{"event_name":"Deposited","event_data":[{{"sender":"0xnot-an-address-{i}"}}]}}"#
                ),
            };
            entries.push((deposited_stream.clone(), bad));
            bad_entries += 1;
        }
    }
    Load {
        prefix,
        entries,
        expected,
        bad_entries,
    }
}

/// XADDs the load at a steady pace (with retries while Redis is away);
/// returns the number of entries written.
fn produce(
    redis_url: String,
    entries: Vec<(String, String)>,
    sent: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = redis::Client::open(redis_url.as_str()).unwrap();
        let mut con = None;
        for chunk in entries.chunks(25) {
            loop {
                if con.is_none() {
                    con = client.get_multiplexed_async_connection().await.ok();
                }
                let Some(c) = con.as_mut() else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let mut pipe = redis::pipe();
                for (stream, payload) in chunk {
                    pipe.cmd("XADD")
                        .arg(stream)
                        .arg("*")
                        .arg("payload")
                        .arg(payload)
                        .ignore();
                }
                match pipe.query_async::<()>(c).await {
                    Ok(()) => break,
                    Err(_) => {
                        con = None;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            sent.fetch_add(chunk.len(), Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    })
}

async fn backlog(redis_url: &str, streams: &[String], group: &str) -> Option<(u64, u64)> {
    let mut intake = worker::intake::StreamIntake::new(
        redis_url,
        streams,
        group,
        "observer",
        10,
        Duration::from_millis(10),
    )
    .ok()?;
    let b = intake.backlog().await.ok()?;
    Some((
        b.iter()
            .fold(0u64, |sum, s| sum.saturating_add(s.lag.unwrap_or(u64::MAX))),
        b.iter().map(|s| s.pending).sum(),
    ))
}

/// One fault scenario: a fresh database, fresh streams, the load being
/// produced, and the clock.
struct Scenario {
    load: Load,
    db: TestDb,
    redis_url: String,
    streams: Vec<String>,
    group: String,
    sent: Arc<AtomicUsize>,
    started: Instant,
    producer: tokio::task::JoinHandle<()>,
}

impl Scenario {
    /// Starts producing the load for `seed` into Redis at `redis_url`.
    async fn start(seed: u64, db: TestDb, redis_url: String) -> Scenario {
        let load = load(seed);
        let streams = stream_names(&load.prefix);
        let sent = Arc::new(AtomicUsize::new(0));
        let producer = produce(redis_url.clone(), load.entries.clone(), sent.clone());
        Scenario {
            load,
            db,
            redis_url,
            streams,
            group: unique("g"),
            sent,
            started: Instant::now(),
            producer,
        }
    }

    fn worker(&self, name: &str, extra: &[(&str, &str)]) -> WorkerProcess {
        WorkerProcess::start(
            &self.db.url,
            &self.redis_url,
            &self.streams,
            &self.group,
            name,
            extra,
        )
    }

    /// Waits until about a third of the load is stored: the moment to strike.
    async fn wait_progress(&self) {
        let target = self
            .load
            .expected
            .iter()
            .find(|(t, _)| *t == "share_price_changed_events")
            .map_or(0, |(_, n)| *n)
            / 3;
        let started = Instant::now();
        while self.db.count("share_price_changed_events").await < target {
            assert!(started.elapsed() < Duration::from_secs(60), "no progress");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until everything is produced, consumed and analysed, then runs
    /// the exactness checks shared by every scenario and prints the figures
    /// ("recovered": from the end of the fault until nothing is left to do).
    async fn finish(&self, fault: &str, fault_over: Instant) {
        let (db, load) = (&self.db, &self.load);
        let timeout = Duration::from_secs(180);
        let idle_since = Instant::now();
        loop {
            if self.producer.is_finished()
                && backlog(&self.redis_url, &self.streams, &self.group).await == Some((0, 0))
                && db.count("analytics_queue").await == 0
            {
                break;
            }
            assert!(
                idle_since.elapsed() < timeout,
                "{fault}: not idle within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let recovered = fault_over.elapsed();
        let mut stored = 0;
        for (table, expected) in &load.expected {
            let n = db.count(table).await;
            assert_eq!(
                n, *expected,
                "{fault}: {table} holds {n}, expected exactly {expected}"
            );
            stored += n;
        }
        // Exactly the bad entries (a retried XADD may have delivered one twice: count distinct bytes).
        let dead: i64 = sqlx::query_scalar("SELECT count(DISTINCT raw_payload) FROM dead_letters")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(dead as usize, load.bad_entries, "{fault}: dead letters");
        db.drain_analytics().await;
        db.assert_verified().await;
        println!(
            "FAULT {fault:<22} entries sent {:>6} | events stored {stored:>6} (expected {:>6}) | dead-lettered {dead:>3} (bad {:>3}) | recovered in {:>6.2} s | total {:>6.2} s",
            self.sent.load(Ordering::SeqCst),
            load.expected.iter().map(|(_, n)| n).sum::<i64>(),
            load.bad_entries,
            recovered.as_secs_f64(),
            self.started.elapsed().as_secs_f64()
        );
    }
}

fn shared_redis() -> String {
    std::env::var("PGW_TEST_REDIS_URL").expect("PGW_TEST_REDIS_URL: run scripts/test.sh")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_batch_then_restart() {
    let run = Scenario::start(11, TestDb::new().await, shared_redis()).await;
    let mut w = run.worker("pod-0", &[]);
    run.wait_progress().await;
    w.signal("KILL");
    w.wait_exit(Duration::from_secs(10)).await;
    let restarted = Instant::now();
    // The same pod name: it first finishes its own pending entries.
    let _w = run.worker("pod-0", &[]);
    run.finish("sigkill+restart", restarted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_one_killed_its_pending_taken_over() {
    let run = Scenario::start(12, TestDb::new().await, shared_redis()).await;
    let claim = [("CLAIM_IDLE_MS", "1000"), ("CLAIM_INTERVAL_MS", "300")];
    let _a = run.worker("pod-a", &claim);
    let mut b = run.worker("pod-b", &claim);
    let _c = run.worker("pod-c", &claim);
    run.wait_progress().await;
    b.signal("KILL");
    b.wait_exit(Duration::from_secs(10)).await;
    let killed = Instant::now();
    run.finish("3 workers, 1 killed", killed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_run() {
    let pg = OwnPostgres::start();
    let mut run = Scenario::start(13, TestDb::create_in(&pg.url()).await, shared_redis()).await;
    let mut w = run.worker("pod-pg", &[]);
    w.wait_http().await;
    run.wait_progress().await;
    run.db.pool.close().await;
    pg.down();
    // Readiness goes false while PostgreSQL is away; the process keeps running.
    let outage = Instant::now();
    while w.get("/readyz").await.map(|r| r.0) != Some(503) {
        assert!(
            outage.elapsed() < Duration::from_secs(15),
            "readiness stayed true without PostgreSQL"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        w.is_running(),
        "the worker must not exit while PostgreSQL is down"
    );
    pg.up();
    let back = Instant::now();
    while w.get("/readyz").await.map(|r| r.0) != Some(200) {
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "readiness did not come back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "postgres restart: readiness back {:.2} s after PostgreSQL",
        back.elapsed().as_secs_f64()
    );
    let url = run.db.url.clone();
    run.db = TestDb {
        pool: sqlx::postgres::PgPoolOptions::new()
            .max_connections(5)
            .connect(&url)
            .await
            .unwrap(),
        url,
    };
    run.finish("postgres restart", back).await;
    assert!(w.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_run_with_persistence() {
    let redis = OwnRedis::start();
    let run = Scenario::start(14, TestDb::new().await, redis.url()).await;
    let mut w = run.worker("pod-r", &[]);
    w.wait_http().await;
    run.wait_progress().await;
    redis.down();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        w.is_running(),
        "the worker must not exit while Redis is down"
    );
    redis.up();
    let back = Instant::now();
    let before = run.db.count("share_price_changed_events").await;
    while run.db.count("share_price_changed_events").await == before && !run.producer.is_finished()
    {
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "no progress after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run.finish("redis restart (AOF)", back).await;
    assert!(w.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_during_load_exits_zero_with_nothing_unacked() {
    let run = Scenario::start(15, TestDb::new().await, shared_redis()).await;
    let mut w = run.worker("pod-d", &[("DRAIN_TIMEOUT_MS", "20000")]);
    w.wait_http().await;
    run.wait_progress().await;
    let drain_started = Instant::now();
    let drain = std::process::Command::new(system_tests::worker_binary())
        .arg("drain")
        .env("HTTP_PORT", w.port.to_string())
        .env("DRAIN_TIMEOUT_MS", "20000")
        .output()
        .unwrap();
    assert!(
        drain.status.success(),
        "{}",
        String::from_utf8_lossy(&drain.stderr)
    );
    let status = w.wait_exit(Duration::from_secs(20)).await;
    let drained_in = drain_started.elapsed();
    assert!(status.success(), "exit after drain: {status:?}");
    // Nothing this consumer committed is left unacknowledged.
    let (_, pending) = backlog(&run.redis_url, &run.streams, &run.group)
        .await
        .unwrap();
    assert_eq!(pending, 0, "entries left pending after the drain");
    // A replacement pod finishes the rest.
    let _next = run.worker("pod-d2", &[]);
    println!(
        "drain during load: drained and exited 0 in {:.2} s",
        drained_in.as_secs_f64()
    );
    run.finish("drain during load", drain_started).await;
}

/// A login role of the test's own (not a superuser) with the rights the
/// worker needs on the test's database; returns (role, its database URL).
async fn worker_role(db: &TestDb) -> (String, String) {
    let role = unique("pgw_worker");
    let database = db.url.rsplit_once('/').map(|(_, d)| d).unwrap().to_string();
    for statement in [
        format!("CREATE ROLE {role} LOGIN"),
        format!("GRANT CONNECT, TEMP ON DATABASE {database} TO {role}"),
        format!("GRANT USAGE ON SCHEMA public TO {role}"),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"),
        format!("GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {role}"),
    ] {
        sqlx::query(&statement).execute(&db.pool).await.unwrap();
    }
    let (scheme, rest) = db.url.split_once("://").unwrap();
    let host = rest.split_once('@').map_or(rest, |(_, h)| h);
    (role.clone(), format!("{scheme}://{role}@{host}"))
}

/// Ends every session of `role`: role-level settings apply to new sessions only.
async fn terminate_sessions(db: &TestDb, role: &str) {
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1")
        .bind(role)
        .execute(&db.pool)
        .await
        .unwrap();
}

async fn run_sql(db: &TestDb, statements: &[String]) {
    for statement in statements {
        sqlx::query(statement).execute(&db.pool).await.unwrap();
    }
}

async fn wait_ready(w: &WorkerProcess, status: u16, within: Duration, what: &str) -> Duration {
    let started = Instant::now();
    while w.get("/readyz").await.map(|r| r.0) != Some(status) {
        assert!(
            started.elapsed() < within,
            "{what}: /readyz never answered {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

/// A database fault: SQL that causes it, the SQLSTATE it must be reported
/// as, and SQL that fixes it.
struct DatabaseFault {
    name: &'static str,
    sqlstate: &'static str,
    inject: Vec<String>,
    fix: Vec<String>,
    /// Role or database settings: sessions must be renewed to see them.
    new_sessions: bool,
    /// Worker settings for this fault.
    worker_env: &'static [(&'static str, &'static str)],
}

/// Under load: strike, see the worker unready with the outage metric naming
/// the SQLSTATE, hold the fault, fix it, see it ready again and finish the
/// history with every event stored once and only the malformed entries
/// dead-lettered.
async fn database_outage(seed: u64, fault: impl FnOnce(&str) -> DatabaseFault) {
    let db = TestDb::new().await;
    let (role, url) = worker_role(&db).await;
    let fault = fault(&role);
    let run = Scenario::start(seed, db, shared_redis()).await;
    // Paced so that most of the history is still to be written when the fault strikes.
    let w = WorkerProcess::start(
        &url,
        &run.redis_url,
        &run.streams,
        &run.group,
        "pod-db",
        &[
            &[
                ("MAX_ENTRIES_PER_SECOND", "150"),
                ("ANALYTICS_CLAIM_LEASE_MS", "2000"),
            ],
            fault.worker_env,
        ]
        .concat(),
    );
    w.wait_http().await;
    wait_ready(&w, 200, Duration::from_secs(30), fault.name).await;
    run.wait_progress().await;

    run_sql(&run.db, &fault.inject).await;
    if fault.new_sessions {
        terminate_sessions(&run.db, &role).await;
    }
    let struck = Instant::now();
    let unready_in = wait_ready(&w, 503, Duration::from_secs(30), fault.name).await;
    let label = format!(r#"sqlstate="{}""#, fault.sqlstate);
    let started = Instant::now();
    loop {
        let metrics = w.get("/metrics").await.map(|r| r.1).unwrap_or_default();
        if metrics
            .lines()
            .any(|l| l.starts_with("pgw_database_outage_errors_total{") && l.contains(&label))
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{}: no outage metric with {label}:\n{}",
            fault.name,
            metrics
                .lines()
                .filter(|l| l.contains("outage"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health = w.get("/health").await.map(|r| r.1).unwrap_or_default();
    assert!(
        health.contains(fault.sqlstate),
        "{}: /health does not name {}: {health}",
        fault.name,
        fault.sqlstate
    );
    // The pipeline stays paused a while under the fault.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        w.get("/readyz").await.map(|r| r.0),
        Some(503),
        "{}: ready while the fault lasts",
        fault.name
    );
    let dead_during: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT raw_payload) FROM dead_letters")
            .fetch_one(&run.db.pool)
            .await
            .unwrap();
    assert!(
        dead_during as usize <= run.load.bad_entries,
        "{}: {dead_during} dead letters for {} malformed entries",
        fault.name,
        run.load.bad_entries
    );

    let stored_at_fix = run.db.count("share_price_changed_events").await;
    run_sql(&run.db, &fault.fix).await;
    if fault.new_sessions {
        terminate_sessions(&run.db, &role).await;
    }
    let fixed = Instant::now();
    let paused = fixed - struck;
    let ready_in = wait_ready(&w, 200, Duration::from_secs(60), fault.name).await;
    let mut resumed_in = None;
    while resumed_in.is_none() {
        if run.db.count("share_price_changed_events").await > stored_at_fix {
            resumed_in = Some(fixed.elapsed());
        }
        assert!(
            fixed.elapsed() < Duration::from_secs(60),
            "{}: no progress after the fix",
            fault.name
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The outage's error goes away with the success of the loop that hit it
    // (no stale `last_error`).
    let started = Instant::now();
    loop {
        let health: serde_json::Value = w
            .get("/health")
            .await
            .and_then(|r| serde_json::from_str(&r.1).ok())
            .unwrap_or_default();
        if health["errors"] == serde_json::json!({}) && health["last_error"].is_null() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{}: errors stay in /health after the fix: {health}",
            fault.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "OUTAGE {:<24} SQLSTATE {} | unready {:>5.2} s after the fault | paused {:>5.2} s | ready {:>5.2} s and writing {:>5.2} s after the fix",
        fault.name,
        fault.sqlstate,
        unready_in.as_secs_f64(),
        paused.as_secs_f64(),
        ready_in.as_secs_f64(),
        resumed_in.unwrap_or_default().as_secs_f64()
    );
    run.finish(fault.name, fixed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_statement_timeout_is_an_outage_not_bad_data() {
    // The worker's own statement bound (DB_STATEMENT_TIMEOUT_MS, ADR 0019)
    // is sent at connection start-up and so wins over a role setting: the
    // fault is a statement that outlasts it.
    database_outage(21, |_| DatabaseFault {
        name: "statement past DB_STATEMENT_TIMEOUT_MS",
        sqlstate: "57014",
        inject: vec![
            "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS \
             $$BEGIN PERFORM pg_sleep(3); RETURN NEW; END$$"
                .into(),
            "CREATE TRIGGER slow_insert BEFORE INSERT ON deposited_events \
             FOR EACH STATEMENT EXECUTE FUNCTION slow_insert()"
                .into(),
        ],
        fix: vec![
            "DROP TRIGGER slow_insert ON deposited_events".into(),
            "DROP FUNCTION slow_insert()".into(),
        ],
        new_sessions: false,
        worker_env: &[("DB_STATEMENT_TIMEOUT_MS", "2000")],
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_insert_is_an_outage_not_bad_data() {
    database_outage(22, |role| DatabaseFault {
        name: "revoked INSERT",
        sqlstate: "42501",
        inject: vec![format!("REVOKE INSERT ON deposited_events FROM {role}")],
        fix: vec![format!("GRANT INSERT ON deposited_events TO {role}")],
        new_sessions: false,
        worker_env: &[],
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_column_is_an_outage_not_bad_data() {
    database_outage(23, |_| DatabaseFault {
        name: "dropped column",
        sqlstate: "42703",
        inject: vec!["ALTER TABLE deposited_events DROP COLUMN contract_address".into()],
        fix: vec!["ALTER TABLE deposited_events ADD COLUMN contract_address TEXT".into()],
        new_sessions: false,
        worker_env: &[],
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_transactions_are_an_outage_not_bad_data() {
    database_outage(24, |role| DatabaseFault {
        name: "read-only transactions",
        sqlstate: "25006",
        inject: vec![format!(
            "ALTER ROLE {role} SET default_transaction_read_only = on"
        )],
        fix: vec![format!(
            "ALTER ROLE {role} RESET default_transaction_read_only"
        )],
        new_sessions: true,
        worker_env: &[],
    })
    .await;
}

/// A drain that cannot finish (every batch stuck on an outage) is reported as
/// a failure by `postgres-writer drain` and by the exit status; a replacement
/// worker then finishes the history once the outage is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_that_times_out_is_reported_as_failed() {
    let db = TestDb::new().await;
    let (role, url) = worker_role(&db).await;
    let run = Scenario::start(25, db, shared_redis()).await;
    let mut w = WorkerProcess::start(
        &url,
        &run.redis_url,
        &run.streams,
        &run.group,
        "pod-stuck",
        &[
            ("DRAIN_TIMEOUT_MS", "1500"),
            ("MAX_ENTRIES_PER_SECOND", "150"),
        ],
    );
    w.wait_http().await;
    run.wait_progress().await;
    run_sql(
        &run.db,
        &[format!(
            "REVOKE INSERT ON share_price_changed_events FROM {role}"
        )],
    )
    .await;
    wait_ready(&w, 503, Duration::from_secs(30), "stuck drain").await;
    let drain = std::process::Command::new(system_tests::worker_binary())
        .arg("drain")
        .env("HTTP_PORT", w.port.to_string())
        .env("DRAIN_TIMEOUT_MS", "1500")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&drain.stderr);
    assert!(
        !drain.status.success(),
        "drain reported success with a batch unfinished"
    );
    assert!(stderr.contains("unfinished"), "{stderr}");
    let status = w.wait_exit(Duration::from_secs(20)).await;
    assert!(!status.success(), "exit status after a timed-out drain");
    run_sql(
        &run.db,
        &[format!(
            "GRANT INSERT ON share_price_changed_events TO {role}"
        )],
    )
    .await;
    let fixed = Instant::now();
    let _next = WorkerProcess::start(
        &url,
        &run.redis_url,
        &run.streams,
        &run.group,
        "pod-next",
        &[("CLAIM_IDLE_MS", "1000"), ("CLAIM_INTERVAL_MS", "300")],
    );
    run.finish("timed-out drain", fixed).await;
}
