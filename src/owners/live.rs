//! Keeping [`OwnerState`] current: one kube-runtime watcher per resource the enabled rules need
//! (PersistentVolumes and VolumeAttachments for `owners`; Namespaces for every rule; Pods
//! only for `nodePods`), each object trimmed to the names the rules read as it arrives. A
//! re-list (start, 410 Gone) is collected trimmed and swapped in whole when it is done, so
//! resolution never sees a half-empty state.
//!
//! Not a reflector store: that would keep every object whole (a Pod is kilobytes); here a
//! counted Pod costs one map entry of its `namespace/name` and node name.

use std::fmt::Debug;

use k8s_openapi::api::core::v1::{Namespace as NamespaceObject, PersistentVolume, Pod};
use k8s_openapi::api::storage::v1::VolumeAttachment;
use kube::api::Api;
use kube::runtime::watcher;
use serde::de::DeserializeOwned;

use super::{
    Claim, CustomObjects, CustomRule, FieldHolds, Namespace, OwnerState, Rules, SharedOwnerState,
};

/// Which resources the rules in use need watched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// PersistentVolumes and VolumeAttachments.
    pub volumes: bool,
    pub namespaces: bool,
    pub pods: bool,
    /// Custom kinds whose rule a channel can use (a namespace field with `owners`, a Node
    /// field with `nodePods`).
    pub custom: Vec<CustomRule>,
}

impl Needs {
    pub fn of<'a>(rules: impl IntoIterator<Item = &'a Rules>, custom: &[CustomRule]) -> Needs {
        let mut needs = rules.into_iter().fold(Needs::default(), |n, r| Needs {
            volumes: n.volumes || r.owners,
            namespaces: n.namespaces || r.any(),
            pods: n.pods || r.node_pods.is_some(),
            custom: Vec::new(),
        });
        needs.custom = custom
            .iter()
            .filter(|c| match c.follows {
                FieldHolds::Namespace => needs.volumes,
                FieldHolds::Node => needs.pods,
            })
            .cloned()
            .collect();
        needs
    }

    pub fn any(&self) -> bool {
        self.volumes || self.namespaces || self.pods
    }

    /// The resources, for logs.
    pub fn describe(&self) -> String {
        let mut what = Vec::new();
        if self.volumes {
            what.push("persistentvolumes, volumeattachments");
        }
        if self.namespaces {
            what.push("namespaces");
        }
        if self.pods {
            what.push("pods");
        }
        let custom: Vec<String> = self
            .custom
            .iter()
            .map(|c| format!("{}.{}", c.resource, c.group))
            .collect();
        let mut text = what.join(", ");
        for c in custom {
            text.push_str(", ");
            text.push_str(&c);
        }
        text
    }
}

/// One watched resource: how an object is trimmed and where the trimmed form goes.
trait Table: Send + 'static {
    type Object: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static;
    type Trimmed: Send + 'static;
    /// The resource, for logs.
    fn resource(&self) -> String;
    fn api(&self, client: kube::Client) -> Api<Self::Object>
    where
        <Self::Object as kube::Resource>::DynamicType: Default,
    {
        Api::all(client)
    }
    fn trim(&mut self, o: &Self::Object) -> Self::Trimmed;
    /// Forgets everything this table put in (before a re-list is swapped in).
    fn clear(&self, c: &mut OwnerState);
    fn apply(&self, c: &mut OwnerState, t: Self::Trimmed);
    fn remove(&self, c: &mut OwnerState, t: Self::Trimmed);
}

fn name<K: kube::Resource>(o: &K) -> String {
    o.meta().name.clone().unwrap_or_default()
}

