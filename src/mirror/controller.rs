//! The mirror controller: list+watch events in `default` and `kube-system` (the only places
//! events about cluster-scoped objects can be stored), and sync each one through a keyed work
//! queue: plan it, label the source if needed, and hand the routed event to the outputs'
//! lanes (a delivery `Pipeline`), each of which plans and writes its own deliveries. Driven by what was stored, not by admission: dry-runs and writes the API server
//! refused never reach it, and events written while the webhook or the controller was down
//! are caught up by the list that starts every watch (and every watch restart).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use kube::api::Api;
use kube::runtime::watcher;
use tracing::Instrument;

use crate::delivery::{
    Action, Delivered, Delivery, Done, Failure, KeyedQueue, LaneOptions, Observer, RetryPolicy,
    Writer,
};
use crate::metrics::Metrics;
use crate::mirror::outputs::{Counted, Output};
use crate::mirror::sync::Syncer;
use crate::status::StatusLine;

/// The lanes of the mirror's outputs.
type Pipeline = crate::delivery::Pipeline<dyn Output>;

pub use crate::decide::{SOURCE_FIELD_SELECTOR as FIELD_SELECTOR, SOURCE_NAMESPACES};

type Key = (String, String);

/// When a source whose subscription copy a namespace's delivery rate held back is planned
/// again (the rate is per second).
const DEFERRED_RETRY: Duration = Duration::from_secs(1);

fn key_of(ev: &Event) -> Key {
    (
        ev.metadata.namespace.clone().unwrap_or_default(),
        ev.metadata.name.clone().unwrap_or_default(),
    )
}

/// Stored events waiting for their sync, by namespace/name, each with its latest state.
///
/// Hand-written over kube-runtime's `Controller`, which reconciles from a reflector store:
/// that holds every watched event for as long as it is stored (a store of 20,000 Node events
/// measured +101 MB RSS, +62 MB with managedFields stripped), where this queue holds only the
/// ones waiting; and it has no bounded hand-off to bring a refused delivery back later.
pub type WorkQueue = KeyedQueue<Key, Event>;

/// Controller settings.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// Workers that plan syncs and label sources, and workers of the copy sink.
    pub workers: usize,
    /// First retry delay after a failed sync or delivery; doubles up to 5 minutes.
    pub retry_base: Duration,
    /// Tries of one state of a source (or of one delivery) before it is given up.
    pub max_attempts: u32,
    /// Deliveries each sink holds before it refuses new ones.
    pub queue_capacity: usize,
    /// How long a worker waits for room in a full sink before handing the source back.
    pub full_wait: Duration,
    /// When a sink refused a delivery (full), the source is planned again after this.
    pub full_retry: Duration,
    /// Copy writes a second the mirror may ask of the API server (0: no budget); see
    /// [`crate::mirror::budget`].
    pub max_writes_per_second: u32,
    /// How long the first sync waits for the accepted Subscriptions' first list (then it syncs
    /// without them, and lists the stored events again once they are in). The owner state has
    /// no such deadline: deliveries wait until it is listed.
    pub subscriptions_wait: Duration,
    /// How often the owner state reads the configuration for what its rules need followed.
    pub owners_every: Duration,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            workers: 8,
            retry_base: Duration::from_secs(1),
            // 1 + 2 + 4 + ... + 256 s, then 5 min: about 19 minutes of trying, longer than
            // the default event TTL (1 h) leaves an expired source's copy any use.
            max_attempts: 12,
            // 10 s of copies at the default write budget: a larger backlog waits in the work
            // queue as its sources (one event, not 30 copies of it), offered in turns.
            queue_capacity: 2_000,
            full_wait: Duration::from_secs(1),
            full_retry: Duration::from_secs(5),
            max_writes_per_second: crate::mirror::budget::DEFAULT_PER_SECOND,
            subscriptions_wait: Duration::from_secs(30),
            owners_every: Duration::from_secs(10),
        }
    }
}

impl ControllerOptions {
    fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            base: self.retry_base,
            factor: 2,
            max_delay: Duration::from_secs(300),
            max_attempts: self.max_attempts.max(1),
            jitter: crate::backoff::Jitter::None,
        }
    }

    /// A lane for each of `syncer`'s outputs, as the output runs it (see
    /// [`crate::delivery::Sink::lane`]) from these defaults: `workers` workers,
    /// `queue_capacity` keys, the controller's retries.
    fn pipeline(&self, syncer: &Syncer, observer: Arc<dyn Observer<dyn Output>>) -> Pipeline {
        let defaults = LaneOptions::new(self.queue_capacity, self.workers, self.retry());
        syncer
            .outputs
            .iter()
            .fold(Pipeline::new(observer), |pipeline, output| {
                pipeline.with_sink(output.clone(), &defaults)
            })
    }
}

