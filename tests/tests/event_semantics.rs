//! Per event type: stored rows and every derived column match contract §3,
//! including uint256 values above 2^64, hex/decimal spellings and non-UTF-8
//! atom data. Entries go through Redis and the real consumer.

use serde_json::json;
use std::time::Duration;
use system_tests::payload::*;
use system_tests::{consume_until_idle, stream_args, unique, TestDb, TestRedis};

async fn feed(db: &TestDb, entries: &[(&str, String)]) {
    let mut redis = TestRedis::new().await;
    let stream = unique("events");
    for (field, payload) in entries {
        redis.xadd(&stream, field, payload.as_bytes()).await;
    }
    let args = stream_args(&redis.url, &[stream], &unique("group"), "c1");
    consume_until_idle(db, vec![args], Duration::from_secs(30)).await;
}

async fn text(db: &TestDb, sql: &str) -> String {
    sqlx::query_scalar::<_, String>(sql)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn atoms_store_text_or_bytes_and_newest_wins() {
    let db = TestDb::new().await;
    let utf8 = hex_encode(b"ipfs://hello");
    let binary = "0xfffe0041";
    feed(
        &db,
        &[
            // Newest first: the older AtomCreated for term 1 arrives second and must not win.
            ("payload", envelope("AtomCreated", with_info(json!({"creator": ADDR_A, "termId": term(1), "atomData": utf8, "atomWallet": ADDR_B}), 1, 100, 5))),
            ("data", envelope("AtomCreated", with_info(json!({"creator": ADDR_B, "termId": term(1), "atomData": "00", "atomWallet": ADDR_A}), 2, 99, 1))),
            ("event_data", envelope("AtomCreated", with_info(json!({"creator": ADDR_A, "termId": term(2), "atomData": binary, "atomWallet": ADDR_A}), 3, 101, 0))),
        ],
    )
    .await;
    assert_eq!(db.count("atom_created_events").await, 3);
    let row = sqlx::query_as::<_, (String, String, Option<String>, Option<Vec<u8>>)>(
        "SELECT creator_id, wallet_id, data, raw_data FROM atom WHERE term_id = $1",
    )
    .bind(term(1))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            ADDR_A_CHECKSUM.to_string(),
            ADDR_B_CHECKSUM.to_string(),
            Some("ipfs://hello".to_string()),
            None
        )
    );
    let row = sqlx::query_as::<_, (Option<String>, Option<Vec<u8>>)>(
        "SELECT data, raw_data FROM atom WHERE term_id = $1",
    )
    .bind(term(2))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(row, (None, Some(vec![0xff, 0xfe, 0x00, 0x41])));
    assert_eq!(
        text(
            &db,
            &format!(
                "SELECT type || ':' || atom_id FROM term WHERE id = '{}'",
                term(2)
            )
        )
        .await,
        format!("Atom:{}", term(2))
    );
    // Chain position of the event: hex timestamp, hex log index.
    let (block, log_index, ts): (i64, i64, i64) = sqlx::query_as(
        "SELECT block_number, log_index, extract(epoch FROM block_timestamp)::int8 FROM atom_created_events WHERE term_id = $1 AND block_number = 100",
    )
    .bind(term(1))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((block, log_index, ts), (100, 5, 1_756_000_100));
    db.drain_analytics().await;
    db.assert_verified().await;
}