struct Volumes;
impl Table for Volumes {
    type Object = PersistentVolume;
    type Trimmed = (String, Option<Claim>);
    fn resource(&self) -> String {
        "persistentvolumes".to_owned()
    }
    fn trim(&mut self, o: &PersistentVolume) -> Self::Trimmed {
        // Set by the persistent volume controller on bind, kept while Released.
        let claim = o
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .and_then(|r| {
                Some(Claim {
                    namespace: r.namespace.clone().filter(|n| !n.is_empty())?,
                    name: r.name.clone().unwrap_or_default(),
                })
            });
        (name(o), claim)
    }
    fn clear(&self, c: &mut OwnerState) {
        c.volumes.clear();
    }
    fn apply(&self, c: &mut OwnerState, (name, claim): Self::Trimmed) {
        match claim {
            Some(claim) => {
                c.volumes.insert(name, claim);
            }
            None => {
                c.volumes.remove(&name);
            }
        }
    }
    fn remove(&self, c: &mut OwnerState, (name, _): Self::Trimmed) {
        c.volumes.remove(&name);
    }
}

struct Attachments;
impl Table for Attachments {
    type Object = VolumeAttachment;
    type Trimmed = (String, Option<String>);
    fn resource(&self) -> String {
        "volumeattachments".to_owned()
    }
    fn trim(&mut self, o: &VolumeAttachment) -> Self::Trimmed {
        (name(o), o.spec.source.persistent_volume_name.clone())
    }
    fn clear(&self, c: &mut OwnerState) {
        c.attachments.clear();
    }
    fn apply(&self, c: &mut OwnerState, (name, pv): Self::Trimmed) {
        match pv {
            Some(pv) => {
                c.attachments.insert(name, pv);
            }
            None => {
                c.attachments.remove(&name);
            }
        }
    }
    fn remove(&self, c: &mut OwnerState, (name, _): Self::Trimmed) {
        c.attachments.remove(&name);
    }
}

struct Namespaces;
impl Table for Namespaces {
    type Object = NamespaceObject;
    type Trimmed = (String, Namespace);
    fn resource(&self) -> String {
        "namespaces".to_owned()
    }
    fn trim(&mut self, o: &NamespaceObject) -> Self::Trimmed {
        let terminating = o.metadata.deletion_timestamp.is_some()
            || o.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
        (
            name(o),
            Namespace {
                labels: o.metadata.labels.clone().unwrap_or_default(),
                terminating,
            },
        )
    }
    fn clear(&self, c: &mut OwnerState) {
        c.namespaces.clear();
    }
    fn apply(&self, c: &mut OwnerState, (name, ns): Self::Trimmed) {
        c.namespaces.insert(name, ns);
    }
    fn remove(&self, c: &mut OwnerState, (name, _): Self::Trimmed) {
        c.namespaces.remove(&name);
    }
}

struct Pods;
impl Table for Pods {
    type Object = Pod;
    /// (namespace, name, node while it runs there)
    type Trimmed = (String, String, Option<String>);
    fn resource(&self) -> String {
        "pods".to_owned()
    }
    fn trim(&mut self, o: &Pod) -> Self::Trimmed {
        let phase = o.status.as_ref().and_then(|s| s.phase.as_deref());
        let done = matches!(phase, Some("Succeeded" | "Failed"));
        let node = o
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty() && !done);
        (
            o.metadata.namespace.clone().unwrap_or_default(),
            name(o),
            node,
        )
    }
    fn clear(&self, c: &mut OwnerState) {
        c.clear_pods();
    }
    fn apply(&self, c: &mut OwnerState, (ns, name, node): Self::Trimmed) {
        c.set_pod(&ns, &name, node.as_deref());
    }
    fn remove(&self, c: &mut OwnerState, (ns, name, _): Self::Trimmed) {
        c.remove_pod(&ns, &name);
    }
}

/// What the owner state has listed: for each resource followed now, the objects of its first
/// list so far and whether that list is in. Complete when every one is in (a rule added by a
/// reload starts a follower, and the state is incomplete again until it has listed): the
/// mirror plans no delivery by ownership from an incomplete state.
#[derive(Clone, Default)]
pub struct Progress {
    lists: std::sync::Arc<std::sync::Mutex<Lists>>,
    changed: std::sync::Arc<tokio::sync::Notify>,
}

/// By follower: (resource, objects listed so far, whether its first list is in).
#[derive(Default)]
struct Lists {
    next: u64,
    by_follower: std::collections::BTreeMap<u64, (String, usize, bool)>,
    /// Followers promised but not started yet (the keeper's first round starts them when it
    /// first runs): the state is not complete while any is.
    promised: usize,
}

