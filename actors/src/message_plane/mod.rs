//! MessagePlane: the stores plugins push messages to and read history from, and the three
//! ZeroMQ endpoints that serve them (v1 reference §9).
//!
//! Parent: the tree's root. Children: one `TopicStore` actor per store (messages, events,
//! lifecycle, runs, export, memory), each owning a [`store::Store`]. Tasks it owns (aborted when it
//! stops): INGEST (PULL; `delta_batch` and `snapshot` frames → stores), RPC (ROUTER; protocol v1,
//! see [`rpc`]) and the PUB owner (`<store>.<topic>` frames; the only writer of the PUB socket).
//! Senders: the tree (a [`MessagePlaneHandle`] via `GetHandle`), its own stats timer.
//!
//! Supervision: a store that fails is restarted at once, empty, continuing its sequence numbers;
//! the log line says which store, how many records and topics were lost and how many restarts it
//! has had. More than [`MAX_STORE_RESTARTS`] in [`RESTART_WINDOW`] and the plane stops (its own
//! supervisor decides). When the plane dies its socket tasks see the shutdown channel close and
//! release the endpoints.
//!
//! Isolation: malformed frames are counted and logged (one summary per second at most), never
//! fatal. INGEST reads a frame only when the stores have room for it (a window of frames), so a
//! producer that floods is held back by TCP and ZeroMQ's per-producer fair queueing; it slows or
//! loses only its own messages, and no actor mailbox grows without bound.
//!
//! The rest of neko uses the [`MessagePlaneHandle`]: bound endpoints (for plugins' environment),
//! fire-and-forget `publish` for neko's own records, and `get_recent` / `query` / `delete` for the
//! gateway. Reads go straight to the store actors (the handle follows restarts), not through this
//! actor.

mod codec;
mod ingest;
mod publisher;
pub mod replay;
pub mod rpc;
pub mod store;
mod topic_store;

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use zeromq::{PullSocket, RouterSocket, Socket, SocketOptions, XPubSocket};

pub use codec::{DecodeError, Doc};
pub use rpc::ValidateMode;
pub use store::{Event, Payload, QueryFilter, Rejected, StoreLimits, StoreName, TopicInfo};

use crate::Error;
use publisher::PubSink;
use topic_store::{StoreReply, StoreRequest, TopicStore, TopicStoreArgs, TopicStoreMsg};

/// Store failures tolerated within [`RESTART_WINDOW`] before the plane gives up.
pub const MAX_STORE_RESTARTS: usize = 10;
/// The window of [`MAX_STORE_RESTARTS`].
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// Deadline of a call to a store (RPC and handle reads).
pub const STORE_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often ingest figures are looked at (and problems logged, at most once per interval).
const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// How long the socket tasks get to close their sockets when the plane stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Largest read chunk of the INGEST socket: big frames (256 records) arrive in few reads.
const INGEST_READ_CHUNK: usize = 1 << 20;

/// `[message_plane]` as the plane needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct MessagePlaneSettings {
    /// ROUTER endpoint, e.g. `tcp://127.0.0.1:38865` (port 0 picks a free port).
    pub rpc_endpoint: String,
    /// PUB endpoint.
    pub pub_endpoint: String,
    /// PULL endpoint.
    pub ingest_endpoint: String,
    /// Records kept per (store, topic).
    pub store_maxlen: usize,
    /// Topics per store.
    pub topic_max: usize,
    /// Largest payload, in msgpack bytes.
    pub payload_max_bytes: usize,
    /// Cap of every `limit` a query may ask for.
    pub get_recent_max_limit: usize,
    pub validate_mode: ValidateMode,
}

impl Default for MessagePlaneSettings {
    /// The reference's defaults.
    fn default() -> Self {
        Self {
            rpc_endpoint: "tcp://127.0.0.1:38865".into(),
            pub_endpoint: "tcp://127.0.0.1:38866".into(),
            ingest_endpoint: "tcp://127.0.0.1:38867".into(),
            store_maxlen: 20_000,
            topic_max: 2_000,
            payload_max_bytes: 256 * 1024,
            get_recent_max_limit: 1_000,
            validate_mode: ValidateMode::Strict,
        }
    }
}

