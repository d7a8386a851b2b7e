//! The metrics Service.

use super::pod::{HTTP_PORT, METRICS_LABEL};
use super::{metadata, Component};
use crate::crd::PostgresWriter;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use std::collections::BTreeMap;

pub fn metrics_service_name(cr: &PostgresWriter) -> String {
    format!("{}-metrics", cr.name_any())
}

/// ClusterIP Service in front of the worker and analytics pods' `/metrics`
/// (selected by [`METRICS_LABEL`], so migration pods are left out).
pub fn metrics_service(cr: &PostgresWriter) -> Service {
    Service {
        metadata: metadata(cr, metrics_service_name(cr), Component::Worker),
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([
                ("app.kubernetes.io/instance".to_string(), cr.name_any()),
                (METRICS_LABEL.to_string(), "true".to_string()),
            ])),
            ports: Some(vec![ServicePort {
                name: Some("http".to_string()),
                port: HTTP_PORT,
                target_port: Some(IntOrString::String("http".to_string())),
                protocol: Some("TCP".to_string()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}