impl Progress {
    /// `n` followers will start: the state is incomplete from now on, not from when they do.
    fn promise(&self, n: usize) {
        crate::locks::lock(&self.lists).promised += n;
    }

    /// A follower of `resource` starts; its id.
    fn start(&self, resource: String) -> u64 {
        let mut lists = crate::locks::lock(&self.lists);
        lists.promised = lists.promised.saturating_sub(1);
        let id = lists.next;
        lists.next += 1;
        lists.by_follower.insert(id, (resource, 0, false));
        drop(lists);
        self.changed.notify_waiters();
        id
    }

    /// `count` objects of the follower's first list are in so far.
    fn listing(&self, id: u64, count: usize) {
        if let Some(entry) = crate::locks::lock(&self.lists).by_follower.get_mut(&id) {
            entry.1 = count;
        }
    }

    /// The follower's first list is in, `count` objects.
    fn listed(&self, id: u64, count: usize) {
        if let Some(entry) = crate::locks::lock(&self.lists).by_follower.get_mut(&id) {
            *entry = (std::mem::take(&mut entry.0), count, true);
        }
        self.changed.notify_waiters();
    }

    /// The follower stopped (no rule needs its resource any more, or the keeper ended).
    fn stop(&self, id: u64) {
        crate::locks::lock(&self.lists).by_follower.remove(&id);
        self.changed.notify_waiters();
    }

    /// Whether every resource followed now has listed once.
    pub fn is_complete(&self) -> bool {
        let lists = crate::locks::lock(&self.lists);
        lists.promised == 0 && lists.by_follower.values().all(|(_, _, done)| *done)
    }

    /// `pods: 45000 so far, namespaces: 3000 listed`, in resource order.
    pub fn describe(&self) -> String {
        let lists = crate::locks::lock(&self.lists);
        let mut parts: Vec<(String, String)> = lists
            .by_follower
            .values()
            .map(|(resource, count, done)| {
                let said = if *done { "listed" } else { "so far" };
                (resource.clone(), format!("{resource}: {count} {said}"))
            })
            .collect();
        parts.sort();
        let parts: Vec<String> = parts.into_iter().map(|(_, p)| p).collect();
        match (parts.is_empty(), lists.promised) {
            (true, 0) => "nothing followed".to_owned(),
            (true, _) => "starting its watches".to_owned(),
            _ => parts.join(", "),
        }
    }

    /// Waits until every resource followed now has listed once.
    pub async fn complete(&self) {
        loop {
            let changed = self.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_complete() {
                return;
            }
            changed.await;
        }
    }

    /// Resolves at the next start, first list or stop of a follower (enable it before
    /// reading [`Self::is_complete`], as with any [`tokio::sync::Notify`]).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }
}

/// Objects between two progress reports of a first list (kube's watcher lists in pages of
/// 500).
const PROGRESS_EVERY: usize = 500;

/// Follows one resource until aborted (see [`crate::follow`]): trim, apply; a list is applied
/// whole when it is complete. `ready` is told after the first complete list.
async fn follow<T: Table>(
    table: T,
    api: Api<T::Object>,
    state: SharedOwnerState,
    Told {
        progress,
        id,
        errors,
    }: Told,
) {
    let how = crate::follow::WatchSpec {
        what: table.resource(),
        errors,
        hint: "owner delivery uses what was last seen; is the resource served, and may clusterscope list and watch it?",
        relist: None,
    };
    let mut lister = Lister {
        table,
        state,
        relist: None,
        progress,
        id,
        first: true,
    };
    crate::follow::follow(api, watcher::Config::default(), how, |e| lister.take(e)).await;
}

/// What [`follow`] keeps between events.
struct Lister<T: Table> {
    table: T,
    state: SharedOwnerState,
    /// A list being collected: applied whole at its end.
    relist: Option<Vec<T::Trimmed>>,
    /// Where the first list's progress is told, as follower `id`.
    progress: Progress,
    id: u64,
    /// Until the first list is in.
    first: bool,
}

