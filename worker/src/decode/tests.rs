use super::*;

const TERM: &str = "0x0000000000000000000000000000000000000000000000000000000000000abc";
const TX: &str = "0x1111111111111111111111111111111111111111111111111111111111111111";
const ADDR: &str = "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed";

fn entry(field: &str, payload: &str) -> DecodedEntry {
    decode_entry(
        &Arc::from("s"),
        &Arc::from("1-0"),
        &[(field.to_string(), payload.as_bytes().to_vec())],
    )
}

fn tx_info(log_index: &str) -> String {
    format!(
        r#"{{"address":"{ADDR}","block_hash":"{TX}","block_number":"0x10","block_timestamp":null,
        "log_index":{log_index},"network":"base","transaction_hash":"{TX}","transaction_index":3}}"#
    )
}

fn deposit(assets: &str, log_index: &str) -> String {
    format!(
        r#"{{"sender":"{ADDR}","receiver":"{ADDR}","termId":"{TERM}","curveId":"1","assets":{assets},
        "assetsAfterFees":"90","shares":"0x5a","totalShares":"90","vaultType":0,
        "transaction_information":{}}}"#,
        tx_info(log_index)
    )
}

#[test]
fn accepts_all_three_payload_field_names_and_number_spellings() {
    for field in PAYLOAD_FIELDS {
        let payload = format!(
            r#"{{"event_name":"Deposited","network":"base","event_data":{}}}"#,
            deposit("100", "\"0xd6\"")
        );
        let out = entry(field, &payload);
        assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
        let event = &out.events[0];
        assert_eq!(event.position.log_index, 214);
        assert_eq!(event.position.block_number, 16);
        assert_eq!(event.position.block_timestamp, None);
        assert_eq!(
            event.position.contract_address.as_deref(),
            Some("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed")
        );
        let EventBody::Deposited(d) = &event.body else {
            panic!("not a deposit")
        };
        assert_eq!(
            (d.assets.as_str(), d.shares.as_str(), d.curve_id.as_str()),
            ("100", "90", "1")
        );
        assert_eq!(d.receiver, "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed");
    }
}

#[test]
fn big_json_number_literals_stay_exact() {
    let big = "123456789012345678901234567890123456789";
    let payload = format!(
        r#"{{"event_name":"Deposited","event_data":{}}}"#,
        deposit(big, "1")
    );
    let out = entry("payload", &payload);
    let EventBody::Deposited(d) = &out.events[0].body else {
        panic!()
    };
    assert_eq!(d.assets, big);
}

#[test]
fn one_bad_item_keeps_its_neighbours() {
    let payload = format!(
        r#"{{"event_name":"Deposited","event_data":[{},{},{}]}}"#,
        deposit("1", "1"),
        deposit("\"12x\"", "2"),
        deposit("3", "3")
    );
    let out = entry("payload", &payload);
    assert_eq!(out.events.len(), 2);
    assert_eq!(out.dead_letters.len(), 1);
    let dead = &out.dead_letters[0];
    assert_eq!(dead.item_index, Some(1));
    assert!(
        dead.reason.contains("Deposited: field `assets`"),
        "{}",
        dead.reason
    );
    assert!(dead.reason.contains("\"12x\""), "{}", dead.reason);
    assert!(std::str::from_utf8(&dead.raw_payload)
        .unwrap()
        .contains("12x"));
}

#[test]
fn an_items_letter_keeps_the_envelope_for_replay() {
    let payload = format!(
        r#"{{"event_name":"Deposited","network":"base","event_signature_hash":"0xfeed","event_data":[{},{}]}}"#,
        deposit("1", "1"),
        deposit("\"12x\"", "2"),
    );
    let out = entry("payload", &payload);
    let dead = &out.dead_letters[0];
    assert_eq!(dead.envelope_network.as_deref(), Some("base"));
    assert_eq!(dead.event_signature_hash.as_deref(), Some("0xfeed"));
}

