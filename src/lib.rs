//! clusterscope: a Kubernetes mutating admission webhook that labels events about
//! cluster-scoped objects (Nodes, PersistentVolumes, ClusterRoles, custom resources...) so
//! that a label selector finds them, and routes them into named channels.
//!
//! The decision pipeline, each step its own module:
//! [`admission`] decodes an AdmissionReview and answers it; [`event`] reads the Event in
//! either API shape; [`classify`] decides whether the involved object is cluster-scoped;
//! [`route`] picks its channel from the [`config`]; [`decide`] computes the label patch;
//! [`labels`] holds the Kubernetes name rules every written label obeys.
//!
//! Serving: [`server`] (HTTPS webhook and admin endpoints), [`tls`] (certificate loading and
//! rotation), [`certs`] (certificate generation), [`metrics`], [`telemetry`] (logs).

pub mod admission;
pub mod backoff;
pub mod certs;
pub mod classify;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod decide;
pub mod delivery;
pub mod discovery;
pub mod event;
pub mod explain;
pub mod flags;
pub mod follow;
pub mod history;
pub mod labels;
pub mod leader;
pub mod locks;
pub mod metrics;
pub mod mirror;
pub mod owners;
pub mod recorder;
pub mod reload;
pub mod route;
pub mod runtime;
pub mod server;
pub mod status;
pub mod subscription;
pub mod tasks;
pub mod telemetry;
pub mod tls;
pub mod watch;