/// A follower that ends (stopped, or its keeper gone) is no longer waited for.
impl<T: Table> Drop for Lister<T> {
    fn drop(&mut self) {
        self.progress.stop(self.id);
    }
}

impl<T: Table> Lister<T> {
    fn take(&mut self, event: watcher::Event<T::Object>) {
        match event {
            watcher::Event::Init => self.relist = Some(Vec::new()),
            watcher::Event::InitApply(o) => {
                let t = self.table.trim(&o);
                match self.relist.as_mut() {
                    Some(buffer) => {
                        buffer.push(t);
                        if self.first && buffer.len() % PROGRESS_EVERY == 0 {
                            self.progress.listing(self.id, buffer.len());
                        }
                    }
                    None => self.table.apply(&mut crate::locks::write(&self.state), t),
                }
            }
            watcher::Event::InitDone => {
                let buffer = self.relist.take().unwrap_or_default();
                let count = buffer.len();
                let mut c = crate::locks::write(&self.state);
                self.table.clear(&mut c);
                for t in buffer {
                    self.table.apply(&mut c, t);
                }
                drop(c);
                tracing::info!(resource = %self.table.resource(), count, "owner delivery: listed");
                if std::mem::take(&mut self.first) {
                    self.progress.listed(self.id, count);
                }
            }
            watcher::Event::Apply(o) => {
                let t = self.table.trim(&o);
                self.table.apply(&mut crate::locks::write(&self.state), t);
            }
            watcher::Event::Delete(o) => {
                let t = self.table.trim(&o);
                self.table.remove(&mut crate::locks::write(&self.state), t);
            }
        }
    }
}

/// A custom rule's resource as said in logs and progress: `<plural>.<group>`.
fn custom_resource(rule: &CustomRule) -> String {
    format!("{}.{}", rule.resource, rule.group)
}

/// The objects of one custom rule's kind: name → the value of the rule's field. An object
/// whose field is missing or not a string is skipped, and said once per kind.
struct Custom {
    rule: CustomRule,
    key: (String, String),
    warned: bool,
}

impl Table for Custom {
    type Object = kube::api::DynamicObject;
    type Trimmed = (String, Option<String>);
    fn resource(&self) -> String {
        custom_resource(&self.rule)
    }
    fn trim(&mut self, o: &kube::api::DynamicObject) -> Self::Trimmed {
        let name = name(o);
        let value = self.rule.value_in(&o.data).map(str::to_owned);
        if value.is_none() && !self.warned {
            self.warned = true;
            tracing::warn!(kind = %self.rule.kind, group = %self.rule.group, object = %name, field = %self.rule.field_path(),
                "owner delivery: the rule's field is missing or not a string in this object; such objects are skipped (said once per kind)");
        }
        (name, value)
    }
    fn clear(&self, c: &mut OwnerState) {
        if let Some(known) = c.custom.get_mut(&self.key) {
            known.values.clear();
            known.skipped.clear();
        }
    }
    fn apply(&self, c: &mut OwnerState, (name, value): Self::Trimmed) {
        let entry = c
            .custom
            .entry(self.key.clone())
            .or_insert_with(|| CustomObjects {
                rule: self.rule.clone(),
                values: Default::default(),
                skipped: Default::default(),
            });
        match value {
            Some(v) => {
                entry.skipped.remove(&name);
                entry.values.insert(name, v);
            }
            None => {
                entry.values.remove(&name);
                entry.skipped.insert(name);
            }
        }
    }
    fn remove(&self, c: &mut OwnerState, (name, _): Self::Trimmed) {
        if let Some(entry) = c.custom.get_mut(&self.key) {
            entry.values.remove(&name);
            entry.skipped.remove(&name);
        }
    }
}

/// Follows `table` with the cluster-wide API of its built-in resource.
fn follow_all<T: Table>(
    table: T,
    client: &kube::Client,
    state: &SharedOwnerState,
    told: Told,
) -> impl std::future::Future<Output = ()> + Send + use<T>
where
    <T::Object as kube::Resource>::DynamicType: Default,
{
    let api = table.api(client.clone());
    follow(table, api, state.clone(), told)
}

