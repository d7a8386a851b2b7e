//! The ConfigMap of the pods' non-secret settings, and its hash on the pod
//! templates (a settings change rolls the pods).

use super::{metadata, short_hash, Component, HTTP_PORT};
use crate::crd::{PostgresWriter, PostgresWriterSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use std::collections::BTreeMap;

pub fn config_name(cr: &PostgresWriter) -> String {
    format!("{}-config", cr.name_any())
}

/// Non-secret settings shared by worker and analytics pods (contract §5 names).
pub fn config_data(spec: &PostgresWriterSpec) -> BTreeMap<String, String> {
    let mut data = BTreeMap::from([
        (
            settings::REDIS_STREAMS.env.to_string(),
            spec.streams.join(","),
        ),
        (
            settings::CONSUMER_GROUP.env.to_string(),
            spec.consumer_group.clone(),
        ),
        (
            settings::BATCH_SIZE.env.to_string(),
            spec.batch.size.to_string(),
        ),
        (
            settings::BATCH_TIMEOUT_MS.env.to_string(),
            spec.batch.timeout_ms.to_string(),
        ),
        (
            settings::CLAIM_IDLE_MS.env.to_string(),
            spec.claim_idle_ms.to_string(),
        ),
        (
            settings::FOLD_INTERVAL_MS.env.to_string(),
            spec.fold.interval_ms.to_string(),
        ),
        (
            settings::FOLD_POLL_INTERVAL_MS.env.to_string(),
            spec.fold.poll_interval_ms.to_string(),
        ),
        (
            settings::FOLD_MAX_PARTITIONS.env.to_string(),
            spec.fold.max_partitions.to_string(),
        ),
        (
            settings::FOLD_MAX_DELTAS.env.to_string(),
            spec.fold.max_deltas.to_string(),
        ),
        (
            settings::CONSUMER_REAP_IDLE_MS.env.to_string(),
            spec.consumer_reap_idle_ms.to_string(),
        ),
        (
            settings::DB_POOL_MIN_CONNECTIONS.env.to_string(),
            spec.database.pool.min_connections.to_string(),
        ),
        (
            settings::DB_POOL_MAX_CONNECTIONS.env.to_string(),
            spec.database.pool.max_connections.to_string(),
        ),
        (
            settings::DB_ACQUIRE_TIMEOUT_MS.env.to_string(),
            spec.database.pool.acquire_timeout_ms.to_string(),
        ),
        (
            settings::MAX_ENTRIES_PER_SECOND.env.to_string(),
            spec.rate_limits.max_entries_per_second.to_string(),
        ),
        (
            settings::ANALYTICS_MAX_TERMS_PER_SECOND.env.to_string(),
            spec.rate_limits.analytics_max_terms_per_second.to_string(),
        ),
        (
            settings::ANALYTICS_CONCURRENCY.env.to_string(),
            spec.analytics.concurrency.to_string(),
        ),
        (
            settings::ANALYTICS_BATCH_SIZE.env.to_string(),
            spec.analytics.batch_size.to_string(),
        ),
        (
            settings::ANALYTICS_MAX_ATTEMPTS.env.to_string(),
            spec.analytics.max_attempts.to_string(),
        ),
        (settings::HTTP_PORT.env.to_string(), HTTP_PORT.to_string()),
        (
            settings::DRAIN_TIMEOUT_MS.env.to_string(),
            (spec.drain.timeout_seconds * 1000).to_string(),
        ),
        (
            settings::OTEL_TRACES_SAMPLER_ARG.env.to_string(),
            spec.telemetry.sampling_ratio.to_string(),
        ),
        (
            settings::RUST_LOG.env.to_string(),
            spec.telemetry.log_level.clone(),
        ),
        (
            settings::OTEL_EXPORTER_OTLP_PROTOCOL.env.to_string(),
            spec.telemetry.otlp_protocol.as_str().to_string(),
        ),
    ]);
    if let Some(endpoint) = &spec.telemetry.otlp_endpoint {
        data.insert(
            settings::OTEL_EXPORTER_OTLP_ENDPOINT.env.to_string(),
            endpoint.clone(),
        );
    }
    if let Some(url) = &spec.redis.url {
        data.insert(settings::REDIS_URL.env.to_string(), url.clone());
    }
    data
}

pub fn config_map(cr: &PostgresWriter) -> ConfigMap {
    ConfigMap {
        metadata: metadata(cr, config_name(cr), Component::Worker),
        data: Some(config_data(&cr.spec)),
        ..Default::default()
    }
}

/// Hash of the settings, put on pod templates so edits roll the pods.
pub fn config_hash(cr: &PostgresWriter) -> String {
    let data = config_data(&cr.spec);
    let text = data
        .iter()
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect::<String>();
    short_hash(&text)
}
