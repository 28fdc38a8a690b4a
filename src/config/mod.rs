//! The routing configuration: named channels and ordered routes, read from YAML.
//!
//! A file is parsed strictly (unknown fields and duplicate keys are errors), then checked the
//! way the API server would check what we write from it: channel names, label keys and values,
//! annotation keys. Every error names the file, line and column and says what is wrong.

mod document;
mod otlp;
mod summary;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::Path;

use regex::Regex;
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::labels::{
    check_dns1123_label, check_dns1123_subdomain, check_label_value, check_qualified_name,
};
use crate::route::{EventFacts, Match};

pub use otlp::{Header as OtlpHeader, Otlp, Protocol as OtlpProtocol, Tls as OtlpTls};

/// The configuration used when no file is given.
pub const DEFAULT_YAML: &str = include_str!("default.yaml");
/// How the embedded default is named in messages.
pub const DEFAULT_SOURCE: &str = "<embedded default>";
/// Label prefix when the file names none.
pub const DEFAULT_LABEL_PREFIX: &str = "clusterscope.dev";
/// Largest configuration file accepted.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// Largest compiled size of one regular expression.
const MAX_REGEX_BYTES: usize = 1024 * 1024;

/// The configuration in use, swapped atomically when the file is reloaded: every review and
/// every mirror sync reads one consistent version.
pub type SharedConfig = std::sync::Arc<arc_swap::ArcSwap<Config>>;

/// Shares `config`.
pub fn shared(config: Config) -> SharedConfig {
    std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(config))
}

/// File contents as text: not larger than a configuration may be, UTF-8.
fn text_of<'a>(bytes: &'a [u8], source: &str) -> Result<&'a str, ConfigError> {
    let fail = |reason: String| ConfigError {
        source: source.to_owned(),
        line: 0,
        column: 0,
        reason,
    };
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(fail(format!(
            "file is {} bytes, larger than the {MAX_CONFIG_BYTES} bytes a configuration may be",
            bytes.len()
        )));
    }
    std::str::from_utf8(bytes).map_err(|e| fail(format!("not UTF-8 text: {e}")))
}

/// A configuration that was refused, with where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub source: String,
    /// 1-based; 0 when the problem has no single place (an unreadable file).
    pub line: u64,
    pub column: u64,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.source, self.reason)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.source, self.line, self.column, self.reason
            )
        }
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// `source` could not be read.
    pub fn unreadable_file(source: &str, error: &std::io::Error) -> Self {
        ConfigError {
            source: source.to_owned(),
            line: 0,
            column: 0,
            reason: format!("{UNREADABLE}: {error}"),
        }
    }

    /// The file could not be read at all (an I/O problem, not a refused configuration).
    pub fn unreadable(&self) -> bool {
        self.line == 0 && self.reason.starts_with(UNREADABLE)
    }
}

/// How [`ConfigError::reason`] starts when the file could not be read.
const UNREADABLE: &str = "cannot read";

/// A channel: where routed events go, and what it adds to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub name: String,
    /// Mirror each routed event into this namespace as a copy kept in sync.
    pub namespace: Option<String>,
    /// Write each routed event to the log stream (one JSON line on stdout).
    pub log: bool,
    /// Record each routed event in the history database (when `serve` has one).
    pub history: bool,
    /// Extra labels, sorted by key.
    pub labels: Vec<(String, String)>,
    /// Extra annotations, sorted by key.
    pub annotations: Vec<(String, String)>,
    /// Delivery to the namespaces that own or use the object (`deliver:`).
    pub deliver: crate::owners::Rules,
    /// Export each routed event as OpenTelemetry log records, one per namespace it concerns
    /// (`otlp: true`, with the top-level `otlp:` section).
    pub otlp: bool,
    /// Write copies into the namespaces its `namespace:` and `deliver:` name (`copies: true`,
    /// the default). `false`: those namespaces only attribute what the other outputs write
    /// (OTLP records, history rows), and no copy is made; a Subscription's copies are made
    /// still (the team asked for them).
    pub copies: bool,
}

impl Channel {
    /// The channel's switches (`log`, `history`, `otlp`): an output such a switch turns on
    /// takes the channel's events only when it is on.
    pub fn switches(&self) -> Switches {
        Switches {
            log: self.log,
            history: self.history,
            otlp: self.otlp,
        }
    }
}

/// The outputs a channel turns on besides its copies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Switches {
    /// `log: true`: the log stream.
    pub log: bool,
    /// `history: true`: the history database.
    pub history: bool,
    /// `otlp: true`: OpenTelemetry log records to the `otlp:` collector.
    pub otlp: bool,
}

/// The full keys clusterscope writes, `<labelPrefix>/<name>`, computed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// Label: the scope of the involved object (always `cluster`).
    pub scope: String,
    /// Label: the involved object's kind, made label-safe.
    pub kind: String,
    /// Label: the channel the event was routed to.
    pub channel: String,
    /// Label: on copies made by the mirror (honoured outside `default`/`kube-system` only).
    pub mirror: String,
    /// Annotation: `<group or core>/<Kind>/<name>` of the involved object, for humans.
    pub involved_object: String,
    /// Annotations on copies: where their source is.
    pub source_namespace: String,
    pub source_name: String,
    pub source_uid: String,
    /// Label on copies: how it got to its namespace (`channel`, `owner`, `node`, `selector`).
    pub delivery: String,
    /// Annotation on copies delivered by a rule: why this namespace.
    pub delivered_because: String,
    /// Label on copies a Subscription asked for: its name (the first by name, when several
    /// in one namespace want the same event).
    pub subscription: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        let key = |name: &str| format!("{prefix}/{name}");
        Keys {
            scope: key("scope"),
            kind: key("kind"),
            channel: key("channel"),
            mirror: key("mirror"),
            involved_object: key("involved-object"),
            source_namespace: key("source-namespace"),
            source_name: key("source-name"),
            source_uid: key("source-uid"),
            delivery: key("delivery"),
            delivered_because: key("delivered-because"),
            subscription: key("subscription"),
        }
    }

    /// Every key clusterscope owns; channels may not set them.
    pub fn all(&self) -> [&str; 11] {
        [
            &self.scope,
            &self.kind,
            &self.channel,
            &self.mirror,
            &self.involved_object,
            &self.source_namespace,
            &self.source_name,
            &self.source_uid,
            &self.delivery,
            &self.delivered_because,
            &self.subscription,
        ]
    }
}

/// One route: its conditions and the index of its channel in [`Config::channels`].
#[derive(Debug, Clone)]
pub struct Route {
    pub channel: usize,
    /// Line of the route in its file, for messages.
    pub line: u64,
    pub matcher: Match,
}

