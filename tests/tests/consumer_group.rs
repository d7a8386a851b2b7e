//! The consumer group itself: a group lost in Redis (XGROUP DESTROY, a
//! deleted stream, a Redis restart without persistence) is recreated at `0`
//! and everything is stored exactly once; consumers of pods that are gone are
//! removed from the group once they hold no pending entries.

use std::time::{Duration, Instant};
use system_tests::{unique, TestDb, TestRedis, WorkerProcess};
use worker::generate::{generate, stream_names, GeneratedEntry, GeneratorSpec};
use worker::intake::StreamIntake;

fn spec(prefix: &str, events: u64, seed: u64) -> GeneratorSpec {
    GeneratorSpec {
        events,
        events_per_entry: 3,
        seed,
        accounts: 12,
        curves: 2,
        network: "testnet".into(),
        stream_prefix: prefix.into(),
    }
}

async fn event_count(db: &TestDb) -> i64 {
    let mut total = 0;
    for table in worker::catalog::EVENT_TABLES {
        total += db.count(table).await;
    }
    total
}

/// Events the generated entries carry (the generator may overshoot its target).
fn events_in(entries: &[GeneratedEntry]) -> i64 {
    entries
        .iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
            match &v["event_data"] {
                serde_json::Value::Array(items) => items.len() as i64,
                _ => 1,
            }
        })
        .sum()
}

