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

async fn wait_idle(
    db: &TestDb,
    redis_url: &str,
    streams: &[String],
    group: &str,
    producer: &tokio::task::JoinHandle<()>,
    timeout: Duration,
) {
    let started = Instant::now();
    loop {
        if producer.is_finished()
            && backlog(redis_url, streams, group).await == Some((0, 0))
            && db.count("analytics_queue").await == 0
        {
            return;
        }
        assert!(started.elapsed() < timeout, "not idle within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a scenario measured, for its figures line.
struct Run<'a> {
    fault: &'a str,
    sent: usize,
    redis_url: &'a str,
    group: &'a str,
    recovered: Duration,
    started: Instant,
}

/// The exactness checks shared by every scenario; prints the figures.
async fn assert_exact(db: &TestDb, load: &Load, run: Run<'_>) {
    let Run {
        fault,
        sent,
        redis_url,
        group,
        recovered,
        started,
    } = run;
    let streams = stream_names(&load.prefix);
    assert_eq!(
        backlog(redis_url, &streams, group).await,
        Some((0, 0)),
        "{fault}: entries left pending"
    );
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
        "FAULT {fault:<22} entries sent {sent:>6} | events stored {stored:>6} (expected {:>6}) | dead-lettered {dead:>3} (bad {:>3}) | recovered in {:>6.2} s | total {:>6.2} s",
        load.expected.iter().map(|(_, n)| n).sum::<i64>(),
        load.bad_entries,
        recovered.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

async fn wait_progress(db: &TestDb, fraction_of: i64) {
    let started = Instant::now();
    while db.count("share_price_changed_events").await < fraction_of {
        assert!(started.elapsed() < Duration::from_secs(60), "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn expected_spc(load: &Load) -> i64 {
    load.expected
        .iter()
        .find(|(t, _)| *t == "share_price_changed_events")
        .map(|(_, n)| *n)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_batch_then_restart() {
    let load = load(11);
    let db = TestDb::new().await;
    let redis_url = std::env::var("PGW_TEST_REDIS_URL").unwrap();
    let streams = stream_names(&load.prefix);
    let group = unique("g");
    let sent = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let producer = produce(redis_url.clone(), load.entries.clone(), sent.clone());
    let mut w = WorkerProcess::start(&db.url, &redis_url, &streams, &group, "pod-0", &[]);
    wait_progress(&db, expected_spc(&load) / 3).await;
    w.signal("KILL");
    w.wait_exit(Duration::from_secs(10)).await;
    let restarted = Instant::now();
    let _w = WorkerProcess::start(&db.url, &redis_url, &streams, &group, "pod-0", &[]);
    wait_idle(
        &db,
        &redis_url,
        &streams,
        &group,
        &producer,
        Duration::from_secs(180),
    )
    .await;
    let recovered = restarted.elapsed();
    assert_exact(
        &db,
        &load,
        Run {
            fault: "sigkill+restart",
            sent: sent.load(Ordering::SeqCst),
            redis_url: &redis_url,
            group: &group,
            recovered,
            started,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_one_killed_its_pending_taken_over() {
    let load = load(12);
    let db = TestDb::new().await;
    let redis_url = std::env::var("PGW_TEST_REDIS_URL").unwrap();
    let streams = stream_names(&load.prefix);
    let group = unique("g");
    let sent = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let producer = produce(redis_url.clone(), load.entries.clone(), sent.clone());
    let claim = [("CLAIM_IDLE_MS", "1000"), ("CLAIM_INTERVAL_MS", "300")];
    let _a = WorkerProcess::start(&db.url, &redis_url, &streams, &group, "pod-a", &claim);
    let mut b = WorkerProcess::start(&db.url, &redis_url, &streams, &group, "pod-b", &claim);
    let _c = WorkerProcess::start(&db.url, &redis_url, &streams, &group, "pod-c", &claim);
    wait_progress(&db, expected_spc(&load) / 3).await;
    b.signal("KILL");
    b.wait_exit(Duration::from_secs(10)).await;
    let killed = Instant::now();
    wait_idle(
        &db,
        &redis_url,
        &streams,
        &group,
        &producer,
        Duration::from_secs(180),
    )
    .await;
    assert_exact(
        &db,
        &load,
        Run {
            fault: "3 workers, 1 killed",
            sent: sent.load(Ordering::SeqCst),
            redis_url: &redis_url,
            group: &group,
            recovered: killed.elapsed(),
            started,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_run() {
    let load = load(13);
    let pg = OwnPostgres::start();
    let db = TestDb::create_in(&pg.url()).await;
    let redis_url = std::env::var("PGW_TEST_REDIS_URL").unwrap();
    let streams = stream_names(&load.prefix);
    let group = unique("g");
    let sent = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let producer = produce(redis_url.clone(), load.entries.clone(), sent.clone());
    let mut w = WorkerProcess::start(&db.url, &redis_url, &streams, &group, "pod-pg", &[]);
    w.wait_http().await;
    wait_progress(&db, expected_spc(&load) / 3).await;
    db.pool.close().await;
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
    let recovered = back.elapsed();
    let db = TestDb {
        pool: sqlx::postgres::PgPoolOptions::new()
            .max_connections(5)
            .connect(&db.url)
            .await
            .unwrap(),
        url: db.url.clone(),
    };
    wait_idle(
        &db,
        &redis_url,
        &streams,
        &group,
        &producer,
        Duration::from_secs(180),
    )
    .await;
    assert!(w.is_running());
    assert_exact(
        &db,
        &load,
        Run {
            fault: "postgres restart",
            sent: sent.load(Ordering::SeqCst),
            redis_url: &redis_url,
            group: &group,
            recovered,
            started,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_run_with_persistence() {
    let load = load(14);
    let redis = OwnRedis::start();
    let db = TestDb::new().await;
    let streams = stream_names(&load.prefix);
    let group = unique("g");
    let sent = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let producer = produce(redis.url(), load.entries.clone(), sent.clone());
    let mut w = WorkerProcess::start(&db.url, &redis.url(), &streams, &group, "pod-r", &[]);
    w.wait_http().await;
    wait_progress(&db, expected_spc(&load) / 3).await;
    redis.down();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        w.is_running(),
        "the worker must not exit while Redis is down"
    );
    redis.up();
    let back = Instant::now();
    let before = db.count("share_price_changed_events").await;
    while db.count("share_price_changed_events").await == before && !producer.is_finished() {
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "no progress after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered = back.elapsed();
    wait_idle(
        &db,
        &redis.url(),
        &streams,
        &group,
        &producer,
        Duration::from_secs(180),
    )
    .await;
    assert!(w.is_running());
    assert_exact(
        &db,
        &load,
        Run {
            fault: "redis restart (AOF)",
            sent: sent.load(Ordering::SeqCst),
            redis_url: &redis.url(),
            group: &group,
            recovered,
            started,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_during_load_exits_zero_with_nothing_unacked() {
    let load = load(15);
    let db = TestDb::new().await;
    let redis_url = std::env::var("PGW_TEST_REDIS_URL").unwrap();
    let streams = stream_names(&load.prefix);
    let group = unique("g");
    let sent = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let producer = produce(redis_url.clone(), load.entries.clone(), sent.clone());
    let mut w = WorkerProcess::start(
        &db.url,
        &redis_url,
        &streams,
        &group,
        "pod-d",
        &[("DRAIN_TIMEOUT_MS", "20000")],
    );
    w.wait_http().await;
    wait_progress(&db, expected_spc(&load) / 3).await;
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
    assert!(
        drained_in < Duration::from_secs(20),
        "drain took {drained_in:?}"
    );
    // Nothing this consumer committed is left unacknowledged.
    let (_, pending) = backlog(&redis_url, &streams, &group).await.unwrap();
    assert_eq!(pending, 0, "entries left pending after the drain");
    // A replacement pod finishes the rest.
    let _next = WorkerProcess::start(&db.url, &redis_url, &streams, &group, "pod-d2", &[]);
    wait_idle(
        &db,
        &redis_url,
        &streams,
        &group,
        &producer,
        Duration::from_secs(180),
    )
    .await;
    assert_exact(
        &db,
        &load,
        Run {
            fault: "drain during load",
            sent: sent.load(Ordering::SeqCst),
            redis_url: &redis_url,
            group: &group,
            recovered: drained_in,
            started,
        },
    )
    .await;
}
