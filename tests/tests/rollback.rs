//! Chain reorganisations: after `rollback --to-block B` the tables equal the
//! from-scratch result of the remaining events (a database that never saw the
//! removed ones), analytics included; entries that arrive again afterwards
//! apply normally.

use serde_json::Value;
use std::time::Duration;
use system_tests::{
    assert_same_tables, consume_until_idle, stream_args, unique, TestDb, TestRedis,
};
use worker::generate::{generate, GeneratorSpec};

fn block_of(payload: &str) -> i64 {
    let v: Value = serde_json::from_str(payload).unwrap();
    match &v["event_data"]["transaction_information"]["block_number"] {
        Value::Number(n) => n.as_i64().unwrap(),
        Value::String(s) => i64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap(),
        other => panic!("block_number {other}"),
    }
}

/// One entry per event, so that they can be split by block.
fn single_events(network: &str, seed: u64) -> Vec<String> {
    let spec = GeneratorSpec {
        events: 2_500,
        events_per_entry: 1,
        seed,
        accounts: 10,
        curves: 2,
        network: network.into(),
        stream_prefix: "unused".into(),
    };
    generate(&spec)
        .into_iter()
        .flat_map(|e| {
            let v: Value = serde_json::from_str(&e.payload).unwrap();
            let items = match &v["event_data"] {
                Value::Array(items) => items.clone(),
                item => vec![item.clone()],
            };
            items.into_iter().map(move |item| {
                let mut single = v.clone();
                single["event_data"] = item;
                single.to_string()
            })
        })
        .collect()
}

async fn load(db: &TestDb, payloads: &[&String]) {
    let mut redis = TestRedis::new().await;
    let stream = unique("reorg");
    redis
        .xadd_all(payloads.iter().map(|p| (stream.as_str(), p.as_str())))
        .await;
    let args = stream_args(&redis.url, &[stream], &unique("group"), "c");
    consume_until_idle(db, vec![args], Duration::from_secs(120)).await;
    db.drain_analytics().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_equals_the_remaining_events_and_redelivery_applies_again() {
    let payloads = single_events("base-sepolia", 77);
    let blocks: Vec<i64> = payloads.iter().map(|p| block_of(p)).collect();
    let mut sorted = blocks.clone();
    sorted.sort_unstable();
    let cut = sorted[sorted.len() / 2];
    let kept: Vec<&String> = payloads
        .iter()
        .zip(&blocks)
        .filter(|(_, b)| **b <= cut)
        .map(|(p, _)| p)
        .collect();
    let removed: Vec<&String> = payloads
        .iter()
        .zip(&blocks)
        .filter(|(_, b)| **b > cut)
        .map(|(p, _)| p)
        .collect();
    assert!(!kept.is_empty() && !removed.is_empty());
    let all: Vec<&String> = payloads.iter().collect();
    let db = TestDb::new().await;
    load(&db, &all).await;
    let before = db.count("deposited_events").await;

    // One database holds one network (its first write records it): a rollback
    // naming another network is refused and changes nothing.
    let error = worker::rollback::rollback(&db.pool, "other-chain", 0)
        .await
        .expect_err("a rollback of a network the database does not hold is refused")
        .to_string();
    assert!(
        error.contains("other-chain") && error.contains("base-sepolia"),
        "{error}"
    );
    assert_eq!(db.count("deposited_events").await, before);

    let report = worker::rollback::rollback(&db.pool, "base-sepolia", cut)
        .await
        .unwrap();
    println!("rollback to block {cut}:\n{}", report.render());
    let removed_events: u64 = report.events_removed.iter().map(|(_, n)| n).sum();
    assert_eq!(removed_events as usize, removed.len());
    assert!(db.count("deposited_events").await < before);
    db.drain_analytics().await;
    db.assert_verified().await;

    // Reference: a database that only ever saw the remaining events.
    let reference = TestDb::new().await;
    load(&reference, &kept).await;
    assert_same_tables(
        &db.snapshot().await,
        &reference.snapshot().await,
        "after rollback",
    );
    assert_eq!(
        db.count("generic_events").await,
        reference.count("generic_events").await,
        "events of the kept blocks untouched"
    );

    // The removed events arrive again (the indexer republishes): they apply normally.
    load(&db, &removed).await;
    db.assert_verified().await;
    let full = TestDb::new().await;
    load(&full, &all).await;
    assert_same_tables(
        &db.snapshot().await,
        &full.snapshot().await,
        "after the events arrive again",
    );
}
