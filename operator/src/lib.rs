//! postgres-writer-operator: reconciles `PostgresWriter` resources into the
//! migration Job, the worker and analytics Deployments, a ConfigMap, a
//! metrics Service and a PodDisruptionBudget (contract §6).
//!
//! - [`crd`]: the custom resource and its schema;
//! - [`resources`]: desired objects as pure functions of the spec, one
//!   module per kind;
//! - [`controller`]: `reconcile` and `error_policy`, split by concern
//!   (migration Jobs, workloads, Secrets, pod problems, status with typed
//!   conditions, events, the watches);
//! - [`leader`]: leader election on a Lease (two replicas are safe);
//!   [`leader::lead`] runs the controllers while this replica leads;
//! - [`metrics`]: the operator's own metrics and HTTP endpoints.

pub mod controller;
pub mod crd;
pub mod leader;
pub mod metrics;
pub mod resources;