/// A validated configuration, ready to route events.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from: a file name or [`DEFAULT_SOURCE`].
    pub source: String,
    pub label_prefix: String,
    pub keys: Keys,
    pub channels: Vec<Channel>,
    pub routes: Vec<Route>,
    /// How to find the owners of custom cluster-scoped kinds (`ownerRules`).
    pub owner_rules: Vec<crate::owners::CustomRule>,
    /// The history database's settings (`history:`).
    pub history: History,
    /// What tenants' Subscriptions may ask for (`subscriptions:`); `None`: not allowed.
    pub subscriptions: Option<Subscriptions>,
    /// Where channels with `otlp: true` export (`otlp:`).
    pub otlp: Option<Otlp>,
}

/// The cluster admin's ceiling on tenants' Subscriptions (`subscriptions:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriptions {
    /// The relations they may use (both by default).
    pub relations: Vec<crate::owners::Relation>,
    /// The kinds they may ask for; empty: any kind their relation covers.
    pub kinds: Vec<String>,
    /// Whether they may also record in the history database.
    pub history: bool,
    /// Subscriptions per namespace at most (the oldest are honoured).
    pub max_per_namespace: usize,
    /// Copies per second at most into one namespace from its subscriptions.
    pub deliveries_per_second: u32,
    /// Where `subscriptions:` is written (0: not written), for warnings.
    pub line: u64,
}

impl Default for Subscriptions {
    fn default() -> Self {
        Subscriptions {
            relations: vec![
                crate::owners::Relation::Owned,
                crate::owners::Relation::Nodes,
            ],
            kinds: Vec::new(),
            history: false,
            max_per_namespace: 10,
            deliveries_per_second: 50,
            line: 0,
        }
    }
}

/// Settings of the event history (`history:`); where the database is comes from `serve`'s
/// flags, since a running process cannot move to another database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct History {
    /// Rows whose event was last seen longer ago than this are deleted.
    pub retention: std::time::Duration,
}

/// Rows are kept this long when the file says nothing.
pub const DEFAULT_RETENTION: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);
/// The shortest retention accepted (events live one hour in etcd by default).
const MIN_RETENTION: std::time::Duration = std::time::Duration::from_secs(3600);

impl Default for History {
    fn default() -> Self {
        History {
            retention: DEFAULT_RETENTION,
        }
    }
}

