//! What `explain` judges events against beyond the configuration.
//!
//! Offline: the built-in kind table, no cluster state (a delivery rule says what it would do
//! with the kind and type, not where), and the tenants' Subscriptions only when a file of them
//! is given (each judged against the admin's ceiling; where they would deliver needs the
//! cluster). Against a cluster (`explain --cluster on`): API discovery, the cluster's state the
//! delivery rules read, listed once and trimmed as the mirror's own followers trim it
//! ([`crate::owners::live::list_once`]), and the cluster's Subscriptions (or the file's, to try
//! some before applying them), judged by the controller's own [`crate::subscription::judge`].
//! Read-only: lists and discovery, nothing written.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::Value;

use super::ExplainError;
use crate::classify::ScopeResolver;
use crate::config::Config;
use crate::errors::Chain;
use crate::owners::OwnerState;
use crate::subscription::{Judgement, Subscribers, Subscription, judge, relation_rules};

/// The Subscriptions judged against the admin's ceiling, and where they were read.
pub struct Judged {
    /// The accepted ones, as delivery reads them.
    pub subscribers: Subscribers,
    /// Every one with its verdict.
    pub verdicts: Vec<Judgement>,
    /// `the cluster`, or the file's name.
    pub from: String,
}

/// What events are judged against.
pub struct Context {
    pub resolver: ScopeResolver,
    /// The cluster's state the delivery rules read: the namespaces each event would reach.
    /// `None` offline.
    pub owners: Option<OwnerState>,
    /// `None` when no Subscriptions were read (offline without a file, or the CRD is not
    /// installed).
    pub subscriptions: Option<Judged>,
    /// What was read, for the summary: `built-in kind table`, `cluster https://...`.
    pub against: String,
}

impl Context {
    /// No cluster: the built-in kind table alone.
    pub fn offline() -> Self {
        Context {
            resolver: ScopeResolver::new(),
            owners: None,
            subscriptions: None,
            against: "the built-in kind table, no cluster".to_owned(),
        }
    }

    /// Judges `all` against `config`'s ceiling, read from `from`.
    pub fn with_subscriptions(
        mut self,
        all: Vec<Subscription>,
        config: &Config,
        from: &str,
    ) -> Self {
        let (subscribers, verdicts) = judge(all.into_iter().map(Arc::new).collect(), config);
        self.subscriptions = Some(Judged {
            subscribers,
            verdicts,
            from: from.to_owned(),
        });
        self
    }

    /// Reads the cluster at `client` (`server` names it): discovery, its Subscriptions unless
    /// `given` (from a file, named in its second part), and the state the delivery rules of
    /// `config` and of the subscriptions read.
    pub async fn live(
        client: &kube::Client,
        server: &str,
        config: &Config,
        given: Option<(Vec<Subscription>, String)>,
    ) -> Result<Self, ExplainError> {
        let resolver = ScopeResolver::new();
        crate::discovery::refresh(client, &resolver)
            .await
            .map_err(|e| {
                ExplainError(format!(
                    "cannot read the API discovery of {server}: {}",
                    Chain(&e)
                ))
            })?;
        let mut context = Context {
            resolver,
            owners: None,
            subscriptions: None,
            against: format!("cluster {server}"),
        };
        context = match given {
            Some((all, from)) => context.with_subscriptions(all, config, &from),
            None if subscriptions_served(&context.resolver) => {
                let all = cluster_subscriptions(client).await?;
                context.with_subscriptions(all, config, "the cluster")
            }
            None => context,
        };
        let needs = context.needs(config);
        let state = crate::owners::live::list_once(client, &needs)
            .await
            .map_err(|e| ExplainError(format!("{}; {READ_ONLY_RBAC}", Chain(&e))))?;
        context.owners = Some(state);
        Ok(context)
    }