/// The endpoints as bound (ports resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessagePlaneEndpoints {
    pub rpc: String,
    pub publish: String,
    pub ingest: String,
}

/// Figures of the plane since it started.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct MessagePlaneStats {
    /// INGEST frames received.
    pub ingest_frames: u64,
    /// INGEST frames that were not a msgpack map of the expected shape.
    pub ingest_bad_frames: u64,
    /// Records stored from INGEST.
    pub ingest_accepted: u64,
    pub dropped_unknown_store: u64,
    pub dropped_bad_topic: u64,
    pub dropped_too_many_topics: u64,
    pub dropped_payload_too_large: u64,
    /// Items that were not maps (or payloads nested too deeply).
    pub dropped_bad_item: u64,
    /// Items for a store that was being restarted.
    pub dropped_unavailable: u64,
    pub rpc_requests: u64,
    /// RPC frames that were neither JSON nor msgpack (or had no request frame).
    pub rpc_bad_frames: u64,
    /// RPC requests answered with an error.
    pub rpc_errors: u64,
    /// PUB subscribers connected now.
    pub pub_subscribers: u64,
    pub pub_sent: u64,
    /// Events not published because the PUB owner was behind.
    pub pub_dropped: u64,
    /// neko's own records refused (a bug in neko: bad topic or too large).
    pub records_rejected: u64,
    /// Restarts of failed stores.
    pub store_restarts: u64,
    pub stores: Vec<StoreFigures>,
}

impl MessagePlaneStats {
    /// INGEST items dropped, for every reason.
    pub fn ingest_dropped(&self) -> u64 {
        self.dropped_unknown_store
            + self.dropped_bad_topic
            + self.dropped_too_many_topics
            + self.dropped_payload_too_large
            + self.dropped_bad_item
            + self.dropped_unavailable
    }
}

/// One store's figures.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StoreFigures {
    pub store: &'static str,
    pub records: u64,
    pub topics: u64,
    pub last_seq: u64,
}

/// Counters shared by the plane's tasks and actors (relaxed atomics, added once per frame).
#[derive(Debug, Default)]
pub(crate) struct PlaneCounters {
    ingest_frames: AtomicU64,
    ingest_bad_frames: AtomicU64,
    ingest_accepted: AtomicU64,
    dropped_unknown_store: AtomicU64,
    dropped_bad_topic: AtomicU64,
    dropped_too_many_topics: AtomicU64,
    dropped_payload_too_large: AtomicU64,
    dropped_bad_item: AtomicU64,
    dropped_unavailable: AtomicU64,
    rpc_requests: AtomicU64,
    rpc_bad_frames: AtomicU64,
    rpc_errors: AtomicU64,
    pub_sent: AtomicU64,
    pub_dropped: AtomicU64,
    records_rejected: AtomicU64,
    store_restarts: AtomicU64,
}

/// What a store actor last reported about itself; read by the supervisor when the actor dies.
#[derive(Debug, Default)]
pub(crate) struct StoreStats {
    records: AtomicU64,
    topics: AtomicU64,
    last_seq: AtomicU64,
}

/// The current store actors, by [`StoreName::index`].
pub(crate) struct StoreRefs(Vec<ActorRef<TopicStoreMsg>>);

impl StoreRefs {
    pub fn get(&self, store: StoreName) -> &ActorRef<TopicStoreMsg> {
        &self.0[store.index()]
    }
}

/// Lets a log line through at most once per wall-clock second.
pub(crate) struct RateLimit(AtomicU64);