#[test]
fn wrong_checksums_are_stored_normalised_and_counted() {
    let bad = "0x742d35Cc6634C0532925a3b844Bc9e7595f0bEb0";
    let item = |log_index: &str| {
        deposit("1", log_index).replacen(
            &format!("\"receiver\":\"{ADDR}\""),
            &format!("\"receiver\":\"{bad}\""),
            1,
        )
    };
    let payload = format!(
        r#"{{"event_name":"Deposited","network":"base","event_data":[{},{},{}]}}"#,
        item("1"),
        deposit("1", "2"),
        item("3"),
    );
    let out = entry("payload", &payload);
    assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
    assert_eq!(out.events.len(), 3);
    assert_eq!(out.address_checksum_mismatches, 2);
    assert_eq!(out.mismatched_address.as_deref(), Some(bad));
    let EventBody::Deposited(d) = &out.events[0].body else {
        panic!("not a deposit")
    };
    assert_eq!(d.receiver.to_lowercase(), bad.to_lowercase());
    assert_eq!(d.receiver, ids::address(bad).unwrap().checksummed);
    // A wrong length stays malformed.
    let short = deposit("1", "1").replacen(ADDR, &ADDR[..41], 1);
    let payload = format!(r#"{{"event_name":"Deposited","network":"base","event_data":{short}}}"#);
    let out = entry("payload", &payload);
    assert_eq!(out.dead_letters.len(), 1);
    assert_eq!(out.address_checksum_mismatches, 0);
    assert!(out.dead_letters[0].reason.contains("40 hex digits"));
}

#[test]
fn whole_entry_failures_are_named() {
    let cases = [
        ("payload", "not json", "not valid JSON"),
        ("payload", "[1,2]", "top level is an array"),
        ("payload", r#"{"event_data":{}}"#, "event_name"),
        (
            "payload",
            r#"{"event_name":"Deposited"}"#,
            "event_data is missing",
        ),
        (
            "payload",
            r#"{"event_name":"Deposited","event_data":[]}"#,
            "event_data is empty",
        ),
        ("other", "{}", "none of the fields"),
    ];
    for (field, payload, needle) in cases {
        let out = entry(field, payload);
        assert!(out.events.is_empty());
        assert_eq!(out.dead_letters.len(), 1, "{payload}");
        assert!(
            out.dead_letters[0].reason.contains(needle),
            "{payload}: {}",
            out.dead_letters[0].reason
        );
        assert_eq!(out.dead_letters[0].item_index, None);
    }
    let out = decode_entry(
        &Arc::from("s"),
        &Arc::from("1-0"),
        &[("payload".into(), vec![0xff, 0xfe])],
    );
    assert!(out.dead_letters[0].reason.contains("not UTF-8"));
    assert_eq!(out.dead_letters[0].raw_payload, vec![0xff, 0xfe]);
}

#[test]
fn missing_and_malformed_fields_are_named() {
    let missing_tx = r#"{"event_name":"SharePriceChanged","event_data":{"termId":"0x01"}}"#;
    let out = entry("payload", missing_tx);
    assert!(
        out.dead_letters[0]
            .reason
            .contains("transaction_information` is missing"),
        "{}",
        out.dead_letters[0].reason
    );

    let bad_term = format!(
        r#"{{"event_name":"SharePriceChanged","event_data":{{"termId":"0x01","curveId":1,"sharePrice":1,"totalAssets":1,"totalShares":1,"vaultType":0,"transaction_information":{}}}}}"#,
        tx_info("1")
    );
    let out = entry("payload", &bad_term);
    assert!(
        out.dead_letters[0]
            .reason
            .contains("field `termId` expected a bytes32 id"),
        "{}",
        out.dead_letters[0].reason
    );

    let bad_vault_type = deposit("1", "1").replace("\"vaultType\":0", "\"vaultType\":7");
    let out = entry(
        "payload",
        &format!(r#"{{"event_name":"Deposited","event_data":{bad_vault_type}}}"#),
    );
    assert!(
        out.dead_letters[0].reason.contains("vaultType"),
        "{}",
        out.dead_letters[0].reason
    );
}

#[test]
fn atom_data_utf8_and_binary() {
    let atom = |data: &str| {
        format!(
            r#"{{"event_name":"AtomCreated","event_data":{{"creator":"{ADDR}","termId":"{TERM}","atomData":"{data}","atomWallet":"{ADDR}","transaction_information":{}}}}}"#,
            tx_info("1")
        )
    };
    let out = entry("payload", &atom("68656c6c6f"));
    let EventBody::AtomCreated(a) = &out.events[0].body else {
        panic!()
    };
    assert_eq!(a.atom_data_text.as_deref(), Some("hello"));
    let out = entry("payload", &atom("0xfffe00"));
    let EventBody::AtomCreated(a) = &out.events[0].body else {
        panic!()
    };
    assert_eq!(
        (a.atom_data.as_slice(), a.atom_data_text.as_deref()),
        (&[0xff, 0xfe, 0][..], None)
    );
}

#[test]
fn unknown_events_are_generic_and_nul_is_refused() {
    let generic = format!(
        r#"{{"event_name":"Paused","event_signature_hash":"0xabc","event_data":{{"account":"{ADDR}","transaction_information":{}}}}}"#,
        tx_info("1")
    );
    let out = entry("payload", &generic);
    let EventBody::Generic(g) = &out.events[0].body else {
        panic!()
    };
    assert_eq!(g.event_name, "Paused");
    assert_eq!(g.event_signature_hash.as_deref(), Some("0xabc"));
    let nul = generic.replace("\"account\"", "\"note\":\"a\\u0000b\",\"account\"");
    let out = entry("payload", &nul);
    assert!(out.dead_letters[0].reason.contains("\\u0000"));
}

mod fuzz {
    //! The decoder never panics and never loses input: every item of every
    //! entry becomes exactly one event or one dead letter.
    use super::*;
    use proptest::prelude::*;

    const NAMES: [&str; 7] = [
        "AtomCreated",
        "TripleCreated",
        "Deposited",
        "Redeemed",
        "SharePriceChanged",
        "Paused",
        "",
    ];
    const FIELDS: [&str; 16] = [
        "sender",
        "receiver",
        "termId",
        "curveId",
        "assets",
        "assetsAfterFees",
        "shares",
        "totalShares",
        "vaultType",
        "creator",
        "atomData",
        "atomWallet",
        "subjectId",
        "sharePrice",
        "transaction_information",
        "log_index",
    ];

    fn scalar() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            "[0-9a-fA-Fx]{0,80}".prop_map(serde_json::Value::from),
            ".{0,20}".prop_map(serde_json::Value::from),
            Just(serde_json::Value::from(format!("0x{}", "f".repeat(65)))),
            Just(serde_json::Value::from(ADDR)),
            Just(serde_json::Value::from(TERM)),
        ]
    }

    fn json() -> impl Strategy<Value = serde_json::Value> {
        scalar().prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                prop::collection::vec((prop::sample::select(FIELDS.to_vec()), inner), 0..10)
                    .prop_map(|kv| {
                        serde_json::Value::Object(
                            kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                        )
                    }),
            ]
        })
    }

    fn check(entry: &DecodedEntry, items: Option<usize>) {
        let produced = entry.events.len() + entry.dead_letters.len();
        match items {
            Some(n) if entry.dead_letters.iter().all(|d| d.item_index.is_some()) => {
                assert_eq!(produced, n)
            }
            _ => assert!(produced >= 1, "input vanished"),
        }
        for d in &entry.dead_letters {
            assert!(!d.reason.is_empty());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300), field in prop::sample::select(vec!["payload", "data", "event_data", "other"])) {
            let entry = decode_entry(&Arc::from("s"), &Arc::from("1-0"), &[(field.to_string(), bytes)]);
            check(&entry, None);
        }

        #[test]
        fn arbitrary_envelopes_never_panic(name in prop::sample::select(NAMES.to_vec()), data in json(), info in json()) {
            let mut data = data;
            if let serde_json::Value::Object(map) = &mut data {
                map.insert("transaction_information".into(), info);
            }
            let items = match &data { serde_json::Value::Array(a) if !a.is_empty() => Some(a.len()), serde_json::Value::Array(_) => None, _ => Some(1) };
            let payload = serde_json::json!({"event_name": name, "event_data": data}).to_string();
            let entry = decode_entry(&Arc::from("s"), &Arc::from("1-0"), &[("payload".into(), payload.into_bytes())]);
            check(&entry, items);
        }

        #[test]
        fn mutated_valid_deposits_never_panic(field in prop::sample::select(FIELDS.to_vec()), value in scalar(), cut in 0usize..400) {
            let mut item: serde_json::Value = serde_json::from_str(&deposit("1", "1")).unwrap();
            item[field] = value;
            let payload = serde_json::json!({"event_name": "Deposited", "event_data": [item.clone(), item]}).to_string();
            let entry = decode_entry(&Arc::from("s"), &Arc::from("1-0"), &[("payload".into(), payload.clone().into_bytes())]);
            check(&entry, Some(2));
            // Truncated bytes too (possibly mid-character).
            let mut bytes = payload.into_bytes();
            bytes.truncate(cut.min(bytes.len()));
            let entry = decode_entry(&Arc::from("s"), &Arc::from("1-0"), &[("payload".into(), bytes)]);
            check(&entry, None);
        }
    }
}
