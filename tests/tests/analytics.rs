//! Analytics (contract §3 level 3, §4): once the queue drains, every analytics
//! row equals its from-scratch definition (`verify`), in the scenarios of
//! issue 3, including racing analytics workers and failures that are retried
//! or parked.

use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use system_tests::payload::*;
use system_tests::{test_analytics_settings, TestDb};
use worker::analytics::{claim, complete, process_batch, record_failures, requeue_parked};
use worker::decode::{decode_entry, ids::counter_term_id};

/// Writes events through the real batch transaction (one entry each).
async fn write(db: &TestDb, events: &[(&str, Value)]) {
    write_to(&db.pool, events).await
}

async fn write_to(pool: &sqlx::PgPool, events: &[(&str, Value)]) {
    let entries: Vec<_> = events
        .iter()
        .enumerate()
        .map(|(i, (name, data))| {
            decode_entry(
                &Arc::from("s"),
                &Arc::from(format!("{}-{i}", rand_ms()).as_str()),
                &[(
                    "payload".to_string(),
                    envelope(name, data.clone()).into_bytes(),
                )],
            )
        })
        .collect();
    for e in &entries {
        assert!(e.dead_letters.is_empty(), "{:?}", e.dead_letters);
    }
    worker::persistence::write_entries(pool, &entries, Default::default(), None)
        .await
        .unwrap();
    // The batch's effect reaches the base tables and the queue by folding (ADR 0015).
    worker::fold::fold_until_empty(pool).await.unwrap();
}

fn rand_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

struct Chain {
    tx: u64,
    block: u64,
}

impl Chain {
    fn new() -> Self {
        Chain {
            tx: 0,
            block: 1_000,
        }
    }
    fn next(&mut self) -> (u64, u64) {
        self.tx += 1;
        self.block += 1;
        (self.tx, self.block)
    }
    fn atom(&mut self, n: u64) -> (&'static str, Value) {
        let (tx, block) = self.next();
        (
            "AtomCreated",
            with_info(
                json!({"creator": ADDR_A, "termId": term(n), "atomData": "6869", "atomWallet": ADDR_B}),
                tx,
                block,
                0,
            ),
        )
    }
    fn triple(&mut self, n: u64, s: u64, p: u64, o: u64) -> (&'static str, Value) {
        let (tx, block) = self.next();
        (
            "TripleCreated",
            with_info(
                json!({"creator": ADDR_A, "termId": term(n), "subjectId": term(s), "predicateId": term(p), "objectId": term(o)}),
                tx,
                block,
                0,
            ),
        )
    }
    /// Atoms 1, 2 and 3, then the triples (term, subject, predicate, object).
    fn atoms_1_to_3_and_triples(
        &mut self,
        triples: &[(u64, u64, u64, u64)],
    ) -> Vec<(&'static str, Value)> {
        let mut events: Vec<_> = (1..=3).map(|n| self.atom(n)).collect();
        for &(n, s, p, o) in triples {
            events.push(self.triple(n, s, p, o));
        }
        events
    }
    /// A deposit by `account` followed by the vault's new price and totals.
    fn deposit(
        &mut self,
        term_id: &str,
        curve: u32,
        account: &str,
        shares: u64,
        price: &str,
    ) -> Vec<(&'static str, Value)> {
        let (tx, block) = self.next();
        vec![
            (
                "Deposited",
                with_info(
                    json!({"sender": account, "receiver": account, "termId": term_id, "curveId": curve.to_string(),
                "assets": shares.to_string(), "assetsAfterFees": shares.to_string(), "shares": shares.to_string(),
                "totalShares": shares.to_string(), "vaultType": 1}),
                    tx,
                    block,
                    0,
                ),
            ),
            (
                "SharePriceChanged",
                with_info(
                    json!({"termId": term_id, "curveId": curve.to_string(), "sharePrice": price,
                "totalAssets": (shares * 2).to_string(), "totalShares": (shares * 3).to_string(), "vaultType": 1}),
                    tx,
                    block,
                    1,
                ),
            ),
        ]
    }
    fn price(&mut self, term_id: &str, curve: u32, price: &str) -> (&'static str, Value) {
        let (tx, block) = self.next();
        (
            "SharePriceChanged",
            with_info(
                json!({"termId": term_id, "curveId": curve.to_string(), "sharePrice": price,
            "totalAssets": "777", "totalShares": "3000000000000000000", "vaultType": 0}),
                tx,
                block,
                0,
            ),
        )
    }
}

