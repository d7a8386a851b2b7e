//! End-to-end benchmark (issue 7) and analytics drain benchmark (issue 3).
//! Run with `scripts/bench.sh` (starts PostgreSQL and Redis), which calls
//! `cargo bench -p worker --bench pipeline`. Prints figures; asserts nothing
//! about time. Every run ends with `verify`, so a fast wrong answer fails.
//!
//! Settings (environment): BENCH_EVENTS (default 200000), BENCH_WORKERS
//! (default "1,2"), BENCH_ANALYTICS_TERMS (default 100000, 0 skips),
//! BENCH_PACED_RATE (events/s of the latency phase, default 5000),
//! BENCH_REPEAT (runs per worker count, default 3: one run on a shared 2-core
//! machine can be 15 % off, so the summary gives the median and the range).

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use worker::decode::decode_entry;
use worker::generate::{generate, publish, stream_names, GeneratedEntry, GeneratorSpec};
use worker::intake::StreamIntake;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn required(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        eprintln!("{name} is not set: run the benchmark with scripts/bench.sh");
        std::process::exit(2)
    })
}

async fn fresh_database(admin_url: &str, name: &str) -> (String, PgPool) {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(admin_url)
        .await
        .expect("connect admin");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    let url = format!(
        "{}/{name}",
        admin_url.rsplit_once('/').expect("database url").0
    );
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap();
    worker::db::migrate(&pool).await.unwrap();
    (url, pool)
}

struct Worker {
    child: Child,
    port: u16,
}

fn spawn_worker(args: &[&str], envs: &[(&str, String)], port: u16) -> Worker {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_postgres-writer"));
    cmd.args(args)
        .env("HTTP_PORT", port.to_string())
        .env("HTTP_BIND_ADDRESS", "127.0.0.1")
        .env("RUST_LOG", "warn");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn worker");
    Worker { child, port }
}

impl Worker {
    /// Peak resident set size (VmHWM) in MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(f64::NAN)
    }

    async fn metrics(&self) -> String {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        worker::http::request(addr, "GET", "/metrics", Duration::from_secs(5))
            .await
            .map(|r| r.1)
            .unwrap_or_default()
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Cumulative (upper bound, count) pairs of a histogram in the text format.
fn histogram(metrics: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

/// Percentile from the difference of two cumulative histograms (linear within a bucket).
fn percentile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let diff: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, c)| {
            (
                *le,
                c - before.iter().find(|(l, _)| l == le).map_or(0.0, |b| b.1),
            )
        })
        .collect();
    let total = diff.last().map_or(0.0, |d| d.1);
    if total == 0.0 {
        return f64::NAN;
    }
    let target = q * total;
    let mut prev = (0.0, 0.0);
    for (le, c) in diff {
        if c >= target {
            if le.is_infinite() {
                return prev.0;
            }
            let span = c - prev.1;
            return prev.0
                + (le - prev.0)
                    * if span > 0.0 {
                        (target - prev.1) / span
                    } else {
                        1.0
                    };
        }
        prev = (le, c);
    }
    f64::NAN
}

/// Events in generated entries, as the worker decodes them.
fn count_events(entries: &[GeneratedEntry]) -> usize {
    entries
        .iter()
        .map(|e| {
            decode_entry(
                &Arc::from(e.stream.as_str()),
                &Arc::from("0-0"),
                &[("payload".to_string(), e.payload.clone().into_bytes())],
            )
            .events
            .len()
        })
        .sum()
}

async fn idle(intake: &mut StreamIntake) -> bool {
    match intake.backlog().await {
        Ok(b) => b.iter().all(|s| s.lag == Some(0) && s.pending == 0),
        Err(_) => false,
    }
}

async fn queue_len(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM analytics_queue")
        .fetch_one(pool)
        .await
        .unwrap()
}

struct Row {
    workers: usize,
    events: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    analytics_drain_s: f64,
    queued_at_last_commit: i64,
    rss_mib: f64,
    verified: bool,
}