#[tokio::test]
async fn triples_link_counter_terms_and_fix_unknown_types() {
    let db = TestDb::new().await;
    let triple = term(10);
    let counter = worker::decode::ids::counter_term_id(&triple);
    feed(
        &db,
        &[
            // A deposit on the counter vault before the triple exists: term type Unknown for now.
            ("payload", envelope("Deposited", with_info(json!({"sender": ADDR_A, "receiver": ADDR_A, "termId": counter, "curveId": "1",
                "assets": "100", "assetsAfterFees": "90", "shares": "90", "totalShares": "90", "vaultType": 2}), 1, 50, 0))),
        ],
    )
    .await;
    assert_eq!(
        text(
            &db,
            &format!("SELECT type FROM term WHERE id = '{counter}'")
        )
        .await,
        "Unknown"
    );
    feed(
        &db,
        &[(
            "payload",
            envelope(
                "TripleCreated",
                with_info(
                    json!({"creator": ADDR_B, "termId": triple.to_uppercase().replace("0X", "0x"),
            "subjectId": term(1), "predicateId": term(2), "objectId": term(3)}),
                    2,
                    60,
                    3,
                ),
            ),
        )],
    )
    .await;
    let row = sqlx::query_as::<_, (String, String, String, String, String)>(
        "SELECT subject_id, predicate_id, object_id, creator_id, counter_term_id FROM triple WHERE term_id = $1",
    )
    .bind(&triple)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            term(1),
            term(2),
            term(3),
            ADDR_B_CHECKSUM.to_string(),
            counter.clone()
        )
    );
    assert_eq!(
        text(
            &db,
            &format!("SELECT type || ':' || triple_id FROM term WHERE id = '{triple}'")
        )
        .await,
        format!("Triple:{triple}")
    );
    assert_eq!(
        text(
            &db,
            &format!("SELECT type || ':' || triple_id FROM term WHERE id = '{counter}'")
        )
        .await,
        format!("CounterTriple:{triple}")
    );
    db.drain_analytics().await;
    // The counter vault feeds the triple's analytics.
    let (count, shares): (i64, String) = sqlx::query_as("SELECT position_count, total_shares::text FROM triple_vault WHERE term_id = $1 AND curve_id = '1'")
        .bind(&triple)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!((count, shares.as_str()), (1, "0"));
    db.assert_verified().await;
}