impl RateLimit {
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    pub fn ready(&self) -> bool {
        let now = crate::clock::unix_now() as u64;
        let last = self.0.load(Ordering::Relaxed);
        now > last
            && self
                .0
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// The MessagePlane supervisor.
pub struct MessagePlane;

/// Messages of the MessagePlane.
pub enum MessagePlaneMsg {
    /// The handle the rest of neko uses (endpoints, publish, reads).
    GetHandle(RpcReplyPort<MessagePlaneHandle>),
    /// Timer: log ingest figures, and problems since the last time.
    LogStats,
}

/// The MessagePlane's state.
pub struct MessagePlaneState {
    limits: StoreLimits,
    /// Current store actors, by [`StoreName::index`].
    stores: Vec<ActorRef<TopicStoreMsg>>,
    /// The same, for the socket tasks and handles.
    refs: watch::Sender<Arc<StoreRefs>>,
    stats: Vec<Arc<StoreStats>>,
    counters: Arc<PlaneCounters>,
    publisher: PubSink,
    /// Recent store failures, for the restart limit.
    restarts: VecDeque<Instant>,
    restart_counts: [u64; 6],
    /// Tells the socket tasks to close their sockets; dropping it does too.
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    handle: MessagePlaneHandle,
    last_logged: MessagePlaneStats,
}

impl Actor for MessagePlane {
    type Msg = MessagePlaneMsg;
    type State = MessagePlaneState;
    type Arguments = MessagePlaneSettings;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        settings: MessagePlaneSettings,
    ) -> Result<Self::State, ActorProcessingErr> {
        let limits = StoreLimits {
            maxlen: settings.store_maxlen.max(1),
            topic_max: settings.topic_max,
            payload_max_bytes: settings.payload_max_bytes,
        };
        let counters = Arc::new(PlaneCounters::default());

        // Bind first: an endpoint in use fails the start with a clear error, before any actor.
        let mut options = SocketOptions::default();
        options.read_buffer(4096, INGEST_READ_CHUNK, 2);
        let mut ingest_socket = PullSocket::with_options(options);
        let ingest = bind(&mut ingest_socket, &settings.ingest_endpoint, "ingest").await?;
        let mut rpc_socket = RouterSocket::new();
        let rpc = bind(&mut rpc_socket, &settings.rpc_endpoint, "rpc").await?;
        let (publisher, mut pub_owner) = publisher::channel(XPubSocket::new(), counters.clone());
        let publish = pub_owner
            .bind(&settings.pub_endpoint)
            .await
            .map_err(|e| bind_error("pub", &settings.pub_endpoint, e))?;
        let endpoints = MessagePlaneEndpoints {
            rpc: rpc.to_string(),
            publish: publish.to_string(),
            ingest: ingest.to_string(),
        };
        for ep in [&endpoints.rpc, &endpoints.publish, &endpoints.ingest] {
            if !["127.0.0.1", "localhost", "[::1]", "ipc://"]
                .iter()
                .any(|l| ep.contains(l))
            {
                tracing::warn!(endpoint = %ep, "message plane endpoint is not loopback; anyone who can reach it can read and write the stores");
            }
        }

        let stats: Vec<Arc<StoreStats>> = StoreName::ALL
            .iter()
            .map(|_| Arc::new(StoreStats::default()))
            .collect();
        let mut stores = Vec::with_capacity(StoreName::ALL.len());
        for name in StoreName::ALL {
            let args = TopicStoreArgs {
                name,
                limits,
                last_seq: 0,
                stats: stats[name.index()].clone(),
                counters: counters.clone(),
                publisher: publisher.clone(),
            };
            stores.push(spawn_store(&myself, args).await?);
        }
        let (refs, refs_rx) = watch::channel(Arc::new(StoreRefs(stores.clone())));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let rpc_ctx = Arc::new(rpc::RpcContext {
            cfg: rpc::RpcConfig {
                mode: settings.validate_mode,
                max_limit: settings.get_recent_max_limit,
            },
            stores: refs_rx.clone(),
            counters: counters.clone(),
            call_timeout: STORE_CALL_TIMEOUT,
        });
        let ingest_task = ingest::Ingest {
            socket: ingest_socket,
            payload_max: limits.payload_max_bytes,
            stores: refs_rx.clone(),
            counters: counters.clone(),
        };
        let tasks = vec![
            tokio::spawn(ingest_task.run(shutdown_rx.clone())),
            tokio::spawn(rpc::serve(rpc_socket, rpc_ctx, shutdown_rx.clone())),
            tokio::spawn(pub_owner.run(shutdown_rx)),
        ];
        tracing::info!(
            rpc = %endpoints.rpc,
            publish = %endpoints.publish,
            ingest = %endpoints.ingest,
            store_maxlen = limits.maxlen,
            topic_max = limits.topic_max,
            payload_max_bytes = limits.payload_max_bytes,
            validate_mode = settings.validate_mode.as_str(),
            "message plane listening"
        );
        myself.send_interval(STATS_INTERVAL, || MessagePlaneMsg::LogStats);
        let handle = MessagePlaneHandle {
            inner: Arc::new(HandleInner {
                endpoints,
                stores: refs_rx,
                counters: counters.clone(),
                stats: stats.clone(),
                publisher: publisher.clone(),
                max_limit: settings.get_recent_max_limit,
            }),
        };
        Ok(MessagePlaneState {
            limits,
            stores,
            refs,
            stats,
            counters,
            publisher,
            restarts: VecDeque::new(),
            restart_counts: [0; 6],
            shutdown,
            tasks,
            handle,
            last_logged: MessagePlaneStats::default(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MessagePlaneMsg::GetHandle(reply) => {
                let _ = reply.send(state.handle.clone());
            }
            MessagePlaneMsg::LogStats => state.log_stats(),
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        // While the plane itself stops, its stores ending is expected.
        if matches!(
            myself.get_status(),
            ractor::ActorStatus::Stopping | ractor::ActorStatus::Stopped
        ) {
            return Ok(());
        }
        let Some(i) = state
            .stores
            .iter()
            .position(|a| a.get_id() == cell.get_id())
        else {
            return Ok(());
        };
        state.restart_store(&myself, StoreName::ALL[i], &why).await
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = state.shutdown.send(true);
        for task in state.tasks.drain(..) {
            let abort = task.abort_handle();
            if tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
                abort.abort();
            }
        }
        for store in &state.stores {
            store.stop(None);
        }
        Ok(())
    }
}

impl MessagePlaneState {
    async fn restart_store(
        &mut self,
        myself: &ActorRef<MessagePlaneMsg>,
        name: StoreName,
        why: &str,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        self.restarts
            .retain(|t| now.duration_since(*t) < RESTART_WINDOW);
        let i = name.index();
        let stats = &self.stats[i];
        let records_lost = stats.records.load(Ordering::Relaxed);
        let topics_lost = stats.topics.load(Ordering::Relaxed);
        let last_seq = stats.last_seq.load(Ordering::Relaxed);
        if self.restarts.len() >= MAX_STORE_RESTARTS {
            tracing::error!(store = %name, reason = %why, records_lost, topics_lost, restarts = self.restarts.len(), "message plane stores keep failing; giving up");
            myself.stop(Some(format!("store {name} failed too often: {why}")));
            return Ok(());
        }
        self.restarts.push_back(now);
        self.restart_counts[i] += 1;
        self.counters.store_restarts.fetch_add(1, Ordering::Relaxed);
        let args = TopicStoreArgs {
            name,
            limits: self.limits,
            last_seq,
            stats: stats.clone(),
            counters: self.counters.clone(),
            publisher: self.publisher.clone(),
        };
        self.stores[i] = spawn_store(myself, args).await?;
        self.refs
            .send_replace(Arc::new(StoreRefs(self.stores.clone())));
        tracing::error!(
            store = %name,
            reason = %why,
            records_lost,
            topics_lost,
            restart_count = self.restart_counts[i],
            next_seq = last_seq + 1,
            "message plane store failed; restarted empty"
        );
        Ok(())
    }

    fn log_stats(&mut self) {
        let now = self.handle.stats();
        let prev = std::mem::replace(&mut self.last_logged, now.clone());
        let d = |f: fn(&MessagePlaneStats) -> u64| f(&now).saturating_sub(f(&prev));
        let recv = d(|s| s.ingest_frames);
        let accepted = d(|s| s.ingest_accepted);
        let dropped = d(MessagePlaneStats::ingest_dropped);
        let malformed = d(|s| s.ingest_bad_frames);
        let rpc_malformed = d(|s| s.rpc_bad_frames);
        let pub_dropped = d(|s| s.pub_dropped);
        if dropped + malformed + rpc_malformed + pub_dropped > 0 {
            tracing::warn!(
                recv,
                accepted,
                dropped,
                unknown_store = d(|s| s.dropped_unknown_store),
                bad_topic = d(|s| s.dropped_bad_topic),
                too_many_topics = d(|s| s.dropped_too_many_topics),
                payload_too_large = d(|s| s.dropped_payload_too_large),
                bad_item = d(|s| s.dropped_bad_item),
                store_unavailable = d(|s| s.dropped_unavailable),
                malformed_frames = malformed,
                rpc_malformed_frames = rpc_malformed,
                pub_dropped,
                "message plane dropped input in the last interval"
            );
        } else if recv > 0 {
            tracing::debug!(recv, accepted, "message plane ingest stats");
        }
    }
}

fn bind_error(what: &str, endpoint: &str, e: zeromq::ZmqError) -> ActorProcessingErr {
    format!("cannot bind the message plane {what} endpoint {endpoint}: {e}").into()
}

async fn bind<S: Socket>(
    socket: &mut S,
    endpoint: &str,
    what: &str,
) -> Result<zeromq::Endpoint, ActorProcessingErr> {
    socket
        .bind(endpoint)
        .await
        .map_err(|e| bind_error(what, endpoint, e))
}

async fn spawn_store(
    plane: &ActorRef<MessagePlaneMsg>,
    args: TopicStoreArgs,
) -> Result<ActorRef<TopicStoreMsg>, ActorProcessingErr> {
    // Names are for logs; ractor wants them unique, and a replacement may start before its
    // predecessor's name is released.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("neko.message_plane.{}.{n}", args.name);
    let (actor, _) = Actor::spawn_linked(Some(name), TopicStore, args, plane.get_cell()).await?;
    Ok(actor)
}

/// What the rest of neko uses to reach the message plane. Cheap to clone; follows store restarts.
#[derive(Clone)]
pub struct MessagePlaneHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    endpoints: MessagePlaneEndpoints,
    stores: watch::Receiver<Arc<StoreRefs>>,
    counters: Arc<PlaneCounters>,
    stats: Vec<Arc<StoreStats>>,
    publisher: PubSink,
    max_limit: usize,
}

impl fmt::Debug for MessagePlaneHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessagePlaneHandle")
            .field("endpoints", &self.inner.endpoints)
            .finish_non_exhaustive()
    }
}

