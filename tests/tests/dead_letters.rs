//! Dead-letter replay (`postgres-writer dead-letters list | show | replay`):
//! valid events dead-lettered by a deliberately broken table are replayed
//! after the fix, through the normal decode and write path; the tables then
//! equal `verify`'s recomputation, every event is stored exactly once, and a
//! second replay changes nothing. Truly malformed input stays dead.

use serde_json::json;
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use system_tests::payload::*;
use system_tests::{unique, worker_binary, TestDb, TestRedis, WorkerProcess};
use worker::decode::{decode_entry, DeadLetter};
use worker::generate::{generate, stream_names, GeneratorSpec};

/// Runs `postgres-writer <args>` against `db`: (exit code, stdout).
fn cli(db: &TestDb, args: &[&str]) -> (i32, String) {
    let out = Command::new(worker_binary())
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "error")
        .output()
        .expect("run postgres-writer");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("$ postgres-writer {}\n{stdout}{stderr}", args.join(" "));
    (out.status.code().unwrap_or(-1), stdout)
}

/// The numbers of replay's summary line, by name ("selected", "replayed", …).
fn summary(stdout: &str) -> BTreeMap<String, u64> {
    let line = stdout
        .lines()
        .find(|l| l.contains("selected "))
        .unwrap_or_else(|| panic!("no summary line in {stdout}"));
    let mut out = BTreeMap::new();
    let mut words: Vec<&str> = Vec::new();
    for token in line.split([' ', ',', ';', ':', '(', ')']) {
        if token.is_empty() {
            continue;
        }
        match token.parse::<u64>() {
            Ok(n) => {
                out.insert(words.join(" "), n);
                words.clear();
            }
            Err(_) => words.push(token),
        }
    }
    out
}