// ---- the file as written -------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfig {
    label_prefix: Option<Spanned<String>>,
    channels: Option<Spanned<Vec<RawChannel>>>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    owner_rules: Vec<Spanned<RawOwnerRule>>,
    history: Option<Spanned<RawHistory>>,
    subscriptions: Option<Spanned<RawSubscriptions>>,
    otlp: Option<Spanned<otlp::RawOtlp>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSubscriptions {
    relations: Option<Vec<crate::owners::Relation>>,
    #[serde(default)]
    kinds: Vec<Spanned<String>>,
    #[serde(default)]
    history: bool,
    max_per_namespace: Option<Spanned<u64>>,
    deliveries_per_second: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHistory {
    retention: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawOwnerRule {
    group: String,
    version: String,
    kind: String,
    resource: String,
    namespace_field: Option<String>,
    node_field: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChannel {
    name: Spanned<String>,
    namespace: Option<Spanned<String>>,
    #[serde(default)]
    log: bool,
    #[serde(default)]
    history: bool,
    #[serde(default)]
    labels: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    annotations: BTreeMap<String, Spanned<String>>,
    deliver: Option<Spanned<RawDeliver>>,
    #[serde(default)]
    otlp: bool,
    copies: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDeliver {
    #[serde(default)]
    owners: bool,
    node_pods: Option<Spanned<RawNodePods>>,
    namespace_selector: Option<Spanned<RawSelector>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawNodePods {
    types: Option<Vec<String>>,
    max_namespaces: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSelector {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
    #[serde(default)]
    match_expressions: Vec<RawRequirement>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequirement {
    key: String,
    operator: String,
    #[serde(default)]
    values: Vec<String>,
}

/// Namespaces per Node event at most.
pub const MAX_NODE_NAMESPACES: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    channel: Spanned<String>,
    #[serde(rename = "match")]
    matcher: Option<Spanned<RawMatch>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawMatch {
    kinds: Option<Spanned<Vec<String>>>,
    groups: Option<Spanned<Vec<String>>>,
    reasons: Option<Spanned<Vec<String>>>,
    types: Option<Spanned<Vec<String>>>,
    reporting_controllers: Option<Spanned<Vec<String>>>,
    name: Option<Spanned<String>>,
    message: Option<Spanned<String>>,
}

// ---- loading ---------------------------------------------------------------------------------

impl Config {
    /// The channel of the first matching route, if any.
    pub fn route(&self, facts: &EventFacts<'_>) -> Option<&Channel> {
        self.routes
            .iter()
            .find(|r| r.matcher.matches(facts))
            .and_then(|r| self.channels.get(r.channel))
    }

    /// The embedded default configuration.
    pub fn embedded_default() -> Self {
        match Self::from_yaml(DEFAULT_YAML, DEFAULT_SOURCE) {
            Ok(config) => config,
            // A test keeps the embedded file valid; this arm only satisfies the type.
            Err(e) => unreachable!("the embedded default configuration is invalid: {e}"),
        }
    }

    /// Reads and validates a configuration file; also returns the bytes it was parsed from, so
    /// a watcher can tell later changes from this version without reading the file again.
    pub fn read(path: &Path) -> Result<(Self, Vec<u8>), ConfigError> {
        let source = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| ConfigError::unreadable_file(&source, &e))?;
        Self::from_bytes(&bytes, &source).map(|config| (config, bytes))
    }

    /// The one loader every command uses (`serve`, its reloads, `check-config`, `explain`,
    /// `review`): size, UTF-8, then the configuration itself, the ConfigMap that ships it (its
    /// `config.yaml` key) or the output of `kubectl kustomize` with that ConfigMap in it.
    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<Self, ConfigError> {
        document::from_document(text_of(bytes, source)?, source)
    }

    /// Parses and validates YAML text; `source` names it in errors.
    pub fn from_yaml(text: &str, source: &str) -> Result<Self, ConfigError> {
        // The path of the field being read when it failed (`channels[0].name`), so that a
        // message such as "expected string scalar" names its field.
        let mut path = String::new();
        let raw: Result<RawConfig, _> = serde_saphyr::with_deserializer_from_str(text, |de| {
            serde_path_to_error::deserialize(de).map_err(|e| {
                // `Spanned` fields add a `.value` step of their own.
                path = e.path().to_string().replace(".value", "");
                e.into_inner()
            })
        });
        let raw = raw.map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            let reason = one_line(&e.without_snippet().to_string());
            ConfigError {
                source: source.to_owned(),
                line,
                column,
                reason: if path.is_empty() || path == "." || reason.contains(&path) {
                    reason
                } else {
                    format!("{path}: {reason}")
                },
            }
        })?;
        Checker { source }.check(raw)
    }

    /// The channel with this name.
    pub fn channel(&self, name: &str) -> Option<&Channel> {
        self.channels.iter().find(|c| c.name == name)
    }

    /// What is valid but surely not meant: routes that can never match. `kinds` are the
    /// kinds known (the built-in table), each with whether it is namespaced.
    pub fn warnings(&self, kinds: &[(&str, bool)]) -> Vec<ConfigWarning> {
        let mut out = Vec::new();
        let mut catch_all: Option<u64> = None;
        for route in &self.routes {
            let m = &route.matcher;
            let shadowed = catch_all.map(|before| {
                format!(
                    "this route can never match: the route at line {before} takes every event before it"
                )
            });
            if m.is_catch_all() && catch_all.is_none() {
                catch_all = Some(route.line);
            }
            let messages = shadowed
                .into_iter()
                .chain(m.kinds.iter().filter_map(|kind| kind_warning(kind, kinds)))
                .chain(m.types.iter().filter_map(|t| type_warning(t)))
                .chain(m.groups.iter().filter_map(|g| group_warning(g)));
            out.extend(messages.map(|message| ConfigWarning {
                source: self.source.clone(),
                line: route.line,
                message,
            }));
        }
        out.extend(self.ceiling_warning());
        out.extend(self.otlp_warning());
        out
    }

    /// An `otlp:` section no channel uses: nothing is exported.
    fn otlp_warning(&self) -> Option<ConfigWarning> {
        let otlp = self.otlp.as_ref()?;
        (!self.channels.iter().any(|c| c.otlp)).then(|| ConfigWarning {
            source: self.source.clone(),
            line: otlp.line,
            message: "otlp: no channel has otlp: true, so nothing is exported".to_owned(),
        })
    }

    /// A subscription ceiling whose kinds no allowed relation covers: no subscription can
    /// ever be accepted for them (`relations: [owned], kinds: [Node]`).
    fn ceiling_warning(&self) -> Option<ConfigWarning> {
        let ceiling = self.subscriptions.as_ref()?;
        let uncovered: Vec<&str> = ceiling
            .kinds
            .iter()
            .filter(|kind| {
                !ceiling
                    .relations
                    .iter()
                    .any(|r| r.covers(kind, &self.owner_rules))
            })
            .map(String::as_str)
            .collect();
        if uncovered.is_empty() {
            return None;
        }
        let relations: Vec<&str> = ceiling.relations.iter().map(|r| r.as_str()).collect();
        Some(ConfigWarning {
            source: self.source.clone(),
            line: ceiling.line,
            message: format!(
                "subscriptions: no allowed relation ({}) covers {}: no subscription can be accepted for it (Node and CSINode need nodes; PersistentVolume, VolumeAttachment and Namespace need owned)",
                relations.join(", "),
                uncovered.join(", ")
            ),
        })
    }
}

/// A route's kind that surely does not mean what it says: a namespaced kind (`kinds` says
/// which are), or a name the API never writes (lower case, a plural).
fn kind_warning(kind: &str, kinds: &[(&str, bool)]) -> Option<String> {
    if let Some(&(_, namespaced)) = kinds.iter().find(|(k, _)| *k == kind) {
        return namespaced.then(|| {
            format!(
                "kinds: {kind} is namespaced: its events are never labelled or routed (only events about cluster-scoped objects are)"
            )
        });
    }
    let lower = kind.to_ascii_lowercase();
    let meant = kinds.iter().map(|(k, _)| *k).find(|k| {
        let k = k.to_ascii_lowercase();
        lower == k || lower == format!("{k}s") || lower == format!("{k}es")
    });
    match meant {
        Some(k) => Some(format!(
            "kinds: {kind:?} never matches: kinds compare exactly with the Kind as the API writes it; did you mean {k:?}?"
        )),
        None if kind.starts_with(|c: char| c.is_ascii_lowercase()) => Some(format!(
            "kinds: {kind:?} probably never matches: Kinds are CamelCase, as the API writes them (Node, PersistentVolume)"
        )),
        None => None,
    }
}

/// A route's event type other than Normal and Warning.
fn type_warning(type_: &str) -> Option<String> {
    if type_ == "Normal" || type_ == "Warning" {
        return None;
    }
    let hint = ["Normal", "Warning"]
        .into_iter()
        .find(|t| t.eq_ignore_ascii_case(type_))
        .map_or_else(String::new, |t| format!("; did you mean {t:?}?"));
    Some(format!(
        "types: {type_:?} never matches: event types are Normal and Warning{hint}"
    ))
}

/// A route's group written as a version (`v1`) or an apiVersion (`apps/v1`).
fn group_warning(group: &str) -> Option<String> {
    let version_like = group.strip_prefix('v').is_some_and(|rest| {
        rest.starts_with(|c: char| c.is_ascii_digit())
            && rest.chars().all(|c| c.is_ascii_alphanumeric())
    });
    if !version_like && !group.contains('/') {
        return None;
    }
    let hint = group.split_once('/').map_or_else(
        || " (the core group, whose apiVersion is v1, is \"\" or core)".to_owned(),
        |(g, _)| format!("; did you mean {g:?}?"),
    );
    Some(format!(
        "groups: {group:?} never matches: groups are API groups without their version{hint}"
    ))
}

/// Something valid in a configuration that is surely not meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub source: String,
    pub line: u64,
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.source, self.line, self.message)
    }
}

/// The first line of a message, without a trailing location that we report ourselves.
fn one_line(msg: &str) -> String {
    let first = msg
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("invalid YAML");
    // A trailing "at line L, column C" is said by us (file:line:column); one inside the
    // message, such as "(defined at line 2, column 8) (used at line 5, column 9)", stays.
    let first = first
        .rfind(" at line ")
        .filter(|&i| {
            let tail = &first[i + " at line ".len()..];
            tail.split_once(", column ").is_some_and(|(l, c)| {
                !l.is_empty()
                    && l.bytes().all(|b| b.is_ascii_digit())
                    && !c.is_empty()
                    && c.bytes().all(|b| b.is_ascii_digit())
            })
        })
        .map_or(first, |i| &first[..i]);
    // Drop the parser's advice to its own API user.
    first
        .split(", set DuplicateKeyPolicy")
        .next()
        .unwrap_or(first)
        .to_owned()
}

struct Checker<'s> {
    source: &'s str,
}

