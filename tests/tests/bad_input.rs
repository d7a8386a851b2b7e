//! Bad input: malformed JSON, missing fields, bad addresses/ids/numbers land
//! in the dead-letter table with reasons; their good neighbours are written;
//! the pipeline keeps going.

use serde_json::json;
use std::time::Duration;
use system_tests::payload::*;
use system_tests::{consume_until_idle, stream_args, unique, TestDb, TestRedis};

fn deposit(tx: u64, assets: serde_json::Value, receiver: &str) -> serde_json::Value {
    with_info(
        json!({"sender": ADDR_A, "receiver": receiver, "termId": term(5), "curveId": "1", "assets": assets,
               "assetsAfterFees": "1", "shares": "1", "totalShares": "1", "vaultType": 0}),
        tx,
        100 + tx,
        0,
    )
}

#[tokio::test]
async fn bad_entries_and_items_are_dead_lettered_with_reasons() {
    let db = TestDb::new().await;
    let mut redis = TestRedis::new().await;
    let stream = unique("bad");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("payload", b"{not json".to_vec()),
        ("payload", vec![0xff, 0xfe, 0x7b]),
        ("other_field", b"{}".to_vec()),
        ("payload", br#"{"event_name":"Deposited"}"#.to_vec()),
        ("payload", envelope("Deposited", json!({"sender": ADDR_A})).into_bytes()),
        // An array entry: good, bad number, bad address, bad term id, good.
        (
            "payload",
            envelope(
                "Deposited",
                json!([
                    deposit(1, json!("10"), ADDR_A),
                    deposit(2, json!("12x"), ADDR_A),
                    deposit(3, json!("10"), "0x1234"),
                    with_info(json!({"sender": ADDR_A, "receiver": ADDR_A, "termId": "0xnope", "curveId": "1", "assets": "1",
                        "assetsAfterFees": "1", "shares": "1", "totalShares": "1", "vaultType": 0}), 4, 104, 0),
                    deposit(5, json!("0x20"), ADDR_B),
                ]),
            )
            .into_bytes(),
        ),
        // A mixed-case address with a wrong checksum is the same address: stored checksummed.
        ("payload", envelope("Deposited", deposit(6, json!("1"), "0x5aaeb6053F3E94C9b9A09f33669435E7Ef1BeAed")).into_bytes()),
        ("payload", envelope("AtomCreated", with_info(json!({"creator": ADDR_A, "termId": term(9), "atomData": "abc", "atomWallet": ADDR_A}), 7, 107, 0)).into_bytes()),
    ];
    for (field, payload) in &cases {
        redis.xadd(&stream, field, payload).await;
    }
    // A good entry after all the bad ones: the pipeline did not stop.
    redis
        .xadd(
            &stream,
            "payload",
            envelope("Deposited", deposit(8, json!(7), ADDR_A)).as_bytes(),
        )
        .await;
    let group = unique("group");
    consume_until_idle(
        &db,
        vec![stream_args(
            &redis.url,
            std::slice::from_ref(&stream),
            &group,
            "c",
        )],
        Duration::from_secs(30),
    )
    .await;

    let rows: Vec<(String, Option<i32>, String, Vec<u8>)> = sqlx::query_as(
        "SELECT entry_id, item_index, reason, raw_payload FROM dead_letters ORDER BY entry_id, item_index",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let reasons: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
    let expect = [
        "not valid JSON",
        "not UTF-8",
        "none of the fields",
        "event_data is missing",
        "field `transaction_information` is missing",
        "field `assets` expected an unsigned integer",
        "field `receiver` expected an address",
        "field `termId` expected a bytes32 id",
        "field `atomData` expected hex bytes",
    ];
    assert_eq!(rows.len(), expect.len(), "{reasons:#?}");
    for (reason, needle) in reasons.iter().zip(expect) {
        assert!(reason.contains(needle), "expected {needle:?} in {reason:?}");
    }
    // The exact bytes are kept: the whole entry, or the one bad item.
    assert_eq!(rows[1].3, vec![0xff, 0xfe, 0x7b]);
    assert!(String::from_utf8_lossy(&rows[5].3).contains("12x") && rows[5].1 == Some(1));
    assert!(rows.iter().all(|r| r.0.contains('-')));

    // Good neighbours and the entry after the bad ones were written.
    assert_eq!(db.count("deposited_events").await, 4);
    let total: String = sqlx::query_scalar("SELECT sum(assets)::text FROM deposited_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(total, "50"); // 10 + 0x20 + 1 + 7
    let receiver: String =
        sqlx::query_scalar("SELECT receiver FROM deposited_events WHERE assets = 1")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(receiver, ADDR_A_CHECKSUM);
    assert_eq!(
        redis.backlog(&stream, &group).await,
        (Some(0), 0),
        "every entry acknowledged"
    );
    db.drain_analytics().await;
    db.assert_verified().await;
}

#[tokio::test]
async fn redelivered_bad_entry_is_recorded_once() {
    let db = TestDb::new().await;
    let mut redis = TestRedis::new().await;
    let stream = unique("bad");
    let entry_id = redis.xadd(&stream, "payload", b"garbage").await;
    let entry = worker::decode::decode_entry(
        &std::sync::Arc::from(stream.as_str()),
        &std::sync::Arc::from(entry_id.as_str()),
        &[("payload".to_string(), b"garbage".to_vec())],
    );
    // Written twice (as after a crash between commit and ack): one row.
    for _ in 0..2 {
        worker::persistence::write_entries(
            &db.pool,
            std::slice::from_ref(&entry),
            Default::default(),
            None,
        )
        .await
        .unwrap();
    }
    assert_eq!(db.count("dead_letters").await, 1);
}

#[tokio::test]
async fn entry_the_database_refuses_is_isolated() {
    // A value the decoder accepts but PostgreSQL cannot store forces the
    // bisection path: its neighbours commit, it is dead-lettered whole.
    let db = TestDb::new().await;
    sqlx::query("ALTER TABLE deposited_events ADD CONSTRAINT small_assets CHECK (assets < 1000)")
        .execute(&db.pool)
        .await
        .unwrap();
    let entries: Vec<_> = (1..=9u64)
        .map(|i| {
            let assets = if i == 6 { json!("5000") } else { json!(i) };
            let payload = envelope("Deposited", deposit(i, assets, ADDR_A));
            worker::decode::decode_entry(
                &std::sync::Arc::from("s"),
                &std::sync::Arc::from(format!("{i}-0").as_str()),
                &[("payload".to_string(), payload.into_bytes())],
            )
        })
        .collect();
    let outcome = worker::persistence::write_entries(&db.pool, &entries, Default::default(), None)
        .await
        .unwrap();
    assert_eq!(outcome.refused_entries, 1);
    assert_eq!(db.count("deposited_events").await, 8);
    let (entry_id, reason): (String, String) =
        sqlx::query_as("SELECT entry_id, reason FROM dead_letters")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(entry_id, "6-0");
    assert!(
        reason.contains("database refused") && reason.contains("small_assets"),
        "{reason}"
    );
}

/// Issue 22: when PostgreSQL refuses one item of an entry of several items
/// (a data error, SQLSTATE class 22 or 23), only that item is dead-lettered,
/// as an item letter a replay can apply alone; its neighbours are stored.
#[tokio::test]
async fn an_item_the_database_refuses_is_dead_lettered_alone() {
    let db = TestDb::new().await;
    sqlx::query("ALTER TABLE deposited_events ADD CONSTRAINT small_assets CHECK (assets < 1000)")
        .execute(&db.pool)
        .await
        .unwrap();
    let refused = deposit(2, json!("5000"), ADDR_A);
    let payloads = [
        envelope(
            "Deposited",
            json!([
                deposit(1, json!("1"), ADDR_A),
                refused.clone(),
                deposit(3, json!("3"), ADDR_B),
                deposit(4, json!("4"), ADDR_B),
            ]),
        ),
        envelope("Deposited", deposit(5, json!("5"), ADDR_A)),
    ];
    let entries: Vec<_> = payloads
        .iter()
        .enumerate()
        .map(|(i, payload)| {
            worker::decode::decode_entry(
                &std::sync::Arc::from("s"),
                &std::sync::Arc::from(format!("{i}-0").as_str()),
                &[("payload".to_string(), payload.clone().into_bytes())],
            )
        })
        .collect();
    let outcome = worker::persistence::write_entries(&db.pool, &entries, Default::default(), None)
        .await
        .unwrap();
    assert_eq!((outcome.refused_items, outcome.refused_entries), (1, 0));
    assert_eq!(outcome.stored_events(), 4);
    assert_eq!(
        db.count("deposited_events").await,
        4,
        "the neighbours are stored"
    );
    let (entry_id, item_index, raw, network, reason): (
        String,
        Option<i32>,
        Vec<u8>,
        Option<String>,
        String,
    ) = sqlx::query_as(
        "SELECT entry_id, item_index, raw_payload, envelope_network, reason FROM dead_letters",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((entry_id.as_str(), item_index), ("0-0", Some(1)));
    let item: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(item, refused, "the letter holds the refused item exactly");
    assert_eq!(network.as_deref(), Some("testnet"));
    assert!(
        reason.contains("database refused item 1")
            && reason.contains("small_assets")
            && reason.contains("23514"),
        "{reason}"
    );

    // Once the cause is fixed, the letter replays that item alone.
    sqlx::query("ALTER TABLE deposited_events DROP CONSTRAINT small_assets")
        .execute(&db.pool)
        .await
        .unwrap();
    let report = worker::dead_letters::replay(&db.pool, &Default::default(), false, None)
        .await
        .unwrap();
    assert_eq!((report.replayed(), report.events_stored), (1, 1));
    assert_eq!(db.count("deposited_events").await, 5);
    db.assert_verified().await;
}

/// Issue 22: text the database's encoding cannot hold (SQLSTATE 22P05 here;
/// 22021 alike) is a data error of its item: the item is dead-lettered alone,
/// with a reason that names the database's encoding.
#[tokio::test]
async fn an_item_the_database_encoding_cannot_hold_names_the_encoding() {
    let db = TestDb::with_encoding("WIN1252").await;
    let atom = |n: u64, text: &str| {
        let data: String = text.bytes().map(|b| format!("{b:02x}")).collect();
        with_info(
            json!({"creator": ADDR_A, "termId": term(n), "atomData": data, "atomWallet": ADDR_B}),
            n,
            200 + n,
            0,
        )
    };
    let payload = envelope(
        "AtomCreated",
        json!([
            atom(1, "café"),
            atom(2, "rocket \u{1F680}"),
            atom(3, "plain")
        ]),
    );
    let entry = worker::decode::decode_entry(
        &std::sync::Arc::from("s"),
        &std::sync::Arc::from("1-0"),
        &[("payload".to_string(), payload.into_bytes())],
    );
    assert!(entry.dead_letters.is_empty(), "{:?}", entry.dead_letters);
    let outcome = worker::persistence::write_entries(
        &db.pool,
        std::slice::from_ref(&entry),
        Default::default(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(outcome.refused_items, 1);
    assert_eq!(db.count("atom_created_events").await, 2);
    let (item_index, reason): (Option<i32>, String) =
        sqlx::query_as("SELECT item_index, reason FROM dead_letters")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(item_index, Some(1));
    assert!(
        reason.contains("22P05") && reason.contains("encoding is WIN1252"),
        "{reason}"
    );
    let text: String =
        sqlx::query_scalar("SELECT atom_data_text FROM atom_created_events WHERE term_id = $1")
            .bind(term(1))
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(text, "café", "text the encoding holds is stored");
}
