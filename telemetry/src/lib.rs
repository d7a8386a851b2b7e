//! Logs and traces for both binaries: `tracing` to stderr, and OpenTelemetry
//! spans over OTLP (gRPC or HTTP/protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set, sampled by `OTEL_TRACES_SAMPLER_ARG`, flushed on shutdown.
//! Also the W3C `traceparent` helpers that carry a trace through the
//! analytics queue.

use clap::{Args, ValueEnum};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use std::collections::HashMap;
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::{Layer as _, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// OTLP transport (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (usually port 4317).
    #[value(name = "grpc")]
    Grpc,
    /// OTLP over HTTP with protobuf bodies (usually port 4318).
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

/// The standard OpenTelemetry settings.
#[derive(Debug, Clone, Args)]
pub struct TelemetryArgs {
    #[arg(
        long = settings::OTEL_EXPORTER_OTLP_ENDPOINT.flag,
        env = settings::OTEL_EXPORTER_OTLP_ENDPOINT.env,
        help = settings::OTEL_EXPORTER_OTLP_ENDPOINT.doc
    )]
    pub otel_exporter_otlp_endpoint: Option<String>,
    #[arg(
        long = settings::OTEL_EXPORTER_OTLP_PROTOCOL.flag,
        env = settings::OTEL_EXPORTER_OTLP_PROTOCOL.env,
        help = settings::OTEL_EXPORTER_OTLP_PROTOCOL.doc,
        value_enum,
        default_value = settings::OTEL_EXPORTER_OTLP_PROTOCOL.default.value()
    )]
    pub otel_exporter_otlp_protocol: OtlpProtocol,
    #[arg(
        long = settings::OTEL_SERVICE_NAME.flag,
        env = settings::OTEL_SERVICE_NAME.env,
        help = settings::OTEL_SERVICE_NAME.doc
    )]
    pub otel_service_name: Option<String>,
    #[arg(
        long = settings::OTEL_TRACES_SAMPLER_ARG.flag,
        env = settings::OTEL_TRACES_SAMPLER_ARG.env,
        default_value_t = settings::OTEL_TRACES_SAMPLER_ARG.default,
        help = settings::OTEL_TRACES_SAMPLER_ARG.doc
    )]
    pub otel_traces_sampler_arg: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid setting {variable} = {value}: {allowed}")]
    Invalid {
        variable: &'static str,
        value: String,
        allowed: String,
    },
    #[error("cannot build the OTLP exporter")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("cannot install the log subscriber")]
    Subscriber(#[from] tracing_subscriber::util::TryInitError),
}

impl TelemetryArgs {
    /// Logs only: no span export.
    pub fn disabled() -> Self {
        TelemetryArgs {
            otel_exporter_otlp_endpoint: None,
            otel_exporter_otlp_protocol: OtlpProtocol::HttpProtobuf,
            otel_service_name: None,
            otel_traces_sampler_arg: settings::OTEL_TRACES_SAMPLER_ARG.default,
        }
    }

    pub fn validate(&self) -> Result<(), TelemetryError> {
        let ratio = self.otel_traces_sampler_arg;
        let sampler = settings::OTEL_TRACES_SAMPLER_ARG;
        if !sampler.accepts(ratio) {
            return Err(TelemetryError::Invalid {
                variable: sampler.env,
                value: ratio.to_string(),
                allowed: format!("a ratio in {:?}..={:?}", sampler.min, sampler.max),
            });
        }
        if let Some(endpoint) = &self.otel_exporter_otlp_endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(TelemetryError::Invalid {
                    variable: settings::OTEL_EXPORTER_OTLP_ENDPOINT.env,
                    value: endpoint.clone(),
                    allowed: "an http:// or https:// URL".to_string(),
                });
            }
        }
        Ok(())
    }
}

