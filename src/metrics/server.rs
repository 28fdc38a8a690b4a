//! The webhook's connections and its serving certificate.

use std::sync::atomic::AtomicI64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::ByResult;

#[derive(Clone, Debug)]
pub struct ServerMetrics {
    pub panics: Counter,
    pub connections_open: Gauge,
    pub connections_rejected: Counter,
    pub connections_rejected_by_peer: Counter,
}

impl ServerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let panics = Counter::default();
        registry.register(
            "http_panics",
            "Request handlers that panicked (answered with 500)",
            panics.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Open webhook (HTTPS) connections",
            connections_open.clone(),
        );
        let connections_rejected = Counter::default();
        registry.register(
            "connections_rejected",
            "Connections closed at once because --max-connections were open",
            connections_rejected.clone(),
        );
        let connections_rejected_by_peer = Counter::default();
        registry.register(
            "connections_rejected_by_peer",
            "Connections closed at once because their address already had --max-connections-per-peer open",
            connections_rejected_by_peer.clone(),
        );
        ServerMetrics {
            panics,
            connections_open,
            connections_rejected,
            connections_rejected_by_peer,
        }
    }
}

/// Registered under `tls_`.
#[derive(Clone, Debug)]
pub struct TlsMetrics {
    /// Serving certificate loads: `success`, `error`.
    pub reloads: ByResult,
    pub expiry: Gauge<i64, AtomicI64>,
}

impl TlsMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let reloads = ByResult::register(
            registry,
            "certificate_reloads",
            "Serving certificate loads by result (success, error)",
            &["success", "error"],
        );
        let expiry = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "notAfter of the serving certificate in use, as Unix time",
            expiry.clone(),
        );
        TlsMetrics { reloads, expiry }
    }
}
