//! Issue 22 / ADR 0019: operating the fold. `verify` on a live database, a
//! worker frozen inside a fold transaction, deltas that cannot be folded,
//! delta formats across a rolling upgrade, and a drain while others write.

use serde_json::json;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use system_tests::payload::{envelope, term, with_info, ADDR_A};
use system_tests::{
    previous_release_binary, stream_args, unique, worker_binary, TestDb, TestRedis, WorkerProcess,
};
use worker::decode::{decode_entry, DecodedEntry};
use worker::fold::{self, Claim};
use worker::generate::{generate, stream_names, GeneratorSpec};
use worker::verify::Verdict;

fn spec(prefix: &str, events: u64, seed: u64) -> GeneratorSpec {
    GeneratorSpec {
        events,
        events_per_entry: 5,
        seed,
        accounts: 20,
        curves: 2,
        network: "testnet".into(),
        stream_prefix: prefix.into(),
    }
}

/// Consumes a generated history with an in-process consumer that folds
/// nothing, so that its deltas are left for the test.
async fn deltas_of_history(db: &TestDb, events: u64, seed: u64) {
    let mut redis = TestRedis::new().await;
    let prefix = unique("ops");
    redis.publish(&generate(&spec(&prefix, events, seed))).await;
    let group = unique("group");
    let streams = stream_names(&prefix);
    let consumer = worker::pipeline::Consumer {
        args: worker::intake::StreamSettings {
            batch_size: 7,
            ..stream_args(&redis.url, &streams, &group, "c")
        },
        pool: db.pool.clone(),
        metrics: Arc::new(worker::metrics::Metrics::new()),
        health: Arc::new(worker::health::Health::new(true, false)),
        fold_wake: None,
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(consumer.run(stop.clone()));
    redis
        .wait_until_idle(&streams, &group, Duration::from_secs(120))
        .await;
    stop.cancel();
    task.await.unwrap().unwrap();
}

/// One entry: a deposit by ADDR_A into vault (term `n % 64`, curve 1), a
/// new event at chain position `n` (so each writes a delta).
fn deposit(n: u64) -> DecodedEntry {
    let body = with_info(
        json!({"sender": ADDR_A, "receiver": ADDR_A, "termId": term(n % 64 + 1), "curveId": "1",
            "assets": "10", "assetsAfterFees": "9", "shares": "5",
            "totalShares": "5", "vaultType": 0}),
        n,
        1_000 + n,
        0,
    );
    let entry = decode_entry(
        &Arc::from("writer"),
        &Arc::from(format!("{n}-0").as_str()),
        &[(
            "payload".to_string(),
            envelope("Deposited", json!([body])).into_bytes(),
        )],
    );
    assert!(entry.dead_letters.is_empty(), "{:?}", entry.dead_letters);
    entry
}

/// Writers that commit batches (and so deltas) as fast as they can, each
/// with its own chain positions, until `stop`. Returns the batches written.
fn spawn_writers(
    db: &TestDb,
    writers: u64,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..writers)
        .map(|w| {
            let pool = db.pool.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let entries: Vec<DecodedEntry> = (0..4)
                        .map(|i| deposit(1_000_000 * (w + 1) + n * 4 + i))
                        .collect();
                    let mut tx = pool.begin().await.unwrap();
                    worker::persistence::write_in_transaction(
                        &mut tx,
                        &entries,
                        worker::persistence::Insert::Copy,
                        None,
                    )
                    .await
                    .unwrap();
                    tx.commit().await.unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect()
}

/// `verify` while two workers write at full speed: every run must find no
/// drift, with the work pending in its snapshot counted as part of the model
/// (the old verify folded first and compared later, and reported the
/// batches committed in between as DRIFT). The binary's exit code too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_finds_no_drift_while_workers_write() {
    let db = TestDb::new().await;
    let mut redis = TestRedis::new().await;
    let prefix = unique("live");
    redis.publish(&generate(&spec(&prefix, 60_000, 7))).await;
    let streams = stream_names(&prefix);
    let group = unique("group");
    let workers: Vec<WorkerProcess> = ["pod-a", "pod-b"]
        .iter()
        .map(|name| WorkerProcess::start(&db.url, &redis.url, &streams, &group, name, &[]))
        .collect();
    for w in &workers {
        w.wait_http().await;
    }
    // Runs under load: pending work in the snapshot, workers still consuming.
    // More history is published whenever the backlog runs low, so the load
    // lasts as long as the verifies need, however fast the machine.
    let mut under_load = 0;
    let mut runs = 0;
    let mut seed = 7;
    while under_load < 3 {
        assert!(
            runs < 40,
            "three verifies with pending work in their snapshot did not happen in {runs} runs ({under_load})"
        );
        let (lag, _) = redis.backlog(&streams[2], &group).await;
        if lag.unwrap_or(0) < 2_000 {
            seed += 1;
            redis.publish(&generate(&spec(&prefix, 20_000, seed))).await;
        }
        let report = worker::verify::verify(&db.pool, 5).await.unwrap();
        runs += 1;
        assert_eq!(
            report.verdict(),
            Verdict::Exact,
            "verify under load, run {runs}:\n{}",
            report.render()
        );
        if report.pending_deltas > 0 || report.pending_terms > 0 {
            under_load += 1;
            eprintln!(
                "verify run {runs} under load: OK with {} pending delta(s), {} pending term(s)",
                report.pending_deltas, report.pending_terms
            );
        }
    }
    let out = Command::new(worker_binary())
        .args(["verify", "--max-wait", "60"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("verify: OK, no drift"), "{stdout}");

    redis
        .wait_until_idle(&streams, &group, Duration::from_secs(180))
        .await;
    for mut w in workers {
        w.signal("TERM");
        assert!(w.wait_exit(Duration::from_secs(60)).await.success());
    }
    db.drain_analytics().await;
    db.assert_verified().await;
}

/// Real drift is still found under the new verify: a vault row changed
/// behind the worker's back is reported, and exit 1 follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_real_drift_with_deltas_pending() {
    let db = TestDb::new().await;
    deltas_of_history(&db, 1_500, 101).await;
    db.drain_analytics().await;
    deltas_of_history(&db, 600, 102).await;
    assert!(db.pending_deltas().await > 0);
    sqlx::query(
        "UPDATE vault SET total_shares = total_shares + 1 \
         WHERE (term_id, curve_id) = (SELECT term_id, curve_id FROM vault ORDER BY term_id LIMIT 1)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let report = worker::verify::verify(&db.pool, 5).await.unwrap();
    assert_eq!(report.verdict(), Verdict::Drift, "{}", report.render());
    let vault = report.tables.iter().find(|t| t.table == "vault").unwrap();
    assert_eq!(
        (vault.missing, vault.unexpected),
        (1, 1),
        "{}",
        report.render()
    );
    let out = Command::new(worker_binary())
        .arg("verify")
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // verify wrote nothing: the deltas are still pending.
    assert!(db.pending_deltas().await > 0);
}

/// `verify --max-wait`: no drift, but a delta of the snapshot that nobody
/// folds (no worker runs) is "pending, not drift": exit 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_max_wait_reports_stuck_pending_work_apart_from_drift() {
    let db = TestDb::new().await;
    deltas_of_history(&db, 300, 103).await;
    let out = Command::new(worker_binary())
        .args(["verify", "--max-wait", "1"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(stdout.contains("PENDING, not drift"), "{stdout}");
}

/// The local TCP ports of `pid`'s connections to `server_port` (Linux /proc).
fn client_ports(pid: u32, server_port: u16) -> Vec<i32> {
    let mut inodes = std::collections::HashSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(link) = std::fs::read_link(fd.path()) {
            let link = link.to_string_lossy().to_string();
            if let Some(inode) = link
                .strip_prefix("socket:[")
                .and_then(|l| l.strip_suffix(']'))
            {
                inodes.insert(inode.to_string());
            }
        }
    }
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || !inodes.contains(f[9]) {
                continue;
            }
            let port = |addr: &str| {
                addr.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            };
            if port(f[2]) == Some(server_port) {
                if let Some(local) = port(f[1]) {
                    ports.push(i32::from(local));
                }
            }
        }
    }
    ports
}