async fn wait_until_idle(
    redis: &mut TestRedis,
    streams: &[String],
    group: &str,
    timeout: Duration,
) {
    let started = Instant::now();
    loop {
        let mut idle = true;
        for s in streams {
            // A deleted stream (not created again yet) has no backlog to read: not idle.
            let mut intake = StreamIntake::new(
                &redis.url,
                std::slice::from_ref(s),
                group,
                "observer",
                10,
                Duration::from_millis(10),
            )
            .unwrap();
            match intake.backlog().await {
                Ok(b) if b[0].lag == Some(0) && b[0].pending == 0 => {}
                _ => idle = false,
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

async fn wait_ready(worker: &WorkerProcess) {
    let started = Instant::now();
    while worker.get("/readyz").await.map(|r| r.0) != Some(200) {
        let health = worker.get("/health").await.map(|r| r.1);
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never became ready: {health:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of a counter (summed over its label sets) on `/metrics`.
async fn metric(worker: &WorkerProcess, name: &str) -> f64 {
    let (_, text) = worker.get("/metrics").await.expect("metrics");
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn redis_cmd<T: redis::FromRedisValue>(redis: &mut TestRedis, cmd: &mut redis::Cmd) -> T {
    cmd.query_async(&mut redis.con).await.unwrap()
}

/// Consumers of the group on a stream, with their pending counts.
async fn consumers(redis: &mut TestRedis, stream: &str, group: &str) -> Vec<(String, u64)> {
    let reply: Vec<redis::Value> = redis_cmd(
        redis,
        redis::cmd("XINFO").arg("CONSUMERS").arg(stream).arg(group),
    )
    .await;
    reply
        .into_iter()
        .map(|c| {
            let map: std::collections::HashMap<String, redis::Value> =
                redis::FromRedisValue::from_redis_value(c).unwrap();
            let name: String = redis::FromRedisValue::from_redis_value_ref(&map["name"]).unwrap();
            let pending: u64 =
                redis::FromRedisValue::from_redis_value_ref(&map["pending"]).unwrap();
            (name, pending)
        })
        .collect()
}

/// Runs a worker over the first half of the entries, loses the group with
/// `lose`, publishes the second half, and checks that the worker recovers:
/// ready again, every event stored once, nothing dead-lettered.
async fn recovers_after(what: &str, lose: fn(&str, &str) -> redis::Cmd) {
    let db = TestDb::new().await;
    let mut redis = TestRedis::new().await;
    let prefix = unique(what);
    let streams = stream_names(&prefix);
    let group = unique("group");
    let entries = generate(&spec(&prefix, 900, 41));
    let first: Vec<GeneratedEntry> = entries.iter().step_by(2).cloned().collect();
    let second: Vec<GeneratedEntry> = entries.iter().skip(1).step_by(2).cloned().collect();
    redis.publish(&first).await;

    let worker = WorkerProcess::start(&db.url, &redis.url, &streams, &group, "pod-g", &[]);
    worker.wait_http().await;
    wait_until_idle(&mut redis, &streams, &group, Duration::from_secs(120)).await;
    wait_ready(&worker).await;
    let stored_first = event_count(&db).await;
    assert!(stored_first > 0);

    for stream in &streams {
        let _: redis::Value = redis_cmd(&mut redis, &mut lose(stream, &group)).await;
    }
    redis.publish(&second).await;

    wait_until_idle(&mut redis, &streams, &group, Duration::from_secs(120)).await;
    wait_ready(&worker).await;
    assert_eq!(
        event_count(&db).await,
        events_in(&entries),
        "every event stored exactly once"
    );
    assert_eq!(db.count("dead_letters").await, 0, "nothing dead-lettered");
    assert!(
        metric(&worker, "pgw_consumer_groups_recreated_total").await >= 1.0,
        "the recreation is counted"
    );
    db.drain_analytics().await;
    db.assert_verified().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroyed_group_is_recreated_and_the_reread_changes_nothing() {
    recovers_after("destroyed", |stream, group| {
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("DESTROY").arg(stream).arg(group);
        cmd
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_stream_gets_its_group_back_and_new_entries_are_stored() {
    recovers_after("deleted", |stream, _| {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(stream);
        cmd
    })
    .await;
}

/// A group with two consumers of pods that are gone: one without pending
/// entries, one with.
async fn group_with_ghosts(
    redis: &mut TestRedis,
    what: &str,
) -> (Vec<String>, String, String, i64) {
    let prefix = unique(what);
    let streams = stream_names(&prefix);
    let group = unique("group");
    for stream in &streams {
        let _: redis::Value = redis_cmd(
            redis,
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg(&group)
                .arg("0")
                .arg("MKSTREAM"),
        )
        .await;
    }
    let entries = generate(&spec(&prefix, 300, 43));
    let ghost_stream = entries[0].stream.clone();
    redis.publish(&entries).await;
    let events = events_in(&entries);
    // ghost-busy took three entries and died before acknowledging them.
    let _: redis::Value = redis_cmd(
        redis,
        redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&group)
            .arg("ghost-busy")
            .arg("COUNT")
            .arg(3)
            .arg("STREAMS")
            .arg(&ghost_stream)
            .arg(">"),
    )
    .await;
    // ghost-empty joined and left nothing behind.
    let _: redis::Value = redis_cmd(
        redis,
        redis::cmd("XGROUP")
            .arg("CREATECONSUMER")
            .arg(&ghost_stream)
            .arg(&group)
            .arg("ghost-empty"),
    )
    .await;
    let before = consumers(redis, &ghost_stream, &group).await;
    assert!(
        before.contains(&("ghost-busy".to_string(), 3)),
        "{before:?}"
    );
    assert!(
        before.contains(&("ghost-empty".to_string(), 0)),
        "{before:?}"
    );
    (streams, group, ghost_stream, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_consumers_are_removed_once_their_entries_are_taken_over() {
    let db = TestDb::new().await;
    let mut redis = TestRedis::new().await;
    let (streams, group, ghost_stream, events) = group_with_ghosts(&mut redis, "reap").await;

    let worker = WorkerProcess::start(
        &db.url,
        &redis.url,
        &streams,
        &group,
        "pod-r",
        &[
            ("CLAIM_IDLE_MS", "1000"),
            ("CLAIM_INTERVAL_MS", "200"),
            ("CONSUMER_REAP_IDLE_MS", "1000"),
        ],
    );
    worker.wait_http().await;
    wait_until_idle(&mut redis, &streams, &group, Duration::from_secs(120)).await;
    let started = Instant::now();
    loop {
        let left = consumers(&mut redis, &ghost_stream, &group).await;
        if left.iter().all(|(name, _)| name.starts_with("pod-r")) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "dead consumers still in the group: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_ready(&worker).await;
    assert_eq!(event_count(&db).await, events, "every event stored once");
    assert_eq!(db.count("dead_letters").await, 0);
    let removed = metric(&worker, "pgw_consumers_removed_total").await;
    assert_eq!(removed, 2.0, "both dead consumers counted");
    let (_, text) = worker.get("/metrics").await.unwrap();
    assert!(
        text.contains(&format!(
            "pgw_consumers_removed_total{{stream=\"{ghost_stream}\"}} 2"
        )),
        "{text}"
    );
    db.drain_analytics().await;
    db.assert_verified().await;
}

/// (stream, consumer) of each consumer removed with no idle threshold.
async fn removed_names(intake: &mut StreamIntake) -> Vec<(String, String)> {
    intake
        .remove_idle_consumers(Duration::ZERO, &[])
        .await
        .unwrap()
        .into_iter()
        .map(|(stream, consumer)| (stream.to_string(), consumer))
        .collect()
}

#[tokio::test]
async fn reaping_keeps_consumers_with_pending_entries_and_itself() {
    let mut redis = TestRedis::new().await;
    let (_, group, ghost_stream, _) = group_with_ghosts(&mut redis, "reapunit").await;
    let streams = vec![ghost_stream.clone()];
    let mut intake = StreamIntake::new(
        &redis.url,
        &streams,
        &group,
        "self",
        100,
        Duration::from_millis(10),
    )
    .unwrap();
    // "self" joins the group and takes nothing.
    let _: redis::Value = redis_cmd(
        &mut redis,
        redis::cmd("XGROUP")
            .arg("CREATECONSUMER")
            .arg(&ghost_stream)
            .arg(&group)
            .arg("self"),
    )
    .await;

    // Nobody has been idle for an hour.
    let removed = intake
        .remove_idle_consumers(Duration::from_secs(3600), &[])
        .await
        .unwrap();
    assert!(removed.is_empty(), "{removed:?}");
    assert_eq!(consumers(&mut redis, &ghost_stream, &group).await.len(), 3);

    // Idle enough: only the empty ghost goes; the busy one keeps its entries, self stays.
    let removed = removed_names(&mut intake).await;
    assert_eq!(
        removed,
        vec![(ghost_stream.clone(), "ghost-empty".to_string())]
    );
    let left = consumers(&mut redis, &ghost_stream, &group).await;
    assert!(left.contains(&("ghost-busy".to_string(), 3)), "{left:?}");
    assert!(left.iter().any(|(n, _)| n == "self"), "{left:?}");

    // Once its entries are taken over (and acknowledged), the busy ghost goes too.
    let claimed = intake.claim_stale(Duration::ZERO).await.unwrap();
    assert_eq!(claimed.len(), 3);
    let keys: Vec<_> = claimed
        .iter()
        .map(|e| (e.stream.clone(), e.id.clone()))
        .collect();
    intake.ack(&keys).await.unwrap();
    let removed = removed_names(&mut intake).await;
    assert_eq!(
        removed,
        vec![(ghost_stream.clone(), "ghost-busy".to_string())]
    );
    let left = consumers(&mut redis, &ghost_stream, &group).await;
    assert_eq!(left, vec![("self".to_string(), 0)]);
}

/// Issue 22: a pending entry trimmed from the stream before it was
/// acknowledged has one policy whether it was this consumer's own (XREADGROUP
/// of its pending entries answers nil fields) or another consumer's (XAUTOCLAIM
/// lists it as deleted): a dead letter whose reason says it was trimmed (never
/// "no payload field"), one metric, and it is acknowledged. The entries still
/// in the stream are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimmed_pending_entries_get_one_policy_own_or_another_consumers() {
    use system_tests::payload::*;
    let db = TestDb::new().await;
    let mut redis = TestRedis::new().await;
    let stream = unique("trim");
    let group = unique("group");
    let mut ids = Vec::new();
    for n in 1..=6u64 {
        let item = with_info(
            serde_json::json!({"creator": ADDR_A, "termId": term(n), "atomData": "6869", "atomWallet": ADDR_B}),
            n,
            100 + n,
            0,
        );
        let payload = envelope("AtomCreated", item);
        ids.push(redis.xadd(&stream, "payload", payload.as_bytes()).await);
    }
    let intake = |consumer: &str| {
        StreamIntake::new(
            &redis.url,
            std::slice::from_ref(&stream),
            &group,
            consumer,
            2,
            Duration::from_millis(10),
        )
        .unwrap()
    };
    // Entries 1-2 pending on a consumer that is gone, 3-4 on "me"; 5-6 undelivered.
    let (mut gone, mut me) = (intake("gone"), intake("me"));
    gone.ensure_groups().await.unwrap();
    assert_eq!(
        gone.read(worker::intake::ReadFrom::New)
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        me.read(worker::intake::ReadFrom::New).await.unwrap().len(),
        2
    );
    // Entry 1 trimmed (XTRIM MINID), entry 3 deleted (XDEL), both while pending.
    let _: i64 = redis_cmd(
        &mut redis,
        redis::cmd("XTRIM").arg(&stream).arg("MINID").arg(&ids[1]),
    )
    .await;
    let _: i64 = redis_cmd(&mut redis, redis::cmd("XDEL").arg(&stream).arg(&ids[2])).await;

    let metrics = std::sync::Arc::new(worker::metrics::Metrics::new());
    let mut args =
        system_tests::stream_args(&redis.url, std::slice::from_ref(&stream), &group, "me");
    args.claim_idle_ms = 1;
    let consumer = worker::pipeline::Consumer {
        args,
        pool: db.pool.clone(),
        metrics: metrics.clone(),
        health: std::sync::Arc::new(worker::health::Health::new(true, false)),
        fold_wake: None,
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(consumer.run(stop.clone()));
    wait_until_idle(
        &mut redis,
        std::slice::from_ref(&stream),
        &group,
        Duration::from_secs(30),
    )
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();

    assert_eq!(
        db.count("atom_created_events").await,
        4,
        "entries 2, 4, 5, 6"
    );
    let letters: Vec<(String, Option<i32>, String, Vec<u8>)> = sqlx::query_as(
        "SELECT entry_id, item_index, reason, raw_payload FROM dead_letters ORDER BY entry_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let entry_ids: Vec<&str> = letters.iter().map(|l| l.0.as_str()).collect();
    assert_eq!(
        entry_ids,
        vec![ids[0].as_str(), ids[2].as_str()],
        "{letters:?}"
    );
    for (_, item_index, reason, raw) in &letters {
        assert_eq!(*item_index, None);
        assert!(raw.is_empty());
        assert!(
            reason.contains("trimmed from the stream") && !reason.contains("payload field"),
            "{reason}"
        );
    }
    let text = metrics.encode();
    assert!(
        text.contains(&format!(
            "pgw_entries_trimmed_total{{stream=\"{stream}\"}} 2"
        )),
        "{text}"
    );
}