#[tokio::test]
async fn deposits_redeems_and_prices_with_uint256_values() {
    let db = TestDb::new().await;
    let t = term(20);
    let big = "340282366920938463463374607431768211457"; // 2^128 + 1
    let above_u64_hex = "0x10000000000000000"; // 2^64
    feed(
        &db,
        &[
            // Receiver A deposits twice (hex and decimal spellings, one above 2^64) on curve 1.
            ("payload", envelope("Deposited", json!([
                with_info(json!({"sender": ADDR_B, "receiver": ADDR_A, "termId": t, "curveId": 1, "assets": above_u64_hex,
                    "assetsAfterFees": big, "shares": "5", "totalShares": "1000", "vaultType": 0}), 1, 10, 1),
                with_info(json!({"sender": ADDR_A, "receiver": ADDR_A, "termId": t, "curveId": "0x1", "assets": 7,
                    "assetsAfterFees": "0x10", "shares": 3, "totalShares": 3000, "vaultType": "0"}), 2, 12, 0),
            ]))),
            // An older Deposited for A arrives late: adds to the sum, does not set shares.
            ("payload", envelope("Deposited", with_info(json!({"sender": ADDR_A, "receiver": ADDR_A, "termId": t, "curveId": "1",
                "assets": "1", "assetsAfterFees": "1", "shares": "1", "totalShares": "1", "vaultType": 0}), 3, 5, 9))),
            // B deposits, then redeems everything.
            ("payload", envelope("Deposited", with_info(json!({"sender": ADDR_B, "receiver": ADDR_B, "termId": t, "curveId": "1",
                "assets": "50", "assetsAfterFees": "40", "shares": "40", "totalShares": "40", "vaultType": 0}), 4, 13, 0))),
            ("payload", envelope("Redeemed", with_info(json!({"sender": ADDR_B, "receiver": ADDR_B, "termId": t, "curveId": "1",
                "shares": "40", "totalShares": "0", "assets": "39", "fees": "1", "vaultType": 0}), 5, 14, 0))),
            // Prices: the older one arrives last and must not win. 3 * 500000000000000001 / 1e18 = 1.5 -> 1 (truncated).
            ("payload", envelope("SharePriceChanged", with_info(json!({"termId": t, "curveId": "1", "sharePrice": "500000000000000001",
                "totalAssets": big, "totalShares": "3", "vaultType": 0}), 6, 14, 1))),
            ("payload", envelope("SharePriceChanged", with_info(json!({"termId": t, "curveId": "1", "sharePrice": "999",
                "totalAssets": "1", "totalShares": "1", "vaultType": 0}), 7, 11, 0))),
            // Curve 2 has a vault with a price; curve 3 only a deposit (zeros until a price arrives).
            ("payload", envelope("SharePriceChanged", with_info(json!({"termId": t, "curveId": "2", "sharePrice": "2000000000000000000",
                "totalAssets": "10", "totalShares": "5000000000000000000", "vaultType": 0}), 8, 15, 0))),
            ("payload", envelope("Deposited", with_info(json!({"sender": ADDR_B, "receiver": ADDR_B, "termId": t, "curveId": "3",
                "assets": "2", "assetsAfterFees": "2", "shares": "2", "totalShares": "2", "vaultType": 0}), 9, 16, 0))),
        ],
    )
    .await;
    assert_eq!(db.count("deposited_events").await, 5);
    let stored: String =
        sqlx::query_scalar("SELECT assets::text FROM deposited_events WHERE block_number = 10")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(stored, "18446744073709551616");

    let position = |account: &'static str| {
        let pool = db.pool.clone();
        let t = t.clone();
        async move {
            sqlx::query_as::<_, (String, String, String)>(
                "SELECT shares::text, total_deposit_assets_after_total_fees::text, total_redeem_assets_for_receiver::text
                 FROM position WHERE account_id = $1 AND term_id = $2 AND curve_id = '1'",
            )
            .bind(account)
            .bind(t)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    // 2^128+1 + 16 + 1
    assert_eq!(
        position(ADDR_A_CHECKSUM).await,
        (
            "3000".into(),
            "340282366920938463463374607431768211474".into(),
            "0".into()
        )
    );
    assert_eq!(
        position(ADDR_B_CHECKSUM).await,
        ("0".into(), "40".into(), "39".into())
    );

    let vault = |curve: &'static str| {
        let pool = db.pool.clone();
        let t = t.clone();
        async move {
            sqlx::query_as::<_, (String, String, String, String, i64)>(
                "SELECT total_shares::text, total_assets::text, current_share_price::text, market_cap::text, position_count
                 FROM vault WHERE term_id = $1 AND curve_id = $2",
            )
            .bind(t)
            .bind(curve)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(
        vault("1").await,
        (
            "3".into(),
            big.into(),
            "500000000000000001".into(),
            "1".into(),
            1
        )
    );
    assert_eq!(
        vault("2").await,
        (
            "5000000000000000000".into(),
            "10".into(),
            "2000000000000000000".into(),
            "10000000000000000000".into(),
            0
        )
    );
    assert_eq!(
        vault("3").await,
        ("0".into(), "0".into(), "0".into(), "0".into(), 1)
    );

    let (total_assets, market_cap): (String, String) =
        sqlx::query_as("SELECT total_assets::text, total_market_cap::text FROM term WHERE id = $1")
            .bind(&t)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(total_assets, "340282366920938463463374607431768211467"); // big + 10
    assert_eq!(market_cap, "10000000000000000001");
    db.drain_analytics().await;
    db.assert_verified().await;
}

#[tokio::test]
async fn other_events_are_stored_verbatim() {
    let db = TestDb::new().await;
    feed(
        &db,
        &[(
            "payload",
            envelope(
                "Paused",
                with_info(json!({"account": ADDR_A, "note": "ünïcode"}), 1, 1, 0),
            ),
        )],
    )
    .await;
    let (name, account): (String, String) =
        sqlx::query_as("SELECT event_name, event_data->>'account' FROM generic_events")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((name.as_str(), account.as_str()), ("Paused", ADDR_A));
    assert_eq!(db.count("term").await, 0);
}

/// Every event table's rows, all columns but `inserted_at`.
async fn event_rows(db: &TestDb) -> String {
    db.event_rows("(to_jsonb(e) - 'inserted_at')::text").await
}

/// Decoded entries of every kind, with the characters COPY's text format
/// escapes (tab, newline, carriage return, backslash) in text, JSON and
/// atom data, non-UTF-8 atom data, a NULL timestamp and index, and the
/// generator's history.
fn entries_of_every_kind() -> Vec<worker::decode::DecodedEntry> {
    use std::sync::Arc;
    let mut payloads = vec![
        envelope(
            "Paused",
            with_info(
                json!({"note": "tab\there\nnew line\r\\back\\slash \\N \\. ünïcode"}),
                1,
                1,
                0,
            ),
        ),
        envelope(
            "AtomCreated",
            with_info(
                json!({"creator": ADDR_A, "termId": term(901), "atomWallet": ADDR_B,
                    "atomData": format!("0x{}", hex_encode(b"a\tb\\c\nd"))}),
                2,
                2,
                0,
            ),
        ),
        envelope(
            "AtomCreated",
            with_info(
                json!({"creator": ADDR_A, "termId": term(902), "atomWallet": ADDR_B,
                    "atomData": "0xff00fe5c09"}),
                3,
                2,
                1,
            ),
        ),
    ];
    let mut no_time = with_info(json!({"account": ADDR_A}), 4, 3, 0);
    no_time["transaction_information"]["block_timestamp"] = serde_json::Value::Null;
    no_time["transaction_information"]["transaction_index"] = serde_json::Value::Null;
    payloads.push(envelope("Unpaused", no_time));
    let spec = worker::generate::GeneratorSpec {
        events: 400,
        events_per_entry: 3,
        seed: 7,
        accounts: 5,
        curves: 2,
        network: "testnet".into(),
        stream_prefix: "copy".into(),
    };
    payloads.extend(
        worker::generate::generate(&spec)
            .into_iter()
            .map(|e| e.payload),
    );
    payloads
        .iter()
        .enumerate()
        .map(|(i, payload)| {
            let entry = worker::decode::decode_entry(
                &Arc::from("copy-vs-insert"),
                &Arc::from(format!("{i}-0").as_str()),
                &[("payload".to_string(), payload.clone().into_bytes())],
            );
            assert!(entry.dead_letters.is_empty(), "{:?}", entry.dead_letters);
            entry
        })
        .collect()
}

/// ADR 0022: a batch's events are COPYed; the rows are those the
/// `INSERT … ON CONFLICT DO NOTHING` of a redelivered batch writes, column
/// for column.
#[tokio::test]
async fn copy_and_insert_store_the_same_rows() {
    use worker::persistence::{write_in_transaction, Insert};
    let entries = entries_of_every_kind();
    let mut tables = Vec::new();
    for insert in [Insert::Copy, Insert::SkipStored] {
        let db = TestDb::new().await;
        let mut tx = db.pool.begin().await.unwrap();
        let outcome = write_in_transaction(&mut tx, &entries, insert, None)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(outcome.duplicate_events, 0, "{insert:?}");
        db.fold().await;
        tables.push((event_rows(&db).await, db.snapshot().await));
    }
    assert!(
        tables[0]
            .0
            .contains(r#""note": "tab\there\nnew line\r\\back\\slash \\N \\. ünïcode""#),
        "{}",
        tables[0].0
    );
    assert!(tables[0].0.contains(r#""block_timestamp": null"#));
    assert_eq!(tables[0].0, tables[1].0, "event rows differ (COPY first)");
    assert_eq!(
        tables[0].1, tables[1].1,
        "derived tables differ (COPY first)"
    );
}

/// A batch that meets events already stored (a redelivery: a crash between
/// commit and acknowledgement, or a group read again from 0) fails its
/// COPY on their primary keys and is written again without them: the new
/// events are stored, the old ones count as duplicates and have no second
/// effect.
#[tokio::test]
async fn a_batch_meeting_stored_events_stores_only_the_new_ones() {
    let entries = entries_of_every_kind();
    let (first, rest) = entries.split_at(entries.len() / 2);
    let once = TestDb::new().await;
    let all = worker::persistence::write_entries(&once.pool, &entries, Default::default(), None)
        .await
        .unwrap();
    let twice = TestDb::new().await;
    let early = worker::persistence::write_entries(&twice.pool, first, Default::default(), None)
        .await
        .unwrap();
    // The whole history again: the first half is stored already.
    let again = worker::persistence::write_entries(&twice.pool, &entries, Default::default(), None)
        .await
        .unwrap();
    let stored_first = early.stored_events();
    assert!(stored_first > 0 && !rest.is_empty());
    assert_eq!(again.duplicate_events, stored_first);
    assert_eq!(again.stored_events() + stored_first, all.stored_events());
    once.fold().await;
    twice.fold().await;
    assert_eq!(
        event_rows(&twice).await.len(),
        event_rows(&once).await.len()
    );
    system_tests::assert_same_tables(
        &twice.snapshot().await,
        &once.snapshot().await,
        "stored twice vs once",
    );
    twice.drain_analytics().await;
    twice.assert_verified().await;
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