/// The table of one custom rule's kind, and the API of its objects.
fn custom_table(
    rule: CustomRule,
    client: &kube::Client,
) -> (Custom, Api<kube::api::DynamicObject>) {
    use kube::api::{ApiResource, GroupVersionKind};
    let gvk = GroupVersionKind::gvk(&rule.group, &rule.version, &rule.kind);
    let api = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(&gvk, &rule.resource),
    );
    let table = Custom {
        key: (rule.group.clone(), rule.kind.clone()),
        rule,
        warned: false,
    };
    (table, api)
}

/// Follows the objects of one custom rule's kind.
fn follow_custom(
    rule: CustomRule,
    client: &kube::Client,
    state: &SharedOwnerState,
    told: Told,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let (table, api) = custom_table(rule, client);
    follow(table, api, state.clone(), told)
}

/// A list of the owner state's that failed: which resource, and the API server's answer.
#[derive(Debug, thiserror::Error)]
#[error("cannot list {resource}")]
pub struct ListError {
    pub resource: String,
    #[source]
    pub source: kube::Error,
}

/// Lists what `needs` names once, in pages of [`PROGRESS_EVERY`], into a new state trimmed as
/// the followers trim it: the state delivery would resolve against now, for a look that keeps
/// nothing running (`explain --cluster`). The first failing list ends it.
pub async fn list_once(client: &kube::Client, needs: &Needs) -> Result<OwnerState, ListError> {
    let mut state = OwnerState::default();
    for what in needs.followed() {
        match what {
            Watched::Volumes => list_into(Volumes, client, &mut state).await?,
            Watched::Attachments => list_into(Attachments, client, &mut state).await?,
            Watched::Namespaces => list_into(Namespaces, client, &mut state).await?,
            Watched::Pods => list_into(Pods, client, &mut state).await?,
            Watched::Custom(rule) => {
                let (table, api) = custom_table(rule, client);
                list_pages(table, api, &mut state).await?
            }
        }
    }
    Ok(state)
}

/// Lists `table`'s built-in resource cluster-wide into `state`.
async fn list_into<T: Table>(
    table: T,
    client: &kube::Client,
    state: &mut OwnerState,
) -> Result<(), ListError>
where
    <T::Object as kube::Resource>::DynamicType: Default,
{
    let api = table.api(client.clone());
    list_pages(table, api, state).await
}

/// Every page of `api`'s list, each object trimmed and applied to `state`.
async fn list_pages<T: Table>(
    mut table: T,
    api: Api<T::Object>,
    state: &mut OwnerState,
) -> Result<(), ListError> {
    let resource = table.resource();
    let params = kube::api::ListParams::default().limit(PROGRESS_EVERY as u32);
    let apply = |objects: Vec<T::Object>| {
        for object in &objects {
            let trimmed = table.trim(object);
            table.apply(state, trimmed);
        }
        Ok(())
    };
    let failed = |source| ListError {
        resource: resource.clone(),
        source,
    };
    crate::follow::list_pages(&api, params, apply, failed).await
}

/// One resource followed for the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Watched {
    Volumes,
    Attachments,
    Namespaces,
    Pods,
    Custom(CustomRule),
}

impl Needs {
    /// The resources these needs follow.
    fn followed(&self) -> Vec<Watched> {
        let mut all = Vec::new();
        if self.volumes {
            all.extend([Watched::Volumes, Watched::Attachments]);
        }
        if self.namespaces {
            all.push(Watched::Namespaces);
        }
        if self.pods {
            all.push(Watched::Pods);
        }
        all.extend(self.custom.iter().cloned().map(Watched::Custom));
        all
    }
}

/// Where a follower tells how its first list goes (the [`Progress`], as follower `id`) and
/// counts its watch's failures.
struct Told {
    progress: Progress,
    id: u64,
    errors: prometheus_client::metrics::counter::Counter,
}

