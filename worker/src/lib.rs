//! postgres-writer: Intuition-protocol events from Redis streams (rindexer)
//! into an exact, always-current PostgreSQL read model.
//!
//! Modules, in the order data flows through them:
//! - [`intake`]: consumer groups, reads, claims, acks (Redis streams);
//! - [`decode`]: rindexer entries to validated, normalised events;
//! - [`network`]: one database holds one network, checked in each batch;
//! - [`persistence`]: one transaction per batch, retries, dead letters;
//! - [`reorg`]: rindexer's reorg notices as per-stream fences (ADR 0018);
//! - [`aggregates`]: atoms and triples, per-key deltas and how they fold into
//!   base tables, term aggregates and the analytics queue;
//! - [`partition`]: which fold partition owns a term's rows;
//! - [`fold`]: partition owners folding deltas (ADR 0015);
//! - [`analytics`]: triple-level analytics from the queue;
//! - [`verify`]: from-scratch comparison and rebuild;
//! - [`dead_letters`]: inspecting and replaying dead letters;
//! - [`failure`]: the one failure policy (conflict, data, outage) and its retry loop;
//! - [`backoff`]: the delays of every retry loop, as named policies;
//! - [`pipeline`], [`http`], [`health`], [`lifecycle`], [`metrics`]: the running
//!   process (assembled by the binary's `serve.rs`);
//! - [`tls`]: CA files and the one constructor of Redis clients;
//! - [`tcp`]: the keepalive settings of every PostgreSQL and Redis connection;
//! - [`catalog`]: the event kinds and the tables of the read model, one
//!   entry each;
//! - [`columns`]: rows bound as the column arrays batch statements take;
//! - [`copy`]: rows written in COPY text format (event tables).
//!
//! A module imports only modules below it: `worker/tests/module_graph.rs`
//! fails on an import circle (`scripts/module-graph.py --check`).

pub mod aggregates;
pub mod analytics;
pub mod backoff;
pub mod catalog;
pub mod columns;
pub mod config;
pub mod copy;
pub mod db;
pub mod dead_letters;
pub mod decode;
pub mod failure;
pub mod fold;
pub mod generate;
pub mod health;
pub mod http;
pub mod intake;
pub mod lifecycle;
pub mod metrics;
pub mod network;
pub mod partition;
pub mod persistence;
pub mod pipeline;
pub mod queries;
pub mod ratelimit;
pub mod reorg;
pub mod rollback;
pub mod tcp;
pub mod tls;
pub mod verify;