/// What the mirror makes of every delivery: metrics, the subscriptions' counts, and an event
/// of its own for one given up.
struct Report {
    metrics: Arc<Metrics>,
    own_events: Arc<crate::recorder::OwnEvents>,
    subscriptions: Option<Arc<crate::subscription::SharedSubscriptions>>,
}

impl Report {
    /// A copy written, if a subscription asked for it: counted for the subscriptions that
    /// wanted it (the copy's one destination says; a copy only the channel or a rule put there
    /// is not theirs).
    fn subscription_copy(&self, delivery: &Delivery) {
        let Some(live) = &self.subscriptions else {
            return;
        };
        let subscribed = delivery
            .destinations
            .iter()
            .any(|d| d.how == crate::owners::How::Subscription);
        if subscribed {
            live.credit(&delivery.event);
            self.metrics.subscriptions.deliveries("delivered", 1);
        }
    }
}

impl Observer<dyn Output> for Report {
    fn delivered(&self, sink: &dyn Output, delivery: &Delivery, how: Delivered) {
        self.metrics.delivery.delivery(sink.name(), how.as_str());
        if sink.counted() == Counted::Apart {
            return;
        }
        if how.wrote() {
            self.metrics
                .mirror
                .write(&delivery.channel, how.as_str(), "success");
        }
        // An occurrence of the event written: its lag, and the subscriptions' counts (a copy
        // only relabelled, because another subscription of its namespace came or went, is not
        // a delivery of anything new).
        if matches!(how, Delivered::Created | Delivered::Updated) {
            self.metrics.mirror.lag(delivery.since.elapsed());
            if sink.counted() == Counted::AsCopies {
                self.subscription_copy(delivery);
            }
        }
    }

    fn failed(&self, sink: &dyn Output, delivery: &Delivery, failure: &Failure, given_up: bool) {
        self.metrics.delivery.delivery(sink.name(), "error");
        let mirrored = sink.counted() != Counted::Apart;
        if mirrored {
            self.metrics
                .mirror
                .write(&delivery.channel, failure.metric_operation(), "error");
        }
        if !given_up {
            return;
        }
        self.metrics.delivery.delivery(sink.name(), "given_up");
        if mirrored {
            self.metrics.mirror.given_up(&delivery.channel);
        }
        let message = format!(
            "gave up delivering event {} to {} ({}, channel {}) until it changes again: {}",
            crate::delivery::key_of_source(&delivery.source),
            sink.name(),
            delivery.key,
            delivery.channel,
            crate::telemetry::clip(&failure.to_string(), 512)
        );
        // A full queue drops it; the recorder counts that.
        let _ = self.own_events.warn("DeliveryGivenUp", &message);
    }

    fn full(&self, sink: &dyn Output, _delivery: &Delivery) {
        self.metrics.delivery.queue_full(sink.name());
    }

    fn dropped(&self, sink: &dyn Output, _delivery: &Delivery) {
        self.metrics.delivery.delivery(sink.name(), "dropped");
    }

    fn relisting(&self, sink: &dyn Output) {
        self.metrics.delivery.relists(sink.name()).inc();
    }

    fn depth(&self, sink: &dyn Output, held: usize) {
        self.metrics.delivery.queue_depth(sink.name(), held);
    }

    fn paced(&self, sink: &dyn Output, _delivery: &Delivery, _after: Duration) {
        self.metrics.delivery.delivery(sink.name(), "paced");
    }

    fn backlog(&self, sink: &dyn Output, age: Duration) {
        self.metrics.delivery.backlog_age(sink.name(), age);
    }
}

/// What a worker of the controller works with.
#[derive(Clone)]
struct Worker {
    syncer: Syncer,
    pipeline: Arc<Pipeline>,
    queue: Arc<WorkQueue>,
    metrics: Arc<Metrics>,
    options: ControllerOptions,
    /// One line a minute at most about namespaces a delivery cap left out.
    cut_log: Arc<crate::telemetry::Throttle>,
    /// Whether the owner state is complete: no source is planned while it is not.
    complete: tokio::sync::watch::Receiver<bool>,
}