    /// What the events are judged against, in words (the summary's first line).
    pub fn describe(&self) -> String {
        let Some(judged) = &self.subscriptions else {
            return self.against.clone();
        };
        let accepted = judged.verdicts.iter().filter(|j| j.verdict.is_ok()).count();
        format!(
            "{}, and {} Subscriptions from {} ({accepted} accepted)",
            self.against,
            judged.verdicts.len(),
            judged.from
        )
    }

    /// What the owner state must hold: what the channels' delivery rules read, and the
    /// relations of every Subscription read (a refused one's too, to say where it would
    /// have delivered).
    fn needs(&self, config: &Config) -> crate::owners::live::Needs {
        let mut relations: Vec<crate::owners::Relation> = self
            .subscriptions
            .iter()
            .flat_map(|j| &j.verdicts)
            .map(|j| j.subscription.spec.relation)
            .collect();
        relations.sort_by_key(|r| r.as_str());
        relations.dedup();
        let relations: Vec<crate::owners::Rules> =
            relations.into_iter().map(relation_rules).collect();
        crate::owners::live::Needs::of(
            config.channels.iter().map(|c| &c.deliver).chain(&relations),
            &config.owner_rules,
        )
    }
}

/// What `explain --cluster` needs to be allowed, said when a list is refused.
const READ_ONLY_RBAC: &str = "explain --cluster reads (list) events, namespaces, pods, persistentvolumes, volumeattachments, the ownerRules' kinds and subscriptions.clusterscope.dev: bind the clusterscope-explain ClusterRole (manifests/rbac/explain.yaml)";

/// Whether the cluster serves the Subscription kind (its CRD is installed).
fn subscriptions_served(resolver: &ScopeResolver) -> bool {
    use kube::Resource as _;
    resolver
        .scope_of(&Subscription::group(&()), &Subscription::kind(&()))
        .is_some()
}

/// Every Subscription in the cluster, in pages.
async fn cluster_subscriptions(client: &kube::Client) -> Result<Vec<Subscription>, ExplainError> {
    let mut all = Vec::new();
    crate::follow::list_pages(
        &Api::<Subscription>::all(client.clone()),
        ListParams::default().limit(500),
        |page| {
            all.extend(page);
            Ok(())
        },
        |e| {
            ExplainError(format!(
                "cannot list subscriptions.clusterscope.dev: {}; {READ_ONLY_RBAC}",
                Chain(&e)
            ))
        },
    )
    .await?;
    Ok(all)
}

/// Hands every stored event about a cluster-scoped object (those the mirror reads: in
/// `default` and `kube-system`, with no namespace in their reference) to `each`, a page at a
/// time.
pub async fn stored_events(
    client: &kube::Client,
    each: &mut dyn FnMut(String, Value) -> Result<(), ExplainError>,
) -> Result<(), ExplainError> {
    for namespace in crate::decide::SOURCE_NAMESPACES {
        let api: Api<Event> = Api::namespaced(client.clone(), namespace);
        let params = ListParams::default()
            .fields(crate::decide::SOURCE_FIELD_SELECTOR)
            .limit(500);
        let page = |events: Vec<Event>| {
            for event in events {
                let mut object = serde_json::to_value(&event).map_err(|e| {
                    ExplainError(format!("cannot read an event of {namespace}: {e}"))
                })?;
                object["apiVersion"] = Value::from("v1");
                object["kind"] = Value::from("Event");
                each(namespace.to_owned(), object)?;
            }
            Ok(())
        };
        let failed = |e: kube::Error| {
            ExplainError(format!(
                "cannot list the events in {namespace}: {}; {READ_ONLY_RBAC}",
                Chain(&e)
            ))
        };
        crate::follow::list_pages(&api, params, page, failed).await?;
    }
    Ok(())
}

