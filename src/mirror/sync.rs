//! Bringing one stored event in line: decide what it needs ([`Syncer::plan`]): its own labels
//! if it was written without them (the webhook was down, or failed open), and its deliveries
//! (the [`Routed`] event every output plans its own deliveries from: copies, a log line, a
//! history row). The controller labels the source ([`Syncer::label`]) and hands the routed
//! event to the outputs' lanes. Idempotent: running it twice, from two replicas, or after a restart changes
//! nothing more.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, Patch, PatchParams};

use crate::classify::ScopeResolver;
use crate::decide::{Changes, Outcome, decide};
use crate::delivery::{Delivery, Failure, Operation};
use crate::mirror::outputs::{Output, Routed};
use crate::mirror::sink::CopySink;
use crate::mirror::{Placement, make_copy};
use crate::owners::{Destination, How};
use crate::subscription::Wanted;

/// Syncs stored events; cheap to clone.
#[derive(Clone)]
pub struct Syncer {
    pub client: kube::Client,
    pub config: crate::config::SharedConfig,
    pub resolver: Arc<ScopeResolver>,
    /// Where deliveries go, the copy sink first: each output plans its own deliveries of a
    /// routed event and gets its own lane; none is named here.
    pub outputs: Vec<Arc<dyn Output>>,
    /// clusterscope's own events (given-up deliveries).
    pub own_events: Arc<crate::recorder::OwnEvents>,
    /// What delivery rules read of the cluster (owners, pods on nodes, namespaces), when
    /// something keeps it.
    pub cluster: Option<crate::owners::SharedOwnerState>,
    /// The tenants' accepted Subscriptions, when something keeps them.
    pub subscriptions: Option<Arc<crate::subscription::SharedSubscriptions>>,
    /// What the copy sink may write a second (set by the controller from its options).
    pub budget: Arc<crate::mirror::budget::WriteBudget>,
}

/// A namespace a copy goes to, how it got there (the delivery label) and why.
#[derive(Debug, Clone)]
struct Place {
    namespace: String,
    how: How,
    why: Option<String>,
    /// The Subscription that asked for it (the first by name).
    subscription: Option<String>,
}

impl Place {
    /// Where and why, as every output is told.
    fn destination(&self) -> Destination {
        Destination {
            namespace: self.namespace.clone(),
            how: self.how,
            why: self
                .why
                .clone()
                .unwrap_or_else(|| "the channel's namespace".to_owned()),
        }
    }
}

/// Where one event's copies go.
#[derive(Debug, Default)]
struct Targets {
    places: Vec<Place>,
    /// Namespaces a delivery rule's cap left out.
    cut: usize,
    /// Subscription copies held back by their namespace's delivery rate.
    deferred: usize,
    /// A subscription that asked for it wants it in history too.
    history: bool,
}

impl Targets {
    /// Adds `place` unless it is a source namespace or has a copy already; whether it did.
    fn add(&mut self, place: Place) -> bool {
        let fresh = !crate::decide::SOURCE_NAMESPACES.contains(&place.namespace.as_str())
            && !self.places.iter().any(|p| p.namespace == place.namespace);
        if fresh {
            self.places.push(place);
        }
        fresh
    }

    /// Adds what a namespace's subscriptions want, if its delivery rate lets one more through
    /// now (else it is counted as deferred: the source is planned again later).
    fn subscribed(&mut self, live: &crate::subscription::SharedSubscriptions, wanted: Wanted) {
        let taken = self.places.iter().any(|p| p.namespace == wanted.namespace);
        if taken {
            return;
        }
        if !live.admit(&wanted.namespace) {
            self.deferred += 1;
            return;
        }
        self.history |= wanted.history;
        self.add(Place {
            why: Some(format!(
                "subscription {}: {}",
                wanted.subscriptions.join(", "),
                wanted.why
            )),
            subscription: wanted.subscriptions.into_iter().next(),
            namespace: wanted.namespace,
            how: How::Subscription,
        });
    }
}

