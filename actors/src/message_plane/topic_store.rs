//! TopicStore: the actor that owns one [`Store`] (messages, events, lifecycle, runs, export or
//! memory).
//!
//! Parent: the [`MessagePlane`] supervisor. Children: none. Senders: the INGEST task (a batch per
//! frame, each holding a permit of the ingest window, so the socket is read only as fast as the
//! stores keep up), the RPC tasks (one request at a time, answered with clones of the events; the
//! encoding happens outside the actor), and neko's own producers through the
//! [`MessagePlaneHandle`]. Every accepted record goes to the PUB owner (while anyone subscribes).
//!
//! It keeps its figures (records, topics, last seq) in a shared [`StoreStats`] after each message,
//! so that when it dies the supervisor can say what was lost, and the replacement continues the
//! sequence numbers (readers' `get_since` cursors stay valid). The replacement starts empty.
//!
//! [`MessagePlane`]: super::MessagePlane
//! [`MessagePlaneHandle`]: super::MessagePlaneHandle

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::OwnedSemaphorePermit;

use super::publisher::PubSink;
use super::replay::Plan;
use super::store::{
    Event, Payload, QueryFilter, Rejected, Store, StoreLimits, StoreName, TopicInfo,
};
use super::{PlaneCounters, StoreStats};
use crate::clock::unix_now;

/// The TopicStore actor.
pub(crate) struct TopicStore;

/// What a TopicStore starts with.
pub(crate) struct TopicStoreArgs {
    pub name: StoreName,
    pub limits: StoreLimits,
    /// The first event gets `last_seq + 1` (a replacement continues its predecessor's numbers).
    pub last_seq: u64,
    pub stats: Arc<StoreStats>,
    pub counters: Arc<PlaneCounters>,
    pub publisher: PubSink,
}

/// One accepted INGEST item for this store.
pub(crate) struct IngestItem {
    /// Items of a frame share the topic string.
    pub topic: Arc<str>,
    pub payload: Payload,
}

/// The items of one INGEST `delta_batch` frame that go to this store.
pub(crate) struct IngestBatch {
    pub items: Vec<IngestItem>,
    /// Released when the batch is handled (or dropped with a dead mailbox).
    pub permit: Arc<OwnedSemaphorePermit>,
}

/// How a snapshot frame writes its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SnapshotMode {
    Replace,
    Append,
}

/// An INGEST `snapshot` frame for this store.
pub(crate) struct SnapshotBatch {
    pub topic: String,
    pub mode: SnapshotMode,
    pub records: Vec<Payload>,
    pub permit: Arc<OwnedSemaphorePermit>,
}

/// A request evaluated against the store (decoded and checked by the RPC layer or the handle).
#[derive(Debug)]
pub(crate) enum StoreRequest {
    ListTopics,
    Publish {
        topic: String,
        payload: Payload,
    },
    GetRecent {
        topic: String,
        limit: usize,
    },
    GetSince {
        topic: Option<String>,
        after_seq: u64,
        limit: usize,
    },
    Query(QueryFilter),
    /// A replay plan; at most `max_items` events are returned.
    Replay {
        plan: Plan,
        max_items: usize,
    },
    Delete {
        id: String,
    },
}

/// The answer to a [`StoreRequest`].
#[derive(Debug)]
pub(crate) enum StoreReply {
    Topics(Vec<TopicInfo>),
    Published(Event),
    Events(Vec<Event>),
    Deleted(bool),
}

/// Messages of a TopicStore.
pub(crate) enum TopicStoreMsg {
    /// Items from an INGEST `delta_batch` frame.
    Ingest(IngestBatch),
    /// An INGEST `snapshot` frame.
    Snapshot(SnapshotBatch),
    /// A record from neko itself (lifecycle, events, runs, export).
    Record { topic: String, payload: Payload },
    /// An RPC or handle request.
    Rpc(StoreRequest, RpcReplyPort<Result<StoreReply, Rejected>>),
}

/// The TopicStore's state.
pub(crate) struct TopicStoreState {
    store: Store,
    stats: Arc<StoreStats>,
    counters: Arc<PlaneCounters>,
    publisher: PubSink,
}

impl Actor for TopicStore {
    type Msg = TopicStoreMsg;
    type State = TopicStoreState;
    type Arguments = TopicStoreArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: TopicStoreArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let state = TopicStoreState {
            store: Store::new(args.name, args.limits, args.last_seq),
            stats: args.stats,
            counters: args.counters,
            publisher: args.publisher,
        };
        state.update_stats();
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TopicStoreMsg::Ingest(batch) => state.ingest(batch),
            TopicStoreMsg::Snapshot(batch) => state.snapshot(batch),
            TopicStoreMsg::Record { topic, payload } => state.record(&topic, payload),
            TopicStoreMsg::Rpc(request, reply) => {
                let _ = reply.send(state.request(request));
            }
        }
        state.update_stats();
        Ok(())
    }
}

