//! clusterscope: a Kubernetes mutating admission webhook that labels events about
//! cluster-scoped objects (Nodes, PersistentVolumes, ClusterRoles, custom resources...) so
//! that a label selector finds them, and routes them into named channels.
//!
//! The decision pipeline, each step its own module:
//! [`admission`] decodes an AdmissionReview and answers it; [`event`] reads the Event in
//! either API shape; [`classify`] decides whether the involved object is cluster-scoped;
//! `route` picks its channel from the [`config`]; `decide` computes the label patch;
//! [`labels`] holds the Kubernetes name rules every written label obeys.
//!
//! Beside the webhook: [`mirror`] (copies and the other outputs, over the [`delivery`]
//! engine), [`recorder`] (client-go's recorder, for clusterscope's own events), [`owners`]
//! and [`subscription`] (where an event goes), [`history`] (PostgreSQL).
//!
//! Serving: [`runtime`] (where `serve` is assembled), [`server`] (HTTPS webhook and admin
//! endpoints), [`tls`] (certificate loading and rotation), [`certs`] (certificate
//! generation), [`metrics`], `telemetry` (logs).
//!
//! Public: what the binary and the tests use; the rest is `pub(crate)`.

pub mod admission;
pub(crate) mod backoff;
pub mod certs;
pub mod classify;
pub mod cli;
pub mod cluster;
pub mod config;
pub(crate) mod decide;
pub mod delivery;
pub mod discovery;
pub(crate) mod errors;
pub mod event;
pub(crate) mod explain;
pub(crate) mod flags;
pub(crate) mod follow;
pub mod history;
pub mod labels;
pub mod leader;
pub(crate) mod locks;
pub mod metrics;
pub mod mirror;
pub mod otlp;
pub mod owners;
pub mod recorder;
pub(crate) mod reload;
pub(crate) mod route;
pub mod runtime;
pub mod server;
pub mod status;
pub mod subscription;
pub(crate) mod tasks;
pub(crate) mod telemetry;
pub mod tls;
pub(crate) mod watch;
