//! Chain reorganisations from rindexer's own `__rindexer_reorg` notices
//! (issue 21, ADR 0018): once every stream has passed its copy, the read
//! model equals a database fed only the canonical chain — whatever the
//! interleaving across streams, the number of workers, crashes, duplicated
//! notices and re-included transactions.

use serde_json::{json, Value};
use sqlx::Row;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use system_tests::payload::{tx, ADDR_A, ADDR_B};
use system_tests::{
    assert_same_tables, consume_until_idle, stream_args, unique, TestDb, TestRedis,
};
use worker::generate::Rng;

const NETWORK: &str = "testnet";

fn term(n: u64) -> String {
    format!("0x{n:064x}")
}

/// transaction_information the way rindexer spells it (hex log index and timestamp).
fn info(tx_n: u64, block: u64, log_index: u64) -> Value {
    json!({
        "address": ADDR_B, "block_hash": format!("0x{:064x}", block * 1_000_003 + 7),
        "block_number": block, "block_timestamp": format!("0x{:x}", 1_756_000_000 + block),
        "log_index": format!("0x{log_index:x}"), "network": NETWORK,
        "transaction_hash": tx(tx_n), "transaction_index": 0
    })
}

/// An event item: the event's fields plus its transaction_information.
fn item(mut fields: Value, tx_n: u64, block: u64, log_index: u64) -> Value {
    fields["transaction_information"] = info(tx_n, block, log_index);
    fields
}

fn atom(n: u64) -> Value {
    json!({"creator": ADDR_A, "termId": term(n), "atomData": hex(&format!("atom {n}")), "atomWallet": ADDR_B})
}

fn triple(n: u64, s: u64, p: u64, o: u64) -> Value {
    json!({"creator": ADDR_A, "termId": term(n), "subjectId": term(s), "predicateId": term(p), "objectId": term(o)})
}

fn account(n: u64) -> String {
    format!("0x{:040x}", 0x1000 + n)
}

fn deposit(receiver: u64, term_n: u64, curve: u64, assets: u64, total_shares: u64) -> Value {
    json!({"sender": ADDR_A, "receiver": account(receiver), "termId": term(term_n), "curveId": curve.to_string(),
           "assets": assets.to_string(), "assetsAfterFees": (assets - assets / 100).to_string(),
           "shares": assets.to_string(), "totalShares": total_shares.to_string(), "vaultType": 0})
}

fn redeem(receiver: u64, term_n: u64, curve: u64, assets: u64, total_shares: u64) -> Value {
    json!({"sender": account(receiver), "receiver": account(receiver), "termId": term(term_n), "curveId": curve.to_string(),
           "shares": assets.to_string(), "totalShares": total_shares.to_string(), "assets": assets.to_string(),
           "fees": (assets / 50).to_string(), "vaultType": 0})
}