/// The Subscriptions in `text` (read from `source`): a `kubectl get csub -A -o yaml|json`
/// list, or manifests (one or more YAML documents, other kinds among them skipped). Refused
/// when it holds none, or one that is not a valid Subscription (said with its place).
pub fn read_subscriptions(text: &str, source: &str) -> Result<Vec<Subscription>, ExplainError> {
    let documents: Vec<Value> = if text.trim_start().starts_with('{') {
        vec![
            serde_json::from_str(text)
                .map_err(|e| ExplainError(format!("{source}: not JSON: {e}")))?,
        ]
    } else {
        serde_saphyr::from_multiple(text)
            .map_err(|e| ExplainError(format!("{source}: not YAML: {e}")))?
    };
    let mut found = Vec::new();
    for (d, document) in documents.into_iter().enumerate() {
        let items = match document.get("items").and_then(Value::as_array) {
            Some(items) => items.clone(),
            None => vec![document],
        };
        for (i, item) in items.into_iter().enumerate() {
            if item["kind"] != "Subscription"
                || !item["apiVersion"]
                    .as_str()
                    .is_some_and(|v| v.starts_with("clusterscope.dev/"))
            {
                continue;
            }
            let place = format!("{source}: document {}, item {}", d + 1, i + 1);
            let subscription: Subscription = serde_json::from_value(item)
                .map_err(|e| ExplainError(format!("{place}: not a valid Subscription: {e}")))?;
            if subscription
                .metadata
                .namespace
                .as_deref()
                .unwrap_or("")
                .is_empty()
            {
                return Err(ExplainError(format!(
                    "{place}: Subscription {} has no metadata.namespace: a subscription asks for its own namespace, so say which",
                    subscription.metadata.name.as_deref().unwrap_or("")
                )));
            }
            found.push(subscription);
        }
    }
    if found.is_empty() {
        return Err(ExplainError(format!(
            "{source}: no Subscription (clusterscope.dev) in it; give `kubectl get csub -A -o yaml` or Subscription manifests"
        )));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = r#"{"apiVersion": "clusterscope.dev/v1alpha1", "kind": "Subscription",
        "metadata": {"name": "n", "namespace": "team-a"}, "spec": {"relation": "nodes"}}"#;

    #[test]
    fn subscriptions_are_read_from_a_list_json_or_manifests_and_other_kinds_skipped() {
        let list = format!(
            r#"{{"apiVersion": "v1", "kind": "List", "items": [{ONE}, {{"kind": "Pod"}}]}}"#
        );
        assert_eq!(read_subscriptions(&list, "l").unwrap().len(), 1);
        let yaml = "kind: Namespace\napiVersion: v1\nmetadata: {name: team-a}\n---\napiVersion: clusterscope.dev/v1alpha1\nkind: Subscription\nmetadata: {name: a, namespace: team-a}\nspec: {relation: owned}\n---\napiVersion: clusterscope.dev/v1alpha1\nkind: Subscription\nmetadata: {name: b, namespace: team-b}\nspec: {relation: nodes, types: [Warning]}\n";
        let read = read_subscriptions(yaml, "y").unwrap();
        let names: Vec<_> = read
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn a_bad_subscription_or_none_at_all_is_refused_with_its_place() {
        for (text, says) in [
            (
                "kind: ConfigMap\n",
                "y: no Subscription (clusterscope.dev) in it",
            ),
            (
                "apiVersion: clusterscope.dev/v1alpha1\nkind: Subscription\nmetadata: {name: a}\nspec: {relation: owned}\n",
                "y: document 1, item 1: Subscription a has no metadata.namespace",
            ),
            (
                "apiVersion: clusterscope.dev/v1alpha1\nkind: Subscription\nmetadata: {name: a, namespace: t}\nspec: {relation: sideways}\n",
                "y: document 1, item 1: not a valid Subscription: unknown variant `sideways`",
            ),
            ("{", "y: not JSON"),
            ("a: [", "y: not YAML"),
        ] {
            let e = read_subscriptions(text, "y").unwrap_err().to_string();
            assert!(e.starts_with(says), "{text}: {e}");
        }
    }
}
