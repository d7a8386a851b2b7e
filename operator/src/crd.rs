//! The `PostgresWriter` custom resource (`pgwriter.io/v1alpha1`, contract §6).
//!
//! Defaults and validation live in the generated OpenAPI schema (serde
//! defaults become schema defaults, schemars ranges become minimum/maximum),
//! so the API server refuses a bad resource before the operator sees it.

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired state of a postgres-writer installation: worker and analytics
/// pods consuming Redis streams into one PostgreSQL database.
// Several printcolumn(...) entries repeat `type_ = ...`, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "pgwriter.io",
    version = "v1alpha1",
    kind = "PostgresWriter",
    namespaced,
    shortname = "pgw",
    status = "PostgresWriterStatus",
    derive = "PartialEq",
    doc = "A postgres-writer installation: Redis streams of Intuition events into a PostgreSQL read model",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Desired worker pods (kept while suspended)"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Ready worker pods"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.phase",
        description = "Ready, RollingOut, Migrating, MigrationFailed, Degraded or Suspended (details in the conditions)"
    ),
    printcolumn(
        name = "Migrated",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Migrated\")].status",
        description = "Schema migrations applied for spec.image"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Image",
        type_ = "string",
        json_path = ".status.currentImage",
        description = "Image the worker pods run",
        priority = 1
    ),
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".status.targetImage",
        description = "spec.image (the workers move to it once its migration has succeeded)",
        priority = 1
    ),
    printcolumn(
        name = "Migration",
        type_ = "string",
        json_path = ".status.lastMigration.jobName",
        description = "The latest migration Job",
        priority = 1
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.message",
        description = "Why the resource is not Ready",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PostgresWriterSpec {
    /// Worker image (runs `postgres-writer`), e.g. `ghcr.io/acme/postgres-writer:0.1.0`.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Image pull policy of every pod.
    #[serde(default)]
    pub image_pull_policy: PullPolicy,
    /// Worker pods (each one consumer of the group). 0 stops consumption.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Redis streams to consume: distinct names, none with a comma (the
    /// worker reads them as one comma-separated REDIS_STREAMS).
    #[schemars(
        length(min = 1, max = 256),
        inner(length(min = 1, max = 256), regex(pattern = r"^[^,]*[^,\s\p{Z}][^,]*$")),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub streams: Vec<String>,
    /// Consumer group name (shared by every worker pod): 1 to 200 printable characters, not blank.
    #[serde(default = "default_consumer_group")]
    #[schemars(
        length(min = 1, max = settings::CONSUMER_NAME_MAX_CHARS),
        regex(pattern = r"^\P{Cc}*[^\s\p{Z}\p{Cc}]\P{Cc}*$")
    )]
    pub consumer_group: String,
    /// Where Redis is.
    pub redis: RedisSpec,
    /// Where PostgreSQL is and how the pools are sized.
    pub database: DatabaseSpec,
    /// Entries read and written per transaction.
    #[serde(default)]
    pub batch: BatchSpec,
    /// How the workers fold batch deltas into the base tables (ADR 0015).
    #[serde(default)]
    pub fold: FoldSpec,
    /// Throughput limits (0 = unlimited).
    #[serde(default)]
    pub rate_limits: RateLimitSpec,
    /// Idle time after which entries pending on a dead worker are taken over, in milliseconds.
    #[serde(default = "default_claim_idle_ms")]
    #[schemars(range(min = settings::CLAIM_IDLE_MS.min, max = settings::CLAIM_IDLE_MS.max))]
    pub claim_idle_ms: i64,
    /// Idle time after which a consumer of the group that holds no pending entries (a pod that is gone) is removed from it, in milliseconds (0 = never).
    #[serde(default = "default_consumer_reap_idle_ms")]
    #[schemars(
        range(min = reap_off().value, max = settings::CONSUMER_REAP_IDLE_MS.max),
        extend("x-kubernetes-validations" = [off_or_in_range_rule(&settings::CONSUMER_REAP_IDLE_MS)])
    )]
    pub consumer_reap_idle_ms: i64,
    /// Analytics (triple-level aggregates) pods.
    #[serde(default)]
    pub analytics: AnalyticsSpec,
    /// Graceful shutdown of worker pods (preStop drain).
    #[serde(default)]
    pub drain: DrainSpec,
    /// Traces and logs.
    #[serde(default)]
    pub telemetry: TelemetrySpec,
    /// Resources of each worker pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Placement and identity of every pod: worker, analytics and migration
    /// (`analytics.pods` and `migration.pods` override it field by field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<PodOptions>,
    /// The migration Job's pod.
    #[serde(default)]
    pub migration: MigrationSpec,
    /// Drain and scale the worker and analytics pods to 0, keeping
    /// everything else (spec.replicas is kept and restored on resume).
    #[serde(default)]
    pub suspend: bool,
}