/// The partitions a frozen transaction of one of `ports`' sessions holds.
async fn partitions_held_by(db: &TestDb, ports: &[i32]) -> Vec<i16> {
    sqlx::query_scalar(
        "SELECT p.partition FROM fold_partition p \
         JOIN pg_stat_activity a ON a.backend_xid::text = p.xmax::text \
         WHERE a.client_port = ANY($1) AND a.state = 'idle in transaction' ORDER BY 1",
    )
    .bind(ports)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

/// A worker frozen (SIGSTOP) inside a fold transaction: PostgreSQL ends its
/// session after DB_IDLE_IN_TRANSACTION_TIMEOUT_MS and another worker folds
/// those partitions, while the frozen one stays frozen. Prints the measured
/// hold and the time until folding resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_frozen_mid_fold_releases_its_partitions_within_the_bound() {
    let db = TestDb::new().await;
    let mut redis = TestRedis::new().await;
    let prefix = unique("frozen");
    redis.publish(&generate(&spec(&prefix, 30_000, 8))).await;
    let streams = stream_names(&prefix);
    let group = unique("group");
    let settings: &[(&str, &str)] = &[("FOLD_INTERVAL_MS", "200")];
    let mut frozen = WorkerProcess::start(&db.url, &redis.url, &streams, &group, "pod-f", settings);
    let mut other = WorkerProcess::start(&db.url, &redis.url, &streams, &group, "pod-o", settings);
    frozen.wait_http().await;
    other.wait_http().await;
    let server_port: u16 = db
        .url
        .rsplit_once('@')
        .and_then(|(_, h)| h.split('/').next())
        .and_then(|h| h.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or(5432);

    // Freeze it until it is caught inside a fold transaction.
    let mut held = Vec::new();
    for _ in 0..400 {
        frozen.signal("STOP");
        tokio::time::sleep(Duration::from_millis(30)).await;
        let ports = client_ports(frozen.child.id(), server_port);
        held = partitions_held_by(&db, &ports).await;
        if !held.is_empty() {
            break;
        }
        frozen.signal("CONT");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!held.is_empty(), "never caught the worker inside a fold");
    let stopped = Instant::now();
    let ports = client_ports(frozen.child.id(), server_port);
    let horizon = fold::horizon(&db.pool).await.unwrap().unwrap();

    // Ended by PostgreSQL, not by the test: the frozen worker stays frozen.
    let mut released = None;
    let mut resumed = None;
    while resumed.is_none() {
        assert!(
            stopped.elapsed() < Duration::from_secs(120),
            "partitions {held:?} still held by the frozen worker after {:?}",
            stopped.elapsed()
        );
        if released.is_none() && partitions_held_by(&db, &ports).await.is_empty() {
            released = Some(stopped.elapsed());
        }
        let left: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM fold_delta WHERE partition = ANY($1) AND id <= $2)",
        )
        .bind(&held)
        .bind(horizon)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if !left {
            resumed = Some(stopped.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        frozen.is_running(),
        "the frozen worker must not have exited"
    );
    eprintln!(
        "frozen mid-fold holding partitions {held:?}: released after {:.1} s, folded by the other worker after {:.1} s",
        released.unwrap_or_default().as_secs_f64(),
        resumed.unwrap_or_default().as_secs_f64()
    );

    // Thawed, it finds its session gone, retries, and finishes its work.
    frozen.signal("CONT");
    redis
        .wait_until_idle(&streams, &group, Duration::from_secs(240))
        .await;
    for w in [&mut frozen, &mut other] {
        w.signal("TERM");
        assert!(w.wait_exit(Duration::from_secs(60)).await.success());
    }
    db.drain_analytics().await;
    db.assert_verified().await;
}

/// Inserts a delta row as a batch would, with the given text and format.
async fn insert_delta(db: &TestDb, partition: i16, changes: &str, format: i16) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO fold_delta (partition, changes, format) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(partition)
    .bind(changes)
    .bind(format)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// A position change whose shares PostgreSQL refuses (22P02).
fn failing_changes() -> String {
    json!({"p": [{"a": ADDR_A, "k": term(1), "c": "1",
        "at": {"b": 1, "l": 0, "t": "0x01"}, "s": "not-a-number", "d": "0", "r": "0"}]})
    .to_string()
}

/// An undecodable delta and one whose statement fails with a data error are
/// parked with their reasons; the rest of their partitions and every other
/// partition fold; a delta of a newer format is left for a newer binary; the
/// replay command folds a parked delta once its cause is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_deltas_are_parked_and_everything_else_folds() {
    let db = TestDb::new().await;
    deltas_of_history(&db, 600, 104).await;
    let garbage = insert_delta(&db, 3, "{not json", worker::aggregates::DELTA_FORMAT).await;
    let failing = insert_delta(&db, 4, &failing_changes(), worker::aggregates::DELTA_FORMAT).await;
    let newer = insert_delta(
        &db,
        5,
        r#"{"future":true}"#,
        worker::aggregates::DELTA_FORMAT + 1,
    )
    .await;
    deltas_of_history(&db, 600, 105).await;
    let pending = db.pending_deltas().await;

    let mut folded = 0u64;
    let mut parked = 0u64;
    for _ in 0..1_000 {
        let report = fold::fold_once(&db.pool, Claim::SkipLocked(4), 50)
            .await
            .expect("a poison delta must not fail the fold");
        folded += report.deltas - report.parked;
        parked += report.parked;
        if report.deltas == 0 {
            break;
        }
    }
    assert_eq!(parked, 2);
    assert_eq!(folded as i64 + 2, pending);
    let backlog = fold::backlog(&db.pool).await.unwrap();
    assert_eq!(
        (backlog.pending, backlog.newer_format, backlog.parked),
        (0, 1, 2)
    );
    let list = fold::list_parked(&db.pool, 10).await.unwrap();
    let kinds: Vec<(i64, &str, Option<&str>)> = list
        .iter()
        .map(|p| (p.id, p.kind.as_str(), p.sqlstate.as_deref()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (garbage, "undecodable", None),
            (failing, "data", Some("22P02"))
        ]
    );
    assert!(
        list[0].reason.contains("does not decode"),
        "{}",
        list[0].reason
    );
    let still: i64 = sqlx::query_scalar("SELECT count(*) FROM fold_delta WHERE id = $1")
        .bind(newer)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(still, 1, "a newer format is left for a newer binary");

    // The crafted deltas carry no events: without them the model is exact,
    // but this binary cannot see into the newer one.
    db.drain_analytics().await;
    let report = worker::verify::verify(&db.pool, 5).await.unwrap();
    assert_eq!(report.verdict(), Verdict::Incomplete, "{}", report.render());
    sqlx::query("DELETE FROM fold_delta WHERE id = $1")
        .bind(newer)
        .execute(&db.pool)
        .await
        .unwrap();
    db.assert_verified().await;

    // Replay: still broken -> parked again (exit 2); fixed -> folded (exit 0).
    let replay = |ids: &[i64]| {
        let mut cmd = Command::new(worker_binary());
        cmd.args(["fold-deltas", "replay"])
            .env("DATABASE_URL", &db.url);
        for id in ids {
            cmd.args(["--id", &id.to_string()]);
        }
        cmd.output().unwrap()
    };
    let out = replay(&[garbage]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    sqlx::query("UPDATE fold_delta_parked SET changes = '{}' WHERE id = $1")
        .bind(garbage)
        .execute(&db.pool)
        .await
        .unwrap();
    let out = replay(&[garbage]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let listed = Command::new(worker_binary())
        .args(["fold-deltas", "list"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("22P02") && listed.contains("1 parked fold delta(s) listed"),
        "{listed}"
    );
    assert_eq!(fold::backlog(&db.pool).await.unwrap().parked, 1);

    // rebuild reads every event: parked deltas are dropped with the others.
    worker::verify::rebuild(&db.pool, false).await.unwrap();
    assert_eq!(fold::backlog(&db.pool).await.unwrap().parked, 0);
    db.drain_analytics().await;
    db.assert_verified().await;
}

/// A worker meets an undecodable delta under load: it parks it, exports it
/// (metric and /health), and folds every other delta.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_parks_a_poison_delta_and_keeps_folding() {
    let db = TestDb::new().await;
    let garbage = insert_delta(&db, 0, "\u{1}garbage", worker::aggregates::DELTA_FORMAT).await;
    let mut redis = TestRedis::new().await;
    let prefix = unique("poison");
    redis.publish(&generate(&spec(&prefix, 3_000, 9))).await;
    let streams = stream_names(&prefix);
    let group = unique("group");
    let mut worker = WorkerProcess::start(&db.url, &redis.url, &streams, &group, "pod-p", &[]);
    worker.wait_http().await;
    redis
        .wait_until_idle(&streams, &group, Duration::from_secs(120))
        .await;
    db.wait_folded(Duration::from_secs(120)).await;
    let parked: Vec<i64> = sqlx::query_scalar("SELECT id FROM fold_delta_parked")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(parked, vec![garbage]);
    // The monitor publishes the backlog every few seconds.
    let started = Instant::now();
    loop {
        let (_, metrics) = worker.get("/metrics").await.unwrap();
        if metrics.lines().any(|l| l == "pgw_fold_parked_deltas 1") {
            assert!(metrics.contains("pgw_fold_parked_total 1"), "{metrics}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, health) = worker.get("/health").await.unwrap();
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["fold"]["parked_deltas"], 1, "{health}");
    worker.signal("TERM");
    assert!(worker.wait_exit(Duration::from_secs(60)).await.success());
    db.drain_analytics().await;
    db.assert_verified().await;
}

/// A transient error (here a lock wait past the worker's statement bound)
/// parks nothing: the fold fails as an outage, and folds once it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_fold_error_parks_nothing() {
    let db = TestDb::new().await;
    deltas_of_history(&db, 300, 106).await;
    let pending = db.pending_deltas().await;
    let args = worker::config::DatabaseArgs {
        database_url: db.url.clone(),
        database_ca_file: None,
        db_pool_min_connections: 0,
        db_pool_max_connections: 2,
        db_acquire_timeout_ms: 10_000,
        db_statement_timeout_ms: 300,
        db_idle_in_transaction_timeout_ms: 10_000,
    };
    let pool = worker::db::worker_pool(&args, "pgw-transient-test").unwrap();
    let mut blocker = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE vault IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let error = fold::fold_once(&pool, Claim::SkipLocked(32), 5_000)
        .await
        .expect_err("the fold waits for the lock past its bound");
    use worker::failure::Classify;
    assert_eq!(error.failure(), worker::failure::Failure::Outage, "{error}");
    // lock_timeout (55P03) or statement_timeout (57014): both are the bound.
    assert!(
        ["55P03", "57014"].contains(&error.sqlstate().as_ref()),
        "{error}"
    );
    blocker.rollback().await.unwrap();
    let backlog = fold::backlog(&db.pool).await.unwrap();
    assert_eq!((backlog.pending, backlog.parked), (pending, 0));
    let report = fold::fold_once(&pool, Claim::SkipLocked(32), 5_000)
        .await
        .unwrap();
    assert_eq!((report.deltas as i64, report.parked), (pending, 0));
}

/// Every worker session carries the hold bounds (ADR 0019) and plans its
/// keyed statements once, by key (ADR 0021).
#[tokio::test]
async fn worker_sessions_carry_the_hold_bounds() {
    let db = TestDb::new().await;
    let args = worker::config::DatabaseArgs {
        database_url: db.url.clone(),
        database_ca_file: None,
        db_pool_min_connections: 0,
        db_pool_max_connections: 1,
        db_acquire_timeout_ms: 10_000,
        db_statement_timeout_ms: 20_000,
        db_idle_in_transaction_timeout_ms: 10_000,
    };
    let pool = worker::db::worker_pool(&args, "pgw-bounds-test").unwrap();
    let settings: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, setting FROM pg_settings WHERE name IN ('statement_timeout', 'lock_timeout', \
         'idle_in_transaction_session_timeout', 'tcp_keepalives_idle', 'tcp_keepalives_interval', \
         'tcp_keepalives_count', 'tcp_user_timeout', 'plan_cache_mode', 'enable_seqscan', 'jit') \
         ORDER BY name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        settings,
        [
            ("enable_seqscan", "off"),
            ("idle_in_transaction_session_timeout", "10000"),
            ("jit", "off"),
            ("lock_timeout", "20000"),
            ("plan_cache_mode", "force_generic_plan"),
            ("statement_timeout", "20000"),
            ("tcp_keepalives_count", "3"),
            ("tcp_keepalives_idle", "10"),
            ("tcp_keepalives_interval", "5"),
            ("tcp_user_timeout", "25000"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
}

/// A worker asked to drain while others keep committing deltas folds only
/// what existed when its drain began and exits 0 at once, long before
/// DRAIN_TIMEOUT_MS (the old drain folded the others' deltas until then).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drain_ends_promptly_while_other_workers_write() {
    let db = TestDb::new().await;
    let mut redis = TestRedis::new().await;
    let prefix = unique("drain");
    redis.publish(&generate(&spec(&prefix, 500, 10))).await;
    let streams = stream_names(&prefix);
    let group = unique("group");
    let mut worker = WorkerProcess::start(
        &db.url,
        &redis.url,
        &streams,
        &group,
        "pod-d",
        &[("DRAIN_TIMEOUT_MS", "90000")],
    );
    worker.wait_http().await;
    redis
        .wait_until_idle(&streams, &group, Duration::from_secs(60))
        .await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(&db, 3, stop.clone());
    // The others are writing, and the worker folds their deltas meanwhile.
    let before = fold::backlog(&db.pool).await.unwrap();
    let folded_before: i64 =
        sqlx::query_scalar("SELECT sum(folded_deltas)::int8 FROM fold_partition")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    while sqlx::query_scalar::<_, i64>("SELECT sum(folded_deltas)::int8 FROM fold_partition")
        .fetch_one(&db.pool)
        .await
        .unwrap()
        < folded_before + 200
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let asked = Instant::now();
    worker.signal("TERM");
    let status = worker.wait_exit(Duration::from_secs(120)).await;
    let took = asked.elapsed();
    let still_writing = !writers.iter().any(|w| w.is_finished());
    stop.store(true, Ordering::Relaxed);
    let mut batches = 0;
    for w in writers {
        batches += w.await.unwrap();
    }
    assert!(
        status.success(),
        "drain under others' writes: {status:?} after {took:?}"
    );
    assert!(still_writing, "the writers must outlast the drain");
    eprintln!(
        "drained in {:.2} s while 3 writers committed {batches} batches (backlog before: {} deltas)",
        took.as_secs_f64(),
        before.pending
    );
    db.drain_analytics().await;
    db.assert_verified().await;
}

/// Rolling upgrade, both directions, with the previous release's binary
/// (schema 10, which writes format 1 without naming it): it folds the deltas
/// this build writes, and this build folds the deltas it writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_release_and_this_build_fold_each_others_deltas() {
    let previous = previous_release_binary();
    // This build writes, the previous release folds (it runs on schema 12,
    // declared compatible with it).
    let db = TestDb::new().await;
    deltas_of_history(&db, 1_200, 107).await;
    let formats: Vec<i16> = sqlx::query_scalar("SELECT DISTINCT format FROM fold_delta")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(formats, vec![worker::aggregates::DELTA_FORMAT]);
    let redis = TestRedis::new().await;
    let idle = stream_names(&unique("idle"));
    let mut old = WorkerProcess::start_binary(
        &previous,
        &db.url,
        &redis.url,
        &idle,
        &unique("group"),
        "pod-old",
        &[],
    );
    old.wait_http().await;
    db.wait_folded(Duration::from_secs(120)).await;
    old.signal("TERM");
    assert!(old.wait_exit(Duration::from_secs(60)).await.success());
    db.drain_analytics().await;
    db.assert_verified().await;

    // The previous release writes (its folds kept off every partition), this
    // build folds.
    let db = TestDb::new().await;
    let mut redis = TestRedis::new().await;
    let prefix = unique("old");
    redis.publish(&generate(&spec(&prefix, 1_200, 11))).await;
    let streams = stream_names(&prefix);
    let group = unique("group");
    let mut hold = db.pool.begin().await.unwrap();
    sqlx::query("SELECT partition FROM fold_partition FOR UPDATE")
        .execute(&mut *hold)
        .await
        .unwrap();
    let mut old = WorkerProcess::start_binary(
        &previous,
        &db.url,
        &redis.url,
        &streams,
        &group,
        "pod-old",
        &[],
    );
    old.wait_http().await;
    redis
        .wait_until_idle(&streams, &group, Duration::from_secs(120))
        .await;
    old.signal("TERM");
    assert!(old.wait_exit(Duration::from_secs(60)).await.success());
    hold.rollback().await.unwrap();
    let written: Vec<(i16, i64)> =
        sqlx::query_as("SELECT format, count(*) FROM fold_delta GROUP BY format")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(written.len(), 1, "{written:?}");
    assert_eq!(written[0].0, worker::aggregates::DELTA_FORMAT);
    assert!(written[0].1 > 0);
    assert_eq!(db.fold().await as i64, written[0].1);
    db.drain_analytics().await;
    db.assert_verified().await;
}
