//! TLS to PostgreSQL (`ssl=on`) and Redis (`--tls-port`), with a CA each test
//! makes: `verify-full` and `rediss://` with the CA connect and a worker
//! process writes events end to end; a wrong CA is refused with the
//! certificate problem named once; `require` encrypts without a CA and
//! `disable` stays plain. Each test runs its own servers (the shared ones of
//! scripts/test.sh stay plain).

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, Instant};
use system_tests::servers::OwnPostgres;
use system_tests::tls_redis::TlsRedis;
use system_tests::{unique, worker_binary, WorkerProcess};
use worker::config::DatabaseArgs;

/// A CA, a server certificate it signed for localhost and 127.0.0.1, and an
/// unrelated second CA, as PEM files.
struct Pki {
    dir: PathBuf,
    ca: PathBuf,
    wrong_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    cert_pem: String,
    key_pem: String,
}

fn ca(name: &str) -> (rcgen::CertificateParams, rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let pem = params.self_signed(&key).unwrap().pem();
    (params, key, pem)
}

impl Pki {
    fn new() -> Pki {
        let dir = std::env::temp_dir().join(unique("pgw-pki"));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca_params, ca_key, ca_pem) = ca("postgres-writer test CA");
        let (_, _, wrong_pem) = ca("some other CA");
        let server_key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let cert_pem = params.signed_by(&server_key, &issuer).unwrap().pem();
        let key_pem = server_key.serialize_pem();
        let pki = Pki {
            ca: dir.join("ca.crt"),
            wrong_ca: dir.join("wrong-ca.crt"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            dir,
            cert_pem,
            key_pem,
        };
        std::fs::write(&pki.ca, ca_pem).unwrap();
        std::fs::write(&pki.wrong_ca, wrong_pem).unwrap();
        std::fs::write(&pki.cert, &pki.cert_pem).unwrap();
        std::fs::write(&pki.key, &pki.key_pem).unwrap();
        pki
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pg_url(pg: &OwnPostgres, database: &str, sslmode: &str) -> String {
    format!(
        "postgres://postgres@127.0.0.1:{}/{database}?sslmode={sslmode}",
        pg.port
    )
}

/// A fresh, empty database on `pg` (created over an encrypted connection).
async fn create_database(pg: &OwnPostgres) -> String {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&pg_url(pg, "postgres", "require"))
        .await
        .expect("connect with sslmode=require");
    let name = unique("pgw_tls");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    name
}

/// `postgres-writer ARGS` with `env`; (success, stdout, stderr).
fn cli(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(worker_binary());
    cmd.args(args).env("RUST_LOG", "error");
    for var in [
        "DATABASE_URL",
        "DATABASE_CA_FILE",
        "REDIS_URL",
        "REDIS_CA_FILE",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run postgres-writer");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A pool of the worker's own constructor (`db::pool`).
fn worker_pool(url: &str, ca_file: Option<&Path>) -> PgPool {
    let args = DatabaseArgs {
        database_url: url.to_string(),
        database_ca_file: ca_file.map(Path::to_path_buf),
        db_pool_min_connections: 0,
        db_pool_max_connections: 2,
        db_acquire_timeout_ms: 10_000,
        db_statement_timeout_ms: 20_000,
        db_idle_in_transaction_timeout_ms: 10_000,
    };
    args.validate().expect("valid settings");
    worker::db::pool(&args, "pgw-tls-test").expect("pool")
}

/// Whether this session's connection is encrypted, as the server sees it.
async fn session_ssl(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(pool)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_connects_migrates_and_a_worker_writes_over_tls() {
    let pki = Pki::new();
    let pg = OwnPostgres::start_tls(&pki.cert_pem, &pki.key_pem);
    let redis = TlsRedis::start(&pki.cert, &pki.key, &pki.ca);
    let ca = pki.ca.to_str().unwrap();
    let database = create_database(&pg).await;
    let url = pg_url(&pg, &database, "verify-full");

    let (ok, stdout, stderr) = cli(
        &["migrate"],
        &[("DATABASE_URL", &url), ("DATABASE_CA_FILE", ca)],
    );
    assert!(ok && stdout.contains("migrations applied"), "{stderr}");

    let prefix = unique("tls");
    let events = 400u64;
    let (ok, _, stderr) = cli(
        &[
            "generate",
            "--stream-prefix",
            &prefix,
            "--events",
            &events.to_string(),
            "--events-per-entry",
            "4",
            "--network",
            "testnet",
        ],
        &[("REDIS_URL", &redis.url()), ("REDIS_CA_FILE", ca)],
    );
    assert!(ok, "generate over rediss:// failed: {stderr}");

    let streams = worker::generate::stream_names(&prefix);
    let group = unique("group");
    let worker = WorkerProcess::start(
        &url,
        &redis.url(),
        &streams,
        &group,
        "tls-pod",
        &[("DATABASE_CA_FILE", ca), ("REDIS_CA_FILE", ca)],
    );
    worker.wait_http().await;

    let check = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(
            PgConnectOptions::from_str(&url)
                .unwrap()
                .ssl_root_cert(&pki.ca),
        )
        .await
        .expect("verify-full with the CA");
    // The entries are acknowledged over rediss:// (read with the intake's own constructor).
    let mut intake = worker::intake::StreamIntake::open(&worker::intake::StreamSettings {
        redis_ca_file: Some(pki.ca.clone()),
        ..system_tests::stream_args(&redis.url(), &streams, &group, "observer")
    })
    .unwrap();
    let started = Instant::now();
    loop {
        let backlog = intake.backlog().await.expect("XINFO over rediss://");
        if backlog.iter().all(|b| b.lag == Some(0) && b.pending == 0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not consumed over TLS: {backlog:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut stored = 0i64;
    for table in worker::catalog::EVENT_TABLES {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&check)
            .await
            .unwrap();
        stored += n;
    }
    // The generator adds the atoms and triples its deposits need.
    assert!(
        stored >= events as i64,
        "{stored} of {events} events stored"
    );
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&check)
        .await
        .unwrap();
    assert_eq!(dead, 0);
    // Every connection of the worker is encrypted.
    let (tls, plain): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
         FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
         WHERE a.application_name = 'postgres-writer'",
    )
    .fetch_one(&check)
    .await
    .unwrap();
    assert!(
        tls > 0 && plain == 0,
        "worker connections: {tls} TLS, {plain} plain"
    );
    // Once the deltas are folded and analytics has caught up, `verify` (over
    // verify-full too) finds the tables equal to their recomputation from the
    // events. One snapshot: a fold queues its terms as it deletes its deltas.
    let started = Instant::now();
    loop {
        let left: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM fold_delta) + (SELECT count(*) FROM analytics_queue)",
        )
        .fetch_one(&check)
        .await
        .unwrap();
        if left == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "deltas and analytics queue not drained: {left}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ok, stdout, stderr) = cli(
        &["verify"],
        &[("DATABASE_URL", &url), ("DATABASE_CA_FILE", ca)],
    );
    assert!(ok, "verify over TLS: {stdout}{stderr}");
    let (status, _) = worker.get("/readyz").await.expect("readyz");
    assert_eq!(status, 200);
}

/// How often `needle` occurs in `haystack`.
fn occurrences(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_refused_naming_the_certificate_problem_once() {
    let pki = Pki::new();
    let pg = OwnPostgres::start_tls(&pki.cert_pem, &pki.key_pem);
    let redis = TlsRedis::start(&pki.cert, &pki.key, &pki.ca);
    let wrong = pki.wrong_ca.to_str().unwrap();
    let database = create_database(&pg).await;

    for mode in ["verify-full", "verify-ca"] {
        let (ok, _, stderr) = cli(
            &["migrate"],
            &[
                ("DATABASE_URL", &pg_url(&pg, &database, mode)),
                ("DATABASE_CA_FILE", wrong),
            ],
        );
        assert!(!ok, "{mode} with a wrong CA must fail");
        let line = stderr.trim();
        assert!(
            line.contains("invalid peer certificate") && line.contains("UnknownIssuer"),
            "{mode}: {line}"
        );
        assert_eq!(
            occurrences(line, "UnknownIssuer"),
            1,
            "{mode}: the cause is named once: {line}"
        );
    }

    let (ok, _, stderr) = cli(
        &[
            "generate",
            "--events",
            "10",
            "--stream-prefix",
            &unique("wrong"),
        ],
        &[("REDIS_URL", &redis.url()), ("REDIS_CA_FILE", wrong)],
    );
    let line = stderr.trim();
    assert!(!ok, "rediss:// with a wrong CA must fail");
    assert!(
        line.contains("invalid peer certificate") && line.contains("UnknownIssuer"),
        "{line}"
    );
    assert_eq!(occurrences(line, "UnknownIssuer"), 1, "{line}");

    // Without any CA file the built-in public roots do not know the test CA either.
    let (ok, _, stderr) = cli(
        &["migrate"],
        &[("DATABASE_URL", &pg_url(&pg, &database, "verify-full"))],
    );
    assert!(
        !ok && occurrences(&stderr, "UnknownIssuer") == 1,
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sslmode_connects_as_it_says() {
    let pki = Pki::new();
    let pg = OwnPostgres::start_tls(&pki.cert_pem, &pki.key_pem);
    let database = create_database(&pg).await;
    // (sslmode, CA file, encrypted)
    let cases: [(&str, Option<&Path>, bool); 5] = [
        ("disable", None, false),
        ("prefer", None, true),
        ("require", None, true),
        ("verify-ca", Some(&pki.ca), true),
        ("verify-full", Some(&pki.ca), true),
    ];
    for (mode, ca_file, encrypted) in cases {
        let pool = worker_pool(&pg_url(&pg, &database, mode), ca_file);
        let ssl = session_ssl(&pool)
            .await
            .unwrap_or_else(|e| panic!("sslmode={mode}: {e:?}"));
        assert_eq!(ssl, encrypted, "sslmode={mode}");
        pool.close().await;
    }
    // `sslrootcert` in the URL works as well as DATABASE_CA_FILE.
    let url = format!(
        "{}&sslrootcert={}",
        pg_url(&pg, &database, "verify-full"),
        pki.ca.display()
    );
    let pool = worker_pool(&url, None);
    assert!(session_ssl(&pool).await.unwrap());

    // A CA file with a mode that would never check it is refused at start-up.
    let (ok, _, stderr) = cli(
        &["migrate"],
        &[
            ("DATABASE_URL", &pg_url(&pg, &database, "require")),
            ("DATABASE_CA_FILE", pki.ca.to_str().unwrap()),
        ],
    );
    assert!(
        !ok && stderr.contains("DATABASE_CA_FILE") && stderr.contains("verify-full"),
        "{stderr}"
    );
}