/// A fingerprint of every event table, derived table and the dead letters.
async fn fingerprint(db: &TestDb) -> BTreeMap<String, (i64, String)> {
    let tables = worker::catalog::EVENT_TABLES
        .iter()
        .copied()
        .chain(worker::catalog::DERIVED_TABLES.iter().map(|t| t.name))
        .chain(["dead_letters", "analytics_queue"]);
    let mut out = BTreeMap::new();
    for table in tables {
        let row: (i64, String) = sqlx::query_as(&format!(
            "SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t"
        ))
        .fetch_one(&db.pool)
        .await
        .unwrap();
        out.insert(table.to_string(), row);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn letters_of_a_broken_table_are_replayed_after_the_fix_exactly_once() {
    let db = TestDb::new().await;
    let mut redis = TestRedis::new().await;
    let prefix = unique("replay");
    let entries = generate(&GeneratorSpec {
        events: 1_500,
        events_per_entry: 4,
        seed: 13,
        accounts: 12,
        curves: 2,
        network: "testnet".into(),
        stream_prefix: prefix.clone(),
    });
    // Truly malformed input on a stream of its own: an unreadable entry, and
    // an array whose second item has no transaction_information.
    let bad_stream = format!("{prefix}_bad");
    let generic_item = with_info(json!({"amount": "1"}), 900, 900, 0);
    let bad_entries = [
        "{not json".to_string(),
        envelope("ProtocolFeeAccrued", json!([generic_item, {"amount": "2"}])),
    ];

    // What the history holds: events per table, as the decoder reads them.
    let mut expected: BTreeMap<&str, i64> = BTreeMap::new();
    let sources = entries
        .iter()
        .map(|e| (e.stream.as_str(), e.payload.as_str()))
        .chain(
            bad_entries
                .iter()
                .map(|p| (bad_stream.as_str(), p.as_str())),
        );
    for (stream, payload) in sources.clone() {
        let decoded = decode_entry(
            &Arc::from(stream),
            &Arc::from("0-0"),
            &[("payload".to_string(), payload.as_bytes().to_vec())],
        );
        for event in &decoded.events {
            *expected.entry(event.body.kind().table()).or_default() += 1;
        }
    }
    let deposit_entries = entries
        .iter()
        .filter(|e| e.stream.ends_with("_deposited"))
        .count() as u64;
    assert!(expected["deposited_events"] > 100 && deposit_entries > 25);
    // Each refused deposit is a letter of its own: the database refuses each
    // item of a deposit entry, and items are isolated (issue 22).
    let deposit_letters = expected["deposited_events"] as u64;

    // Break the deposits table: every valid deposit is refused (SQLSTATE 23514).
    sqlx::query(
        "ALTER TABLE deposited_events ADD CONSTRAINT replay_test_broken CHECK (false) NOT VALID",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    redis.xadd_all(sources).await;
    let mut streams = stream_names(&prefix);
    streams.push(bad_stream.clone());
    let group = unique("group");
    let mut worker = WorkerProcess::start(&db.url, &redis.url, &streams, &group, "pod-a", &[]);
    worker.wait_http().await;
    redis
        .wait_until_idle(&streams, &group, Duration::from_secs(120))
        .await;
    worker.signal("TERM");
    assert!(worker.wait_exit(Duration::from_secs(30)).await.success());

    assert_eq!(db.count("deposited_events").await, 0);
    let refused: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM dead_letters WHERE reason LIKE 'database refused%replay_test_broken%'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(refused as u64, deposit_letters);
    assert_eq!(db.count("dead_letters").await as u64, deposit_letters + 2);

    // list: newest first, readable, filterable.
    let (code, listed) = cli(&db, &["dead-letters", "list", "--limit", "5"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = listed.lines().collect();
    assert!(
        lines[0].starts_with("id") && lines[0].contains("reason"),
        "{listed}"
    );
    assert_eq!(lines.len(), 1 + 5 + 1, "{listed}");
    assert!(lines.last().unwrap().contains("5 letter(s)"));
    let ids: Vec<i64> = lines[1..6]
        .iter()
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let (_, malformed) = cli(
        &db,
        &[
            "dead-letters",
            "list",
            "--reason-contains",
            "NOT VALID JSON",
        ],
    );
    assert!(
        malformed.contains("1 letter(s)") && malformed.contains("pending"),
        "{malformed}"
    );
    let malformed_id: i64 = malformed
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();

    // show: everything, the payload included.
    let (code, shown) = cli(&db, &["dead-letters", "show", &malformed_id.to_string()]);
    assert_eq!(code, 0);
    assert!(
        shown.contains(&bad_stream) && shown.contains("{not json"),
        "{shown}"
    );
    assert!(
        shown.contains("not valid JSON") && shown.contains("- (whole entry)"),
        "{shown}"
    );
    let deposit_id: i64 =
        sqlx::query_scalar("SELECT min(id) FROM dead_letters WHERE stream LIKE '%_deposited'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let (_, shown) = cli(&db, &["dead-letters", "show", &deposit_id.to_string()]);
    // An item's letter (issue 22): the refused item, indented.
    assert!(
        shown.contains("\"transaction_information\": {") && shown.contains("Deposited"),
        "indented JSON: {shown}"
    );
    let (code, _) = cli(&db, &["dead-letters", "show", "999999999"]);
    assert_ne!(code, 0);

    // The cause is fixed.
    sqlx::query("ALTER TABLE deposited_events DROP CONSTRAINT replay_test_broken")
        .execute(&db.pool)
        .await
        .unwrap();

    // A dry run reports and writes nothing.
    let before = fingerprint(&db).await;
    let (code, dry) = cli(&db, &["dead-letters", "replay", "--dry-run"]);
    assert_eq!(code, 2, "a letter would fail again");
    let numbers = summary(&dry);
    assert_eq!(
        numbers["dry run nothing written selected"],
        deposit_letters + 2
    );
    assert_eq!(numbers["would replay"], deposit_letters);
    assert_eq!(numbers["would fail again"], 2);
    assert_eq!(
        numbers["events stored"] as i64,
        expected["deposited_events"]
    );
    assert_eq!(fingerprint(&db).await, before, "a dry run writes nothing");

    // Replay the deposits.
    let (code, out) = cli(
        &db,
        &[
            "dead-letters",
            "replay",
            "--stream",
            &format!("{prefix}_deposited"),
            "--note",
            "constraint replay_test_broken dropped",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let numbers = summary(&out);
    assert_eq!(numbers["selected"], deposit_letters);
    assert_eq!(numbers["replayed"], deposit_letters);
    assert_eq!(numbers["failed again"], 0);
    assert_eq!(numbers["already replayed"], 0);
    assert_eq!(
        numbers["events stored"] as i64,
        expected["deposited_events"]
    );

    // Every event of the history is stored exactly once.
    for table in worker::catalog::EVENT_TABLES {
        assert_eq!(
            db.count(table).await,
            expected.get(table).copied().unwrap_or(0),
            "{table}"
        );
    }
    db.drain_analytics().await;
    db.assert_verified().await;
    let (code, _) = cli(&db, &["verify"]);
    assert_eq!(code, 0, "verify OK after the replay");
    let marked: (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE replay_note = 'constraint replay_test_broken dropped'
                                             AND replay_result LIKE 'stored % new event(s) (Deposited %')
         FROM dead_letters WHERE replayed_at IS NOT NULL",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(marked, (deposit_letters as i64, deposit_letters as i64));

    // A second replay of the same letters changes nothing and says so.
    let after = fingerprint(&db).await;
    let (code, again) = cli(
        &db,
        &[
            "dead-letters",
            "replay",
            "--stream",
            &format!("{prefix}_deposited"),
        ],
    );
    assert_eq!(code, 0);
    let numbers = summary(&again);
    assert_eq!(numbers["already replayed"], deposit_letters);
    assert_eq!(numbers["replayed"] + numbers["failed again"], 0);
    assert_eq!(fingerprint(&db).await, after, "a second replay is a no-op");

    // Replaying everything: the malformed letters fail again and stay, with
    // their new reason and an attempt more; nothing else changes.
    let (code, all) = cli(&db, &["dead-letters", "replay"]);
    assert_eq!(code, 2, "{all}");
    let numbers = summary(&all);
    assert_eq!(numbers["already replayed"], deposit_letters);
    assert_eq!(numbers["failed again"], 2);
    let pending: Vec<(String, Option<String>, i32)> = sqlx::query_as(
        "SELECT reason, first_reason, replay_attempts FROM dead_letters WHERE replayed_at IS NULL
         ORDER BY reason LIKE '%not valid JSON%' DESC",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(pending.len(), 2);
    assert!(
        pending[0].0.contains("not valid JSON") && pending[0].2 == 1,
        "{pending:?}"
    );
    assert!(pending[1].0.contains("transaction_information") && pending[1].1.is_some());
    let now = fingerprint(&db).await;
    for (table, value) in &after {
        if table != "dead_letters" {
            assert_eq!(&now[table], value, "{table} changed");
        }
    }
    let (_, pending_list) = cli(&db, &["dead-letters", "list", "--status", "pending"]);
    assert!(
        pending_list.contains("2 letter(s)") && pending_list.contains("1 failed replay"),
        "{pending_list}"
    );
}

fn deposit(tx: u64, receiver: &str) -> serde_json::Value {
    with_info(
        json!({"sender": ADDR_A, "receiver": receiver, "termId": term(5), "curveId": "1", "assets": "10",
               "assetsAfterFees": "9", "shares": "9", "totalShares": "9", "vaultType": 0}),
        tx,
        100 + tx,
        0,
    )
}

#[tokio::test]
async fn an_items_letter_replays_that_item_only() {
    // A letter as the predecessor wrote it: item 1 of an array entry refused
    // for a wrong EIP-55 checksum (item 0 was stored). Today the spelling is
    // accepted, so replaying the letter stores exactly that item.
    let db = TestDb::new().await;
    let stream = unique("items");
    let bad_spelling = "0x742d35Cc6634C0532925a3b844Bc9e7595f0bEb0";
    let item1 = deposit(2, bad_spelling);
    let payload = envelope("Deposited", json!([deposit(1, ADDR_B), item1]));
    let mut entry = decode_entry(
        &Arc::from(stream.as_str()),
        &Arc::from("5-0"),
        &[("payload".to_string(), payload.into_bytes())],
    );
    assert_eq!(entry.address_checksum_mismatches, 1);
    entry.events.retain(|e| e.source.item_index == 0);
    entry.dead_letters.push(DeadLetter {
        stream: entry.stream.clone(),
        entry_id: entry.entry_id.clone(),
        item_index: Some(1),
        event_name: Some("Deposited".into()),
        reason: format!("Deposited: field `receiver` expected an address with a valid EIP-55 checksum, got {bad_spelling:?}"),
        raw_payload: item1.to_string().into_bytes(),
        // Letters written before migration 0007 have no envelope columns.
        envelope_network: None,
        event_signature_hash: None,
    });
    worker::persistence::write_entries(
        &db.pool,
        std::slice::from_ref(&entry),
        Default::default(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(db.count("deposited_events").await, 1);

    let filter = worker::dead_letters::Filter {
        reason_contains: Some("eip-55".into()),
        ..Default::default()
    };
    let report = worker::dead_letters::replay(&db.pool, &filter, false, None)
        .await
        .unwrap();
    assert_eq!(
        (report.selected(), report.replayed()),
        (1, 1),
        "{}",
        report.render()
    );
    // Only the item was written: no neighbour re-applied (not even as a duplicate).
    assert!(
        report
            .render()
            .contains("replayed: stored 1 new event(s) (Deposited 1)\n"),
        "{}",
        report.render()
    );
    let rows: Vec<(String, i32, String)> = sqlx::query_as(
        "SELECT entry_id, item_index, receiver FROM deposited_events ORDER BY item_index",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let checksummed = worker::decode::ids::address(bad_spelling)
        .unwrap()
        .checksummed;
    assert_eq!(
        rows,
        vec![
            ("5-0".to_string(), 0, ADDR_B_CHECKSUM.to_string()),
            ("5-0".to_string(), 1, checksummed),
        ]
    );
    let again = worker::dead_letters::replay(&db.pool, &filter, false, None)
        .await
        .unwrap();
    assert_eq!((again.already_replayed(), again.replayed()), (1, 0));
    assert_eq!(db.count("deposited_events").await, 2);
    db.drain_analytics().await;
    db.assert_verified().await;
}