/// What one source needs, decided without writing anything.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// The channel (if the event was routed).
    pub channel: Option<String>,
    /// The event is not one of ours (namespaced, mirror copy, ...).
    pub skipped: bool,
    /// A change of the source's own labels, with its operation: [`Operation::Label`] (add
    /// ours) or [`Operation::Unlabel`] (remove ours from an event that is not about a
    /// cluster-scoped object).
    pub label: Option<(Operation, Changes)>,
    /// The event as routed, which every output plans its deliveries from (none when it was
    /// skipped or routed to no channel).
    pub routed: Option<Routed>,
    /// Namespaces a delivery rule's cap left out.
    pub cut: usize,
    /// Subscription copies held back by their namespace's delivery rate: the source is
    /// planned again later.
    pub deferred: usize,
}

impl Syncer {
    /// Syncs through the copy sink (copies into channel namespaces, with its copy index);
    /// more outputs with [`Self::with_output`].
    pub fn new(
        client: kube::Client,
        config: crate::config::SharedConfig,
        resolver: Arc<ScopeResolver>,
    ) -> Self {
        let budget = Arc::new(crate::mirror::budget::WriteBudget::default());
        Syncer {
            outputs: vec![Arc::new(CopySink::new(
                client.clone(),
                config.clone(),
                budget.clone(),
            ))],
            budget,
            client,
            config,
            resolver,
            own_events: Arc::default(),
            cluster: None,
            subscriptions: None,
        }
    }

    /// Delivers to `output` too (the log stream, the history database, ...): its one
    /// registration.
    pub fn with_output(mut self, output: Arc<dyn Output>) -> Self {
        self.outputs.push(output);
        self
    }

    /// What each output would deliver of `plan`, with its name (for looking, as `explain` and
    /// the tests do; the controller hands each output its own share).
    pub fn deliveries(&self, plan: &Plan) -> Vec<(&'static str, Delivery)> {
        let Some(routed) = &plan.routed else {
            return Vec::new();
        };
        self.outputs
            .iter()
            .flat_map(|o| o.plan(routed).into_iter().map(|d| (o.name(), d)))
            .collect()
    }

    /// Resolves delivery rules against `cluster`.
    pub fn with_cluster(mut self, cluster: crate::owners::SharedOwnerState) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// Delivers what the tenants' Subscriptions in `live` ask for (read at each plan).
    pub fn with_subscriptions(
        mut self,
        live: Arc<crate::subscription::SharedSubscriptions>,
    ) -> Self {
        self.subscriptions = Some(live);
        self
    }

    /// Records clusterscope's own events (given-up deliveries) with `own_events`.
    pub fn with_own_events(mut self, own_events: Arc<crate::recorder::OwnEvents>) -> Self {
        self.own_events = own_events;
        self
    }

