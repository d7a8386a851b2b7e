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
    // Expected rows, from the decoder itself on the clean entries.
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
                *counts.entry(ev.body.kind()).or_default() += 1;
            }
        }
    }
    let table = |kind: &str| match kind {
        "AtomCreated" => "atom_created_events",
        "TripleCreated" => "triple_created_events",
        "Deposited" => "deposited_events",
        "Redeemed" => "redeemed_events",
        "SharePriceChanged" => "share_price_changed_events",
        _ => "generic_events",
    };
    let expected = counts.into_iter().map(|(k, n)| (table(k), n)).collect();
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