async fn row(db: &TestDb, sql: &str, key: &str) -> Vec<String> {
    let r: Option<(String,)> = sqlx::query_as(sql)
        .bind(key)
        .fetch_optional(&db.pool)
        .await
        .unwrap();
    r.map(|(s,)| s.split('|').map(str::to_string).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn triple_created_before_and_after_its_deposits() {
    let db = TestDb::new().await;
    let mut c = Chain::new();
    let atoms: Vec<_> = (1..=3).map(|n| c.atom(n)).collect();
    write(&db, &atoms).await;
    // Triple 10 exists before its deposits.
    write(&db, &[c.triple(10, 1, 2, 3)]).await;
    write(
        &db,
        &c.deposit(&term(10), 1, ADDR_A, 100, "1000000000000000000"),
    )
    .await;
    // Triple 11: deposits first (term still Unknown), creation afterwards.
    write(
        &db,
        &c.deposit(&term(11), 1, ADDR_B, 50, "2000000000000000000"),
    )
    .await;
    db.drain_analytics().await;
    assert!(row(
        &db,
        "SELECT total_assets::text FROM triple_term WHERE term_id = $1",
        &term(11)
    )
    .await
    .is_empty());
    write(&db, &[c.triple(11, 1, 2, 3)]).await;
    db.drain_analytics().await;
    db.assert_verified().await;
    // Both triples share (predicate 2, object 3).
    assert_eq!(
        row(&db, "SELECT triple_count || '|' || total_position_count || '|' || total_market_cap FROM predicate_object WHERE predicate_id = $1", &term(2)).await,
        vec!["2", "2", &(300u64 + 300).to_string()]
    );
    assert_eq!(
        row(&db, "SELECT total_shares || '|' || total_assets || '|' || position_count || '|' || market_cap FROM triple_vault WHERE term_id = $1", &term(11)).await,
        vec!["150", "100", "1", "300"]
    );
}

/// Moves the queue's rows 61 s back (past a 60 s coalescing window), then
/// one batch must claim, complete and recompute exactly one triple.
async fn end_the_window_and_recompute_one_triple(
    db: &TestDb,
    settings: &worker::analytics::AnalyticsSettings,
) {
    sqlx::query(
        "UPDATE analytics_queue SET next_attempt_at = next_attempt_at - interval '61 seconds'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let report = process_batch(&db.pool, settings).await.unwrap();
    assert_eq!(
        (report.claimed, report.completed, report.triples),
        (1, 1, 1),
        "{report:?}"
    );
}

/// ANALYTICS_COALESCE_MS: a queued term is not due before its window has
/// passed, and every change made meanwhile shares one recomputation.
#[tokio::test]
async fn changes_within_the_coalescing_window_share_one_recomputation() {
    let db = TestDb::new().await;
    let mut c = Chain::new();
    let events = c.atoms_1_to_3_and_triples(&[(10, 1, 2, 3)]);
    write(&db, &events).await;
    db.drain_analytics().await;
    let mut settings = test_analytics_settings();
    settings.coalesce = std::time::Duration::from_secs(60);
    for (i, price) in [
        "1000000000000000000",
        "2000000000000000000",
        "3000000000000000000",
    ]
    .into_iter()
    .enumerate()
    {
        write(&db, &c.deposit(&term(10), 1, ADDR_A, 100 + i as u64, price)).await;
    }
    let queued: Vec<(String,)> = sqlx::query_as("SELECT term_id FROM analytics_queue")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(queued, vec![(term(10),)], "three changes, one queue row");
    let report = process_batch(&db.pool, &settings).await.unwrap();
    assert_eq!(report.claimed, 0, "not due inside the window: {report:?}");
    assert_eq!(
        row(
            &db,
            "SELECT total_position_count::text FROM triple_term WHERE term_id = $1",
            &term(10)
        )
        .await,
        vec!["0"],
        "analytics still show the state before the window"
    );
    // The window passes.
    end_the_window_and_recompute_one_triple(&db, &settings).await;
    assert_eq!(
        row(&db, "SELECT total_position_count || '|' || total_market_cap FROM triple_term WHERE term_id = $1", &term(10)).await,
        vec!["1", &(306u64 * 3).to_string()],
        "the newest price and shares, from one recomputation"
    );
    db.assert_verified().await;
}

/// A change of a counter vault queues its triple (ADR 0022): the changes of
/// a triple and of its counter triple share one queue row and one
/// recomputation, which reads both vaults.
#[tokio::test]
async fn a_triple_and_its_counter_triple_share_one_queue_row() {
    let db = TestDb::new().await;
    let mut c = Chain::new();
    let events = c.atoms_1_to_3_and_triples(&[(30, 1, 2, 3)]);
    write(&db, &events).await;
    db.drain_analytics().await;
    let counter = counter_term_id(&term(30));
    let mut settings = test_analytics_settings();
    settings.coalesce = std::time::Duration::from_secs(60);
    write(
        &db,
        &c.deposit(&counter, 1, ADDR_A, 7, "1000000000000000000"),
    )
    .await;
    let queued: Vec<(String,)> = sqlx::query_as("SELECT term_id FROM analytics_queue")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        queued,
        vec![(term(30),)],
        "the counter vault's change queues its triple"
    );
    write(
        &db,
        &c.deposit(&term(30), 1, ADDR_B, 5, "1000000000000000000"),
    )
    .await;
    let queued: Vec<(String,)> = sqlx::query_as("SELECT term_id FROM analytics_queue")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(queued, vec![(term(30),)], "both changes, one queue row");
    end_the_window_and_recompute_one_triple(&db, &settings).await;
    assert_eq!(
        row(
            &db,
            "SELECT total_position_count::text FROM triple_term WHERE term_id = $1",
            &term(30)
        )
        .await,
        vec!["2"],
        "one recomputation counts the positions of both vaults"
    );
    db.assert_verified().await;
}

#[tokio::test]
async fn deposits_on_the_counter_vault_only_and_several_curves() {
    let db = TestDb::new().await;
    let mut c = Chain::new();
    let events = c.atoms_1_to_3_and_triples(&[(20, 1, 2, 3)]);
    write(&db, &events).await;
    let counter = counter_term_id(&term(20));
    write(
        &db,
        &c.deposit(&counter, 1, ADDR_A, 10, "1000000000000000000"),
    )
    .await;
    write(
        &db,
        &c.deposit(&counter, 2, ADDR_B, 20, "1000000000000000000"),
    )
    .await;
    write(
        &db,
        &c.deposit(&term(20), 2, ADDR_A, 5, "1000000000000000000"),
    )
    .await;
    write(
        &db,
        &c.deposit(&term(20), 3, ADDR_A, 7, "1000000000000000000"),
    )
    .await;
    db.drain_analytics().await;
    db.assert_verified().await;
    let curves: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT curve_id, position_count, total_shares::text FROM triple_vault WHERE term_id = $1 ORDER BY curve_id",
    )
    .bind(term(20))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    // Curve 1: counter only; curve 2: both vaults; curve 3: triple only. No row for other curves.
    assert_eq!(
        curves,
        vec![
            ("1".into(), 1, "30".into()),
            ("2".into(), 2, "75".into()),
            ("3".into(), 1, "21".into())
        ]
    );
    assert_eq!(
        row(&db, "SELECT total_position_count || '|' || total_assets FROM triple_term WHERE term_id = $1", &term(20)).await,
        vec!["4", &(20 + 40 + 10 + 14).to_string()]
    );
}

#[tokio::test]
async fn price_change_on_an_atom_used_by_many_triples() {
    let db = TestDb::new().await;
    let mut c = Chain::new();
    let mut events: Vec<_> = (1..=6).map(|n| c.atom(n)).collect();
    // Atom 1 is subject, predicate or object of 30 triples.
    for i in 0..30u64 {
        let (s, p, o) = match i % 3 {
            0 => (1, 2 + i % 5, 3),
            1 => (4, 1, 2 + i % 4),
            _ => (5, 6, 1),
        };
        events.push(c.triple(100 + i, s, p, o));
    }
    write(&db, &events).await;
    for i in 0..30u64 {
        write(
            &db,
            &c.deposit(&term(100 + i), 1, ADDR_A, 10 + i, "1500000000000000000"),
        )
        .await;
    }
    db.drain_analytics().await;
    let before = db.snapshot().await;
    write(&db, &[c.price(&term(1), 1, "9000000000000000000")]).await;
    write(
        &db,
        &c.deposit(&term(1), 2, ADDR_B, 99, "3000000000000000000"),
    )
    .await;
    db.drain_analytics().await;
    db.assert_verified().await;
    // Atom vaults feed no analytics table: the triples' analytics are unchanged.
    let after = db.snapshot().await;
    let analytics = |s: &str| s[s.find("## triple_vault").unwrap()..].to_string();
    assert_eq!(analytics(&after), analytics(&before));
    assert_eq!(
        row(
            &db,
            "SELECT total_assets::text FROM term WHERE id = $1",
            &term(1)
        )
        .await,
        vec![(777 + 198).to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_analytics_workers_race_on_the_same_terms() {
    let db = TestDb::new().await;
    let mut c = Chain::new();
    let mut events: Vec<_> = (1..=8).map(|n| c.atom(n)).collect();
    // Few pairs, many triples: the workers fight over the same pair rows.
    for i in 0..200u64 {
        events.push(c.triple(1_000 + i, 1 + i % 3, 4 + i % 2, 6 + i % 3));
    }
    write(&db, &events).await;
    let mut settings = test_analytics_settings();
    settings.batch_size = 7;
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let race = |pool: sqlx::PgPool,
                settings: worker::analytics::AnalyticsSettings,
                writing: Arc<std::sync::atomic::AtomicBool>| async move {
        let mut done = 0;
        loop {
            let report = process_batch(&pool, &settings)
                .await
                .expect("no deadlock or error");
            assert_eq!(report.retried + report.parked, 0);
            done += report.completed;
            if report.claimed == 0 {
                if !writing.load(std::sync::atomic::Ordering::SeqCst) {
                    return done;
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        }
    };
    // Writers keep changing vaults while two analytics loops run.
    let writer = {
        let db_pool = db.pool.clone();
        let mut chain = Chain {
            tx: 10_000,
            block: 100_000,
        };
        let writing = writing.clone();
        async move {
            for round in 0..40u64 {
                let mut batch = Vec::new();
                for k in 0..10u64 {
                    let t = term(1_000 + (round * 10 + k) % 200);
                    batch.extend(chain.deposit(
                        &t,
                        1 + (k % 2) as u32,
                        if k % 2 == 0 { ADDR_A } else { ADDR_B },
                        5 + k,
                        "1100000000000000000",
                    ));
                }
                let entries: Vec<_> = batch
                    .iter()
                    .enumerate()
                    .map(|(i, (name, data))| {
                        decode_entry(
                            &Arc::from("w"),
                            &Arc::from(format!("{round}-{i}").as_str()),
                            &[(
                                "payload".to_string(),
                                envelope(name, data.clone()).into_bytes(),
                            )],
                        )
                    })
                    .collect();
                worker::persistence::write_entries(&db_pool, &entries, Default::default(), None)
                    .await
                    .unwrap();
                worker::fold::fold_until_empty(&db_pool).await.unwrap();
            }
            writing.store(false, std::sync::atomic::Ordering::SeqCst);
        }
    };
    let (a, b, ()) = tokio::join!(
        tokio::spawn(race(db.pool.clone(), settings.clone(), writing.clone())),
        tokio::spawn(race(db.pool.clone(), settings.clone(), writing.clone())),
        writer
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a > 0 && b > 0, "both workers did work: {a} and {b}");
    db.drain_analytics().await;
    db.assert_verified().await;
}

/// Makes writes of triple_term rows for `term_id` fail the first `times` calls
/// (a sequence counts calls even when the failing transaction rolls back) with
/// a data error (SQLSTATE 22023), which is the term's own failure.
async fn inject_failures(db: &TestDb, term_id: &str, times: i64) -> String {
    inject_errors(db, term_id, times, "22023").await
}

/// Like `inject_failures`, raising SQLSTATE `sqlstate`.
async fn inject_errors(db: &TestDb, term_id: &str, times: i64, sqlstate: &str) -> String {
    let name = format!("fail_{sqlstate}_{}", &term_id[term_id.len() - 8..]);
    sqlx::query(&format!("CREATE SEQUENCE {name}"))
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(&format!(
        "CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.term_id = '{term_id}' AND nextval('{name}') <= {times} THEN
             RAISE EXCEPTION 'injected failure for %', NEW.term_id USING ERRCODE = '{sqlstate}';
           END IF;
           RETURN NEW;
         END $$"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(&format!(
        "CREATE TRIGGER {name} BEFORE INSERT ON triple_term FOR EACH ROW EXECUTE FUNCTION {name}()"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    name
}

/// An outage (here an internal error, XX000, on every analytics write) is not
/// the terms' fault: no attempt is spent and nothing is parked, however long
/// it lasts; once it is over the terms are processed.
#[tokio::test]
async fn an_outage_costs_no_attempt_and_parks_nothing() {
    let db = TestDb::new().await;
    let mut c = Chain::new();
    let events = c.atoms_1_to_3_and_triples(&[(40, 1, 2, 3), (41, 2, 2, 3)]);
    write(&db, &events).await;
    let trigger = inject_errors(&db, &term(40), 1_000_000, "XX000").await;
    let mut settings = test_analytics_settings(); // 3 attempts
    settings.claim_lease = std::time::Duration::from_millis(50);
    for _ in 0..6 {
        let error = process_batch(&db.pool, &settings).await.unwrap_err();
        assert_eq!(
            worker::failure::classify(&error),
            worker::failure::Failure::Outage,
            "{error}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    }
    let (attempts, parked): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(attempts), 0)::int8, count(*) FILTER (WHERE parked_at IS NOT NULL) FROM analytics_queue",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((attempts, parked), (0, 0), "an outage spent attempts");
    sqlx::query(&format!("DROP TRIGGER {trigger} ON triple_term"))
        .execute(&db.pool)
        .await
        .unwrap();
    db.drain_analytics().await;
    db.assert_verified().await;
}

#[tokio::test]
async fn failures_are_retried_with_backoff_or_parked_then_requeued() {
    let db = TestDb::new().await;
    let mut c = Chain::new();
    // 30 fails twice, then succeeds; 31 always fails; 32 is a healthy neighbour.
    let events = c.atoms_1_to_3_and_triples(&[(30, 1, 2, 3), (31, 1, 2, 3), (32, 2, 2, 3)]);
    write(&db, &events).await;
    inject_failures(&db, &term(30), 2).await;
    let always = inject_failures(&db, &term(31), 1_000_000).await;

    let settings = test_analytics_settings(); // 3 attempts, 10..50 ms backoff
    let (mut retried, mut parked) = (0, 0);
    let started = std::time::Instant::now();
    loop {
        let report = process_batch(&db.pool, &settings).await.unwrap();
        retried += report.retried;
        parked += report.parked;
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM analytics_queue WHERE parked_at IS NULL")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        if pending == 0 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "queue did not settle"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // Term 30: one failed attempt recorded (the batch and the single retry share it), then success.
    // Term 31: attempts 1 and 2 retried, the third parks it.
    assert_eq!((retried, parked), (3, 1));
    let (attempts, error, is_parked): (i32, String, bool) =
        sqlx::query_as("SELECT attempts, last_error, parked_at IS NOT NULL FROM analytics_queue WHERE term_id = $1")
            .bind(term(31))
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(attempts, 3);
    assert!(is_parked && error.contains("injected failure"), "{error}");
    assert_eq!(
        db.count("analytics_queue").await,
        1,
        "only the parked term is left"
    );
    assert_eq!(
        row(
            &db,
            "SELECT total_position_count::text FROM triple_term WHERE term_id = $1",
            &term(30)
        )
        .await,
        vec!["0"]
    );
    assert!(row(
        &db,
        "SELECT total_position_count::text FROM triple_term WHERE term_id = $1",
        &term(31)
    )
    .await
    .is_empty());

    // Fix the cause, requeue the parked term: analytics become exact.
    sqlx::query(&format!("DROP TRIGGER {always} ON triple_term"))
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(requeue_parked(&db.pool, None).await.unwrap(), 1);
    db.drain_analytics().await;
    db.assert_verified().await;
}

#[tokio::test]
async fn rebuild_restores_drifted_tables_and_verify_reports_the_drift() {
    let db = TestDb::new().await;
    let mut c = Chain::new();
    let mut events = c.atoms_1_to_3_and_triples(&[(40, 1, 2, 3)]);
    events.extend(c.deposit(&term(40), 1, ADDR_A, 10, "1000000000000000000"));
    write(&db, &events).await;
    db.drain_analytics().await;
    sqlx::query("UPDATE vault SET position_count = 99")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM predicate_object")
        .execute(&db.pool)
        .await
        .unwrap();
    let report = worker::verify::verify(&db.pool, 5).await.unwrap();
    assert!(!report.is_clean());
    let drifted: Vec<&str> = report
        .tables
        .iter()
        .filter(|t| !t.is_clean())
        .map(|t| t.table)
        .collect();
    assert_eq!(drifted, vec!["vault", "predicate_object"]);
    assert!(
        report.render().contains("\"position_count\":99"),
        "{}",
        report.render()
    );
    worker::verify::rebuild(&db.pool, false).await.unwrap();
    db.assert_verified().await;
}

/// Issue 13: ends every lease now, as if the workers holding them had been
/// busy for longer than ANALYTICS_CLAIM_LEASE_MS.
async fn expire_leases(db: &TestDb) {
    sqlx::query(
        "UPDATE analytics_queue SET claimed_until = now() - interval '1 second' \
         WHERE claimed_until IS NOT NULL",
    )
    .execute(&db.pool)
    .await
    .unwrap();
}

fn claimed_terms(claimed: &[worker::analytics::Claimed]) -> Vec<String> {
    claimed.iter().map(|c| c.term_id.clone()).collect()
}

/// A triple whose analytics are current, then a change that queues it.
async fn one_queued_triple(db: &TestDb, c: &mut Chain) -> String {
    let events = c.atoms_1_to_3_and_triples(&[(10, 1, 2, 3)]);
    write(db, &events).await;
    db.drain_analytics().await;
    let t = term(10);
    write(db, &c.deposit(&t, 1, ADDR_A, 100, "1000000000000000000")).await;
    t
}

/// Issue 13 (analytics leases have no owner): worker A's lease expires while
/// it is still busy, B claims the term and completes it, a writer queues the
/// term anew (version 0 again), then A completes late. A's completion must
/// not delete the new row, or the new change is never recomputed.
#[tokio::test]
async fn a_late_completion_keeps_a_term_queued_anew() {
    let db = TestDb::new().await;
    let mut c = Chain::new();
    let t = one_queued_triple(&db, &mut c).await;
    let settings = test_analytics_settings();
    let a = claim(&db.pool, &settings).await.unwrap();
    assert_eq!(claimed_terms(&a), vec![t.clone()]);
    expire_leases(&db).await;
    let b = claim(&db.pool, &settings).await.unwrap();
    assert_eq!(
        claimed_terms(&b),
        vec![t.clone()],
        "B claims the expired lease"
    );
    assert_eq!(complete(&db.pool, &b).await.unwrap().1, 1);
    write(&db, &[c.price(&t, 1, "2000000000000000000")]).await;
    let version: i64 = sqlx::query_scalar("SELECT version FROM analytics_queue WHERE term_id = $1")
        .bind(&t)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        version, a[0].version,
        "queued anew at the version A claimed"
    );
    let (_, completed) = complete(&db.pool, &a).await.unwrap();
    assert_eq!(
        completed, 0,
        "A's late completion removed a row it does not own"
    );
    assert_eq!(db.count("analytics_queue").await, 1);
    db.drain_analytics().await;
    db.assert_verified().await;
}

/// Issue 13: a late failure (or release) of worker A must not end the lease
/// B now holds, or a third worker could claim the term while B works on it.
#[tokio::test]
async fn a_late_failure_leaves_the_new_owners_lease() {
    let db = TestDb::new().await;
    let mut c = Chain::new();
    let t = one_queued_triple(&db, &mut c).await;
    let settings = test_analytics_settings();
    let a = claim(&db.pool, &settings).await.unwrap();
    expire_leases(&db).await;
    let b = claim(&db.pool, &settings).await.unwrap();
    assert_eq!(claimed_terms(&b), vec![t.clone()]);
    let late = [(&a[0], "late failure".to_string(), std::time::Duration::ZERO)];
    assert_eq!(
        record_failures(&db.pool, &settings, &late).await.unwrap(),
        (0, 0),
        "A's late failure was recorded on B's claim"
    );
    assert!(
        claim(&db.pool, &settings).await.unwrap().is_empty(),
        "the term became claimable while B holds it"
    );
    // A change while B works, then A's late completion: A neither deletes nor
    // releases the row; B's completion keeps it (version moved) for a new round.
    write(&db, &[c.price(&t, 1, "2000000000000000000")]).await;
    assert_eq!(complete(&db.pool, &a).await.unwrap().1, 0);
    assert!(
        claim(&db.pool, &settings).await.unwrap().is_empty(),
        "A's late completion released B's lease"
    );
    assert_eq!(complete(&db.pool, &b).await.unwrap().1, 0);
    let attempts: i32 =
        sqlx::query_scalar("SELECT attempts FROM analytics_queue WHERE term_id = $1")
            .bind(&t)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(attempts, 0);
    db.drain_analytics().await;
    db.assert_verified().await;
}

/// Waits until some session of this database waits for a lock of `locktype`
/// (on `relation` when given), or `done` says the other side finished. The
/// session's database comes from pg_stat_activity: a row lock is a wait for
/// the holder's `transactionid`, which pg_locks shows without a database.
async fn wait_for_lock_wait(
    db: &TestDb,
    locktype: &str,
    relation: Option<&str>,
    done: impl Fn() -> bool,
) -> bool {
    let started = std::time::Instant::now();
    loop {
        let waiting: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE NOT l.granted AND l.locktype = $1 AND a.datname = current_database() \
             AND ($2::text IS NULL OR l.relation = to_regclass($2)))",
        )
        .bind(locktype)
        .bind(relation)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if waiting {
            return true;
        }
        if done() {
            return false;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "neither a {locktype} lock wait nor completion"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Issue 13: `rebuild --analytics-only` must not delete a term a writer
/// queued after the rebuild read the tables. The test holds the rebuild right
/// after it wrote triple_vault (a trigger waits for an advisory lock the test
/// holds), lets a writer deposit into the triple meanwhile, then lets the
/// rebuild finish: the deposit must reach the analytics.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuild_analytics_only_keeps_terms_queued_during_it() {
    let db = TestDb::new().await;
    let mut c = Chain::new();
    let mut events = c.atoms_1_to_3_and_triples(&[(10, 1, 2, 3)]);
    events.extend(c.deposit(&term(10), 1, ADDR_A, 10, "1000000000000000000"));
    write(&db, &events).await;
    db.drain_analytics().await;
    sqlx::query(
        "CREATE FUNCTION hold_rebuild() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_advisory_xact_lock(4242); RETURN NULL; END $$",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "CREATE TRIGGER hold_rebuild AFTER INSERT ON triple_vault \
         FOR EACH STATEMENT EXECUTE FUNCTION hold_rebuild()",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut gate = db.pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(4242)")
        .execute(&mut *gate)
        .await
        .unwrap();

    let rebuild = tokio::spawn({
        let pool = db.pool.clone();
        async move { worker::verify::rebuild(&pool, true).await }
    });
    // The rebuild has read the tables for triple_vault and waits at the gate.
    assert!(wait_for_lock_wait(&db, "advisory", None, || rebuild.is_finished()).await);

    let deposit = c.deposit(&term(10), 1, ADDR_B, 77, "1200000000000000000");
    let writer = tokio::spawn({
        let pool = db.pool.clone();
        async move { write_to(&pool, &deposit).await }
    });
    // Either the writer committed (and queued the term) or it waits for the
    // rebuild's lock on the queue.
    wait_for_lock_wait(&db, "relation", Some("analytics_queue"), || {
        writer.is_finished()
    })
    .await;
    sqlx::query("SELECT pg_advisory_unlock(4242)")
        .execute(&mut *gate)
        .await
        .unwrap();
    drop(gate);
    rebuild.await.unwrap().unwrap();
    writer.await.unwrap();
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM analytics_queue WHERE term_id = $1")
        .bind(term(10))
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(queued, 1, "the deposit's term is no longer queued");
    sqlx::query("DROP TRIGGER hold_rebuild ON triple_vault")
        .execute(&db.pool)
        .await
        .unwrap();
    db.drain_analytics().await;
    db.assert_verified().await;
}

/// Issue 22: a deadlock or serialization failure (here raised on every
/// analytics write of one term) is never the term's fault. However often it
/// happens, no attempt is spent and nothing is parked; the claim is released
/// so the term is claimable again at once, and once the conflicts stop the
/// term is processed.
#[tokio::test]
async fn conflicts_cost_no_attempt_and_park_nothing() {
    let db = TestDb::new().await;
    let mut c = Chain::new();
    let events = c.atoms_1_to_3_and_triples(&[(40, 1, 2, 3)]);
    write(&db, &events).await;
    let mut settings = test_analytics_settings();
    settings.max_attempts = 1; // a failure counted would park the term at once
    for sqlstate in ["40P01", "40001"] {
        let trigger = inject_errors(&db, &term(40), 1_000_000, sqlstate).await;
        for _ in 0..2 {
            match process_batch(&db.pool, &settings).await {
                Err(error) => assert_eq!(
                    worker::failure::classify(&error),
                    worker::failure::Failure::Conflict,
                    "{error}"
                ),
                Ok(report) => assert_eq!(
                    (report.retried, report.parked),
                    (0, 0),
                    "a {sqlstate} conflict counted as a failed attempt"
                ),
            }
        }
        let (attempts, parked): (i64, i64) = sqlx::query_as(
            "SELECT coalesce(sum(attempts), 0)::int8, count(*) FILTER (WHERE parked_at IS NOT NULL) FROM analytics_queue",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!((attempts, parked), (0, 0), "{sqlstate} spent attempts");
        sqlx::query(&format!("DROP TRIGGER {trigger} ON triple_term"))
            .execute(&db.pool)
            .await
            .unwrap();
    }
    // Claimable at once: the conflict released the claim (no lease to wait out).
    let claimed = claim(&db.pool, &settings).await.unwrap();
    assert_eq!(claimed_terms(&claimed), vec![term(40)]);
    assert_eq!(complete(&db.pool, &claimed).await.unwrap().1, 1);
    db.drain_analytics().await;
    db.assert_verified().await;
}

/// Issue 22: `rollback` and an analytics transaction take their locks in one
/// order, so they cannot deadlock. The test holds one predicate_object row
/// (as a second analytics worker would) so that the analytics transaction
/// stops inside its work, starts a rollback while it waits there, then lets
/// the analytics transaction go on. With two lock orders the two form a
/// cycle and PostgreSQL aborts one of them (40P01); with one order the
/// rollback waits for the analytics transaction and both commit first time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollback_and_analytics_take_their_locks_in_one_order() {
    let db = TestDb::new().await;
    let mut c = Chain::new();
    let t = one_queued_triple(&db, &mut c).await;
    let settings = test_analytics_settings();
    let claimed = claim(&db.pool, &settings).await.unwrap();
    assert_eq!(claimed_terms(&claimed), vec![t.clone()]);

    let mut holder = db.pool.begin().await.unwrap();
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM predicate_object \
         WHERE predicate_id = $1 AND object_id = $2 FOR UPDATE) x",
    )
    .bind(term(2))
    .bind(term(3))
    .fetch_one(&mut *holder)
    .await
    .unwrap();
    assert_eq!(held, 1);

    let analytics = tokio::spawn({
        let pool = db.pool.clone();
        async move { complete(&pool, &claimed).await }
    });
    // The analytics transaction waits for the held row.
    assert!(
        wait_for_lock_wait(&db, "transactionid", None, || analytics.is_finished()).await,
        "the analytics transaction did not wait for the held predicate_object row"
    );
    // Nothing is removed (every event is below the block); the rollback
    // still takes all of its locks.
    let rollback = tokio::spawn({
        let pool = db.pool.clone();
        async move { worker::rollback::rollback(&pool, "testnet", 1_000_000).await }
    });
    assert!(
        wait_for_lock_wait(&db, "relation", None, || rollback.is_finished()).await,
        "the rollback did not wait for the analytics transaction's tables"
    );
    holder.commit().await.unwrap();

    let completed = analytics.await.unwrap();
    let report = rollback.await.unwrap().unwrap();
    assert!(
        completed.is_ok(),
        "the analytics transaction was aborted: {completed:?}"
    );
    assert_eq!(completed.unwrap().1, 1);
    assert_eq!(
        report.conflict_retries,
        0,
        "the rollback deadlocked with the analytics transaction:\n{}",
        report.render()
    );
    db.drain_analytics().await;
    db.assert_verified().await;
}

/// A loop that found nothing to claim sleeps until the next queued term is
/// due (the coalescing window after it was queued), not a whole poll
/// interval; with nothing queued, or only claimed terms, a poll interval.
#[tokio::test]
async fn an_idle_loop_wakes_when_the_next_term_is_due() {
    let db = TestDb::new().await;
    let settings = worker::analytics::AnalyticsSettings {
        coalesce: Duration::from_millis(400),
        poll_interval: Duration::from_secs(5),
        ..test_analytics_settings()
    };
    let wait = || worker::analytics::idle_wait(&db.pool, &settings);
    assert_eq!(wait().await, settings.poll_interval, "empty queue");

    sqlx::query("INSERT INTO analytics_queue (term_id, claimed_until) VALUES ('claimed', now() + interval '1 minute')")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(wait().await, settings.poll_interval, "only a claimed term");

    sqlx::query("INSERT INTO analytics_queue (term_id, next_attempt_at) VALUES ('queued', now() - interval '100 milliseconds')")
        .execute(&db.pool)
        .await
        .unwrap();
    let until_due = wait().await;
    assert!(
        until_due > Duration::from_millis(200) && until_due <= Duration::from_millis(300),
        "due 300 ms from now, waits {until_due:?}"
    );

    sqlx::query("UPDATE analytics_queue SET next_attempt_at = now() - interval '1 second' WHERE term_id = 'queued'")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        wait().await,
        Duration::from_millis(1),
        "due already: claim again at once"
    );
}
