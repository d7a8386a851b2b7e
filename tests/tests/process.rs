//! The worker as a process: crash safety under SIGKILL, HTTP endpoints,
//! SIGTERM and `postgres-writer drain` shutdown, start-up validation.

use std::process::Command;
use std::time::{Duration, Instant};
use system_tests::{unique, worker_binary, TestDb, TestRedis, WorkerProcess};
use worker::generate::{generate, stream_names, GeneratorSpec};

fn spec(prefix: &str, events: u64) -> GeneratorSpec {
    GeneratorSpec {
        events,
        events_per_entry: 4,
        seed: 99,
        accounts: 15,
        curves: 2,
        network: "testnet".into(),
        stream_prefix: prefix.into(),
    }
}

/// A fresh database and `events` generated events on fresh streams.
async fn loaded(name: &str, events: u64) -> (TestDb, TestRedis, Vec<String>, String) {
    let db = TestDb::new().await;
    let mut redis = TestRedis::new().await;
    let prefix = unique(name);
    redis.publish(&generate(&spec(&prefix, events))).await;
    (db, redis, stream_names(&prefix), unique("group"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_loses_nothing_and_double_counts_nothing() {
    let prefix = unique("crash");
    let entries = generate(&spec(&prefix, 6_000));
    let streams = stream_names(&prefix);
    let group = unique("group");

    // Reference: the same entries processed without interruption.
    let reference = TestDb::new().await;
    let mut redis = TestRedis::new().await;
    let ref_prefix = unique("ref");
    let ref_streams = stream_names(&ref_prefix);
    redis
        .xadd_all(
            entries
                .iter()
                .map(|e| (e.stream.replace(&prefix, &ref_prefix), e.payload.as_str()))
                .collect::<Vec<_>>()
                .iter()
                .map(|(s, p)| (s.as_str(), *p)),
        )
        .await;
    system_tests::consume_until_idle(
        &reference,
        vec![system_tests::stream_args(
            &redis.url,
            &ref_streams,
            &group,
            "ref",
        )],
        Duration::from_secs(120),
    )
    .await;
    reference.drain_analytics().await;

    let db = TestDb::new().await;
    redis.publish(&entries).await;
    let mut kills = 0;
    for round in 0..3 {
        let mut worker = WorkerProcess::start(&db.url, &redis.url, &streams, &group, "pod-a", &[]);
        worker.wait_http().await;
        // Let it commit some batches, then kill it without warning.
        let target = db.count("share_price_changed_events").await + 300;
        let started = Instant::now();
        while db.count("share_price_changed_events").await < target
            && started.elapsed() < Duration::from_secs(30)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if round < 2 {
            worker.signal("KILL");
            let status = worker.wait_exit(Duration::from_secs(10)).await;
            assert!(
                !status.success(),
                "SIGKILL should not look like a clean exit"
            );
            let stored = db.count("share_price_changed_events").await;
            let all = reference.count("share_price_changed_events").await;
            assert!(
                stored < all,
                "the kill must land mid-run ({stored} of {all} stored)"
            );
            kills += 1;
        } else {
            // The last incarnation (same consumer name) finishes its own pending entries and the rest.
            redis
                .wait_until_idle(&streams, &group, Duration::from_secs(120))
                .await;
            worker.signal("TERM");
            assert!(worker.wait_exit(Duration::from_secs(30)).await.success());
        }
    }
    assert_eq!(kills, 2);
    db.drain_analytics().await;
    db.assert_verified().await;
    system_tests::assert_same_tables(
        &db.snapshot().await,
        &reference.snapshot().await,
        "after two SIGKILLs",
    );
    for table in worker::catalog::EVENT_TABLES {
        assert_eq!(
            db.count(table).await,
            reference.count(table).await,
            "{table}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints_and_drain_command() {
    let (db, mut redis, streams, group) = loaded("http", 500).await;
    let mut worker = WorkerProcess::start(&db.url, &redis.url, &streams, &group, "pod-h", &[]);
    worker.wait_http().await;
    redis
        .wait_until_idle(&streams, &group, Duration::from_secs(60))
        .await;
    // Readiness comes from the monitor (every 2 s).
    let started = Instant::now();
    while worker.get("/readyz").await.map(|r| r.0) != Some(200) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(worker.get("/livez").await.unwrap().0, 200);
    let (status, body) = worker.get("/health").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["postgres_sync_healthy"], true);
    assert_eq!(health["redis_consumer_healthy"], true);
    assert!(!body.to_lowercase().contains("surreal"));
    let (status, metrics) = worker.get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    for name in [
        "pgw_events_stored_total",
        "pgw_batches_total",
        "pgw_entry_to_commit_seconds",
        "pgw_stream_pending",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    assert!(
        metrics.contains("pgw_events_stored_total{kind=\"Deposited\"}"),
        "{metrics}"
    );

    // preStop: `postgres-writer drain` stops intake, waits for the flush, and the worker exits 0.
    let drain = Command::new(worker_binary())
        .arg("drain")
        .env("HTTP_PORT", worker.port.to_string())
        .output()
        .unwrap();
    assert!(
        drain.status.success(),
        "drain failed: {}",
        String::from_utf8_lossy(&drain.stderr)
    );
    assert!(String::from_utf8_lossy(&drain.stdout).contains("drained"));
    let status = worker.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "worker exit after drain: {status:?}");
    let (lag, pending) = redis.backlog(&streams[2], &group).await;
    assert_eq!((lag, pending), (Some(0), 0));
}

#[tokio::test]
async fn sigterm_during_load_commits_in_flight_work_and_exits_zero() {
    let (db, mut redis, streams, group) = loaded("term", 4_000).await;
    let mut worker = WorkerProcess::start(&db.url, &redis.url, &streams, &group, "pod-t", &[]);
    worker.wait_http().await;
    while db.count("share_price_changed_events").await < 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.signal("TERM");
    assert!(worker.wait_exit(Duration::from_secs(30)).await.success());
    // Nothing delivered to this consumer is left unacknowledged.
    for s in &streams {
        assert_eq!(
            redis.backlog(s, &group).await.1,
            0,
            "pending entries left on {s}"
        );
    }
    // What was committed is consistent.
    db.drain_analytics().await;
    db.assert_verified().await;
}

#[test]
fn invalid_settings_stop_start_up_with_a_message() {
    let out = Command::new(worker_binary())
        .args(["run", "--redis-streams", "a"])
        .env("DATABASE_URL", "postgres://localhost/x")
        .env("BATCH_SIZE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("BATCH_SIZE") && stderr.contains("= 0") && stderr.contains("1..=10000"),
        "{stderr}"
    );

    let out = Command::new(worker_binary())
        .args(["run", "--redis-streams", "a"])
        .env("DATABASE_URL", "postgres://localhost/x")
        .env("HTTP_PORT", "not-a-port")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--http-port") && stderr.contains("not-a-port"),
        "{stderr}"
    );
}

/// `migrate` reports the database's schema version where the migration Job's
/// terminationMessagePath points, for the operator's `status.schemaVersion`.
#[tokio::test]
async fn migrate_reports_the_schema_version_for_the_operator() {
    let db = TestDb::new().await;
    let dir = std::env::temp_dir().join(unique("pgw-migrate"));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("termination-log");
    let out = Command::new(worker_binary())
        .arg("migrate")
        .env("DATABASE_URL", &db.url)
        .env("TERMINATION_MESSAGE_PATH", &report)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = format!("schema version {}", worker::db::expected_schema_version());
    assert_eq!(std::fs::read_to_string(&report).unwrap(), expected);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&expected));

    // A report that cannot be written is a warning naming the path; the
    // migrations are applied, so the Job still succeeds.
    let out = Command::new(worker_binary())
        .arg("migrate")
        .env("DATABASE_URL", &db.url)
        .env(
            "TERMINATION_MESSAGE_PATH",
            dir.join("missing/termination-log"),
        )
        .output()
        .unwrap();
    assert!(out.status.success());
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        logs.contains("could not write the schema version report")
            && logs.contains("missing/termination-log"),
        "{logs}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Polls `/readyz` until it answers `code` (the monitor checks every 2 s).
async fn wait_readyz(worker: &WorkerProcess, code: u16, what: &str) {
    let started = Instant::now();
    loop {
        let got = worker.get("/readyz").await.map(|r| r.0);
        if got == Some(code) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "/readyz answered {got:?}, not {code}, {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `statement` with the given int8 parameters ($1, $2, ...).
async fn exec(db: &TestDb, statement: &str, params: &[i64]) {
    let mut query = sqlx::query(statement);
    for p in params {
        query = query.bind(*p);
    }
    query.execute(&db.pool).await.unwrap();
}

/// Records migration `version` as applied, as a Job of another image would.
async fn applied(db: &TestDb, version: i64) {
    exec(
        db,
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ($1, 'applied by another image', true, '\\x00'::bytea, 0)",
        &[version],
    )
    .await;
}

/// Issue 13: a migration Job of a newer image must not turn old pods unready
/// when the newer schema declares it keeps binaries of their schema working.
/// A newer migration that is incompatible, or declares nothing, and a schema
/// older than the binary's make the worker unready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_on_a_newer_schema_follows_its_declared_compatibility() {
    let (db, redis, streams, group) = loaded("schema", 20).await;
    let worker = WorkerProcess::start(&db.url, &redis.url, &streams, &group, "pod-s", &[]);
    worker.wait_http().await;
    let own = worker::db::expected_schema_version();
    wait_readyz(&worker, 200, "on the binary's own schema").await;

    // A newer image's Job applied migration own+1, unknown to this binary.
    let newer = own + 1;
    applied(&db, newer).await;
    let declare = "INSERT INTO schema_compatibility (version, oldest_compatible) VALUES ($1, $2) \
                   ON CONFLICT (version) DO UPDATE SET oldest_compatible = EXCLUDED.oldest_compatible";
    exec(&db, declare, &[newer, newer]).await;
    wait_readyz(&worker, 503, "on a newer schema incompatible with it").await;
    exec(&db, declare, &[newer, own]).await;
    wait_readyz(&worker, 200, "on a newer schema compatible with it").await;
    let (_, body) = worker.get("/health").await.unwrap();
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["schema_version_ok"], true, "{body}");

    // Every newer migration must keep this binary working, not only the newest.
    applied(&db, newer + 1).await;
    exec(&db, declare, &[newer + 1, own]).await;
    exec(&db, declare, &[newer, newer]).await;
    wait_readyz(
        &worker,
        503,
        "when one of two newer migrations is incompatible",
    )
    .await;
    exec(&db, declare, &[newer, own]).await;
    wait_readyz(&worker, 200, "when both newer migrations are compatible").await;

    // A newer migration that declares nothing counts as incompatible.
    exec(
        &db,
        "DELETE FROM schema_compatibility WHERE version = $1",
        &[newer + 1],
    )
    .await;
    wait_readyz(&worker, 503, "on a newer schema without a declaration").await;

    // A schema older than the binary's: unready, as before.
    exec(
        &db,
        "DELETE FROM _sqlx_migrations WHERE version >= $1",
        &[newer],
    )
    .await;
    wait_readyz(&worker, 200, "back on its own schema").await;
    exec(
        &db,
        "DELETE FROM _sqlx_migrations WHERE version = $1",
        &[own],
    )
    .await;
    wait_readyz(&worker, 503, "on a schema older than its own").await;
}

/// Issue 22: the commands that read or rewrite the read model (`verify`,
/// `rebuild`, `rollback`, `requeue`, `dead-letters replay`) make the check
/// `/readyz` makes: on a newer schema that does not declare this binary
/// compatible, or a schema older than its own, each refuses with a message
/// naming the problem and exit code 3, touching nothing; on a newer schema
/// declared compatible each runs.
#[tokio::test]
async fn commands_refuse_a_schema_not_declared_compatible() {
    let db = TestDb::new().await;
    // Work each command would do: drift for verify and rebuild, a dead letter
    // for replay.
    exec(
        &db,
        "INSERT INTO predicate_object (predicate_id, object_id, triple_count, total_position_count, total_market_cap) \
         VALUES ('0x01', '0x02', 7, 0, 0)",
        &[],
    )
    .await;
    exec(
        &db,
        "INSERT INTO dead_letters (stream, entry_id, reason, raw_payload) VALUES ('s', '1-0', 'bad', '\\x00')",
        &[],
    )
    .await;
    let run = |args: &[&str]| {
        let out = Command::new(worker_binary())
            .args(args)
            .env("DATABASE_URL", &db.url)
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        (out.status.code(), stderr)
    };
    let commands: [(&str, &[&str]); 5] = [
        ("verify", &["verify"]),
        ("rebuild", &["rebuild"]),
        (
            "rollback",
            &["rollback", "--network", "testnet", "--to-block", "0"],
        ),
        ("requeue", &["requeue"]),
        ("dead-letters replay", &["dead-letters", "replay"]),
    ];
    let own = worker::db::expected_schema_version();
    let newer = own + 1;
    applied(&db, newer).await;
    let declare = "INSERT INTO schema_compatibility (version, oldest_compatible) VALUES ($1, $2) \
                   ON CONFLICT (version) DO UPDATE SET oldest_compatible = EXCLUDED.oldest_compatible";
    exec(&db, declare, &[newer, newer]).await;
    for (name, args) in commands {
        let (code, stderr) = run(args);
        assert_eq!(code, Some(5), "{name} on an incompatible schema: {stderr}");
        assert!(
            stderr.contains(&format!("refusing to run `{name}`"))
                && stderr.contains(&format!(
                    "migration {newer} needs binaries of schema {newer}"
                )),
            "{stderr}"
        );
    }
    // A newer migration without a declaration counts as incompatible.
    exec(
        &db,
        "DELETE FROM schema_compatibility WHERE version = $1",
        &[newer],
    )
    .await;
    let (code, stderr) = run(&["verify"]);
    assert_eq!(code, Some(5), "{stderr}");
    assert!(stderr.contains("declares no compatibility"), "{stderr}");
    // Nothing was touched.
    assert_eq!(db.count("predicate_object").await, 1);
    let attempts: i32 = sqlx::query_scalar("SELECT replay_attempts FROM dead_letters")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 0);

    // Declared compatible: the commands run (verify finds the drift, rebuild removes it).
    exec(&db, declare, &[newer, own]).await;
    assert_eq!(run(&["verify"]).0, Some(1));
    assert_eq!(run(&["rebuild"]).0, Some(0));
    assert_eq!(run(&["verify"]).0, Some(0));
    assert_eq!(run(&["requeue"]).0, Some(0));

    // A schema older than the binary's: refused, naming `migrate`.
    exec(
        &db,
        "DELETE FROM _sqlx_migrations WHERE version >= $1",
        &[own],
    )
    .await;
    let (code, stderr) = run(&["rollback", "--network", "testnet", "--to-block", "0"]);
    assert_eq!(code, Some(5), "{stderr}");
    assert!(stderr.contains("postgres-writer migrate"), "{stderr}");
}
