//! Traces end to end: an OTLP/HTTP (protobuf) receiver inside the test gets
//! the spans of a real worker run against PostgreSQL and Redis: `batch` spans
//! with `db.transaction` and `redis.ack` children and their attributes, and
//! `analytics.batch` spans linked to the batches that enqueued their terms.
//! Also checks `/metrics` after the run.

use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use system_tests::{free_port, unique, worker_binary, TestDb, TestRedis};
use worker::generate::{generate, stream_names, GeneratorSpec};

/// A minimal OTLP/HTTP receiver: POST /v1/traces with a protobuf body.
async fn receiver() -> (u16, Arc<Mutex<Vec<(String, Span)>>>) {
    let spans: Arc<Mutex<Vec<(String, Span)>>> = Arc::default();
    let sink = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("valid OTLP protobuf");
                for resource in request.resource_spans {
                    let service = resource
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|a| a.key == "service.name")
                        .and_then(|a| a.value.as_ref())
                        .and_then(|v| match &v.value {
                            Some(AnyValue::StringValue(s)) => Some(s.clone()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    for scope in resource.scope_spans {
                        for span in scope.spans {
                            sink.lock().unwrap().push((service.clone(), span));
                        }
                    }
                }
                // An empty ExportTraceServiceResponse.
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, spans)
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| match &v.value {
            Some(AnyValue::StringValue(s)) => Some(s.clone()),
            Some(AnyValue::IntValue(i)) => Some(i.to_string()),
            Some(AnyValue::DoubleValue(d)) => Some(d.to_string()),
            Some(AnyValue::BoolValue(b)) => Some(b.to_string()),
            _ => None,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_exports_linked_spans_over_otlp_http() {
    let (otlp_port, spans) = receiver().await;
    let db = TestDb::new().await;
    let mut redis = TestRedis::new().await;
    let prefix = unique("otel");
    let streams = stream_names(&prefix);
    let group = unique("group");
    let entries = generate(&GeneratorSpec {
        events: 600,
        events_per_entry: 5,
        seed: 5,
        accounts: 8,
        curves: 2,
        network: "testnet".into(),
        stream_prefix: prefix.clone(),
    });
    redis.publish(&entries).await;

    let http_port = free_port();
    let mut child = Command::new(worker_binary())
        .arg("run")
        .env("DATABASE_URL", &db.url)
        .env("REDIS_URL", &redis.url)
        .env("REDIS_STREAMS", streams.join(","))
        .env("CONSUMER_GROUP", &group)
        .env("CONSUMER_NAME", "traced")
        .env("BATCH_SIZE", "20")
        .env("BATCH_TIMEOUT_MS", "50")
        .env("HTTP_PORT", http_port.to_string())
        .env("HTTP_BIND_ADDRESS", "127.0.0.1")
        .env("ANALYTICS_POLL_INTERVAL_MS", "50")
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{otlp_port}"),
        )
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_TRACES_SAMPLER_ARG", "1.0")
        // Quiet logs must not switch tracing off.
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();

    // Until every entry is acknowledged, its deltas folded (the fold queues
    // the analytics terms, ADR 0015) and the analytics queue is empty, checked
    // in that order.
    let started = Instant::now();
    loop {
        let mut idle = db.count("deposited_events").await > 0;
        for s in &streams {
            idle &= redis.backlog(s, &group).await == (Some(0), 0);
        }
        idle = idle && db.pending_deltas().await == 0 && db.count("analytics_queue").await == 0;
        if idle {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "worker did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], http_port));
    let (status, metrics) = worker::http::request(addr, "GET", "/metrics", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(status, 200);

    // SIGTERM: the worker drains and flushes its spans before exiting.
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "worker did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success());

    let spans = spans.lock().unwrap().clone();
    let named = |name: &str| {
        spans
            .iter()
            .filter(|(_, s)| s.name == name)
            .map(|(svc, s)| (svc.clone(), s.clone()))
            .collect::<Vec<_>>()
    };
    let batches = named("batch");
    let transactions = named("db.transaction");
    let acks = named("redis.ack");
    let analytics = named("analytics.batch");
    assert!(
        !batches.is_empty()
            && !transactions.is_empty()
            && !acks.is_empty()
            && !analytics.is_empty(),
        "spans received: {:?}",
        spans
            .iter()
            .map(|(_, s)| s.name.clone())
            .collect::<std::collections::BTreeSet<_>>()
    );
    assert!(batches.iter().all(|(svc, _)| svc == "postgres-writer-run"));

    // Children: every transaction and ack span has a batch span as parent.
    let batch_ids: std::collections::HashSet<Vec<u8>> =
        batches.iter().map(|(_, s)| s.span_id.clone()).collect();
    assert!(
        transactions
            .iter()
            .all(|(_, s)| batch_ids.contains(&s.parent_span_id)),
        "db.transaction outside a batch"
    );
    assert!(
        acks.iter()
            .all(|(_, s)| batch_ids.contains(&s.parent_span_id)),
        "redis.ack outside a batch"
    );

    // Attributes: entries and event counts by type add up to what was sent.
    let sum = |key: &str| {
        batches
            .iter()
            .filter_map(|(_, s)| attribute(s, key))
            .map(|v| v.parse::<u64>().unwrap())
            .sum::<u64>()
    };
    assert_eq!(sum("entries"), entries.len() as u64);
    assert_eq!(
        sum("events.Deposited") as i64,
        db.count("deposited_events").await
    );
    assert_eq!(sum("events.stored"), sum("events"));
    let stream_attr = attribute(&batches[0].1, "streams").unwrap();
    assert!(stream_attr.starts_with(&prefix), "{stream_attr}");

    // Analytics work links to the batches that enqueued it (trace context carried in the queue row).
    let links: Vec<(Vec<u8>, Vec<u8>)> = analytics
        .iter()
        .flat_map(|(_, s)| {
            s.links
                .iter()
                .map(|l| (l.trace_id.clone(), l.span_id.clone()))
        })
        .collect();
    assert!(!links.is_empty(), "analytics.batch spans carry no links");
    let batch_keys: std::collections::HashSet<(Vec<u8>, Vec<u8>)> = batches
        .iter()
        .map(|(_, s)| (s.trace_id.clone(), s.span_id.clone()))
        .collect();
    assert!(
        links.iter().all(|l| batch_keys.contains(l)),
        "every link points at an exported batch span"
    );
    let terms: u64 = analytics
        .iter()
        .filter_map(|(_, s)| attribute(s, "terms"))
        .map(|v| v.parse::<u64>().unwrap())
        .sum();
    assert!(terms > 0);

    // /metrics after the run: the contract §7 families with sane values.
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(value("pgw_entries_processed_total") as usize, entries.len());
    assert_eq!(
        value("pgw_events_stored_total{kind=\"Deposited\"}") as i64,
        db.count("deposited_events").await
    );
    assert_eq!(value("pgw_dead_letters_total"), 0.0);
    assert!(value("pgw_batches_total") >= 1.0);
    assert!(value("pgw_batch_entries_count") >= 1.0);
    assert!(value("pgw_transaction_duration_seconds_count") >= 1.0);
    assert!(value("pgw_entry_to_commit_seconds_count") as usize == entries.len());
    assert!(value("pgw_block_to_commit_seconds_count") > 0.0);
    assert!(value("pgw_analytics_terms_processed_total") > 0.0);
    for family in [
        "pgw_stream_lag",
        "pgw_stream_pending",
        "pgw_analytics_queue_depth",
        "pgw_analytics_oldest_pending_seconds",
        "pgw_transaction_retries_total",
    ] {
        assert!(metrics.contains(family), "{family} missing from /metrics");
    }
    // A readable span tree of one batch and one linked analytics span.
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let show = |s: &Span| {
        let attrs: Vec<String> = s
            .attributes
            .iter()
            .filter(|a| {
                !a.key.starts_with("code.")
                    && !a.key.starts_with("thread.")
                    && a.key != "target"
                    && !a.key.ends_with("_ns")
            })
            .filter_map(|a| attribute(s, &a.key).map(|v| format!("{}={v}", a.key)))
            .collect();
        format!(
            "{} [{} ms] {}",
            s.name,
            (s.end_time_unix_nano - s.start_time_unix_nano) / 1_000_000,
            attrs.join(" ")
        )
    };
    let (_, batch) = batches
        .iter()
        .max_by_key(|(_, s)| {
            attribute(s, "events")
                .unwrap_or_default()
                .parse::<u64>()
                .unwrap_or(0)
        })
        .unwrap();
    println!(
        "captured {} spans; trace {}:",
        spans.len(),
        hex(&batch.trace_id)
    );
    println!("  {}", show(batch));
    for (_, child) in spans
        .iter()
        .filter(|(_, s)| s.parent_span_id == batch.span_id)
    {
        println!("    └─ {}", show(child));
    }
    if let Some((_, linked)) = analytics
        .iter()
        .find(|(_, s)| s.links.iter().any(|l| l.span_id == batch.span_id))
    {
        println!(
            "  {} (links to {} batch span(s), including the one above)",
            show(linked),
            linked.links.len()
        );
    }
}