impl MessagePlaneHandle {
    /// The endpoints as bound (what plugins are told).
    pub fn endpoints(&self) -> &MessagePlaneEndpoints {
        &self.inner.endpoints
    }

    fn store(&self, store: StoreName) -> ActorRef<TopicStoreMsg> {
        self.inner.stores.borrow().get(store).clone()
    }

    /// Stores a record from neko itself (lifecycle, events, runs, export); fire-and-forget. A
    /// payload that is not a JSON object is stored as `{"value": payload}`. Refusals (bad topic,
    /// too large) are logged and counted; a store being restarted loses the record.
    pub fn publish(&self, store: StoreName, topic: &str, payload: serde_json::Value) {
        self.publish_payload(store, topic, Payload::from_json(&payload));
    }

    /// Publishes a record neko writes often (one per call or trigger), built as msgpack without
    /// a JSON tree in between.
    pub fn publish_doc(&self, store: StoreName, topic: &str, doc: &Doc) {
        let mut bytes = Vec::with_capacity(doc.size_hint());
        doc.write_msgpack(&mut bytes);
        // A Doc is one well-formed value; only a JSON part nested deeper than the limit fails.
        let payload = Payload::from_msgpack(&bytes)
            .unwrap_or_else(|_| Payload::from_json(&serde_json::Value::Null));
        self.publish_payload(store, topic, payload);
    }

