//! A configuration in words: what `check-config` prints.

use super::{Channel, Config};

impl Config {
    /// The configuration in words: its source, channels (what each does with an event),
    /// history retention, owner rules, the subscription ceiling, and routes in order, one per
    /// line.
    pub fn summary(&self) -> String {
        let config = self;
        let mut out = String::new();
        out.push_str(&format!("{}: valid\n", config.source));
        out.push_str(&format!("label prefix: {}\n", config.label_prefix));
        out.push_str(&format!("channels ({}):\n", config.channels.len()));
        for (idx, ch) in config.channels.iter().enumerate() {
            out.push_str(&channel_line(config, idx, ch));
        }
        if config.channels.iter().any(|c| c.history) {
            out.push_str(&format!(
                "history: rows kept {} after their event was last seen\n",
                in_words(config.history.retention)
            ));
        }
        for rule in &config.owner_rules {
            out.push_str(&format!(
                "owner rule: {}.{} ({}) {} names {}\n",
                rule.resource,
                rule.group,
                rule.kind,
                rule.field_path(),
                match rule.follows {
                    crate::owners::FieldHolds::Namespace =>
                        "a namespace (for channels with owners)",
                    crate::owners::FieldHolds::Node => "a Node (for channels with nodePods)",
                }
            ));
        }
        if let Some(o) = &config.otlp {
            let headers: Vec<String> = o.headers.iter().map(|h| format!("{h:?}")).collect();
            out.push_str(&format!(
                "otlp: {} to {} ({}, timeout {}{}{}{})\n",
                o.protocol.as_str(),
                o.endpoint,
                if o.gzip { "gzip" } else { "uncompressed" },
                humantime::format_duration(o.timeout),
                if headers.is_empty() {
                    String::new()
                } else {
                    format!("; headers {}", headers.join(", "))
                },
                o.tls
                    .ca_file
                    .as_ref()
                    .map(|c| format!("; CA {}", c.display()))
                    .unwrap_or_default(),
                if o.resource.is_empty() {
                    String::new()
                } else {
                    let r: Vec<String> =
                        o.resource.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!("; resource {}", r.join(", "))
                },
            ));
        }
        if let Some(sub) = &config.subscriptions {
            let relations: Vec<&str> = sub.relations.iter().map(|r| r.as_str()).collect();
            out.push_str(&format!(
                "subscriptions: allowed (relations {}; kinds {}; history {}; at most {} per namespace, {} copies/s into each)\n",
                relations.join(", "),
                if sub.kinds.is_empty() {
                    "any their relation covers".to_owned()
                } else {
                    sub.kinds.join(", ")
                },
                if sub.history { "allowed" } else { "not allowed" },
                sub.max_per_namespace,
                sub.deliveries_per_second
            ));
        }
        out.push_str(&format!(
            "routes ({}), first match wins:\n",
            config.routes.len()
        ));
        for (i, r) in config.routes.iter().enumerate() {
            let channel = config
                .channels
                .get(r.channel)
                .map_or("?", |c| c.name.as_str());
            out.push_str(&format!(
                "  {}. line {}: {} -> {}\n",
                i + 1,
                r.line,
                r.matcher.describe(),
                channel
            ));
        }
        if !config.routes.iter().any(|r| r.matcher.is_catch_all()) {
            out.push_str("note: no route matches every event; unmatched cluster-scoped events get scope and kind labels but no channel\n");
        }
        out
    }
}

/// One channel in words: what it adds and where its events go.
fn channel_line(config: &Config, idx: usize, ch: &Channel) -> String {
    let mut out = String::new();
    out.push_str(&format!("  {}", ch.name));
    let extras: Vec<String> = ch
        .labels
        .iter()
        .map(|(k, v)| format!("label {k}={v}"))
        .chain(
            ch.annotations
                .iter()
                .map(|(k, v)| format!("annotation {k}={v:?}")),
        )
        .collect();
    if !extras.is_empty() {
        out.push_str(&format!(" (adds {})", extras.join(", ")));
    }
    if let Some(ns) = &ch.namespace {
        out.push_str(&format!(" [mirrored into namespace {ns}]"));
    }
    if ch.log {
        out.push_str(" [written to the log stream]");
    }
    if ch.history {
        out.push_str(" [recorded in the history database]");
    }
    // `copies: false`: the namespaces only attribute what the other outputs write.
    let copied = if ch.copies {
        "copied"
    } else {
        "attributed (no copy)"
    };
    if ch.deliver.owners {
        out.push_str(&format!(" [{copied} to owner namespaces: PersistentVolume and VolumeAttachment to the claim's, Namespace to itself]"));
    }
    if let Some(np) = &ch.deliver.node_pods {
        out.push_str(&format!(
            " [{} about a Node or CSINode {copied} to the namespaces of its pods, at most {}]",
            np.types.join(" and "),
            np.max_namespaces
        ));
    }
    if let Some(sel) = &ch.deliver.namespace_selector {
        out.push_str(&format!(" [{copied} to namespaces labelled {sel}]"));
    }
    if ch.otlp {
        out.push_str(" [exported over OTLP, a record per namespace it concerns]");
    }
    if !config.routes.iter().any(|r| r.channel == idx) {
        out.push_str(" [no route leads here]");
    }
    out.push('\n');
    out
}

/// `30 days`, `1 day`, or humantime's `36h 30m` for what is not whole days.
fn in_words(d: std::time::Duration) -> String {
    const DAY: u64 = 86_400;
    match d.as_secs() {
        s if s % DAY == 0 && d.subsec_nanos() == 0 => match s / DAY {
            1 => "1 day".to_owned(),
            n => format!("{n} days"),
        },
        _ => humantime::format_duration(d).to_string(),
    }
}