/// The shared `main` of both binaries: a multi-threaded Tokio runtime, the
/// subscriber of [`init`], `work`, then the span flush (after SIGTERM and
/// drain too). Errors are printed with their causes ([`ErrorChain`]) and
/// give exit code 1.
pub fn run_main<F, E>(
    args: &TelemetryArgs,
    default_service: &str,
    default_filter: &str,
    work: F,
) -> std::process::ExitCode
where
    F: std::future::Future<Output = Result<std::process::ExitCode, E>>,
    E: AsRef<dyn std::error::Error + Send + Sync>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let telemetry = match init(args, default_service, default_filter) {
            Ok(t) => t,
            Err(error) => {
                eprintln!("error: {}", ErrorChain(&error));
                return std::process::ExitCode::FAILURE;
            }
        };
        let code = match work.await {
            Ok(code) => code,
            Err(error) => {
                eprintln!("error: {}", ErrorChain(error.as_ref()));
                std::process::ExitCode::FAILURE
            }
        };
        telemetry.shutdown().await;
        code
    })
}

/// Displays an error and its causes, each cause once: `outer: middle: root`.
///
/// Many error types (sqlx's among them) print their source inside their own
/// message *and* return it from `source()`, so walking the chain, as `{:#}`
/// does, repeats the root cause once per level. A level whose message ends
/// with its source's message is cut before it, and a level whose text is
/// already printed (a transparent wrapper) is skipped. Log errors with
/// `error = %ErrorChain(&error)` so that the causes appear in the log line.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'a));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut messages = Vec::new();
        let mut level: Option<&dyn std::error::Error> = Some(self.0);
        while let Some(error) = level {
            messages.push(error.to_string());
            level = error.source();
        }
        let mut printed = String::new();
        for (i, message) in messages.iter().enumerate() {
            let own = match messages.get(i + 1) {
                Some(next) if !next.is_empty() && message.ends_with(next.as_str()) => message
                    [..message.len() - next.len()]
                    .trim_end_matches(|c: char| c == ':' || c.is_whitespace()),
                _ => message.as_str(),
            };
            if own.is_empty() || printed.contains(own) {
                continue;
            }
            if !printed.is_empty() {
                printed.push_str(": ");
            }
            printed.push_str(own);
        }
        f.write_str(&printed)
    }
}

/// Keeps the tracer provider alive; `shutdown` flushes pending spans.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Installs the global subscriber: `RUST_LOG` filter (else `default_filter`),
/// logs to stderr, and the OpenTelemetry layer when an endpoint is set. Call
/// inside the Tokio runtime (the exporter runs on it).
pub fn init(
    args: &TelemetryArgs,
    default_service: &str,
    default_filter: &str,
) -> Result<Telemetry, TelemetryError> {
    args.validate()?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let provider = match &args.otel_exporter_otlp_endpoint {
        Some(endpoint) => Some(provider(args, endpoint, default_service)?),
        None => None,
    };
    // RUST_LOG filters the logs only: spans are exported at INFO whatever the
    // log level, so quiet logs do not switch tracing off.
    let otel = provider.as_ref().map(|p| {
        let service = args
            .otel_service_name
            .clone()
            .unwrap_or_else(|| default_service.to_string());
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service))
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init()?;
    if let Some(endpoint) = &args.otel_exporter_otlp_endpoint {
        tracing::info!(endpoint, protocol = ?args.otel_exporter_otlp_protocol, ratio = args.otel_traces_sampler_arg, "exporting traces over OTLP");
    }
    Ok(Telemetry { provider })
}

fn provider(
    args: &TelemetryArgs,
    endpoint: &str,
    default_service: &str,
) -> Result<SdkTracerProvider, TelemetryError> {
    let timeout = Duration::from_secs(10);
    let exporter = match args.otel_exporter_otlp_protocol {
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
            .with_timeout(timeout)
            .with_headers(HashMap::new())
            .build()?,
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.to_string())
            .with_timeout(timeout)
            .build()?,
    };
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let service = args
        .otel_service_name
        .clone()
        .unwrap_or_else(|| default_service.to_string());
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            args.otel_traces_sampler_arg,
        ))))
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}