impl Worker {
    async fn run(mut self) {
        loop {
            // Held while the owner state lists (what arrives meanwhile waits in the queue,
            // each source at its newest state). Its sender ends only with this run.
            let _ = self.complete.wait_for(|complete| *complete).await;
            let (key, ev, since) = self.queue.next().await;
            self.metrics.mirror.queued(self.queue.len());
            // Every line about this source carries it, as kube-runtime's controller does.
            let span =
                tracing::info_span!("mirror", object.ref = %format_args!("{}/{}", key.0, key.1));
            self.step(key, ev, since).instrument(span).await;
        }
    }

    /// One source: plan, label it, hand its deliveries to the pipeline; then tell the queue
    /// how it went (a refused delivery brings the source back later, a failed label retries).
    async fn step(&self, key: Key, ev: Event, since: std::time::Instant) {
        let Worker {
            syncer,
            pipeline,
            queue,
            metrics,
            options,
            cut_log,
            complete: _,
        } = self;
        let plan = syncer.plan(&ev, since);
        let channel = plan.channel.clone().unwrap_or_default();
        if plan.cut > 0 {
            metrics.delivery.cut(&channel, plan.cut);
            if let Some(held) = cut_log.allow() {
                tracing::warn!(
                    channel,
                    left_out = plan.cut,
                    similar_since_last = held,
                    "mirror: a delivery rule named more namespaces than deliver.nodePods.maxNamespaces allows; the rest get no copy"
                );
            }
        }
        if plan.deferred > 0 {
            metrics.subscriptions.deliveries("deferred", plan.deferred);
        }
        let labelled = syncer.label(&ev, &plan).await;
        match (&labelled, &plan.label) {
            (Ok(true), Some((operation, _))) => {
                metrics
                    .mirror
                    .write(&channel, operation.as_str(), "success")
            }
            (Err(e), _) => metrics
                .mirror
                .write(&channel, e.metric_operation(), "error"),
            _ => {}
        }
        let refused = match &plan.routed {
            Some(routed) => {
                pipeline
                    .enqueue(options.full_wait, |output| output.plan(routed))
                    .await
            }
            None => false,
        };
        let done = match &labelled {
            // Offered again later: the full sink has room by then, or it is offered again.
            _ if refused => Done::Later(ev, options.full_retry),
            // A namespace's subscription rate held a copy back: planned again when it has room.
            Ok(_) if plan.deferred > 0 => Done::Later(ev, DEFERRED_RETRY),
            Ok(_) => Done::Finished,
            // The label patch is decided as every write is.
            Err(e) => match e.action(Writer::Mirror) {
                Action::Retry => Done::Retry(ev),
                Action::WaitFor(after) => Done::Later(ev, after),
                Action::GiveUp => Done::GiveUp,
            },
        };
        let given_up = queue.done(key.clone(), done, &options.retry());
        if let Err(e) = &labelled {
            if given_up {
                metrics.mirror.given_up(&channel);
                tracing::warn!(channel, error = %e,
                    "mirror: gave up labelling this event (until its source changes again)");
            } else {
                tracing::warn!(channel, error = %e, "mirror: labelling failed; will retry");
            }
        }
    }
}

/// How often the log says how the owner state's lists go while deliveries wait for them.
const LISTING_LOG_EVERY: Duration = Duration::from_secs(10);