async fn pipeline_run(
    admin: &str,
    redis_url: &str,
    events: u64,
    workers: usize,
    paced_rate: u64,
) -> Row {
    let (url, pool) = fresh_database(admin, &format!("pgw_bench_w{workers}")).await;
    // Fresh stream names per run (a repeated run must not meet the last one's group).
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let prefix = format!("bench{}_{}_{run}", workers, std::process::id());
    let spec = GeneratorSpec {
        events,
        events_per_entry: 10,
        seed: 2026,
        accounts: 500,
        curves: 2,
        network: "bench".into(),
        stream_prefix: prefix.clone(),
    };
    let entries = generate(&spec);
    let redis = redis::Client::open(redis_url).expect("REDIS_URL");
    publish(&redis, &entries).await.expect("publish");
    let streams = stream_names(&prefix).join(",");
    let group = "bench".to_string();
    let mut procs = Vec::new();
    for i in 0..workers {
        procs.push(spawn_worker(
            &["run"],
            &[
                ("DATABASE_URL", url.clone()),
                ("REDIS_URL", redis_url.to_string()),
                ("REDIS_STREAMS", streams.clone()),
                ("CONSUMER_GROUP", group.clone()),
                ("CONSUMER_NAME", format!("bench-{i}")),
                ("BATCH_TIMEOUT_MS", "20".into()),
                ("ANALYTICS_POLL_INTERVAL_MS", "20".into()),
            ],
            free_port(),
        ));
    }
    let mut intake = StreamIntake::new(
        redis_url,
        &stream_names(&prefix),
        &group,
        "observer",
        10,
        Duration::from_millis(10),
    )
    .unwrap();
    // The workers create the consumer group right before their first read:
    // the clock starts when it appears (issue 7: first read to last commit).
    while intake
        .backlog()
        .await
        .map(|b| b.iter().any(|s| s.lag.is_none()))
        .unwrap_or(true)
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let started = Instant::now();
    while !idle(&mut intake).await {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let committed = Instant::now();
    let queued_at_last_commit = queue_len(&pool).await;
    while queue_len(&pool).await > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let analytics_drain_s = committed.elapsed().as_secs_f64();

    // Latency phase: a paced producer for ~5 s while the workers run.
    let before: Vec<String> = futures::future::join_all(procs.iter().map(|p| p.metrics())).await;
    let paced = generate(&GeneratorSpec {
        events: paced_rate * 5,
        seed: 7,
        stream_prefix: prefix.clone(),
        ..spec.clone()
    });
    let per_tick = (paced.len() / 100).max(1);
    let tick = Instant::now();
    for (i, chunk) in paced.chunks(per_tick).enumerate() {
        let due = Duration::from_millis(50 * i as u64);
        if let Some(wait) = due.checked_sub(tick.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        publish(&redis, chunk).await.expect("publish paced");
    }
    while !idle(&mut intake).await {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after: Vec<String> = futures::future::join_all(procs.iter().map(|p| p.metrics())).await;
    let sum = |texts: &[String]| {
        let mut total: Vec<(f64, f64)> = Vec::new();
        for t in texts {
            for (le, c) in histogram(t, "pgw_entry_to_commit_seconds") {
                match total.iter_mut().find(|(l, _)| *l == le) {
                    Some(e) => e.1 += c,
                    None => total.push((le, c)),
                }
            }
        }
        total
    };
    let (b, a) = (sum(&before), sum(&after));
    let p50_ms = percentile(&b, &a, 0.50) * 1000.0;
    let p99_ms = percentile(&b, &a, 0.99) * 1000.0;
    while queue_len(&pool).await > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rss_mib = procs.iter().map(Worker::peak_rss_mib).fold(0.0, f64::max);
    for p in procs {
        p.stop();
    }
    let report = worker::verify::verify(&pool, 3).await.unwrap();
    if !report.is_clean() {
        eprintln!("{}", report.render());
    }
    // The generated events are all valid: a dead letter means the write path
    // refused something, which `verify` alone would not show.
    let dead_letters: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&pool)
        .await
        .unwrap();
    let mut stored = 0i64;
    for table in worker::catalog::EVENT_TABLES {
        stored += sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&pool)
            .await
            .unwrap();
    }
    let sent = (count_events(&entries) + count_events(&paced)) as i64;
    if stored != sent {
        eprintln!("{stored} events stored, {sent} sent");
    }
    if dead_letters > 0 {
        let reason: Option<String> = sqlx::query_scalar("SELECT reason FROM dead_letters LIMIT 1")
            .fetch_optional(&pool)
            .await
            .unwrap();
        eprintln!("{dead_letters} dead letters, e.g. {reason:?}");
    }
    Row {
        workers,
        events,
        seconds,
        p50_ms,
        p99_ms,
        analytics_drain_s,
        queued_at_last_commit,
        rss_mib,
        verified: report.is_clean() && dead_letters == 0 && stored == sent,
    }
}

/// Seeds `terms` triples (with vaults on two curves) and queues them all,
/// then times `postgres-writer analytics` until the queue is empty.
async fn analytics_run(admin: &str, terms: i64) {
    let (url, pool) = fresh_database(admin, "pgw_bench_analytics").await;
    let seed = r#"
        INSERT INTO triple (term_id, subject_id, predicate_id, object_id, creator_id, counter_term_id, block_number, log_index, transaction_hash)
        SELECT 't' || i, 'a' || (i % 1000), 'a' || (i % 37), 'a' || (i % 101), 'c', 'x' || i, i, 0, 'h' || i
        FROM generate_series(1, $1) AS i;
        "#;
    sqlx::query(seed).bind(terms).execute(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO vault (term_id, curve_id, total_shares, total_assets, current_share_price, position_count)
         SELECT 't' || i, c::text, i * 1000, i * 900, 1000000000000000000, 1 + i % 5
         FROM generate_series(1, $1) AS i, generate_series(1, 2) AS c",
    )
    .bind(terms)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO vault (term_id, curve_id, total_shares, total_assets, current_share_price, position_count) SELECT 'x' || i, '1', 5, 5, 1, 1 FROM generate_series(1, $1, 3) AS i")
        .bind(terms)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO analytics_queue (term_id) SELECT 't' || i FROM generate_series(1, $1) AS i",
    )
    .bind(terms)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE").execute(&pool).await.unwrap();
    for concurrency in [1, 2] {
        if concurrency == 2 {
            sqlx::query("TRUNCATE triple_vault, triple_term, predicate_object, subject_predicate")
                .execute(&pool)
                .await
                .unwrap();
            sqlx::query("INSERT INTO analytics_queue (term_id) SELECT 't' || i FROM generate_series(1, $1) AS i")
                .bind(terms)
                .execute(&pool)
                .await
                .unwrap();
        }
        let started = Instant::now();
        let proc_ = spawn_worker(
            &["analytics"],
            &[
                ("DATABASE_URL", url.clone()),
                ("ANALYTICS_CONCURRENCY", concurrency.to_string()),
                ("ANALYTICS_POLL_INTERVAL_MS", "20".into()),
            ],
            free_port(),
        );
        while queue_len(&pool).await > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        let rss = proc_.peak_rss_mib();
        proc_.stop();
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM triple_term")
            .fetch_one(&pool)
            .await
            .unwrap();
        println!(
            "analytics drain: {terms} queued terms, {concurrency} loop(s): {secs:.2} s ({:.0} terms/s), triple_term rows {rows}, peak RSS {rss:.1} MiB",
            terms as f64 / secs
        );
    }
}

