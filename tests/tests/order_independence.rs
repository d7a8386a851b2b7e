//! The same event set delivered in order, shuffled, with duplicates, and
//! split over 3 concurrent workers gives identical tables, equal to
//! `verify`'s from-scratch result.

use serde_json::Value;
use std::time::Duration;
use system_tests::{
    assert_same_tables, consume_until_idle, stream_args, unique, TestDb, TestRedis,
};
use worker::generate::{generate, GeneratorSpec};

/// Deterministic shuffle (xorshift), no extra dependency.
fn shuffle<T>(items: &mut [T], mut seed: u64) {
    for i in (1..items.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        items.swap(i, (seed % (i as u64 + 1)) as usize);
    }
}

/// Every generated event as its own single-item entry payload.
fn single_event_payloads(spec: &GeneratorSpec) -> Vec<String> {
    let mut out = Vec::new();
    for entry in generate(spec) {
        let envelope: Value = serde_json::from_str(&entry.payload).unwrap();
        let items = match &envelope["event_data"] {
            Value::Array(items) => items.clone(),
            item => vec![item.clone()],
        };
        for item in items {
            let mut single = envelope.clone();
            single["event_data"] = item;
            out.push(single.to_string());
        }
    }
    out
}

async fn load(payloads: &[String], workers: usize) -> TestDb {
    let db = TestDb::new().await;
    let mut redis = TestRedis::new().await;
    let stream = unique("mixed");
    redis
        .xadd_all(payloads.iter().map(|p| (stream.as_str(), p.as_str())))
        .await;
    let group = unique("group");
    let args = (0..workers)
        .map(|i| {
            let mut a = stream_args(
                &redis.url,
                std::slice::from_ref(&stream),
                &group,
                &format!("worker-{i}"),
            );
            a.batch_size = 25;
            a
        })
        .collect();
    consume_until_idle(&db, args, Duration::from_secs(120)).await;
    db.drain_analytics().await;
    db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_events_any_delivery_same_tables() {
    let spec = GeneratorSpec {
        events: 3_000,
        events_per_entry: 1,
        seed: 42,
        accounts: 12,
        curves: 2,
        network: "testnet".into(),
        stream_prefix: "unused".into(),
    };
    let in_order = single_event_payloads(&spec);

    // Entries batched as the generator writes them (several events per entry, per-type streams).
    let batched = {
        let db = TestDb::new().await;
        let mut redis = TestRedis::new().await;
        let prefix = unique("typed");
        let entries = generate(&GeneratorSpec {
            events_per_entry: 10,
            stream_prefix: prefix.clone(),
            ..spec.clone()
        });
        redis.publish(&entries).await;
        let args = stream_args(
            &redis.url,
            &worker::generate::stream_names(&prefix),
            &unique("group"),
            "solo",
        );
        consume_until_idle(&db, vec![args], Duration::from_secs(120)).await;
        db.drain_analytics().await;
        db
    };
    let reference = batched.snapshot().await;
    batched.assert_verified().await;
    assert!(batched.count("position").await > 50 && batched.count("triple").await > 10);

    let ordered = load(&in_order, 1).await;
    ordered.assert_verified().await;
    assert_same_tables(
        &ordered.snapshot().await,
        &reference,
        "in-order delivery differs",
    );

    let mut shuffled = in_order.clone();
    shuffle(&mut shuffled, 7);
    let db = load(&shuffled, 1).await;
    db.assert_verified().await;
    assert_same_tables(
        &db.snapshot().await,
        &reference,
        "shuffled delivery differs",
    );

    // Every fifth event delivered twice, the copies shuffled in.
    let mut duplicated = shuffled.clone();
    duplicated.extend(shuffled.iter().step_by(5).cloned());
    shuffle(&mut duplicated, 11);
    let db = load(&duplicated, 1).await;
    db.assert_verified().await;
    assert_same_tables(
        &db.snapshot().await,
        &reference,
        "delivery with duplicates differs",
    );
    assert_eq!(
        db.count("deposited_events").await,
        batched.count("deposited_events").await
    );

    // Three concurrent workers on one consumer group, duplicates included.
    let db = load(&duplicated, 3).await;
    db.assert_verified().await;
    assert_same_tables(
        &db.snapshot().await,
        &reference,
        "three concurrent workers differ",
    );
}