/// Holds every sync until the owner state is complete (its first lists, and those of a rule
/// added later), so that no delivery by ownership is planned from a partial state: there is no
/// deadline after which a partial state would do. Meanwhile `/readyz` is held not ready with the
/// lists' progress, and the log says it every 10 s. Tells the workers through `complete`.
async fn hold_until_listed(
    progress: crate::owners::live::Progress,
    (status, hold): (Arc<StatusLine>, crate::status::Hold),
    complete: tokio::sync::watch::Sender<bool>,
) {
    let mut hold = Some(hold);
    let mut last_said: Option<tokio::time::Instant> = None;
    loop {
        let changed = progress.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if progress.is_complete() {
            if hold.take().is_some() {
                tracing::info!(listed = %progress.describe(), "mirror: the owner state is listed; delivering");
            }
            complete.send_replace(true);
            changed.await;
            continue;
        }
        complete.send_replace(false);
        let why = format!(
            "mirroring holds its deliveries until the owner state is listed ({})",
            progress.describe()
        );
        match &hold {
            Some(hold) => hold.say(why),
            None => hold = Some(status.hold(why)),
        }
        if last_said.is_none_or(|t| t.elapsed() >= LISTING_LOG_EVERY) {
            tracing::info!(listed = %progress.describe(), "mirror: listing the owner state; deliveries wait for it");
            last_said = Some(tokio::time::Instant::now());
        }
        tokio::select! {
            () = &mut changed => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Keeps the owner state delivery rules read (what the configuration's rules and the accepted
/// subscriptions need, followed in `tasks`, and its size in the metrics every 2 s); its
/// [`OwnerWatches`], or None when nothing keeps a state.
///
/// [`OwnerWatches`]: crate::owners::live::OwnerWatches
fn keep_owner_state(
    syncer: &Syncer,
    metrics: &Arc<Metrics>,
    options: &ControllerOptions,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Option<crate::owners::live::OwnerWatches> {
    let state = syncer.cluster.clone()?;
    let (config, subscriptions) = (syncer.config.clone(), syncer.subscriptions.clone());
    let needs = move || {
        let config = config.load();
        let subscribed = subscriptions
            .as_ref()
            .map(|live| live.subscribers().rules())
            .unwrap_or_default();
        crate::owners::live::Needs::of(
            config
                .channels
                .iter()
                .map(|c| &c.deliver)
                .chain(&subscribed),
            &config.owner_rules,
        )
    };
    let (keeper, keep) = crate::owners::live::start(
        syncer.client.clone(),
        state.clone(),
        needs,
        options.owners_every,
        metrics.watches.clone(),
    );
    tasks.spawn(keep);
    let (metrics, every) = (metrics.clone(), Duration::from_secs(2));
    tasks.spawn(async move {
        loop {
            let (known, skipped) = crate::locks::read(&state).counts();
            metrics.owners.state(&known, &skipped);
            tokio::time::sleep(every).await;
        }
    });
    Some(keeper)
}

/// How long after one re-list for new subscriptions another may start (changes meanwhile are
/// gathered into it).
const SUBSCRIBED_RELIST_GAP: Duration = Duration::from_secs(2);

/// Whenever the accepted subscriptions change: the owner state follows what they need, then
/// the stored events are listed again, so that a new subscription gets the events already
/// stored (copies that exist cost nothing: the copy index knows them).
async fn relist_for_subscriptions(
    live: Arc<crate::subscription::SharedSubscriptions>,
    keeper: Option<crate::owners::live::OwnerWatches>,
    pipeline: Arc<Pipeline>,
) {
    // Changes from now on: what is accepted already is planned with the first list.
    let mut changes = live.changes();
    while changes.changed().await.is_ok() {
        if let Some(keeper) = &keeper {
            keeper.refresh().await;
        }
        tracing::info!(
            "mirror: the accepted subscriptions changed; listing the stored events again for them"
        );
        pipeline.relists().notify_waiters();
        tokio::time::sleep(SUBSCRIBED_RELIST_GAP).await;
    }
}

/// Follows the stored events in each source namespace into the work queue (see [`sourced`]).
fn follow_sources(
    syncer: &Syncer,
    queue: &Arc<WorkQueue>,
    pipeline: &Arc<Pipeline>,
    metrics: &Arc<Metrics>,
    tasks: &mut tokio::task::JoinSet<()>,
) {
    for ns in SOURCE_NAMESPACES {
        let api: Api<Event> = Api::namespaced(syncer.client.clone(), ns);
        let (queue, metrics, pipeline) = (queue.clone(), metrics.clone(), pipeline.clone());
        let how = crate::follow::WatchSpec {
            what: format!("events in {ns}"),
            hint: "mirroring waits; what is stored meanwhile is caught up by the next list",
            // A new list whenever a lane that dropped deliveries asks for one.
            relist: Some(pipeline.relists()),
            // Also read as mirror_watch_errors.
            errors: metrics.watches.of("events"),
        };
        let config = watcher::Config::default().fields(FIELD_SELECTOR);
        tasks.spawn(crate::follow::follow(api, config, how, move |event| {
            sourced(event, ns, &queue, &pipeline, &metrics)
        }));
    }
}

/// One event of the watch on stored sources in `ns`: queue it, forget it, or tell the sinks
/// that everything is listed again.
fn sourced(
    event: watcher::Event<Event>,
    ns: &str,
    queue: &WorkQueue,
    pipeline: &Pipeline,
    metrics: &Metrics,
) {
    match event {
        watcher::Event::Apply(ev) | watcher::Event::InitApply(ev) => {
            // The controller's queue is unbounded: it holds one state per stored event, which
            // the API server bounds.
            let _ = queue.add(key_of(&ev), ev);
        }
        watcher::Event::Init => {
            // A (re-)list of the sources: the sinks stop trusting what they believe they hold
            // (the copies are listed again, once per channel namespace, when first needed): it
            // may have changed meanwhile.
            relisted(pipeline);
        }
        watcher::Event::InitDone => {
            tracing::info!(namespace = ns, "mirror: caught up with stored events");
        }
        watcher::Event::Delete(ev) => {
            // Expired (TTL) or deleted: nothing more to copy, nothing to retry.
            queue.forget(&key_of(&ev));
            let source = crate::mirror::source_reference(&ev);
            pipeline.forget(|output| output.forget(&source));
        }
    }
    metrics.mirror.queued(queue.len());
}

fn is_warning(event: &Event) -> bool {
    crate::event::is_warning(event.type_.as_deref())
}

/// Every output is told the stored events are listed again (see [`Output::relisted`]).
fn relisted(pipeline: &Pipeline) {
    for output in pipeline.sinks() {
        output.relisted();
    }
}

/// Runs until `stop` is cancelled. `status` (the `/readyz` line of the cluster side) is held
/// not ready from the start until the first sync can run from complete inputs, and again while
/// the owner state is incomplete.
pub async fn run(
    syncer: Syncer,
    metrics: Arc<Metrics>,
    options: ControllerOptions,
    status: Arc<StatusLine>,
    stop: tokio_util::sync::CancellationToken,
) {
    let shutdown = stop.cancelled();
    tokio::pin!(shutdown);
    let starting = status.hold("mirroring is starting");
    // Never act on a guess: until discovery answers (or is given up on, see
    // `cluster::await_discovery`), a namespaced custom resource would look cluster-scoped.
    if syncer.resolver.discovery_state() == crate::classify::DiscoveryState::Pending {
        tracing::info!("mirror: waiting for API discovery before the first sync");
        starting.say("mirroring waits for API discovery before the first sync");
        tokio::select! {
            _ = syncer.resolver.settled() => {}
            () = &mut shutdown => return,
        }
    }
    syncer
        .budget
        .set(options.max_writes_per_second, metrics.mirror.clone());
    // Warnings first here too: a source handed back by a full lane waits here.
    let queue = Arc::new(WorkQueue::unbounded().urgent_first(is_warning));
    let report = Arc::new(Report {
        metrics: metrics.clone(),
        own_events: syncer.own_events.clone(),
        subscriptions: syncer.subscriptions.clone(),
    });
    let pipeline = Arc::new(options.pipeline(&syncer, report));
    for output in pipeline.sinks() {
        metrics.delivery.sink(output.name());
    }
    // What another leader (or an earlier run) wrote is not known: list it again.
    relisted(&pipeline);
    // Every task of this run stops when the run ends, however it ends (lease lost, shutdown,
    // or the run itself dropped).
    let mut tasks = tokio::task::JoinSet::new();
    pipeline.start(&mut tasks);
    // Subscriptions are known before the first sync, so that stored events reach them.
    if let Some(live) = &syncer.subscriptions {
        starting.say("mirroring waits for the Subscriptions' first list");
        tokio::select! {
            waited = tokio::time::timeout(options.subscriptions_wait, live.listed()) => {
                if waited.is_err() {
                    tracing::warn!(waited = %humantime::format_duration(options.subscriptions_wait),
                        "mirror: the subscriptions are not listed yet (see the subscription warnings); syncing without them, the stored events are listed again once they are");
                }
            }
            () = &mut shutdown => return,
        }
    }
    // Delivery rules resolve against live cluster state: no sync runs until it is listed.
    let keeper = keep_owner_state(&syncer, &metrics, &options, &mut tasks);
    let (complete_tx, complete) = tokio::sync::watch::channel(keeper.is_none());
    match &keeper {
        Some(keeper) => {
            let held = (status.clone(), starting);
            tasks.spawn(hold_until_listed(keeper.progress(), held, complete_tx));
        }
        None => drop(starting),
    }
    // The stored events are listed once the state they are judged against is: the first
    // sync runs from a complete state, and nothing piles up in the queue meanwhile.
    let mut first = complete.clone();
    tokio::select! {
        _ = first.wait_for(|complete| *complete) => {}
        () = &mut shutdown => return,
    }
    follow_sources(&syncer, &queue, &pipeline, &metrics, &mut tasks);
    if let Some(live) = syncer.subscriptions.clone() {
        tasks.spawn(relist_for_subscriptions(live, keeper, pipeline.clone()));
    }
    let worker = Worker {
        syncer,
        pipeline,
        queue,
        metrics,
        options,
        cut_log: Arc::new(crate::telemetry::Throttle::new(Duration::from_secs(60))),
        complete,
    };
    for _ in 0..worker.options.workers.max(1) {
        tasks.spawn(worker.clone().run());
    }
    shutdown.await;
    tasks.shutdown().await;
}
