//! Issue 15 / ADR 0015: batch transactions hold no hot-row lock; their
//! effect reaches the base tables through fold deltas, folded exactly once
//! by partition owners that never wait for each other.

use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use system_tests::payload::{envelope, term, with_info, ADDR_A, ADDR_B};
use system_tests::{stream_args, unique, TestDb, TestRedis, WorkerProcess};
use worker::decode::{decode_entry, DecodedEntry};
use worker::fold::{self, Claim};
use worker::generate::{generate, stream_names, GeneratorSpec};

/// One entry holding a deposit by `account` into vault (term 1, curve 1) and
/// the vault's new price, at chain position (`block`, `tx_n`).
fn deposit_entry(tx_n: u64, block: u64, account: &str, total_shares: u64) -> DecodedEntry {
    let deposit = with_info(
        json!({"sender": account, "receiver": account, "termId": term(1), "curveId": "1",
            "assets": "10", "assetsAfterFees": "9", "shares": "5",
            "totalShares": total_shares.to_string(), "vaultType": 0}),
        tx_n,
        block,
        0,
    );
    let price = with_info(
        json!({"termId": term(1), "curveId": "1", "sharePrice": "2000000000000000000",
            "totalAssets": (block * 10).to_string(), "totalShares": (block * 7).to_string(), "vaultType": 0}),
        tx_n,
        block,
        1,
    );
    let payload =
        json!({"event_name": "Deposited", "event_signature_hash": "0x00", "network": "testnet",
        "event_data": [deposit]})
        .to_string();
    let price_payload = envelope("SharePriceChanged", price);
    let mut entry = decode_entry(
        &Arc::from("s"),
        &Arc::from(format!("{tx_n}-0").as_str()),
        &[("payload".to_string(), payload.into_bytes())],
    );
    let price_entry = decode_entry(
        &Arc::from("s"),
        &Arc::from(format!("{tx_n}-1").as_str()),
        &[("payload".to_string(), price_payload.into_bytes())],
    );
    assert!(entry.dead_letters.is_empty() && price_entry.dead_letters.is_empty());
    entry.events.extend(price_entry.events);
    entry
}

async fn vault_row(db: &TestDb) -> Value {
    let text: String = sqlx::query_scalar(
        "SELECT row_to_json(v)::text FROM (SELECT total_shares::text, total_assets::text, position_count \
         FROM vault WHERE term_id = $1 AND curve_id = '1') v",
    )
    .bind(term(1))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The old design locked the vault and position rows from the upsert to the
/// commit, so a second batch on the same vault waited for the first. Now a
/// batch held open does not stop another one on the same vault, position
/// and term from committing (`lock_timeout` turns any row-lock wait into an
/// error instead of a hang).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_on_one_vault_never_wait_for_each_other() {
    let db = TestDb::new().await;
    let first = deposit_entry(1, 100, ADDR_A, 5);
    let second = deposit_entry(2, 200, ADDR_A, 10);
    let third = deposit_entry(3, 150, ADDR_B, 5);

    let mut held = db.pool.begin().await.unwrap();
    worker::persistence::write_in_transaction(
        &mut held,
        std::slice::from_ref(&first),
        worker::persistence::Insert::Copy,
        None,
    )
    .await
    .unwrap();

    for other in [&second, &third] {
        let mut tx = db.pool.begin().await.unwrap();
        sqlx::query("SET LOCAL lock_timeout = '5s'")
            .execute(&mut *tx)
            .await
            .unwrap();
        let outcome = worker::persistence::write_in_transaction(
            &mut tx,
            std::slice::from_ref(other),
            worker::persistence::Insert::Copy,
            None,
        )
        .await
        .expect("a batch on the same vault must not wait for the open one");
        assert_eq!(outcome.stored_events(), 2);
        tx.commit().await.unwrap();
    }
    held.commit().await.unwrap();

    assert!(db.pending_deltas().await > 0);
    db.fold().await;
    assert_eq!(db.pending_deltas().await, 0);
    // Newest price (block 200), both accounts active, sums exact.
    assert_eq!(
        vault_row(&db).await,
        json!({"total_shares": "1400", "total_assets": "2000", "position_count": 2})
    );
    let deposited: String = sqlx::query_scalar(
        "SELECT total_deposit_assets_after_total_fees::text FROM position WHERE account_id = $1",
    )
    .bind(system_tests::payload::ADDR_A_CHECKSUM)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(deposited, "18");
    db.drain_analytics().await;
    db.assert_verified().await;
}

fn spec(prefix: &str, events: u64) -> GeneratorSpec {
    GeneratorSpec {
        events,
        events_per_entry: 5,
        seed: 15,
        accounts: 8,
        curves: 2,
        network: "testnet".into(),
        stream_prefix: prefix.into(),
    }
}