/// Placement and identity of pods. In `analytics.pods` and `migration.pods`
/// a field that is set replaces the one of `spec.pods` (an empty list
/// clears it); `labels` and `annotations` are merged key by key, the
/// override winning. The operator's own labels and annotations cannot be
/// set here (the API server refuses them, see [`RESERVED_LABELS`]).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodOptions {
    /// Secrets for pulling the image from a private registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    /// Node labels the pods must run on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<std::collections::BTreeMap<String, String>>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Node and pod (anti-)affinity. Select the pods by the labels
    /// `app.kubernetes.io/instance` and `app.kubernetes.io/component`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// How the pods spread over zones and nodes (selector as for `affinity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
    /// Extra pod labels (never the operator's selector labels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64, "x-kubernetes-validations" = [reserved_rule(RESERVED_LABELS, "labels")]))]
    pub labels: Option<std::collections::BTreeMap<String, String>>,
    /// Extra pod annotations (never the operator's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64, "x-kubernetes-validations" = [reserved_rule(RESERVED_ANNOTATIONS, "annotations")]))]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
    /// ServiceAccount the pods run as (default: the namespace's `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,
    /// Mount the ServiceAccount's API token into the pods. Off unless set:
    /// postgres-writer never talks to the Kubernetes API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<bool>,
}

/// Pod labels the operator sets itself: selectors of its Deployments,
/// budgets and Service, and its Job lookup.
pub const RESERVED_LABELS: &[&str] = &[
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
    "pgwriter.io/metrics",
    "pgwriter.io/migration-template",
];
/// Pod annotations the operator sets itself (they roll the pods).
pub const RESERVED_ANNOTATIONS: &[&str] = &["pgwriter.io/config-hash", "pgwriter.io/secrets-hash"];

/// CEL rule refusing reserved keys. It looks the (constant) reserved keys up
/// in the map rather than iterating over the map's keys, which keeps its
/// estimated cost small.
fn reserved_rule(reserved: &[&str], what: &str) -> serde_json::Value {
    let list = reserved
        .iter()
        .map(|k| format!("'{k}'"))
        .collect::<Vec<_>>()
        .join(", ");
    serde_json::json!({
        "rule": format!("![{list}].exists(k, k in self)"),
        "message": format!("{what} must not set the operator's own keys: {}", reserved.join(", ")),
    })
}

/// The migration Job.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationSpec {
    /// Overrides of `spec.pods` for the migration pod. Part of the Job's pod
    /// template: a change starts a new migration Job at once (docs/adr/0014).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<PodOptions>,
    /// Resources of the migration pod (a namespace with a ResourceQuota on
    /// cpu or memory admits only pods that set them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// A key of a Secret in the resource's namespace.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret.
    #[serde(default = "default_url_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A key of a Secret holding PEM CA certificates (a cert-manager Secret has `ca.crt`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaSecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret.
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Redis: a plain URL or a Secret holding it (exactly one).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.url) != has(self.urlSecretRef)", "message": "set exactly one of url and urlSecretRef"},
    {"rule": "!has(self.caSecretRef) || !has(self.url) || self.url.startsWith('rediss://')", "message": "caSecretRef needs a rediss:// (TLS) url"}
]))]
pub struct RedisSpec {
    /// Redis URL, e.g. `redis://redis:6379`, or `rediss://redis:6380` for TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^rediss?://"))]
    pub url: Option<String>,
    /// Secret key holding the Redis URL (when it carries a password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret_ref: Option<SecretKeyRef>,
    /// Secret key holding the CA that signed Redis's TLS certificate (needs a
    /// `rediss://` URL); mounted into the worker pods as `REDIS_CA_FILE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<CaSecretRef>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// Secret key holding the PostgreSQL URL (`DATABASE_URL`); TLS with `?sslmode=verify-full` and friends.
    pub url_secret_ref: SecretKeyRef,
    /// Secret key holding the CA that signed PostgreSQL's certificate (the URL
    /// needs `sslmode=verify-full` or `verify-ca`); mounted into every pod as `DATABASE_CA_FILE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<CaSecretRef>,
    /// Connection pool of each pod.
    #[serde(default)]
    pub pool: PoolSpec,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "self.minConnections <= self.maxConnections", "message": "minConnections must not exceed maxConnections"}]))]