/// The middle value (the mean of the two middle values for an even count).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; nothing else is accepted.
    let admin = required("PGW_BENCH_DATABASE_URL");
    let redis_url = required("PGW_BENCH_REDIS_URL");
    let events: u64 = env_or("BENCH_EVENTS", "200000")
        .parse()
        .expect("BENCH_EVENTS");
    let paced: u64 = env_or("BENCH_PACED_RATE", "5000")
        .parse()
        .expect("BENCH_PACED_RATE");
    let analytics_terms: i64 = env_or("BENCH_ANALYTICS_TERMS", "100000")
        .parse()
        .expect("BENCH_ANALYTICS_TERMS");
    let repeat: usize = env_or("BENCH_REPEAT", "3")
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .expect("BENCH_REPEAT: a whole number of runs, at least 1");
    let workers: Vec<usize> = env_or("BENCH_WORKERS", "1,2")
        .split(',')
        .map(|w| w.trim().parse().expect("BENCH_WORKERS"))
        .collect();

    if analytics_terms > 0 {
        analytics_run(&admin, analytics_terms).await;
    }
    let mut rows = Vec::new();
    for w in workers.iter().copied().filter(|w| *w > 0) {
        for _ in 0..repeat {
            let row = pipeline_run(&admin, &redis_url, events, w, paced).await;
            rows.push(row);
        }
    }
    println!();
    println!("| workers | events | seconds | events/s | p50 entry→commit | p99 entry→commit | analytics drained after last commit (terms queued then) | peak RSS (max worker) | verify, every event stored |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.2} | {:.0} | {:.1} ms | {:.1} ms | {:.2} s ({}) | {:.1} MiB | {} |",
            r.workers,
            r.events,
            r.seconds,
            r.events as f64 / r.seconds,
            r.p50_ms,
            r.p99_ms,
            r.analytics_drain_s,
            r.queued_at_last_commit,
            r.rss_mib,
            if r.verified { "OK" } else { "FAILED" }
        );
    }
    println!();
    println!("| workers | runs | events/s median (min–max) | p50 median | p99 median | analytics drain median (max) | peak RSS (max) | all verified |");
    println!("|---|---|---|---|---|---|---|---|");
    for w in workers.iter().copied().filter(|w| *w > 0) {
        let runs: Vec<&Row> = rows.iter().filter(|r| r.workers == w).collect();
        let rate: Vec<f64> = runs.iter().map(|r| r.events as f64 / r.seconds).collect();
        let drain: Vec<f64> = runs.iter().map(|r| r.analytics_drain_s).collect();
        println!(
            "| {} | {} | {:.0} ({:.0}–{:.0}) | {:.1} ms | {:.1} ms | {:.2} s ({:.2} s) | {:.1} MiB | {} |",
            w,
            runs.len(),
            median(&rate),
            rate.iter().copied().fold(f64::INFINITY, f64::min),
            rate.iter().copied().fold(0.0, f64::max),
            median(&runs.iter().map(|r| r.p50_ms).collect::<Vec<_>>()),
            median(&runs.iter().map(|r| r.p99_ms).collect::<Vec<_>>()),
            median(&drain),
            drain.iter().copied().fold(0.0, f64::max),
            runs.iter().map(|r| r.rss_mib).fold(0.0, f64::max),
            if runs.iter().all(|r| r.verified) { "OK" } else { "FAILED" }
        );
    }
    if rows.iter().any(|r| !r.verified) {
        std::process::exit(1);
    }
}
