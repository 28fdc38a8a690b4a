//! An event as OpenTelemetry log records: the names of the Collector's `k8seventsreceiver`
//! where it has one (dashboards built for it keep working), one record per namespace the event
//! concerns (`k8s.namespace.name`), and clusterscope's own attributes (`clusterscope.*`).
//!
//! Per event, one `ResourceLogs`: the resource says where the event comes from and what it is
//! about (`k8s.cluster.name` and the admin's `otlp.resource`, `k8s.node.name` = the source
//! host, `k8s.object.*` = the involved object, as the receiver writes them); its records differ
//! only by the namespace they are attributed to and how the event reached it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Event;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;

use crate::delivery::Delivery;

/// The instrumentation scope every record is under.
pub const SCOPE: &str = "clusterscope";

/// One export request holding every delivery of `batch`, `resource` (the admin's attributes)
/// on each; how many records it holds.
pub fn request(
    batch: &[Delivery],
    resource: &BTreeMap<String, String>,
    observed_unix_nano: u64,
) -> (ExportLogsServiceRequest, usize) {
    let mut records = 0;
    let resource_logs = batch
        .iter()
        .map(|d| {
            let logs = resource_logs(d, resource, observed_unix_nano);
            records += logs
                .scope_logs
                .iter()
                .map(|s| s.log_records.len())
                .sum::<usize>();
            logs
        })
        .collect();
    (ExportLogsServiceRequest { resource_logs }, records)
}

/// The records of one delivery: one per namespace it concerns, or one attributed to the
/// namespace it is stored in when it concerns none.
fn resource_logs(
    delivery: &Delivery,
    resource: &BTreeMap<String, String>,
    observed_unix_nano: u64,
) -> ResourceLogs {
    let event = &delivery.event;
    let stored_in = delivery.source.namespace.as_deref().unwrap_or("default");
    let base = base_record(event, delivery, observed_unix_nano);
    let record = |namespace: &str, how: Option<(&str, &str)>| {
        let mut r = base.clone();
        r.attributes.push(text("k8s.namespace.name", namespace));
        if let Some((how, why)) = how {
            r.attributes.push(text("clusterscope.delivery", how));
            r.attributes
                .push(text("clusterscope.delivered_because", why));
        }
        r
    };
    let log_records = if delivery.destinations.is_empty() {
        vec![record(stored_in, None)]
    } else {
        delivery
            .destinations
            .iter()
            .map(|d| record(&d.namespace, Some((d.how.as_str(), &d.why))))
            .collect()
    };
    ResourceLogs {
        resource: Some(Resource {
            attributes: resource_attributes(event, resource),
            ..Default::default()
        }),
        scope_logs: vec![ScopeLogs {
            scope: Some(InstrumentationScope {
                name: SCOPE.to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                ..Default::default()
            }),
            log_records,
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    }
}

/// What every record of the event says, before its namespace.
fn base_record(event: &Event, delivery: &Delivery, observed_unix_nano: u64) -> LogRecord {
    let type_ = event.type_.as_deref().unwrap_or_default();
    let severity = match type_.to_ascii_lowercase().as_str() {
        "normal" => SeverityNumber::Info,
        "warning" => SeverityNumber::Warn,
        _ => SeverityNumber::Unspecified,
    };
    let meta = &event.metadata;
    let string = |o: &Option<String>| o.clone().unwrap_or_default();
    let mut attributes = vec![
        text("k8s.event.reason", &string(&event.reason)),
        text("k8s.event.action", &string(&event.action)),
        text(
            "k8s.event.start_time",
            &meta
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
        ),
        text("k8s.event.name", &string(&meta.name)),
        text("k8s.event.uid", &string(&meta.uid)),
    ];
    let count = event
        .series
        .as_ref()
        .and_then(|s| s.count)
        .or(event.count)
        .unwrap_or(0);
    if count != 0 {
        attributes.push(int("k8s.event.count", i64::from(count)));
    }
    attributes.push(text("clusterscope.scope", "cluster"));
    attributes.push(text("clusterscope.channel", &delivery.channel));
    attributes.push(text(
        "clusterscope.source.namespace",
        delivery.source.namespace.as_deref().unwrap_or_default(),
    ));
    LogRecord {
        time_unix_nano: last_time(event),
        observed_time_unix_nano: observed_unix_nano,
        severity_number: severity as i32,
        severity_text: if severity == SeverityNumber::Unspecified {
            String::new()
        } else {
            type_.to_owned()
        },
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(string(&event.message))),
        }),
        attributes,
        ..Default::default()
    }
}

/// The resource: the admin's attributes, then where the event comes from and what it is
/// about, as the receiver names them.
fn resource_attributes(event: &Event, admin: &BTreeMap<String, String>) -> Vec<KeyValue> {
    let o = &event.involved_object;
    let string = |o: &Option<String>| o.clone().unwrap_or_default();
    let host = event
        .source
        .as_ref()
        .and_then(|s| s.host.clone())
        .or_else(|| event.reporting_instance.clone())
        .unwrap_or_default();
    let reporter = event
        .reporting_component
        .clone()
        .filter(|c| !c.is_empty())
        .or_else(|| event.source.as_ref().and_then(|s| s.component.clone()))
        .unwrap_or_default();
    let mut attributes: Vec<KeyValue> = admin.iter().map(|(k, v)| text(k, v)).collect();
    attributes.extend([
        text("k8s.node.name", &host),
        text("k8s.event.source", &reporter),
        text("k8s.object.kind", &string(&o.kind)),
        text("k8s.object.name", &string(&o.name)),
        text("k8s.object.uid", &string(&o.uid)),
        text("k8s.object.fieldpath", &string(&o.field_path)),
        text("k8s.object.api_version", &string(&o.api_version)),
        text("k8s.object.resource_version", &string(&o.resource_version)),
    ]);
    attributes
}

/// The event's last time, in nanoseconds since the epoch: its series' last observation,
/// else `eventTime`, `lastTimestamp`, `firstTimestamp`, its creation; 0 when it has none.
fn last_time(event: &Event) -> u64 {
    let nanos = |t: &k8s_openapi::jiff::Timestamp| u64::try_from(t.as_nanosecond()).unwrap_or(0);
    event
        .series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref().map(|t| &t.0))
        .or(event.event_time.as_ref().map(|t| &t.0))
        .or(event.last_timestamp.as_ref().map(|t| &t.0))
        .or(event.first_timestamp.as_ref().map(|t| &t.0))
        .or(event.metadata.creation_timestamp.as_ref().map(|t| &t.0))
        .map_or(0, nanos)
}

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}