    fn publish_payload(&self, store: StoreName, topic: &str, payload: Payload) {
        let msg = TopicStoreMsg::Record {
            topic: topic.to_owned(),
            payload,
        };
        if self.store(store).cast(msg).is_err() {
            self.inner
                .counters
                .dropped_unavailable
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn call(&self, store: StoreName, request: StoreRequest) -> Result<StoreReply, Error> {
        let actor = self.store(store);
        match actor
            .call(
                |port| TopicStoreMsg::Rpc(request, port),
                Some(STORE_CALL_TIMEOUT),
            )
            .await
        {
            Ok(CallResult::Success(Ok(reply))) => Ok(reply),
            Ok(CallResult::Success(Err(why))) => Err(Error::Unavailable(format!(
                "message plane store {store}: {why}"
            ))),
            Ok(CallResult::Timeout) => Err(Error::Unavailable(format!(
                "message plane store {store} did not answer in time"
            ))),
            Ok(CallResult::SenderError) | Err(_) => Err(Error::Unavailable(format!(
                "message plane store {store} is restarting"
            ))),
        }
    }

    async fn events(&self, store: StoreName, request: StoreRequest) -> Result<Vec<Event>, Error> {
        match self.call(store, request).await? {
            StoreReply::Events(events) => Ok(events),
            _ => Err(Error::Unavailable("unexpected store reply".into())),
        }
    }

    /// The last `limit` events of `store`/`topic`, oldest first (limit capped as for RPC).
    pub async fn get_recent_events(
        &self,
        store: StoreName,
        topic: &str,
        limit: usize,
    ) -> Result<Vec<Event>, Error> {
        let request = StoreRequest::GetRecent {
            topic: topic.to_owned(),
            limit: limit.min(self.inner.max_limit),
        };
        self.events(store, request).await
    }

    /// [`Self::get_recent_events`] as JSON events (`{seq, ts, store, topic, payload, index}`;
    /// binary data as base64).
    pub async fn get_recent(
        &self,
        store: StoreName,
        topic: &str,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, Error> {
        let events = self.get_recent_events(store, topic, limit).await?;
        Ok(events.iter().map(Event::to_json).collect())
    }

    /// Events matching `filter`, newest first (limit capped as for RPC).
    pub async fn query_events(
        &self,
        store: StoreName,
        mut filter: QueryFilter,
    ) -> Result<Vec<Event>, Error> {
        filter.limit = filter.limit.min(self.inner.max_limit);
        self.events(store, StoreRequest::Query(filter)).await
    }

    /// [`Self::query_events`] as JSON events.
    pub async fn query(
        &self,
        store: StoreName,
        filter: QueryFilter,
    ) -> Result<Vec<serde_json::Value>, Error> {
        let events = self.query_events(store, filter).await?;
        Ok(events.iter().map(Event::to_json).collect())
    }

    /// Removes the records whose `index.id` is `id`; whether there was one.
    pub async fn delete(&self, store: StoreName, id: &str) -> Result<bool, Error> {
        match self
            .call(store, StoreRequest::Delete { id: id.to_owned() })
            .await?
        {
            StoreReply::Deleted(deleted) => Ok(deleted),
            _ => Err(Error::Unavailable("unexpected store reply".into())),
        }
    }

    /// Figures since the plane started.
    pub fn stats(&self) -> MessagePlaneStats {
        let c = &self.inner.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MessagePlaneStats {
            ingest_frames: l(&c.ingest_frames),
            ingest_bad_frames: l(&c.ingest_bad_frames),
            ingest_accepted: l(&c.ingest_accepted),
            dropped_unknown_store: l(&c.dropped_unknown_store),
            dropped_bad_topic: l(&c.dropped_bad_topic),
            dropped_too_many_topics: l(&c.dropped_too_many_topics),
            dropped_payload_too_large: l(&c.dropped_payload_too_large),
            dropped_bad_item: l(&c.dropped_bad_item),
            dropped_unavailable: l(&c.dropped_unavailable),
            rpc_requests: l(&c.rpc_requests),
            rpc_bad_frames: l(&c.rpc_bad_frames),
            rpc_errors: l(&c.rpc_errors),
            pub_subscribers: self.inner.publisher.subscribers() as u64,
            pub_sent: l(&c.pub_sent),
            pub_dropped: l(&c.pub_dropped),
            records_rejected: l(&c.records_rejected),
            store_restarts: l(&c.store_restarts),
            stores: StoreName::ALL
                .iter()
                .zip(&self.inner.stats)
                .map(|(name, s)| StoreFigures {
                    store: name.as_str(),
                    records: l(&s.records),
                    topics: l(&s.topics),
                    last_seq: l(&s.last_seq),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;