/// Consumes a generated history with in-process consumers but folds nothing,
/// so that the deltas are left for the test.
async fn deltas_of_history(db: &TestDb, events: u64) {
    let mut redis = TestRedis::new().await;
    let prefix = unique("fold");
    redis.publish(&generate(&spec(&prefix, events))).await;
    let group = unique("group");
    let streams = stream_names(&prefix);
    let args = stream_args(&redis.url, &streams, &group, "c");
    let consumer = worker::pipeline::Consumer {
        args: worker::intake::StreamSettings {
            batch_size: 7,
            ..args
        },
        pool: db.pool.clone(),
        metrics: Arc::new(worker::metrics::Metrics::new()),
        health: Arc::new(worker::health::Health::new(true, false)),
        fold_wake: None,
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(consumer.run(stop.clone()));
    redis
        .wait_until_idle(&streams, &group, Duration::from_secs(60))
        .await;
    stop.cancel();
    task.await.unwrap().unwrap();
}

/// Four folders taking two partitions and three deltas at a time race over
/// the same deltas: each delta is folded by exactly one of them (the counts
/// add up, and `verify` finds the sums exact, not doubled).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_folders_fold_each_delta_exactly_once() {
    let db = TestDb::new().await;
    deltas_of_history(&db, 1_500).await;
    let pending = db.pending_deltas().await;
    assert!(pending > 20, "{pending} deltas");
    let folders = (0..4).map(|_| {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            let (mut deltas, mut folds) = (0u64, 0u64);
            loop {
                let report = fold::fold_once(&pool, Claim::SkipLocked(2), 3)
                    .await
                    .unwrap();
                if report.deltas == 0 {
                    if fold::stats(&pool).await.unwrap().0 == 0 {
                        return (deltas, folds);
                    }
                    tokio::task::yield_now().await;
                    continue;
                }
                deltas += report.deltas;
                folds += 1;
            }
        })
    });
    let folders: Vec<_> = folders.collect();
    let mut results: Vec<(u64, u64)> = Vec::new();
    for folder in folders {
        results.push(folder.await.unwrap());
    }
    let total: u64 = results.iter().map(|r| r.0).sum();
    assert_eq!(total, pending as u64, "folded per folder: {results:?}");
    assert!(
        results.iter().filter(|r| r.1 > 0).count() > 1,
        "more than one folder did work: {results:?}"
    );
    let recorded: i64 = sqlx::query_scalar("SELECT sum(folded_deltas)::int8 FROM fold_partition")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(recorded, pending);
    db.drain_analytics().await;
    db.assert_verified().await;
}

/// FOLD_INTERVAL_MS spaces the folds of each partition, whichever process
/// folds: a partition folded a moment ago is not due for any folder, even
/// with new deltas, until the interval has passed; a drain
/// (`Claim::SkipLocked`) still takes it at once.
#[tokio::test]
async fn a_partition_is_folded_at_most_once_per_interval_by_all_folders() {
    let db = TestDb::new().await;
    let write = |tx_n: u64| {
        let pool = db.pool.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            let entry = deposit_entry(tx_n, 100 + tx_n, ADDR_A, 5);
            worker::persistence::write_in_transaction(
                &mut tx,
                std::slice::from_ref(&entry),
                worker::persistence::Insert::Copy,
                None,
            )
            .await
            .unwrap();
            tx.commit().await.unwrap();
        }
    };
    let due = |ms: u64| Claim::Due {
        partitions: 32,
        spacing: Duration::from_millis(ms),
    };
    write(1).await;
    let first = fold::fold_once(&db.pool, Claim::SkipLocked(32), 100)
        .await
        .unwrap();
    assert!(first.deltas > 0);

    write(2).await;
    let pending = db.pending_deltas().await;
    assert!(pending > 0);
    let early = fold::fold_once(&db.pool, due(60_000), 100).await.unwrap();
    assert_eq!(early.deltas, 0, "folded a moment ago: not due");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let later = fold::fold_once(&db.pool, due(10), 100).await.unwrap();
    assert_eq!(
        later.deltas as i64, pending,
        "due once the interval has passed"
    );

    write(3).await;
    let drained = fold::fold_once(&db.pool, Claim::SkipLocked(32), 100)
        .await
        .unwrap();
    assert!(drained.deltas > 0, "a drain takes what is there");
    db.drain_analytics().await;
    db.assert_verified().await;
}