/// Starts following `what` into `state`, telling `progress` how its first list goes (the
/// follower is counted there before this returns, so that the state is never complete while a
/// follower has not started).
fn start_following(
    what: &Watched,
    client: &kube::Client,
    state: &SharedOwnerState,
    progress: &Progress,
    errors: &crate::follow::WatchErrors,
) -> tokio::task::JoinHandle<()> {
    let resource = match what {
        Watched::Volumes => Volumes.resource(),
        Watched::Attachments => Attachments.resource(),
        Watched::Namespaces => Namespaces.resource(),
        Watched::Pods => Pods.resource(),
        Watched::Custom(rule) => custom_resource(rule),
    };
    let told = Told {
        errors: errors.of(&resource),
        id: progress.start(resource),
        progress: progress.clone(),
    };
    match what {
        Watched::Volumes => tokio::spawn(follow_all(Volumes, client, state, told)),
        Watched::Attachments => tokio::spawn(follow_all(Attachments, client, state, told)),
        Watched::Namespaces => tokio::spawn(follow_all(Namespaces, client, state, told)),
        Watched::Pods => tokio::spawn(follow_all(Pods, client, state, told)),
        Watched::Custom(rule) => tokio::spawn(follow_custom(rule.clone(), client, state, told)),
    }
}

/// Stops what it follows when dropped.
struct RunningWatches(Vec<(Watched, tokio::task::JoinHandle<()>)>);

impl Drop for RunningWatches {
    fn drop(&mut self) {
        for (_, task) in &self.0 {
            task.abort();
        }
    }
}

/// The handle of what keeps the owner state: its first lists, and a way to make it read what
/// the rules need at once.
#[derive(Clone)]
pub struct OwnerWatches {
    wake: std::sync::Arc<tokio::sync::Notify>,
    /// Refreshes asked for so far.
    asked: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The refreshes the last round served (it read `asked` before the needs).
    rounds: tokio::sync::watch::Receiver<u64>,
    /// How the first lists of everything followed now go.
    progress: Progress,
}

impl OwnerWatches {
    /// Whether the state is complete, and how its lists go.
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }

    /// Reads what the rules need now rather than at the next tick, and waits until the state
    /// is complete again (what that started has listed once: a new subscription's relation).
    pub async fn refresh(&self) {
        let mut rounds = self.rounds.clone();
        let asked = self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        self.wake.notify_one();
        if rounds.wait_for(|served| *served >= asked).await.is_err() {
            return;
        }
        self.progress.complete().await;
    }
}