impl Telemetry {
    /// Exports every finished span, then stops the exporter.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let result = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(error)) = result {
                eprintln!("warning: flushing traces failed: {error}");
            }
        }
    }
}

struct Carrier(HashMap<String, String>);

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The W3C `traceparent` of a tracing span (None when it is not exported).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = Carrier(HashMap::new());
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.0.remove("traceparent")
}

/// The span context a `traceparent` names, for a span link.
pub fn span_context(traceparent: &str) -> Option<SpanContext> {
    let carrier = Carrier(HashMap::from([(
        "traceparent".to_string(),
        traceparent.to_string(),
    )]));
    let context = TraceContextPropagator::new().extract(&carrier);
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

/// Links `span` to the spans named by `traceparents` (e.g. the batches that
/// enqueued the analytics terms it processes).
pub fn link(span: &tracing::Span, traceparents: impl IntoIterator<Item = String>) {
    for parent in traceparents {
        if let Some(context) = span_context(&parent) {
            span.add_link(context);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of sqlx's and the old worker errors: the source is printed
    /// in the message and returned from `source()` as well.
    #[derive(Debug, thiserror::Error)]
    enum Repeating {
        #[error("migration failed: {0}")]
        Migrate(#[source] Inner),
    }
    #[derive(Debug, thiserror::Error)]
    enum Inner {
        #[error("while executing migrations: {0}")]
        Execute(#[source] std::io::Error),
    }
    #[derive(Debug, thiserror::Error)]
    enum Wrapper {
        #[error(transparent)]
        Transparent(#[from] Repeating),
    }
    #[derive(Debug, thiserror::Error)]
    #[error("connecting to PostgreSQL")]
    struct Context(#[source] Wrapper);

    #[test]
    fn error_chain_names_each_cause_once() {
        let root = std::io::Error::other("invalid peer certificate: UnknownIssuer");
        let error = Context(Wrapper::from(Repeating::Migrate(Inner::Execute(root))));
        assert_eq!(
            ErrorChain(&error).to_string(),
            "connecting to PostgreSQL: migration failed: while executing migrations: \
             invalid peer certificate: UnknownIssuer"
        );
    }

    #[test]
    fn error_chain_keeps_messages_that_do_not_repeat_their_source() {
        #[derive(Debug, thiserror::Error)]
        #[error("reading the CA file")]
        struct Outer(#[source] std::io::Error);
        let error = Outer(std::io::Error::other("permission denied"));
        assert_eq!(
            ErrorChain(&error).to_string(),
            "reading the CA file: permission denied"
        );
    }

    #[test]
    fn traceparent_round_trips() {
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let context = span_context(parent).unwrap();
        assert_eq!(
            context.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(context.span_id().to_string(), "b7ad6b7169203331");
        assert!(span_context("garbage").is_none());
    }

    #[test]
    fn settings_are_validated() {
        let mut args = TelemetryArgs {
            otel_exporter_otlp_endpoint: Some("otel:4317".into()),
            otel_exporter_otlp_protocol: OtlpProtocol::Grpc,
            otel_service_name: None,
            otel_traces_sampler_arg: 0.5,
        };
        let err = args.validate().unwrap_err().to_string();
        assert!(
            err.contains("OTEL_EXPORTER_OTLP_ENDPOINT") && err.contains("otel:4317"),
            "{err}"
        );
        args.otel_exporter_otlp_endpoint = Some("http://otel:4317".into());
        args.otel_traces_sampler_arg = 1.5;
        let err = args.validate().unwrap_err().to_string();
        assert!(
            err.contains("OTEL_TRACES_SAMPLER_ARG") && err.contains("1.5"),
            "{err}"
        );
    }
}