impl Checker<'_> {
    fn err<T>(&self, at: &Spanned<T>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            source: self.source.to_owned(),
            line: at.referenced.line(),
            column: at.referenced.column(),
            reason: reason.into(),
        }
    }

    fn check(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let label_prefix = self.check_label_prefix(raw.label_prefix.as_ref())?;
        let keys = Keys::new(&label_prefix);
        let channels = self.check_channels(raw.channels.as_ref(), &keys.all())?;
        let routes = raw
            .routes
            .iter()
            .map(|r| self.check_route(r, &channels))
            .collect::<Result<_, _>>()?;
        let owner_rules = self.check_owner_rules(&raw.owner_rules)?;
        let otlp = match &raw.otlp {
            Some(o) => Some(self.check_otlp(o)?),
            None => None,
        };
        self.check_otlp_channels(raw.channels.as_ref(), otlp.is_some())?;
        Ok(Config {
            otlp,
            source: self.source.to_owned(),
            label_prefix,
            keys,
            channels,
            routes,
            owner_rules,
            history: match &raw.history {
                Some(h) => self.check_history(&h.value)?,
                None => History::default(),
            },
            subscriptions: match &raw.subscriptions {
                Some(s) => Some(Subscriptions {
                    line: s.referenced.line(),
                    ..self.check_subscriptions(&s.value)?
                }),
                None => None,
            },
        })
    }

    /// `labelPrefix:` (default `clusterscope.dev`): a DNS subdomain short enough that the
    /// longest key written with it is still a valid qualified name.
    fn check_label_prefix(&self, raw: Option<&Spanned<String>>) -> Result<String, ConfigError> {
        let Some(p) = raw else {
            return Ok(DEFAULT_LABEL_PREFIX.to_owned());
        };
        check_dns1123_subdomain(&p.value).map_err(|e| self.err(p, format!("labelPrefix {e}")))?;
        check_qualified_name(&Keys::new(&p.value).involved_object)
            .map_err(|e| self.err(p, format!("labelPrefix: {e}")))?;
        Ok(p.value.clone())
    }

    /// `channels:`: at least one, each name once.
    fn check_channels(
        &self,
        raw: Option<&Spanned<Vec<RawChannel>>>,
        reserved: &[&str],
    ) -> Result<Vec<Channel>, ConfigError> {
        let Some(raw_channels) = raw else {
            return Err(ConfigError {
                source: self.source.to_owned(),
                line: 1,
                column: 1,
                reason: "no `channels`: define at least one channel".to_owned(),
            });
        };
        if raw_channels.value.is_empty() {
            return Err(self.err(
                raw_channels,
                "`channels` is empty: define at least one channel",
            ));
        }
        let mut seen = HashSet::new();
        raw_channels
            .value
            .iter()
            .map(|ch| {
                if !seen.insert(ch.name.value.as_str()) {
                    return Err(
                        self.err(&ch.name, format!("duplicate channel {:?}", ch.name.value))
                    );
                }
                self.check_channel(ch, reserved)
            })
            .collect()
    }

    /// One channel: its name, extras, namespace and delivery rules.
    fn check_channel(&self, ch: &RawChannel, reserved: &[&str]) -> Result<Channel, ConfigError> {
        let name = &ch.name;
        check_dns1123_label(&name.value)
            .map_err(|e| self.err(name, format!("channel name {e}")))?;
        let labels = self.extras(&name.value, "label", &ch.labels, reserved, true)?;
        let annotations =
            self.extras(&name.value, "annotation", &ch.annotations, reserved, false)?;
        let namespace = match &ch.namespace {
            None => None,
            Some(ns) => Some(self.check_channel_namespace(&name.value, ns)?),
        };
        let deliver = match &ch.deliver {
            Some(d) => self.check_deliver(&name.value, d)?,
            None => crate::owners::Rules::default(),
        };
        Ok(Channel {
            name: name.value.clone(),
            namespace,
            log: ch.log,
            history: ch.history,
            labels,
            annotations,
            deliver,
            otlp: ch.otlp,
            copies: ch.copies.unwrap_or(true),
        })
    }

    /// A channel with `otlp: true` needs the `otlp:` section that says where to export.
    fn check_otlp_channels(
        &self,
        raw: Option<&Spanned<Vec<RawChannel>>>,
        section: bool,
    ) -> Result<(), ConfigError> {
        let wanting = raw.into_iter().flat_map(|c| &c.value).find(|c| c.otlp);
        match wanting {
            Some(ch) if !section => Err(self.err(
                &ch.name,
                format!(
                    "channel {:?} has otlp: true, but there is no top-level otlp: section saying where to export (endpoint, protocol, ...)",
                    ch.name.value
                ),
            )),
            _ => Ok(()),
        }
    }

    /// A channel's `namespace:`: a DNS label, and not where the sources live.
    fn check_channel_namespace(
        &self,
        channel: &str,
        ns: &Spanned<String>,
    ) -> Result<String, ConfigError> {
        check_dns1123_label(&ns.value)
            .map_err(|e| self.err(ns, format!("channel {channel:?}: namespace {e}")))?;
        if ns.value == "default" || ns.value == "kube-system" {
            return Err(self.err(
                ns,
                format!(
                    "channel {channel:?}: cannot mirror into {:?}: events about cluster-scoped objects already live there",
                    ns.value
                ),
            ));
        }
        Ok(ns.value.clone())
    }

    /// One route: a channel defined under `channels`, and its match.
    fn check_route(&self, r: &RawRoute, channels: &[Channel]) -> Result<Route, ConfigError> {
        let Some(channel) = channels.iter().position(|c| c.name == r.channel.value) else {
            return Err(self.err(
                &r.channel,
                format!(
                    "route names channel {:?}, which is not defined under `channels`",
                    r.channel.value
                ),
            ));
        };
        let matcher = match &r.matcher {
            Some(m) => self.check_match(&m.value)?,
            None => Match::default(),
        };
        Ok(Route {
            channel,
            line: r.channel.referenced.line(),
            matcher,
        })
    }

    /// `ownerRules:`: one rule per group and kind.
    fn check_owner_rules(
        &self,
        raw: &[Spanned<RawOwnerRule>],
    ) -> Result<Vec<crate::owners::CustomRule>, ConfigError> {
        let mut owner_rules: Vec<crate::owners::CustomRule> = Vec::new();
        for raw in raw {
            let rule = self.check_owner_rule(raw)?;
            if owner_rules
                .iter()
                .any(|r| r.group == rule.group && r.kind == rule.kind)
            {
                return Err(self.err(
                    raw,
                    format!("ownerRules: a second rule for {}/{}", rule.group, rule.kind),
                ));
            }
            owner_rules.push(rule);
        }
        Ok(owner_rules)
    }

    /// `history:`: the retention, a duration such as `30d` or `12h`.
    fn check_history(&self, raw: &RawHistory) -> Result<History, ConfigError> {
        let Some(r) = &raw.retention else {
            return Ok(History::default());
        };
        let retention = humantime::parse_duration(r.value.trim()).map_err(|e| {
            self.err(
                r,
                format!(
                    "history.retention {:?} is not a duration such as 30d or 12h: {e}",
                    r.value
                ),
            )
        })?;
        if retention < MIN_RETENTION {
            return Err(self.err(
                r,
                format!(
                    "history.retention {:?} is shorter than 1h, the time events live in etcd: the history would hold less than the API server",
                    r.value
                ),
            ));
        }
        Ok(History { retention })
    }

    /// `subscriptions:`: relations, kinds as the API writes them, and bounded caps.
    fn check_subscriptions(&self, raw: &RawSubscriptions) -> Result<Subscriptions, ConfigError> {
        let defaults = Subscriptions::default();
        for kind in &raw.kinds {
            if !kind.value.starts_with(|c: char| c.is_ascii_uppercase())
                || !kind.value.chars().all(|c| c.is_ascii_alphanumeric())
            {
                return Err(self.err(
                    kind,
                    format!(
                        "subscriptions.kinds: {:?} is not a Kind as the API writes it (Node, PersistentVolume)",
                        kind.value
                    ),
                ));
            }
        }
        let bounded = |field: &str, v: &Option<Spanned<u64>>, max: u64, default: u64| match v {
            None => Ok(default),
            Some(n) if (1..=max).contains(&n.value) => Ok(n.value),
            Some(n) => Err(self.err(
                n,
                format!(
                    "subscriptions.{field}: {} is not between 1 and {max}",
                    n.value
                ),
            )),
        };
        Ok(Subscriptions {
            relations: raw.relations.clone().unwrap_or(defaults.relations),
            kinds: raw.kinds.iter().map(|k| k.value.clone()).collect(),
            history: raw.history,
            max_per_namespace: bounded(
                "maxPerNamespace",
                &raw.max_per_namespace,
                1000,
                defaults.max_per_namespace as u64,
            )? as usize,
            deliveries_per_second: bounded(
                "deliveriesPerSecond",
                &raw.deliveries_per_second,
                10_000,
                u64::from(defaults.deliveries_per_second),
            )? as u32,
            line: defaults.line,
        })
    }

    /// One `ownerRules` entry: a custom kind (its group, version, kind and plural resource)
    /// and exactly one field, naming a namespace or a Node.
    fn check_owner_rule(
        &self,
        raw: &Spanned<RawOwnerRule>,
    ) -> Result<crate::owners::CustomRule, ConfigError> {
        use crate::owners::FieldHolds;
        let r = &raw.value;
        let what = |e: String| self.err(raw, format!("ownerRules: {}/{}: {e}", r.group, r.kind));
        check_dns1123_subdomain(&r.group).map_err(|e| {
            what(format!(
                "group {e} (custom resources only: built-in kinds have their own rules)"
            ))
        })?;
        if !r.group.contains('.') || r.group.ends_with(".k8s.io") {
            return Err(what(
                "group: name the API group of a custom resource (example.com); built-in kinds have their own rules".to_owned(),
            ));
        }
        check_dns1123_label(&r.resource).map_err(|e| what(format!("resource {e}")))?;
        check_dns1123_label(&r.version).map_err(|e| what(format!("version {e}")))?;
        if r.kind.is_empty() || !r.kind.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(what(format!("kind {:?} is not a Kind name", r.kind)));
        }
        let (field, follows) = match (&r.namespace_field, &r.node_field) {
            (Some(f), None) => (f, FieldHolds::Namespace),
            (None, Some(f)) => (f, FieldHolds::Node),
            _ => {
                return Err(what(
                    "give exactly one of namespaceField (a field holding a namespace) and nodeField (a field holding a Node's name)".to_owned(),
                ));
            }
        };
        let steps: Vec<String> = field.split('.').map(str::to_owned).collect();
        if steps.iter().any(String::is_empty) {
            return Err(what(format!(
                "field {field:?}: a dotted path such as spec.claimRef.namespace"
            )));
        }
        if steps[0] == "metadata" {
            return Err(what(format!(
                "field {field:?}: fields under metadata are not read; name one under spec or status"
            )));
        }
        Ok(crate::owners::CustomRule {
            group: r.group.clone(),
            version: r.version.clone(),
            kind: r.kind.clone(),
            resource: r.resource.clone(),
            field: steps,
            follows,
        })
    }

    /// A channel's `deliver:` rules.
    fn check_deliver(
        &self,
        channel: &str,
        raw: &Spanned<RawDeliver>,
    ) -> Result<crate::owners::Rules, ConfigError> {
        let d = &raw.value;
        let node_pods = match &d.node_pods {
            None => None,
            Some(n) => {
                let defaults = crate::owners::NodePods::default();
                let types = n.value.types.clone().unwrap_or(defaults.types);
                if types.is_empty() {
                    return Err(self.err(
                        n,
                        format!("channel {channel:?}: deliver.nodePods.types is empty: name Warning, Normal or both"),
                    ));
                }
                if let Some(t) = types.iter().find(|t| *t != "Warning" && *t != "Normal") {
                    return Err(self.err(
                        n,
                        format!("channel {channel:?}: deliver.nodePods.types: {t:?} is not an event type (Warning or Normal)"),
                    ));
                }
                let max = n.value.max_namespaces.unwrap_or(defaults.max_namespaces);
                if !(1..=MAX_NODE_NAMESPACES).contains(&max) {
                    return Err(self.err(
                        n,
                        format!("channel {channel:?}: deliver.nodePods.maxNamespaces must be 1 to {MAX_NODE_NAMESPACES}, not {max}"),
                    ));
                }
                Some(crate::owners::NodePods {
                    types,
                    max_namespaces: max,
                })
            }
        };
        let namespace_selector = match &d.namespace_selector {
            None => None,
            Some(sel) => Some(self.check_selector(channel, sel)?),
        };
        let rules = crate::owners::Rules {
            owners: d.owners,
            node_pods,
            namespace_selector,
        };
        if !rules.any() {
            return Err(self.err(
                raw,
                format!("channel {channel:?}: `deliver` names no rule: set owners: true, nodePods or namespaceSelector"),
            ));
        }
        Ok(rules)
    }

    fn check_selector(
        &self,
        channel: &str,
        sel: &Spanned<RawSelector>,
    ) -> Result<kube::core::Selector, ConfigError> {
        use kube::core::Expression;
        let what = |e: String| {
            self.err(
                sel,
                format!("channel {channel:?}: deliver.namespaceSelector: {e}"),
            )
        };
        if sel.value.match_labels.is_empty() && sel.value.match_expressions.is_empty() {
            return Err(what(
                "empty: it would deliver to every namespace; name labels the namespaces carry"
                    .to_owned(),
            ));
        }
        let mut expressions = Vec::new();
        for (key, value) in &sel.value.match_labels {
            check_qualified_name(key).map_err(|e| what(format!("label key {key:?}: {e}")))?;
            check_label_value(value).map_err(|e| what(format!("label {key:?}: {e}")))?;
            expressions.push(Expression::Equal(key.clone(), value.clone()));
        }
        for r in &sel.value.match_expressions {
            check_qualified_name(&r.key)
                .map_err(|e| what(format!("label key {:?}: {e}", r.key)))?;
            let values = r.values.iter().cloned().collect();
            let needs_values = |op: &str| {
                if r.values.is_empty() {
                    Err(what(format!("{op} on {:?} needs values", r.key)))
                } else {
                    Ok(())
                }
            };
            let no_values = |op: &str| {
                if r.values.is_empty() {
                    Ok(())
                } else {
                    Err(what(format!("{op} on {:?} takes no values", r.key)))
                }
            };
            expressions.push(match r.operator.as_str() {
                "In" => needs_values("In").map(|()| Expression::In(r.key.clone(), values))?,
                "NotIn" => {
                    needs_values("NotIn").map(|()| Expression::NotIn(r.key.clone(), values))?
                }
                "Exists" => no_values("Exists").map(|()| Expression::Exists(r.key.clone()))?,
                "DoesNotExist" => {
                    no_values("DoesNotExist").map(|()| Expression::DoesNotExist(r.key.clone()))?
                }
                other => {
                    return Err(what(format!(
                        "operator {other:?} on {:?}: use In, NotIn, Exists or DoesNotExist",
                        r.key
                    )));
                }
            });
        }
        Ok(expressions.into_iter().collect())
    }

    /// A channel's extra labels or annotations: valid keys, none of clusterscope's own, and
    /// (for labels) valid values; sorted by key.
    fn extras(
        &self,
        channel: &str,
        what: &str,
        entries: &BTreeMap<String, Spanned<String>>,
        reserved: &[&str],
        check_values: bool,
    ) -> Result<Vec<(String, String)>, ConfigError> {
        let mut out = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            check_qualified_name(key)
                .map_err(|e| self.err(value, format!("channel {channel:?}: {what} {e}")))?;
            if reserved.contains(&key.as_str()) {
                return Err(self.err(
                    value,
                    format!("channel {channel:?}: {what} key {key:?} is reserved for clusterscope"),
                ));
            }
            if check_values {
                check_label_value(&value.value).map_err(|e| {
                    self.err(value, format!("channel {channel:?}: {what} {key:?}: {e}"))
                })?;
            }
            out.push((key.clone(), value.value.clone()));
        }
        Ok(out)
    }

    fn list(
        &self,
        field: &str,
        list: &Option<Spanned<Vec<String>>>,
    ) -> Result<Vec<String>, ConfigError> {
        match list {
            None => Ok(Vec::new()),
            Some(l) if l.value.is_empty() => Err(self.err(
                l,
                format!("`{field}` is empty and would match nothing; omit it to match any value"),
            )),
            Some(l) => Ok(l.value.clone()),
        }
    }

    fn regex(
        &self,
        field: &str,
        re: &Option<Spanned<String>>,
    ) -> Result<Option<Regex>, ConfigError> {
        let Some(re) = re else { return Ok(None) };
        regex::RegexBuilder::new(&re.value)
            .size_limit(MAX_REGEX_BYTES)
            .build()
            .map(Some)
            .map_err(|e| {
                let detail = e.to_string();
                let last = detail
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("");
                let last = last.trim().trim_start_matches("error: ");
                self.err(
                    re,
                    format!("`{field}` is not a valid regular expression: {last}"),
                )
            })
    }

    fn check_match(&self, m: &RawMatch) -> Result<Match, ConfigError> {
        Ok(Match {
            kinds: self.list("kinds", &m.kinds)?,
            groups: self
                .list("groups", &m.groups)?
                .into_iter()
                .map(|g| {
                    if g == crate::route::CORE_GROUP {
                        String::new()
                    } else {
                        g
                    }
                })
                .collect(),
            reasons: self.list("reasons", &m.reasons)?,
            types: self.list("types", &m.types)?,
            reporting_controllers: self.list("reportingControllers", &m.reporting_controllers)?,
            name: self.regex("name", &m.name)?,
            message: self.regex("message", &m.message)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(yaml: &str) -> ConfigError {
        match Config::from_yaml(yaml, "test.yaml") {
            Ok(_) => panic!("accepted:\n{yaml}"),
            Err(e) => e,
        }
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded_default();
        assert_eq!(c.label_prefix, "clusterscope.dev");
        let names: Vec<_> = c.channels.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["nodes", "storage", "cluster"]);
        assert_eq!(c.routes.len(), 3);
    }

    #[test]
    fn unknown_field_names_its_line() {
        let e = err("channels:\n  - name: a\n    colour: red\n");
        assert_eq!(e.line, 3, "{e}");
        assert!(e.reason.contains("colour"), "{e}");
        assert!(e.to_string().starts_with("test.yaml:3:"), "{e}");
    }

    #[test]
    fn only_a_trailing_location_is_cut_from_a_parser_message() {
        assert_eq!(
            one_line("expected string scalar at line 2, column 8"),
            "expected string scalar"
        );
        let inner =
            "expected string scalar (defined at line 2, column 8) (used at line 5, column 9)";
        assert_eq!(one_line(inner), inner);
        assert_eq!(one_line("\n  first line\nsecond"), "first line");
    }

    #[test]
    fn duplicate_channel() {
        let e = err("channels:\n  - name: a\n  - name: a\n");
        assert_eq!((e.line, e.reason.as_str()), (3, "duplicate channel \"a\""));
    }

    #[test]
    fn bad_regex() {
        let e = err(
            "channels: [{name: a}]\nroutes:\n  - channel: a\n    match:\n      name: 'node-(['\n",
        );
        assert_eq!(e.line, 5, "{e}");
        assert!(
            e.reason
                .contains("`name` is not a valid regular expression"),
            "{e}"
        );
    }

    #[test]
    fn bad_labels_and_names() {
        let e = err("channels:\n  - name: a\n    labels:\n      team: 'no spaces'\n");
        assert_eq!(e.line, 4, "{e}");
        assert!(e.reason.contains("only letters, digits"), "{e}");
        let e = err("channels:\n  - name: a\n    labels:\n      'Bad Key': x\n");
        assert!(e.reason.contains("Bad Key"), "{e}");
        let e = err("channels:\n  - name: a\n    labels:\n      clusterscope.dev/channel: x\n");
        assert!(e.reason.contains("reserved"), "{e}");
        let e = err("channels:\n  - name: Nodes\n");
        assert_eq!(e.line, 2);
        let e = err("labelPrefix: Example.com\nchannels: [{name: a}]\n");
        assert_eq!(e.line, 1);
    }

    #[test]
    fn channel_namespaces() {
        let c = Config::from_yaml(
            "channels:\n  - name: a\n    namespace: team-a\n    log: true\n  - name: b\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.channels[0].namespace.as_deref(), Some("team-a"));
        assert!(c.channels[0].log && !c.channels[1].log);
        assert_eq!(c.channels[1].namespace, None);
        let e = err("channels:\n  - name: a\n    namespace: Team_A\n");
        assert_eq!(e.line, 3, "{e}");
        let e = err("channels:\n  - name: a\n    namespace: default\n");
        assert!(e.reason.contains("already live there"), "{e}");
        let e = err("channels:\n  - name: a\n    annotations: {clusterscope.dev/source-uid: x}\n");
        assert!(e.reason.contains("reserved"), "{e}");
    }

    #[test]
    fn delivery_rules() {
        let c = Config::from_yaml(
            "channels:\n  - name: storage\n    deliver:\n      owners: true\n  - name: nodes\n    deliver:\n      nodePods: {types: [Warning, Normal], maxNamespaces: 7}\n      namespaceSelector:\n        matchLabels: {team: a}\n        matchExpressions: [{key: tier, operator: NotIn, values: [dev]}]\n",
            "t",
        )
        .unwrap();
        let storage = &c.channels[0].deliver;
        assert!(storage.owners && storage.node_pods.is_none());
        let nodes = &c.channels[1].deliver;
        let pods = nodes.node_pods.as_ref().unwrap();
        assert_eq!((pods.types.len(), pods.max_namespaces), (2, 7));
        let selector = nodes.namespace_selector.as_ref().unwrap();
        use kube::core::SelectorExt;
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(selector.matches(&labels(&[("team", "a")])));
        assert!(!selector.matches(&labels(&[("team", "a"), ("tier", "dev")])));
        assert!(!selector.matches(&labels(&[("team", "b")])));
        // Defaults: Warning only, 50 namespaces.
        let c = Config::from_yaml("channels:\n  - name: n\n    deliver: {nodePods: {}}\n", "t")
            .unwrap();
        let pods = c.channels[0].deliver.node_pods.clone().unwrap();
        assert_eq!(
            (pods.types, pods.max_namespaces),
            (vec!["Warning".to_owned()], 50)
        );
        assert!(
            !Config::embedded_default()
                .channels
                .iter()
                .any(|c| c.deliver.any())
        );
    }

    #[test]
    fn bad_delivery_rules_are_refused_with_the_line() {
        for (yaml, says, line) in [
            (
                "channels:\n  - name: n\n    deliver: {}\n",
                "names no rule",
                3,
            ),
            (
                "channels:\n  - name: n\n    deliver:\n      nodePods: {types: [warning]}\n",
                "not an event type",
                4,
            ),
            (
                "channels:\n  - name: n\n    deliver:\n      nodePods: {types: []}\n",
                "is empty",
                4,
            ),
            (
                "channels:\n  - name: n\n    deliver:\n      nodePods: {maxNamespaces: 0}\n",
                "must be 1 to 1000",
                4,
            ),
            (
                "channels:\n  - name: n\n    deliver:\n      namespaceSelector: {}\n",
                "every namespace",
                4,
            ),
            (
                "channels:\n  - name: n\n    deliver:\n      namespaceSelector: {matchLabels: {\"bad key!\": x}}\n",
                "label key",
                4,
            ),
            (
                "channels:\n  - name: n\n    deliver:\n      namespaceSelector:\n        matchExpressions: [{key: a, operator: Equals, values: [b]}]\n",
                "use In, NotIn",
                5,
            ),
            (
                "channels:\n  - name: n\n    deliver:\n      namespaceSelector:\n        matchExpressions: [{key: a, operator: In}]\n",
                "needs values",
                5,
            ),
            (
                "channels:\n  - name: n\n    deliver:\n      namespaceSelector:\n        matchExpressions: [{key: a, operator: Exists, values: [b]}]\n",
                "takes no values",
                5,
            ),
            (
                "channels:\n  - name: n\n    deliver: {owner: true}\n",
                "owner",
                3,
            ),
        ] {
            let e = err(yaml);
            assert!(e.reason.contains(says), "{yaml}: {e}");
            assert_eq!(e.line, line, "{yaml}: {e}");
        }
    }

    #[test]
    fn owner_rules_for_custom_kinds() {
        let c = Config::from_yaml(
            "channels: [{name: a, deliver: {owners: true}}]\nownerRules:\n  - {group: karpenter.sh, version: v1, kind: NodeClaim, resource: nodeclaims, nodeField: status.nodeName}\n  - {group: example.com, version: v1alpha1, kind: Disk, resource: disks, namespaceField: spec.claimRef.namespace}\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.owner_rules.len(), 2);
        assert_eq!(c.owner_rules[0].follows, crate::owners::FieldHolds::Node);
        assert_eq!(c.owner_rules[1].field, ["spec", "claimRef", "namespace"]);
        let rule = |body: &str| format!("channels: [{{name: a}}]\nownerRules:\n  - {{{body}}}\n");
        for (body, says) in [
            (
                "group: example.com, version: v1, kind: Disk, resource: disks",
                "exactly one of",
            ),
            (
                "group: example.com, version: v1, kind: Disk, resource: disks, namespaceField: a, nodeField: b",
                "exactly one of",
            ),
            (
                "group: storage.k8s.io, version: v1, kind: CSINode, resource: csinodes, nodeField: metadata.name",
                "built-in kinds",
            ),
            (
                "group: example.com, version: v1, kind: Disk, resource: disks, namespaceField: metadata.namespace",
                "under metadata",
            ),
            (
                "group: example.com, version: v1, kind: Disk, resource: disks, namespaceField: spec..ns",
                "dotted path",
            ),
            (
                "group: example.com, version: v1, kind: Disk, resource: Disks, namespaceField: spec.ns",
                "resource",
            ),
            (
                "group: example.com, version: v1, kind: 'Di sk', resource: disks, namespaceField: spec.ns",
                "not a Kind",
            ),
        ] {
            let e = err(&rule(body));
            assert!(e.reason.contains(says), "{body}: {e}");
            assert_eq!(e.line, 3, "{body}: {e}");
        }
        let twice = "channels: [{name: a}]\nownerRules:\n  - {group: example.com, version: v1, kind: Disk, resource: disks, namespaceField: spec.a}\n  - {group: example.com, version: v2, kind: Disk, resource: disks, namespaceField: spec.b}\n";
        assert!(err(twice).reason.contains("a second rule"));
    }

    #[test]
    fn route_to_undefined_channel() {
        let e = err("channels: [{name: a}]\nroutes:\n  - channel: b\n");
        assert_eq!(e.line, 3);
        assert!(e.reason.contains("not defined"), "{e}");
    }

    #[test]
    fn empty_lists_and_missing_channels() {
        let e = err("channels: [{name: a}]\nroutes:\n  - channel: a\n    match: {kinds: []}\n");
        assert!(e.reason.contains("`kinds` is empty"), "{e}");
        assert!(err("routes: []\n").reason.contains("no `channels`"));
        assert!(err("channels: []\n").reason.contains("empty"));
    }

    #[test]
    fn duplicate_keys_and_wrong_types() {
        let e = err("channels: [{name: a}]\nchannels: [{name: b}]\n");
        assert_eq!(e.line, 2, "{e}");
        let e = err("channels: [{name: a}]\nroutes: 5\n");
        assert_eq!(e.line, 2, "{e}");
    }

    #[test]
    fn core_group_alias() {
        let c = Config::from_yaml(
            "channels: [{name: a}]\nroutes: [{channel: a, match: {groups: [core]}}]\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.routes[0].matcher.groups, [String::new()]);
    }
}

#[cfg(test)]
mod route_tests {
    use super::*;

    fn facts<'a>(group: &'a str, kind: &'a str) -> EventFacts<'a> {
        EventFacts {
            group,
            kind,
            name: "n1",
            reason: "R",
            type_: "Normal",
            reporter: "kubelet",
            message: "hello world",
        }
    }

    #[test]
    fn default_routes() {
        let c = Config::embedded_default();
        let ch = |g, k| c.route(&facts(g, k)).map(|c| c.name.as_str());
        assert_eq!(ch("", "Node"), Some("nodes"));
        assert_eq!(ch("", "PersistentVolume"), Some("storage"));
        assert_eq!(
            ch("storage.k8s.io", "VolumeAttributesClass"),
            Some("storage")
        );
        assert_eq!(
            ch("rbac.authorization.k8s.io", "ClusterRole"),
            Some("cluster")
        );
        assert_eq!(ch("example.com", "Widget"), Some("cluster"));
    }

    #[test]
    fn all_given_fields_must_match_and_first_route_wins() {
        let c = Config::from_yaml(
            r#"
channels: [{name: a}, {name: b}, {name: c}]
routes:
  - channel: a
    match: {kinds: [Node], types: [Warning], message: 'disk (full|pressure)'}
  - channel: b
    match: {reportingControllers: [kubelet], name: '^n\d$', groups: [core]}
  - channel: c
    match: {reasons: [Other]}
"#,
            "t",
        )
        .unwrap();
        let ch = |f: EventFacts| c.route(&f).map(|c| c.name.clone());
        let mut f = facts("", "Node");
        assert_eq!(ch(f), Some("b".into()));
        f.type_ = "Warning";
        f.message = "disk pressure on /";
        assert_eq!(ch(f), Some("a".into()));
        f.kind = "PersistentVolume";
        assert_eq!(ch(f), Some("b".into()));
        f.name = "n10";
        assert_eq!(ch(f), None);
        f.reason = "Other";
        assert_eq!(ch(f), Some("c".into()));
    }

    #[test]
    fn describe() {
        let c = Config::embedded_default();
        assert_eq!(c.routes[0].matcher.describe(), "kind in [Node]");
        assert_eq!(c.routes[2].matcher.describe(), "every event");
    }

    #[test]
    fn subscriptions_are_off_unless_the_admin_sets_a_ceiling() {
        let base = "channels:\n  - name: a\n";
        assert_eq!(Config::from_yaml(base, "t").unwrap().subscriptions, None);
        let on = Config::from_yaml(&format!("{base}subscriptions: {{}}\n"), "t").unwrap();
        assert_eq!(
            on.subscriptions,
            Some(Subscriptions {
                line: 3,
                ..Subscriptions::default()
            })
        );
        let set = Config::from_yaml(
            &format!(
                "{base}subscriptions:\n  relations: [nodes]\n  kinds: [Node]\n  history: true\n  maxPerNamespace: 3\n  deliveriesPerSecond: 20\n"
            ),
            "t",
        )
        .unwrap();
        assert_eq!(
            set.subscriptions,
            Some(Subscriptions {
                relations: vec![crate::owners::Relation::Nodes],
                kinds: vec!["Node".into()],
                history: true,
                max_per_namespace: 3,
                deliveries_per_second: 20,
                line: 4,
            })
        );
    }

    #[test]
    fn a_ceiling_no_relation_can_meet_is_warned_about() {
        let yaml = |relations: &str| {
            format!(
                "channels:\n  - name: a\nsubscriptions:\n  relations: [{relations}]\n  kinds: [Node, PersistentVolume]\n"
            )
        };
        let warned = |relations: &str| {
            Config::from_yaml(&yaml(relations), "t")
                .unwrap()
                .warnings(&[])
                .into_iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
        };
        let owned = warned("owned");
        assert_eq!(owned.len(), 1, "{owned:?}");
        assert!(
            owned[0].starts_with("t:4: subscriptions: no allowed relation (owned) covers Node:"),
            "{owned:?}"
        );
        assert!(warned("owned, nodes").is_empty());
    }

    #[test]
    fn a_subscription_ceiling_out_of_bounds_is_refused_where_it_is_written() {
        let base = "channels:\n  - name: a\nsubscriptions:\n";
        let err = |yaml: String| Config::from_yaml(&yaml, "t").unwrap_err();
        let e = err(format!("{base}  maxPerNamespace: 0\n"));
        assert_eq!(e.line, 4);
        assert!(
            e.reason
                .contains("maxPerNamespace: 0 is not between 1 and 1000"),
            "{e}"
        );
        let e = err(format!("{base}  deliveriesPerSecond: 20000\n"));
        assert!(e.reason.contains("between 1 and 10000"), "{e}");
        let e = err(format!("{base}  kinds: [nodes]\n"));
        assert!(e.reason.contains("not a Kind as the API writes it"), "{e}");
        let e = err(format!("{base}  relations: [everything]\n"));
        assert!(e.to_string().contains("everything"), "{e}");
        let e = err(format!("{base}  mode: open\n"));
        assert!(e.to_string().contains("mode"), "{e}");
    }
}