    /// Decides what `source` (an event as stored in `default` or `kube-system`) needs; `since`
    /// is when this state of it was first seen.
    pub fn plan(&self, source: &Event, since: Instant) -> Plan {
        // The same view the webhook decides on, borrowed from the typed event.
        let view = crate::event::EventView::from(source);
        // One consistent configuration for the whole plan, even if it is reloaded meanwhile.
        let config = self.config.load_full();
        let source_ns = source.metadata.namespace.as_deref().unwrap_or("default");
        let source_name = source.metadata.name.as_deref().unwrap_or("");
        let decision = decide(&view, source_ns, &config, &self.resolver);
        let label = |op| {
            (!source_name.is_empty() && !decision.changes.is_empty())
                .then(|| (op, decision.changes.clone()))
        };
        let Some(classified) = decision.classified.as_ref() else {
            return Plan {
                skipped: true,
                label: (decision.outcome == Outcome::Unlabelled)
                    .then(|| label(Operation::Unlabel))
                    .flatten(),
                ..Plan::default()
            };
        };
        let mut plan = Plan {
            channel: classified.channel.clone(),
            label: (decision.outcome == Outcome::Patched)
                .then(|| label(Operation::Label))
                .flatten(),
            ..Plan::default()
        };
        let Some(channel) = classified
            .channel
            .as_deref()
            .and_then(|c| config.channel(c))
        else {
            return plan;
        };
        let reference = crate::mirror::source_reference(source);
        let targets = self.targets(channel, classified, source.type_.as_deref());
        plan.cut = targets.cut;
        plan.deferred = targets.deferred;
        // The source as it is once labelled: the same line (or row) before and after the
        // label patch is stored, so it is written once.
        let mut labelled = source.clone();
        if let Some((_, changes)) = &plan.label {
            changes.apply(&mut labelled.metadata);
        }
        // `copies: false`: the channel's namespaces attribute what the other outputs write,
        // and only what a Subscription asked for is copied.
        let copies: Vec<(Destination, Event)> = targets
            .places
            .iter()
            .filter(|place| channel.copies || place.how == How::Subscription)
            .filter_map(|place| {
                let target = Placement {
                    namespace: &place.namespace,
                    how: place.how,
                    why: place.why.as_deref(),
                    subscription: place.subscription.as_deref(),
                };
                let copy = make_copy(source, classified, channel, &config, target)?;
                Some((place.destination(), copy))
            })
            .collect();
        let destinations: Vec<Destination> =
            targets.places.iter().map(Place::destination).collect();
        let mut switches = channel.switches();
        switches.history |= targets.history;
        plan.routed = Some(Routed {
            source: reference,
            event: labelled,
            channel: channel.name.clone(),
            switches,
            copies,
            destinations,
            since,
        });
        plan
    }

    /// The namespaces a channel's copy of an event goes to: the channel's own, then those
    /// its delivery rules name from the cluster state, then those subscriptions ask for (never
    /// `default` or `kube-system`, where the sources are), once each.
    fn targets(
        &self,
        channel: &crate::config::Channel,
        classified: &crate::decide::Classified,
        type_: Option<&str>,
    ) -> Targets {
        let mut targets = Targets::default();
        if let Some(ns) = &channel.namespace {
            targets.add(Place {
                namespace: ns.clone(),
                how: How::Channel,
                why: None,
                subscription: None,
            });
        }
        let subscribed = self
            .subscriptions
            .as_ref()
            .filter(|live| !live.subscribers().is_empty());
        let Some(state) = self
            .cluster
            .as_ref()
            .filter(|_| channel.deliver.any() || subscribed.is_some())
        else {
            return targets;
        };
        let state = crate::locks::read(state);
        let object = crate::owners::Object {
            group: &classified.group,
            kind: &classified.kind,
            name: &classified.name,
        };
        let type_ = type_.unwrap_or_default();
        if channel.deliver.any() {
            let resolution = state.resolve(&channel.deliver, object, type_);
            targets.cut = resolution.cut;
            for d in resolution.destinations {
                targets.add(Place {
                    namespace: d.namespace,
                    how: d.how,
                    why: Some(d.why),
                    subscription: None,
                });
            }
        }
        if let Some(live) = subscribed {
            let wanted = live
                .subscribers()
                .wanted(&state, object, type_, &classified.reason);
            for w in wanted {
                targets.subscribed(live, w);
            }
        }
        targets
    }

    /// Applies the plan's label changes to the stored source (as a merge patch): false when
    /// there are none or the source is gone already (TTL), which needs nothing more.
    pub async fn label(&self, source: &Event, plan: &Plan) -> Result<bool, Failure> {
        let Some((operation, changes)) = &plan.label else {
            return Ok(false);
        };
        let namespace = source.metadata.namespace.as_deref().unwrap_or("default");
        let name = source.metadata.name.as_deref().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        match api
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(changes.merge_patch()),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(Failure::new(*operation, e)),
        }
    }
}