fn price(term_n: u64, curve: u64, share_price: u64, total_assets: u64, total_shares: u64) -> Value {
    json!({"termId": term(term_n), "curveId": curve.to_string(), "sharePrice": format!("{share_price}000000000000000"),
           "totalAssets": total_assets.to_string(), "totalShares": total_shares.to_string(), "vaultType": 0})
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// An entry as rindexer writes it: `event_data` is an array of items.
fn entry(event_name: &str, items: Vec<Value>) -> String {
    json!({"event_name": event_name, "event_signature_hash": format!("0x{:064x}", 1),
           "event_data": items, "network": NETWORK, "block_number": 0})
    .to_string()
}

/// A reorg notice exactly as rindexer's `stream_reorg` writes it (issue 21).
fn notice(network: &str, fork_block: u64, depth: u64) -> String {
    json!({
        "event_name": "__rindexer_reorg",
        "event_data": [{"type": "reorg", "network": network, "fork_block": fork_block, "depth": depth,
                        "events_deleted": 0, "affected_tx_hashes": [],
                        "affected_events": [{"indexer": "intuition", "contract": "MultiVault", "event": "Deposited",
                                             "schema": "intuition_multivault", "table": "deposited", "rows_deleted": 0}]}],
        "event_signature_hash": format!("0x{:064x}", 0),
        "block_number": 0,
        "network": network,
        "message_id": format!("reorg_{network}_{fork_block}"),
    })
    .to_string()
}

/// Every event table's rows as `tx:log_index@block`, sorted (compares level 0).
async fn event_rows(db: &TestDb) -> String {
    db.event_rows("e.transaction_hash || ':' || e.log_index || '@' || e.block_number")
        .await
}

/// A database fed only `entries` (stream, payload), through one consumer.
async fn reference(entries: &[(usize, String)], streams: usize) -> TestDb {
    let db = TestDb::new().await;
    let mut redis = TestRedis::new().await;
    let names: Vec<String> = (0..streams).map(|_| unique("canonical")).collect();
    redis
        .xadd_all(
            entries
                .iter()
                .map(|(s, p)| (names[*s].as_str(), p.as_str())),
        )
        .await;
    let mut args = stream_args(&redis.url, &names, &unique("group"), "ref");
    args.batch_size = 200;
    consume_until_idle(&db, vec![args], Duration::from_secs(120)).await;
    db.drain_analytics().await;
    db
}

async fn dead_letters(db: &TestDb) -> Vec<String> {
    sqlx::query_scalar("SELECT reason FROM dead_letters ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

/// The issue's case: rindexer wrote its notice 8 times to every stream of the
/// network; the dropped branch held 3 deposits (and here an atom); a
/// transaction came back at another block and log index. Also: an unknown
/// control entry and another network's notice change nothing and are not
/// dead-lettered, and a notice applied again changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rindexer_notices_remove_the_dropped_branch_in_every_stream() {
    let atoms = vec![
        entry(
            "AtomCreated",
            vec![item(atom(1), 1, 20, 0), item(atom(2), 2, 20, 1)],
        ),
        // Dropped branch.
        entry("AtomCreated", vec![item(atom(3), 3, 28, 0)]),
    ];
    let deposits_before = vec![
        entry(
            "Deposited",
            vec![item(deposit(1, 1, 1, 1000, 1000), 10, 21, 0)],
        ),
        entry(
            "Deposited",
            vec![
                item(deposit(2, 1, 1, 500, 1500), 11, 25, 3),
                item(deposit(3, 2, 1, 70, 70), 12, 25, 4),
            ],
        ),
        // Dropped branch: 3 deposits, one of them a new position of vault (1, 1).
        entry(
            "Deposited",
            vec![item(deposit(4, 1, 1, 10, 1510), 13, 27, 0)],
        ),
        entry(
            "Deposited",
            vec![
                item(deposit(1, 2, 1, 30, 100), 14, 28, 1),
                item(deposit(5, 3, 1, 9, 9), 15, 29, 2),
            ],
        ),
    ];
    let atoms_after = vec![entry("AtomCreated", vec![item(atom(4), 16, 28, 5)])];
    let deposits_after = vec![
        // Transaction 14 again, at another block and log index.
        entry(
            "Deposited",
            vec![item(deposit(1, 2, 1, 30, 100), 14, 30, 7)],
        ),
        entry(
            "Deposited",
            vec![item(deposit(6, 1, 1, 5, 1505), 17, 31, 0)],
        ),
    ];

    let db = TestDb::new().await;
    let mut redis = TestRedis::new().await;
    let (atom_stream, deposit_stream) = (unique("atoms"), unique("deposited"));
    let mut published: Vec<(&str, String)> = Vec::new();
    for p in &atoms {
        published.push((&atom_stream, p.clone()));
    }
    for p in &deposits_before {
        published.push((&deposit_stream, p.clone()));
    }
    // rindexer: 8 copies per stream, written to each stream in turn.
    for _ in 0..8 {
        published.push((&deposit_stream, notice(NETWORK, 27, 12)));
        published.push((&atom_stream, notice(NETWORK, 27, 12)));
    }
    published.push((
        &atom_stream,
        json!({"event_name": "__rindexer_heartbeat", "event_data": []}).to_string(),
    ));
    published.push((&deposit_stream, notice("other-chain", 5, 1)));
    for p in &atoms_after {
        published.push((&atom_stream, p.clone()));
    }
    for p in &deposits_after {
        published.push((&deposit_stream, p.clone()));
    }
    redis
        .xadd_all(published.iter().map(|(s, p)| (*s, p.as_str())))
        .await;
    let streams = vec![deposit_stream.clone(), atom_stream.clone()];
    // Small batches: the deposit stream's notice is applied while the atom
    // stream still holds its dropped entry.
    let mut args = stream_args(&redis.url, &streams, &unique("group"), "c1");
    args.batch_size = 2;
    consume_until_idle(&db, vec![args], Duration::from_secs(60)).await;
    db.drain_analytics().await;
    db.assert_verified().await;
    assert_eq!(dead_letters(&db).await, Vec::<String>::new());

    let canonical: Vec<(usize, String)> = vec![
        (
            0,
            entry(
                "AtomCreated",
                vec![item(atom(1), 1, 20, 0), item(atom(2), 2, 20, 1)],
            ),
        ),
        (0, atoms_after[0].clone()),
        (1, deposits_before[0].clone()),
        (1, deposits_before[1].clone()),
        (1, deposits_after[0].clone()),
        (1, deposits_after[1].clone()),
    ];
    let expected = reference(&canonical, 2).await;
    assert_same_tables(
        &db.snapshot().await,
        &expected.snapshot().await,
        "after the reorg",
    );
    assert_eq!(event_rows(&db).await, event_rows(&expected).await);
    let position_count: i64 = sqlx::query_scalar(
        "SELECT position_count::bigint FROM vault WHERE term_id = $1 AND curve_id = '1'",
    )
    .bind(term(1))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        position_count, 3,
        "receivers 1, 2 and 6; not the dropped receiver 4"
    );

    // One reorg, passed by both streams; what it removed is recorded.
    let row = sqlx::query(
        "SELECT network, fork_block, depth, events_removed, streams_passed FROM chain_reorg",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(row.len(), 1);
    let r = &row[0];
    assert_eq!(
        (
            r.get::<String, _>(0),
            r.get::<i64, _>(1),
            r.get::<i64, _>(2),
            r.get::<i64, _>(3),
            r.get::<i32, _>(4)
        ),
        (NETWORK.to_string(), 27, 12, 4, 2)
    );
    assert_eq!(db.count("reorg_fence").await, 2);
    let health = worker::reorg::stats(&db.pool).await.unwrap();
    assert_eq!(health.applied, 1);
    assert_eq!(
        health.latest.map(|l| (l.fork_block, l.events_removed)),
        Some((27, 4))
    );

    // The same notice applied again (a later copy) changes nothing.
    let before = (db.snapshot().await, event_rows(&db).await);
    let again = worker::reorg::ReorgNotice {
        network: NETWORK.into(),
        fork_block: 27,
        depth: 12,
        events_deleted: Some(0),
        affected_tx_hashes: vec![],
    };
    let applied = worker::reorg::apply(&db.pool, &deposit_stream, "99999999999999-0", &again)
        .await
        .unwrap();
    assert!(
        matches!(applied, worker::reorg::Applied::Duplicate { .. }),
        "{applied:?}"
    );
    // Another network's notice changes nothing either.
    let other = worker::reorg::ReorgNotice {
        network: "other-chain".into(),
        ..again.clone()
    };
    let applied = worker::reorg::apply(&db.pool, &deposit_stream, "99999999999999-1", &other)
        .await
        .unwrap();
    assert!(
        matches!(applied, worker::reorg::Applied::OtherNetwork { .. }),
        "{applied:?}"
    );
    assert_eq!((db.snapshot().await, event_rows(&db).await), before);
    assert_eq!(db.count("reorg_fence").await, 2);
}

/// A dropped-branch entry delivered again after its stream's notice (the
/// group recreated at 0, or a redelivery) is discarded, not stored again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_entry_delivered_again_after_its_notice_is_discarded() {
    let db = TestDb::new().await;
    let mut redis = TestRedis::new().await;
    let stream = unique("deposited");
    let kept = entry(
        "Deposited",
        vec![item(deposit(1, 1, 1, 100, 100), 1, 10, 0)],
    );
    let dropped = entry("Deposited", vec![item(deposit(2, 1, 1, 50, 150), 2, 12, 0)]);
    redis
        .xadd_all([
            (stream.as_str(), kept.as_str()),
            (stream.as_str(), dropped.as_str()),
        ])
        .await;
    let notice_id = redis
        .xadd(&stream, "payload", notice(NETWORK, 11, 2).as_bytes())
        .await;
    let group = unique("group");
    consume_until_idle(
        &db,
        vec![stream_args(
            &redis.url,
            std::slice::from_ref(&stream),
            &group,
            "c1",
        )],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(db.count("deposited_events").await, 1);

    // The group is lost and recreated at 0: everything is delivered again.
    let _: () = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(&stream)
        .arg(&group)
        .query_async(&mut redis.con)
        .await
        .unwrap();
    consume_until_idle(
        &db,
        vec![stream_args(
            &redis.url,
            std::slice::from_ref(&stream),
            &group,
            "c2",
        )],
        Duration::from_secs(30),
    )
    .await;
    db.drain_analytics().await;
    db.assert_verified().await;
    assert_eq!(
        db.count("deposited_events").await,
        1,
        "the dropped deposit stays out"
    );
    let fence: String = sqlx::query_scalar("SELECT entry_id FROM reorg_fence")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(fence, notice_id);
    let expected = reference(&[(0, kept)], 1).await;
    assert_same_tables(
        &db.snapshot().await,
        &expected.snapshot().await,
        "after redelivery",
    );
}

/// The running process shows an applied reorg in /metrics and /health.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applied_reorg_shows_in_metrics_and_health() {
    let db = TestDb::new().await;
    let mut redis = TestRedis::new().await;
    let stream = unique("deposited");
    let kept = entry(
        "Deposited",
        vec![item(deposit(1, 1, 1, 100, 100), 1, 10, 0)],
    );
    let dropped = entry("Deposited", vec![item(deposit(2, 1, 1, 50, 150), 2, 12, 0)]);
    let copy = notice(NETWORK, 11, 2);
    let unknown = json!({"event_name": "__rindexer_heartbeat", "event_data": []}).to_string();
    redis
        .xadd_all([
            (stream.as_str(), kept.as_str()),
            (stream.as_str(), dropped.as_str()),
            (stream.as_str(), copy.as_str()),
            (stream.as_str(), copy.as_str()),
            (stream.as_str(), unknown.as_str()),
        ])
        .await;
    let group = unique("group");
    let streams = vec![stream.clone()];
    let mut worker =
        system_tests::WorkerProcess::start(&db.url, &redis.url, &streams, &group, "pod-r", &[]);
    worker.wait_http().await;
    redis
        .wait_until_idle(&streams, &group, Duration::from_secs(60))
        .await;
    let (_, metrics) = worker.get("/metrics").await.unwrap();
    for line in [
        "pgw_chain_reorgs_applied_total{network=\"testnet\"} 1",
        "pgw_reorg_notices_total{outcome=\"applied\"} 1",
        "pgw_reorg_notices_total{outcome=\"duplicate\"} 1",
        "pgw_reorg_events_removed_total 1",
        "pgw_control_entries_ignored_total{event_name=\"__rindexer_heartbeat\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing:\n{metrics}"
        );
    }
    // The monitor reads chain_reorg into /health.
    let started = Instant::now();
    let health = loop {
        let (_, health) = worker.get("/health").await.unwrap();
        let health: Value = serde_json::from_str(&health).unwrap();
        if health["reorgs"]["applied"] == 1 {
            break health;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{health}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(health["reorgs"]["latest"]["fork_block"], 11, "{health}");
    assert_eq!(health["reorgs"]["latest"]["events_removed"], 1, "{health}");
    worker.signal("TERM");
    assert!(worker.wait_exit(Duration::from_secs(60)).await.success());
    assert_eq!(db.count("deposited_events").await, 1);
    assert_eq!(dead_letters(&db).await, Vec::<String>::new());
}

// ---------------------------------------------------------------------------
// Property test: random histories and reorgs.
// ---------------------------------------------------------------------------

/// One simulated event: its kind, item JSON, transaction and own fields.
#[derive(Clone)]
struct SimEvent {
    name: &'static str,
    item: Value,
    tx: u64,
    fields: Value,
}

/// Where each event type goes: one stream (rindexer's single-stream layout)
/// or one per kind.
fn stream_of(name: &str, layout_streams: usize) -> usize {
    if layout_streams == 1 {
        return 0;
    }
    match name {
        "AtomCreated" | "TripleCreated" => 0,
        "Deposited" | "Redeemed" => 1,
        _ => 2,
    }
}

/// A random chain with reorgs, as rindexer publishes it.
struct History {
    streams: usize,
    /// Per stream, its entries in order.
    per_stream: Vec<Vec<String>>,
    /// Canonical events (final branch), as single-event entries for the reference.
    canonical: Vec<(usize, String)>,
    reorgs: usize,
}

fn history(rng: &mut Rng) -> History {
    let streams = if rng.chance(35) { 1 } else { 3 };
    let mut per_stream: Vec<Vec<String>> = vec![Vec::new(); streams];
    // Duplicate notice copies written later, per stream: (after n more entries, payload).
    let mut deferred: Vec<Vec<(u64, String)>> = vec![Vec::new(); streams];
    let mut chain: Vec<(u64, Vec<SimEvent>)> = Vec::new();
    let mut next_tx = 100u64;
    let mut log_index = 0u64;
    let mut atoms: Vec<u64> = vec![1, 2, 3, 4];
    let mut next_term = 10u64;
    let mut reorgs = 0;
    let mut identities: HashSet<(u64, u64)> = HashSet::new();

    // Base block: atoms and two triples, never reorganised.
    let mut base = Vec::new();
    for n in 1..=4 {
        base.push((n, "AtomCreated", atom(n)));
    }
    base.push((5, "TripleCreated", triple(5, 1, 2, 3)));
    base.push((6, "TripleCreated", triple(6, 2, 3, 4)));
    let block = 1u64;
    let mut events = Vec::new();
    for (_, name, fields) in base {
        next_tx += 1;
        log_index += 1;
        events.push(SimEvent {
            name,
            item: item(fields.clone(), next_tx, block, log_index),
            tx: next_tx,
            fields,
        });
    }
    chain.push((block, events));
    publish_block(&mut per_stream, &mut deferred, rng, streams, &chain[0].1);

    let steps = rng.range(8, 16);
    let mut dropped_pool: Vec<SimEvent> = Vec::new();
    for _ in 0..steps {
        let head = chain.last().map(|(b, _)| *b).unwrap_or(1);
        let number = if chain.len() > 2 && rng.chance(25) {
            // A reorg: drop blocks >= fork, announce it on every stream.
            let fork = rng.range(2, head);
            let depth = head - fork + 1;
            // A reorg is (network, fork block, depth): two different ones
            // with equal identities are taken for one (ADR 0018, limits).
            if !identities.insert((fork, depth)) {
                continue;
            }
            let dropped: Vec<SimEvent> = chain
                .iter()
                .filter(|(b, _)| *b >= fork)
                .flat_map(|(_, e)| e.clone())
                .collect();
            chain.retain(|(b, _)| *b < fork);
            dropped_pool.extend(dropped);
            reorgs += 1;
            for s in 0..streams {
                let copies = rng.range(1, 3);
                push(
                    &mut per_stream,
                    &mut deferred,
                    s,
                    notice(NETWORK, fork, depth),
                );
                for _ in 1..copies {
                    if rng.chance(50) {
                        push(
                            &mut per_stream,
                            &mut deferred,
                            s,
                            notice(NETWORK, fork, depth),
                        );
                    } else {
                        // A repeated copy written after some new-branch entries.
                        let later = rng.range(0, 4);
                        deferred[s].push((later, notice(NETWORK, fork, depth)));
                    }
                }
            }
            // The new branch starts at the fork block again (or one later).
            fork + rng.below(2)
        } else {
            head + 1
        };
        let mut events = Vec::new();
        build_block(
            rng,
            &mut events,
            &mut next_tx,
            &mut log_index,
            number,
            &mut atoms,
            &mut next_term,
            &mut dropped_pool,
        );
        publish_block(&mut per_stream, &mut deferred, rng, streams, &events);
        chain.push((number, events));
    }
    // Copies still deferred are written at the end.
    for (s, rest) in deferred.into_iter().enumerate() {
        for (_, p) in rest {
            per_stream[s].push(p);
        }
    }
    let canonical = chain
        .iter()
        .flat_map(|(_, e)| e.iter())
        .map(|e| {
            (
                stream_of(e.name, streams),
                entry(e.name, vec![e.item.clone()]),
            )
        })
        .collect();
    History {
        streams,
        per_stream,
        canonical,
        reorgs,
    }
}

/// Appends an entry to stream `s`, then the deferred duplicate copies that
/// come due.
fn push(
    per_stream: &mut [Vec<String>],
    deferred: &mut [Vec<(u64, String)>],
    s: usize,
    payload: String,
) {
    per_stream[s].push(payload);
    let mut due = Vec::new();
    deferred[s].retain_mut(|(left, p)| {
        if *left == 0 {
            due.push(p.clone());
            false
        } else {
            *left -= 1;
            true
        }
    });
    per_stream[s].extend(due);
}

/// Publishes a block's events: per stream, consecutive events of one kind
/// share an entry (1-3 items).
fn publish_block(
    per_stream: &mut [Vec<String>],
    deferred: &mut [Vec<(u64, String)>],
    rng: &mut Rng,
    streams: usize,
    events: &[SimEvent],
) {
    let mut i = 0;
    while i < events.len() {
        let s = stream_of(events[i].name, streams);
        let max = rng.range(1, 3) as usize;
        let mut n = 1;
        while n < max && i + n < events.len() && events[i + n].name == events[i].name {
            n += 1;
        }
        let items = events[i..i + n].iter().map(|e| e.item.clone()).collect();
        push(per_stream, deferred, s, entry(events[i].name, items));
        i += n;
    }
}

/// Random events of one block; sometimes a dropped transaction comes back
/// (same hash, new block and log index).
#[allow(clippy::too_many_arguments)]
fn build_block(
    rng: &mut Rng,
    events: &mut Vec<SimEvent>,
    next_tx: &mut u64,
    log_index: &mut u64,
    block: u64,
    atoms: &mut Vec<u64>,
    next_term: &mut u64,
    dropped: &mut Vec<SimEvent>,
) {
    let n = rng.range(0, 4);
    for _ in 0..n {
        *log_index += 1;
        if !dropped.is_empty() && rng.chance(20) {
            let again = dropped.swap_remove(rng.below(dropped.len() as u64) as usize);
            events.push(SimEvent {
                name: again.name,
                item: item(again.fields.clone(), again.tx, block, *log_index),
                tx: again.tx,
                fields: again.fields,
            });
            continue;
        }
        *next_tx += 1;
        let terms = [1u64, 2, 3, 5, 6];
        let t = terms[rng.below(terms.len() as u64) as usize];
        let (name, fields) = match rng.below(6) {
            0 => {
                *next_term += 1;
                atoms.push(*next_term);
                ("AtomCreated", atom(*next_term))
            }
            1 => {
                *next_term += 1;
                let pick = |rng: &mut Rng| atoms[rng.below(atoms.len() as u64) as usize];
                let (s, p, o) = (pick(rng), pick(rng), pick(rng));
                ("TripleCreated", triple(*next_term, s, p, o))
            }
            2 | 3 => (
                "Deposited",
                deposit(
                    rng.below(4),
                    t,
                    rng.range(1, 2),
                    rng.range(1, 10_000),
                    rng.range(1, 100_000),
                ),
            ),
            4 => (
                "Redeemed",
                redeem(
                    rng.below(4),
                    t,
                    rng.range(1, 2),
                    rng.range(1, 1_000),
                    rng.below(3) * rng.range(1, 100_000),
                ),
            ),
            _ => (
                "SharePriceChanged",
                price(
                    t,
                    rng.range(1, 2),
                    rng.range(900, 1100),
                    rng.range(1, 1_000_000),
                    rng.range(1, 1_000_000),
                ),
            ),
        };
        events.push(SimEvent {
            name,
            item: item(fields.clone(), *next_tx, block, *log_index),
            tx: *next_tx,
            fields,
        });
    }
}

/// A consumer that crashed: it read entries and never acknowledged them;
/// with `commit`, it had committed the events before its first notice of each
/// stream (a crash between commit and ack).
async fn crashed_consumer(
    db: &TestDb,
    redis_url: &str,
    streams: &[String],
    group: &str,
    count: usize,
    commit: bool,
) {
    let mut intake = worker::intake::StreamIntake::new(
        redis_url,
        streams,
        group,
        &unique("crashed"),
        count,
        Duration::from_millis(10),
    )
    .unwrap();
    intake.ensure_groups().await.unwrap();
    let read = intake.read(worker::intake::ReadFrom::New).await.unwrap();
    if !commit {
        return;
    }
    let mut noticed: HashSet<Arc<str>> = HashSet::new();
    let mut committed = Vec::new();
    for raw in &read {
        if worker::reorg::control_of(raw).is_some() {
            noticed.insert(raw.stream.clone());
        }
        if !noticed.contains(&raw.stream) {
            committed.push(worker::decode::decode_entry(
                &raw.stream,
                &raw.id,
                &raw.fields,
            ));
        }
    }
    worker::persistence::write_entries(&db.pool, &committed, Default::default(), None)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_histories_equal_the_canonical_chain() {
    let seed: u64 = std::env::var("PGW_REORG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x2121_0018);
    let cases: u64 = std::env::var("PGW_REORG_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let mut rng = Rng(seed);
    let mut longest_apply_ms = 0i64;
    let mut reorgs_total = 0;
    let mut copies_total = 0i64;
    let started = Instant::now();
    for case in 0..cases {
        let case_seed = rng.next_u64();
        let mut rng = Rng(case_seed);
        let h = history(&mut rng);
        let workers = rng.range(1, 3) as usize;
        let crash = rng.below(3); // 0: none, 1: read and lost, 2: committed, not acknowledged
        let batch_size = rng.range(2, 12) as usize;
        println!(
            "case {case}: seed {case_seed:#x}, {} stream(s), {} entries, {} reorg(s), {workers} worker(s), crash {crash}, batch {batch_size}",
            h.streams,
            h.per_stream.iter().map(Vec::len).sum::<usize>(),
            h.reorgs
        );

        let db = TestDb::new().await;
        let mut redis = TestRedis::new().await;
        let names: Vec<String> = (0..h.streams).map(|_| unique("chain")).collect();
        // Streams written in a random interleaving (each in its own order).
        let mut cursors = vec![0usize; h.streams];
        let mut order: Vec<(usize, usize)> = Vec::new();
        while order.len() < h.per_stream.iter().map(Vec::len).sum::<usize>() {
            let s = rng.below(h.streams as u64) as usize;
            if cursors[s] < h.per_stream[s].len() {
                order.push((s, cursors[s]));
                cursors[s] += 1;
            }
        }
        redis
            .xadd_all(
                order
                    .iter()
                    .map(|(s, i)| (names[*s].as_str(), h.per_stream[*s][*i].as_str())),
            )
            .await;
        let group = unique("group");
        if crash > 0 {
            crashed_consumer(
                &db,
                &redis.url,
                &names,
                &group,
                rng.range(1, 8) as usize,
                crash == 2,
            )
            .await;
        }
        let args: Vec<_> = (0..workers)
            .map(|w| {
                let mut a = stream_args(&redis.url, &names, &group, &format!("w{w}"));
                a.batch_size = batch_size;
                a
            })
            .collect();
        consume_until_idle(&db, args, Duration::from_secs(120)).await;
        db.drain_analytics().await;
        db.assert_verified().await;
        assert_eq!(dead_letters(&db).await, Vec::<String>::new(), "case {case}");

        let expected = reference(&h.canonical, h.streams).await;
        assert_same_tables(
            &db.snapshot().await,
            &expected.snapshot().await,
            &format!("case {case} (seed {case_seed:#x})"),
        );
        assert_eq!(
            event_rows(&db).await,
            event_rows(&expected).await,
            "case {case} (seed {case_seed:#x})"
        );

        let (apply_ms, copies): (Option<i64>, i64) =
            sqlx::query_as("SELECT max(apply_ms), count(*) FROM reorg_fence")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        longest_apply_ms = longest_apply_ms.max(apply_ms.unwrap_or(0));
        reorgs_total += h.reorgs;
        copies_total += copies;
    }
    println!(
        "reorg property test: seed {seed:#x}, {cases} cases, {reorgs_total} reorgs, {copies_total} stream fences applied, longest apply {longest_apply_ms} ms, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