impl TopicStoreState {
    fn update_stats(&self) {
        let s = &self.stats;
        s.records
            .store(self.store.records() as u64, Ordering::Relaxed);
        s.topics
            .store(self.store.topic_count() as u64, Ordering::Relaxed);
        s.last_seq.store(self.store.last_seq(), Ordering::Relaxed);
    }

    /// A buffer for events to publish, when anyone subscribes.
    fn pub_buffer(&self, n: usize) -> Option<Vec<Event>> {
        self.publisher.wanted().then(|| Vec::with_capacity(n))
    }

    fn ingest(&mut self, batch: IngestBatch) {
        let now = unix_now();
        let mut out = self.pub_buffer(batch.items.len());
        let (mut accepted, mut too_many, mut too_large, mut bad_topic) = (0u64, 0u64, 0u64, 0u64);
        for item in batch.items {
            match self.store.publish(&item.topic, item.payload, now) {
                Ok(event) => {
                    accepted += 1;
                    if let Some(out) = &mut out {
                        out.push(event.clone());
                    }
                }
                Err(Rejected::TooManyTopics) => too_many += 1,
                Err(Rejected::PayloadTooLarge) => too_large += 1,
                Err(Rejected::TopicRequired | Rejected::TopicTooLong) => bad_topic += 1,
            }
        }
        let c = &self.counters;
        c.ingest_accepted.fetch_add(accepted, Ordering::Relaxed);
        c.dropped_too_many_topics
            .fetch_add(too_many, Ordering::Relaxed);
        c.dropped_payload_too_large
            .fetch_add(too_large, Ordering::Relaxed);
        c.dropped_bad_topic.fetch_add(bad_topic, Ordering::Relaxed);
        if let Some(out) = out {
            self.publisher.send(out);
        }
        drop(batch.permit);
    }

    fn snapshot(&mut self, batch: SnapshotBatch) {
        let n = batch.records.len() as u64;
        let c = &self.counters;
        if let Err(why) = self.store.check_topic(&batch.topic) {
            let counter = match why {
                Rejected::TooManyTopics => &c.dropped_too_many_topics,
                _ => &c.dropped_bad_topic,
            };
            counter.fetch_add(n, Ordering::Relaxed);
            return;
        }
        let now = unix_now();
        let mut out = self.pub_buffer(batch.records.len());
        let events = match batch.mode {
            SnapshotMode::Replace => self.store.replace_topic(&batch.topic, batch.records, now),
            SnapshotMode::Append => batch
                .records
                .into_iter()
                .filter_map(|p| self.store.publish(&batch.topic, p, now).ok().cloned())
                .collect(),
        };
        c.ingest_accepted
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        c.dropped_payload_too_large
            .fetch_add(n - events.len() as u64, Ordering::Relaxed);
        if let Some(out) = &mut out {
            out.extend(events);
        }
        if let Some(out) = out {
            self.publisher.send(out);
        }
        drop(batch.permit);
    }

    fn record(&mut self, topic: &str, payload: Payload) {
        match self.store.publish(topic, payload, unix_now()) {
            Ok(event) => {
                if self.publisher.wanted() {
                    let event = event.clone();
                    self.publisher.send(vec![event]);
                }
            }
            Err(why) => {
                self.counters
                    .records_rejected
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(store = %self.store.name(), %topic, reason = %why, "message plane refused a record from neko");
            }
        }
    }

    fn request(&mut self, request: StoreRequest) -> Result<StoreReply, Rejected> {
        let store = &mut self.store;
        Ok(match request {
            StoreRequest::ListTopics => StoreReply::Topics(store.list_topics()),
            StoreRequest::Publish { topic, payload } => {
                let event = store.publish(&topic, payload, unix_now())?.clone();
                if self.publisher.wanted() {
                    self.publisher.send(vec![event.clone()]);
                }
                StoreReply::Published(event)
            }
            StoreRequest::GetRecent { topic, limit } => {
                StoreReply::Events(store.get_recent(&topic, limit))
            }
            StoreRequest::GetSince {
                topic,
                after_seq,
                limit,
            } => StoreReply::Events(store.get_since(topic.as_deref(), after_seq, limit)),
            StoreRequest::Query(filter) => StoreReply::Events(store.query(&filter)),
            StoreRequest::Replay { plan, max_items } => StoreReply::Events(
                plan.eval(store)
                    .into_iter()
                    .take(max_items)
                    .cloned()
                    .collect(),
            ),
            StoreRequest::Delete { id } => StoreReply::Deleted(store.delete(&id)),
        })
    }
}