/// Starts keeping `state` current for what `needs()` says the rules in use need: the watchers
/// needed now at once (the returned [`OwnerWatches`]'s [`Progress`] counts their first lists), then
/// every `every`, or at once when [`OwnerWatches::refresh`] asks (the configuration may have been
/// reloaded, subscriptions may have come), the ones needed since are started and the ones no
/// rule needs any more stopped (their first list on a later start refills their part of the
/// state). The returned future runs until dropped, and its watchers with it.
pub fn start(
    client: kube::Client,
    state: SharedOwnerState,
    needs: impl Fn() -> Needs + Send + 'static,
    every: std::time::Duration,
    errors: crate::follow::WatchErrors,
) -> (OwnerWatches, impl std::future::Future<Output = ()> + Send) {
    let first = needs();
    let (rounds_tx, rounds) = tokio::sync::watch::channel(0);
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let progress = Progress::default();
    // Complete only once the first round's followers, started when `keep` first runs, listed.
    progress.promise(first.followed().len());
    let keeper = OwnerWatches {
        wake: wake.clone(),
        asked: asked.clone(),
        rounds,
        progress: progress.clone(),
    };
    let keep = async move {
        let mut following = RunningWatches(Vec::new());
        let mut wanted = first;
        let (mut round, mut served) = (0u64, 0u64);
        loop {
            let now = wanted.followed();
            let before: Vec<Watched> = following.0.iter().map(|(w, _)| w.clone()).collect();
            following.0.retain(|(what, task)| {
                let keep = now.contains(what);
                if !keep {
                    task.abort();
                }
                keep
            });
            let started: Vec<&Watched> = now.iter().filter(|w| !before.contains(w)).collect();
            for what in started {
                let task = start_following(what, &client, &state, &progress, &errors);
                following.0.push((what.clone(), task));
            }
            if round > 0 && now != before {
                tracing::info!(now = %wanted.describe(), "owner delivery: following what the rules in use need now");
            }
            rounds_tx.send_replace(served);
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = wake.notified() => {}
            }
            served = asked.load(std::sync::atomic::Ordering::SeqCst);
            wanted = needs();
            round += 1;
        }
    };
    (keeper, keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keeper's watches start when its future first runs; the state is incomplete from
    /// the moment it is made, not from then (a mirror asking in between would otherwise start
    /// on an empty state as if it were complete).
    #[tokio::test]
    async fn the_state_is_incomplete_before_the_first_watches_start() {
        let url: hyper::Uri = "http://127.0.0.1:9".parse().unwrap();
        let client = kube::Client::try_from(kube::Config::new(url)).unwrap();
        let needs = || Needs {
            pods: true,
            namespaces: true,
            ..Needs::default()
        };
        let (keeper, keep) = start(
            client,
            SharedOwnerState::default(),
            needs,
            std::time::Duration::from_secs(10),
            crate::follow::WatchErrors::default(),
        );
        let progress = keeper.progress();
        assert!(!progress.is_complete());
        assert_eq!(progress.describe(), "starting its watches");
        // Started, not yet listed (nothing answers there): still incomplete, by resource.
        let keeping = tokio::spawn(keep);
        for _ in 0..100 {
            if progress.describe().contains("pods") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(!progress.is_complete());
        assert_eq!(progress.describe(), "namespaces: 0 so far, pods: 0 so far");
        keeping.abort();
        // Stopped followers are not waited for.
        let _ = keeping.await;
        assert!(progress.is_complete());
    }

    #[test]
    fn needs_follow_the_rules() {
        let owners = Rules {
            owners: true,
            ..Rules::default()
        };
        let pods = Rules {
            node_pods: Some(super::super::NodePods::default()),
            ..Rules::default()
        };
        assert_eq!(Needs::of([&Rules::default()], &[]), Needs::default());
        assert_eq!(
            Needs::of([&owners], &[]),
            Needs {
                volumes: true,
                namespaces: true,
                pods: false,
                custom: Vec::new(),
            }
        );
        assert!(Needs::of([&owners, &pods], &[]).pods);
        let rule = |follows| CustomRule {
            group: "example.com".into(),
            version: "v1".into(),
            kind: "Thing".into(),
            resource: "things".into(),
            field: vec!["spec".into(), "where".into()],
            follows,
        };
        let custom = [rule(FieldHolds::Namespace), rule(FieldHolds::Node)];
        // A namespace field is read for `owners`, a Node field for `nodePods`.
        assert_eq!(
            Needs::of([&owners], &custom).custom,
            [rule(FieldHolds::Namespace)]
        );
        assert_eq!(Needs::of([&pods], &custom).custom, [rule(FieldHolds::Node)]);
    }

    #[test]
    fn objects_are_trimmed_to_what_the_rules_read() {
        let (mut volumes, mut pods, mut namespaces) = (Volumes, Pods, Namespaces);
        let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "pv-7"},
            "spec": {"claimRef": {"namespace": "team-a", "name": "data", "uid": "u"}},
            "status": {"phase": "Released"}
        }))
        .unwrap();
        assert_eq!(
            volumes.trim(&pv),
            (
                "pv-7".to_owned(),
                Some(Claim {
                    namespace: "team-a".into(),
                    name: "data".into()
                })
            )
        );
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "team-a"},
            "spec": {"nodeName": "node1", "containers": []},
            "status": {"phase": "Succeeded"}
        }))
        .unwrap();
        assert_eq!(pods.trim(&pod).2, None, "a finished pod no longer counts");
        let ns: NamespaceObject = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "going", "deletionTimestamp": "2026-11-20T10:00:00Z"},
            "status": {"phase": "Terminating"}
        }))
        .unwrap();
        assert!(namespaces.trim(&ns).1.terminating);
    }
}