pub struct PoolSpec {
    /// Connections kept open.
    #[serde(default = "default_pool_min")]
    #[schemars(range(min = settings::DB_POOL_MIN_CONNECTIONS.min, max = settings::DB_POOL_MIN_CONNECTIONS.max))]
    pub min_connections: i32,
    /// Largest number of connections.
    #[serde(default = "default_pool_max")]
    #[schemars(range(min = settings::DB_POOL_MAX_CONNECTIONS.min, max = settings::DB_POOL_MAX_CONNECTIONS.max))]
    pub max_connections: i32,
    /// Longest wait for a connection, in milliseconds.
    #[serde(default = "default_acquire_timeout_ms")]
    #[schemars(range(min = settings::DB_ACQUIRE_TIMEOUT_MS.min, max = settings::DB_ACQUIRE_TIMEOUT_MS.max))]
    pub acquire_timeout_ms: i64,
}

impl Default for PoolSpec {
    fn default() -> Self {
        Self {
            min_connections: default_pool_min(),
            max_connections: default_pool_max(),
            acquire_timeout_ms: default_acquire_timeout_ms(),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchSpec {
    /// Entries read per stream and call; one batch is one transaction.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = settings::BATCH_SIZE.min, max = settings::BATCH_SIZE.max))]
    pub size: i32,
    /// Longest wait for a batch to fill, in milliseconds.
    #[serde(default = "default_batch_timeout_ms")]
    #[schemars(range(min = settings::BATCH_TIMEOUT_MS.min, max = settings::BATCH_TIMEOUT_MS.max))]
    pub timeout_ms: i64,
}

impl Default for BatchSpec {
    fn default() -> Self {
        Self {
            size: default_batch_size(),
            timeout_ms: default_batch_timeout_ms(),
        }
    }
}

/// The fold loop of each worker (FOLD_* settings): batches write insert-only
/// deltas, which partition owners fold into vault, position and term rows.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FoldSpec {
    /// Least time between two folds of one partition while deltas keep coming, in milliseconds, however many workers fold.
    #[serde(default = "default_fold_interval_ms")]
    #[schemars(range(min = settings::FOLD_INTERVAL_MS.min, max = settings::FOLD_INTERVAL_MS.max))]
    pub interval_ms: i64,
    /// How often a worker looks for deltas other workers wrote, in milliseconds.
    #[serde(default = "default_fold_poll_interval_ms")]
    #[schemars(range(min = settings::FOLD_POLL_INTERVAL_MS.min, max = settings::FOLD_POLL_INTERVAL_MS.max))]
    pub poll_interval_ms: i64,
    /// Fold partitions (of 32) one fold transaction takes.
    #[serde(default = "default_fold_max_partitions")]
    #[schemars(range(min = settings::FOLD_MAX_PARTITIONS.min, max = settings::FOLD_MAX_PARTITIONS.max))]
    pub max_partitions: i32,
    /// Delta rows one fold transaction takes at most.
    #[serde(default = "default_fold_max_deltas")]
    #[schemars(range(min = settings::FOLD_MAX_DELTAS.min, max = settings::FOLD_MAX_DELTAS.max))]
    pub max_deltas: i32,
}

impl Default for FoldSpec {
    fn default() -> Self {
        Self {
            interval_ms: default_fold_interval_ms(),
            poll_interval_ms: default_fold_poll_interval_ms(),
            max_partitions: default_fold_max_partitions(),
            max_deltas: default_fold_max_deltas(),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// Stream entries written per second per worker pod (0 = unlimited).
    #[serde(default = "default_max_entries_per_second")]
    #[schemars(range(min = settings::MAX_ENTRIES_PER_SECOND.min, max = settings::MAX_ENTRIES_PER_SECOND.max))]
    pub max_entries_per_second: i64,
    /// Analytics terms processed per second per analytics pod (0 = unlimited).
    #[serde(default = "default_analytics_max_terms_per_second")]
    #[schemars(range(min = settings::ANALYTICS_MAX_TERMS_PER_SECOND.min, max = settings::ANALYTICS_MAX_TERMS_PER_SECOND.max))]
    pub analytics_max_terms_per_second: i64,
}

impl Default for RateLimitSpec {
    fn default() -> Self {
        Self {
            max_entries_per_second: default_max_entries_per_second(),
            analytics_max_terms_per_second: default_analytics_max_terms_per_second(),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalyticsSpec {
    /// Run analytics pods (`postgres-writer analytics`). Worker pods never run analytics themselves.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Analytics pods.
    #[serde(default = "default_analytics_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// Analytics loops per pod.
    #[serde(default = "default_analytics_concurrency")]
    #[schemars(range(min = settings::ANALYTICS_CONCURRENCY.min, max = settings::ANALYTICS_CONCURRENCY.max))]
    pub concurrency: i32,
    /// Terms per analytics transaction.
    #[serde(default = "default_analytics_batch_size")]
    #[schemars(range(min = settings::ANALYTICS_BATCH_SIZE.min, max = settings::ANALYTICS_BATCH_SIZE.max))]
    pub batch_size: i32,
    /// Attempts before a failing term is parked.
    #[serde(default = "default_analytics_max_attempts")]
    #[schemars(range(min = settings::ANALYTICS_MAX_ATTEMPTS.min, max = settings::ANALYTICS_MAX_ATTEMPTS.max))]
    pub max_attempts: i32,
    /// Resources of each analytics pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Overrides of `spec.pods` for the analytics pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<PodOptions>,
}

impl Default for AnalyticsSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            replicas: default_analytics_replicas(),
            concurrency: default_analytics_concurrency(),
            batch_size: default_analytics_batch_size(),
            max_attempts: default_analytics_max_attempts(),
            resources: None,
            pods: None,
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainSpec {
    /// Longest time a pod may take to commit its in-flight batch and exit, in
    /// seconds. The pod's terminationGracePeriodSeconds is this plus 15.
    #[serde(default = "default_drain_timeout")]
    #[schemars(range(min = settings::DRAIN_TIMEOUT_MS.min / 1000, max = settings::DRAIN_TIMEOUT_MS.max / 1000))]
    pub timeout_seconds: i64,
}

impl Default for DrainSpec {
    fn default() -> Self {
        Self {
            timeout_seconds: default_drain_timeout(),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TelemetrySpec {
    /// OTLP endpoint for traces (`OTEL_EXPORTER_OTLP_ENDPOINT`), an http:// or https:// URL; tracing is off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub otlp_endpoint: Option<String>,
    /// OTLP transport (`OTEL_EXPORTER_OTLP_PROTOCOL`): `http/protobuf` (port 4318, the default) or `grpc` (port 4317).
    #[serde(default)]
    pub otlp_protocol: OtlpProtocol,
    /// Fraction of traces sampled (`OTEL_TRACES_SAMPLER_ARG`).
    #[serde(default = "default_sampling_ratio")]
    #[schemars(range(min = settings::OTEL_TRACES_SAMPLER_ARG.min, max = settings::OTEL_TRACES_SAMPLER_ARG.max))]
    pub sampling_ratio: f64,
    /// Log filter (`RUST_LOG`).
    #[serde(default = "default_log_level")]
    #[schemars(length(min = 1))]
    pub log_level: String,
}

impl Default for TelemetrySpec {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            otlp_protocol: OtlpProtocol::default(),
            sampling_ratio: default_sampling_ratio(),
            log_level: default_log_level(),
        }
    }
}

/// OTLP transport of the worker and analytics pods (the names the worker's
/// `OTEL_EXPORTER_OTLP_PROTOCOL` accepts).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, JsonSchema)]
pub enum OtlpProtocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl OtlpProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// Observed state, written by the operator.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresWriterStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Migrated, Progressing and Degraded, with reasons and messages.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Worker pods that exist.
    #[serde(default)]
    pub replicas: i32,
    /// Worker pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the worker pods (for the scale subresource and HPA).
    #[serde(default)]
    pub selector: String,
    /// The applied schema version (the newest migration), as the last
    /// successful migration Job reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<String>,
    /// One word for `kubectl get`: Ready, RollingOut, Migrating,
    /// MigrationFailed, Degraded or Suspended (the conditions say why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The message of the condition behind the phase when not Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The image the worker pods run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_image: Option<String>,
    /// The image they move to (spec.image) once its migration has succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_image: Option<String>,
    /// The latest migration Job of the current pod template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_migration: Option<MigrationRecord>,
}

/// One migration Job, as the status reports it.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationRecord {
    /// Name of the Job.
    pub job_name: String,
    /// The image it migrates to.
    pub image: String,
    /// Running, Succeeded or Failed.
    pub result: String,
    /// When it succeeded or failed (absent while running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// The database's schema version the Job reported on success (its pod's
    /// termination message `schema version N`); absent when the image does
    /// not report it or the pod is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<i64>,
}

// Defaults of the fields that become worker settings: the catalog's, in the
// CRD's integer types (the drift test in tests/crd_schema.rs compares them).
fn default_fold_interval_ms() -> i64 {
    settings::FOLD_INTERVAL_MS.default as i64
}
fn default_fold_poll_interval_ms() -> i64 {
    settings::FOLD_POLL_INTERVAL_MS.default as i64
}
fn default_fold_max_partitions() -> i32 {
    settings::FOLD_MAX_PARTITIONS.default as i32
}
fn default_fold_max_deltas() -> i32 {
    settings::FOLD_MAX_DELTAS.default as i32
}
fn default_consumer_group() -> String {
    settings::CONSUMER_GROUP
        .default
        .value()
        .unwrap_or_default()
        .into()
}
fn default_pool_min() -> i32 {
    settings::DB_POOL_MIN_CONNECTIONS.default as i32
}
fn default_pool_max() -> i32 {
    settings::DB_POOL_MAX_CONNECTIONS.default as i32
}
fn default_acquire_timeout_ms() -> i64 {
    settings::DB_ACQUIRE_TIMEOUT_MS.default as i64
}
fn default_batch_size() -> i32 {
    settings::BATCH_SIZE.default as i32
}
fn default_batch_timeout_ms() -> i64 {
    settings::BATCH_TIMEOUT_MS.default as i64
}
fn default_claim_idle_ms() -> i64 {
    settings::CLAIM_IDLE_MS.default as i64
}
fn default_consumer_reap_idle_ms() -> i64 {
    settings::CONSUMER_REAP_IDLE_MS.default as i64
}
fn default_max_entries_per_second() -> i64 {
    i64::from(settings::MAX_ENTRIES_PER_SECOND.default)
}
fn default_analytics_max_terms_per_second() -> i64 {
    i64::from(settings::ANALYTICS_MAX_TERMS_PER_SECOND.default)
}
fn default_analytics_concurrency() -> i32 {
    settings::ANALYTICS_CONCURRENCY.default as i32
}
fn default_analytics_batch_size() -> i32 {
    settings::ANALYTICS_BATCH_SIZE.default as i32
}
fn default_analytics_max_attempts() -> i32 {
    settings::ANALYTICS_MAX_ATTEMPTS.default as i32
}
/// In seconds (the worker's DRAIN_TIMEOUT_MS is in milliseconds).
fn default_drain_timeout() -> i64 {
    (settings::DRAIN_TIMEOUT_MS.default / 1000) as i64
}
fn default_sampling_ratio() -> f64 {
    settings::OTEL_TRACES_SAMPLER_ARG.default
}

// Defaults of operator-only fields.
fn default_replicas() -> i32 {
    1
}
fn default_url_key() -> String {
    "url".into()
}
fn default_ca_key() -> String {
    "ca.crt".into()
}
fn default_true() -> bool {
    true
}
fn default_analytics_replicas() -> i32 {
    1
}
fn default_log_level() -> String {
    "info".into()
}

/// CONSUMER_REAP_IDLE_MS's "never".
fn reap_off() -> settings::Off<u64> {
    settings::CONSUMER_REAP_IDLE_MS
        .off
        .expect("CONSUMER_REAP_IDLE_MS has an off value")
}

/// CEL rule of a setting with an off value: the schema's range runs from
/// the off value to the maximum, and this refuses what lies between.
fn off_or_in_range_rule(setting: &settings::Number<u64>) -> serde_json::Value {
    let off = setting.off.expect("a setting with an off value");
    serde_json::json!({
        "rule": format!("self == {} || self >= {}", off.value, setting.min),
        "message": format!("{} ({}) or at least {}", off.value, off.meaning, setting.min),
    })
}

/// CEL rule at the schema's root (where `self.metadata.name` is visible):
/// names longer than [`crate::resources::MAX_NAME_LENGTH`] would make the
/// derived object names invalid.
fn name_length_rule() -> serde_json::Value {
    let max = crate::resources::MAX_NAME_LENGTH;
    serde_json::json!({
        "rule": format!("self.metadata.name.size() <= {max}"),
        "message": format!(
            "metadata.name must be at most {max} characters: the longest derived name, \
             <name>-migrate-<10 hex digits>, labels the Job's pods and a label value holds 63"
        ),
    })
}

/// The CustomResourceDefinition: the derived one plus the root CEL rule.
pub fn crd(
) -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt;
    let mut crd = PostgresWriter::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            let rule = serde_json::from_value(name_length_rule())
                .expect("a ValidationRule from its JSON form");
            schema
                .x_kubernetes_validations
                .get_or_insert_with(Vec::new)
                .push(rule);
        }
    }
    crd
}

/// The CRD as YAML, exactly what `crdgen` prints and `crds/` holds.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&crd())
}
