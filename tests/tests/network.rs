//! One database holds one network: its network is recorded on the first
//! write, and events of any other network are refused (the worker turns
//! unready, acknowledges nothing, stores nothing of them) instead of being
//! mixed into the same positions, vaults and terms.

use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use system_tests::{consume_until_idle, stream_args, unique, TestDb, TestRedis, WorkerProcess};
use worker::decode::{decode_entry, DecodedEntry};
use worker::generate::{generate, GeneratorSpec};
use worker::persistence::{write_entries, ConflictRetry};

fn spec(network: &str, events: u64, seed: u64) -> GeneratorSpec {
    GeneratorSpec {
        events,
        events_per_entry: 1,
        seed,
        accounts: 8,
        curves: 2,
        network: network.into(),
        stream_prefix: "unused".into(),
    }
}

fn payloads(network: &str, events: u64, seed: u64) -> Vec<String> {
    generate(&spec(network, events, seed))
        .into_iter()
        .map(|e| e.payload)
        .collect()
}

fn decoded(payloads: &[String]) -> Vec<DecodedEntry> {
    let stream: Arc<str> = Arc::from("s");
    payloads
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let id: Arc<str> = Arc::from(format!("{}-0", i + 1).as_str());
            decode_entry(
                &stream,
                &id,
                &[("payload".to_string(), p.as_bytes().to_vec())],
            )
        })
        .collect()
}

/// Events stored per network, over every event table.
async fn events_of(db: &TestDb, network: &str) -> i64 {
    let mut total = 0;
    for table in worker::catalog::EVENT_TABLES {
        let n: i64 =
            sqlx::query_scalar(&format!("SELECT count(*) FROM {table} WHERE network = $1"))
                .bind(network)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        total += n;
    }
    total
}

fn transaction_hash(payload: &str) -> String {
    let v: Value = serde_json::from_str(payload).unwrap();
    let item = match &v["event_data"] {
        Value::Array(items) => items[0].clone(),
        item => item.clone(),
    };
    item["transaction_information"]["transaction_hash"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_one_network_refuses_the_events_of_another() {
    let db = TestDb::new().await;
    let mut redis = TestRedis::new().await;

    // The database is written by network "net-a" first.
    let stream_a = unique("net_a");
    let a = payloads("net-a", 120, 51);
    redis
        .xadd_all(a.iter().map(|p| (stream_a.as_str(), p.as_str())))
        .await;
    let group = unique("group");
    consume_until_idle(
        &db,
        vec![stream_args(&redis.url, &[stream_a], &group, "a")],
        Duration::from_secs(60),
    )
    .await;
    let stored_a = events_of(&db, "net-a").await;
    assert!(stored_a >= 120, "{stored_a}");

    // A stream of "net-b", which also carries one new event of "net-a" in its first batch.
    let stream_b = unique("net_b");
    let late_a = payloads("net-a", 1, 52).remove(0);
    let b = payloads("net-b", 60, 53);
    redis
        .xadd_all(
            std::iter::once(late_a.as_str())
                .chain(b.iter().map(String::as_str))
                .map(|p| (stream_b.as_str(), p)),
        )
        .await;
    let worker = WorkerProcess::start(
        &db.url,
        &redis.url,
        std::slice::from_ref(&stream_b),
        &group,
        "pod-b",
        &[("CONSUMER_CONCURRENCY", "1")],
    );
    worker.wait_http().await;

    // The worker says why it is stuck, naming both networks.
    let started = Instant::now();
    let health = loop {
        let (_, body) = worker.get("/health").await.unwrap_or_default();
        if body.contains("net-a") && body.contains("net-b") {
            break body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the refusal never showed in /health: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["ready"], false, "{health}");
    assert_ne!(worker.get("/readyz").await.unwrap().0, 200);

    // Nothing acknowledged: the batch it read is still pending.
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(&stream_b)
        .arg(&group)
        .query_async(&mut redis.con)
        .await
        .unwrap();
    let count = match summary {
        redis::Value::Array(parts) => match &parts[0] {
            redis::Value::Int(n) => *n,
            other => panic!("XPENDING count {other:?}"),
        },
        other => panic!("XPENDING {other:?}"),
    };
    assert_eq!(count, 20, "the refused batch stays pending");

    // Nothing of net-b stored, nor the net-a event that shared its batch; no dead letters.
    assert_eq!(events_of(&db, "net-b").await, 0);
    assert_eq!(events_of(&db, "net-a").await, stored_a);
    let late: i64 =
        sqlx::query_scalar("SELECT count(*) FROM deposited_events WHERE transaction_hash = $1")
            .bind(transaction_hash(&late_a))
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(late, 0, "the whole batch is refused");
    assert_eq!(db.count("dead_letters").await, 0);
    db.drain_analytics().await;
    db.assert_verified().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_networks_racing_for_an_empty_database_have_one_winner() {
    let a = decoded(&payloads("race-a", 40, 61));
    let b = decoded(&payloads("race-b", 40, 62));
    for round in 0..4 {
        let db = TestDb::new().await;
        let (ra, rb) = tokio::join!(
            write_entries(&db.pool, &a, ConflictRetry::default(), None),
            write_entries(&db.pool, &b, ConflictRetry::default(), None),
        );
        let (winner, loser, error) = match (&ra, &rb) {
            (Ok(_), Err(e)) => ("race-a", "race-b", e.to_string()),
            (Err(e), Ok(_)) => ("race-b", "race-a", e.to_string()),
            _ => panic!("round {round}: exactly one network must win: {ra:?} / {rb:?}"),
        };
        assert!(
            error.contains(winner) && error.contains(loser),
            "the refusal names both networks: {error}"
        );
        let expected: usize = if winner == "race-a" { &a } else { &b }
            .iter()
            .map(|e| e.events.len())
            .sum();
        assert_eq!(events_of(&db, winner).await, expected as i64);
        assert_eq!(events_of(&db, loser).await, 0);
        assert_eq!(db.count("dead_letters").await, 0);
    }
}