/// A folder whose connection dies mid-fold (deltas deleted and applied, not
/// committed) loses nothing: while it holds its partitions no other folder
/// takes them, and after the crash another folder folds everything once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_fold_loses_nothing() {
    let db = TestDb::new().await;
    deltas_of_history(&db, 600).await;
    let pending = db.pending_deltas().await;

    let mut crashing = db.pool.begin().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *crashing)
        .await
        .unwrap();
    let partitions: Vec<i16> = (0..worker::partition::PARTITIONS).collect();
    sqlx::query("SELECT partition FROM fold_partition ORDER BY partition FOR UPDATE")
        .execute(&mut *crashing)
        .await
        .unwrap();
    let report = fold::fold_in(&mut crashing, &partitions, 100_000)
        .await
        .unwrap();
    assert_eq!(report.deltas as i64, pending);

    // Owned partitions are skipped, never waited for.
    let other = fold::fold_once(&db.pool, Claim::SkipLocked(32), 100)
        .await
        .unwrap();
    assert_eq!(other.deltas, 0);

    let _: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(crashing.commit().await.is_err());

    assert_eq!(db.pending_deltas().await, pending);
    assert_eq!(db.fold().await as i64, pending);
    db.drain_analytics().await;
    db.assert_verified().await;
}

/// The worker folds its own batches, exports how far behind the base tables
/// are, and folds its consumers' last batches when it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_folds_exposes_freshness_and_folds_before_exit() {
    let db = TestDb::new().await;
    let mut redis = TestRedis::new().await;
    let prefix = unique("fresh");
    redis.publish(&generate(&spec(&prefix, 2_000))).await;
    let streams = stream_names(&prefix);
    let group = unique("group");
    let mut worker = WorkerProcess::start(&db.url, &redis.url, &streams, &group, "pod-f", &[]);
    worker.wait_http().await;
    redis
        .wait_until_idle(&streams, &group, Duration::from_secs(60))
        .await;
    db.wait_folded(Duration::from_secs(60)).await;
    let (status, metrics) = worker.get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    for name in [
        "pgw_fold_lag_seconds",
        "pgw_fold_pending_deltas",
        "pgw_fold_delay_seconds_count",
    ] {
        assert!(metrics.contains(name), "{name} missing");
    }
    let folded: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pgw_fold_deltas_total "))
        .expect("pgw_fold_deltas_total")
        .parse()
        .unwrap();
    assert!(folded > 0.0);
    let (_, health) = worker.get("/health").await.unwrap();
    let health: Value = serde_json::from_str(&health).unwrap();
    assert!(health["fold"]["pending_deltas"].is_i64(), "{health}");

    // More entries, then SIGTERM at once: the drain commits the in-flight
    // batch and folds the deltas of this worker's batches before exiting.
    redis
        .publish(&generate(&GeneratorSpec {
            seed: 16,
            ..spec(&prefix, 400)
        }))
        .await;
    worker.signal("TERM");
    assert!(worker.wait_exit(Duration::from_secs(60)).await.success());
    assert_eq!(db.pending_deltas().await, 0);
    db.drain_analytics().await;
    db.assert_verified().await;
}

#[tokio::test]
async fn migration_creates_every_partition() {
    let db = TestDb::new().await;
    let (n, max): (i64, i16) =
        sqlx::query_as("SELECT count(*), max(partition) FROM fold_partition")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(n, i64::from(worker::partition::PARTITIONS));
    assert_eq!(max, worker::partition::PARTITIONS - 1);
}

/// `rebuild` with deltas pending recomputes from the events and drops the
/// deltas (their events are what it reads): nothing is applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_with_pending_deltas_applies_nothing_twice() {
    let db = TestDb::new().await;
    deltas_of_history(&db, 600).await;
    assert!(db.pending_deltas().await > 0);
    worker::verify::rebuild(&db.pool, false).await.unwrap();
    assert_eq!(db.pending_deltas().await, 0);
    db.drain_analytics().await;
    db.assert_verified().await;
}

/// `rollback` with deltas pending folds them first, then rewinds: the result
/// equals the from-scratch definition of the remaining events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_with_pending_deltas_is_exact() {
    let db = TestDb::new().await;
    deltas_of_history(&db, 600).await;
    assert!(db.pending_deltas().await > 0);
    let (low, high): (i64, i64) =
        sqlx::query_as("SELECT min(block_number), max(block_number) FROM deposited_events")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let report = worker::rollback::rollback(&db.pool, "testnet", (low + high) / 2)
        .await
        .unwrap();
    let removed: u64 = report.events_removed.iter().map(|(_, n)| n).sum();
    assert!(removed > 0, "{}", report.render());
    assert_eq!(db.pending_deltas().await, 0);
    db.drain_analytics().await;
    db.assert_verified().await;
}
