//! The PUB owner: the one task that writes to the PUB socket (the reference shared its PUB socket
//! between two threads; here stores hand events over a channel).
//!
//! Frames are `[b"<store>.<topic>", JSON(event)]`. neko publishes events whose payload holds
//! bytes too, with the bytes as base64 strings (the reference silently skipped them, because its
//! JSON encoder could not write bytes); it is the same JSON the HTTP API shows.
//!
//! Publishing is lossy by design, like ZeroMQ's PUB: when the channel is full (subscribers or
//! this task cannot keep up) events are dropped and counted, never waited for, so PUB cannot slow
//! the stores. While nobody is connected, stores do not even copy events for it.
//!
//! The socket is an XPUB (SUB peers cannot tell it from a PUB): zeromq's PUB allocates and
//! touches a 100,000-slot fan-out queue up front, 4 MiB that were two thirds of idle neko's
//! private memory. XPUB learns subscriptions only as they are read, so the task reads them. Its
//! send writes to each matching subscriber in turn: a subscriber that stops reading holds this
//! task up, the channel fills, and events are dropped and counted (`pub_dropped`) as above.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use zeromq::{Socket, SocketEvent, SocketRecv, SocketSend, XPubSocket, ZmqMessage};

use super::PlaneCounters;
use super::codec::EventJson;
use super::store::Event;

/// Batches of events waiting for the PUB owner, at most.
const QUEUE_BATCHES: usize = 256;

/// Where stores send accepted events.
#[derive(Clone)]
pub(crate) struct PubSink {
    tx: mpsc::Sender<Vec<Event>>,
    /// Connected subscribers, as the PUB socket's monitor reports them.
    subscribers: Arc<AtomicUsize>,
    counters: Arc<PlaneCounters>,
}

impl PubSink {
    /// Whether events are worth copying (someone is connected).
    pub fn wanted(&self) -> bool {
        self.subscribers.load(Ordering::Relaxed) > 0
    }

    /// Subscribers connected now.
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }

    /// Hands events to the PUB owner, or drops them if it is behind.
    pub fn send(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let n = events.len() as u64;
        if self.tx.try_send(events).is_err() {
            self.counters.pub_dropped.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// The PUB owner's half.
pub(crate) struct Publisher {
    socket: XPubSocket,
    rx: mpsc::Receiver<Vec<Event>>,
    monitor: futures::channel::mpsc::Receiver<SocketEvent>,
    subscribers: Arc<AtomicUsize>,
    counters: Arc<PlaneCounters>,
}

/// A sink and the publisher that serves it. The monitor must be set before the socket binds.
pub(crate) fn channel(
    mut socket: XPubSocket,
    counters: Arc<PlaneCounters>,
) -> (PubSink, Publisher) {
    let monitor = socket.monitor();
    let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
    let subscribers = Arc::new(AtomicUsize::new(0));
    (
        PubSink {
            tx,
            subscribers: subscribers.clone(),
            counters: counters.clone(),
        },
        Publisher {
            socket,
            rx,
            monitor,
            subscribers,
            counters,
        },
    )
}

impl Publisher {
    /// Binds the socket (before the task runs, so the address is known at startup).
    pub async fn bind(&mut self, endpoint: &str) -> zeromq::ZmqResult<zeromq::Endpoint> {
        self.socket.bind(endpoint).await
    }

    /// Publishes until shutdown (or until the plane is gone).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                event = self.monitor.next() => match event {
                    Some(SocketEvent::Accepted(..)) => {
                        self.subscribers.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(SocketEvent::Disconnected(_)) => {
                        let _ = self.subscribers.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(1)));
                    }
                    Some(_) => {}
                    None => break,
                },
                batch = self.rx.recv() => match batch {
                    Some(events) => self.publish(events).await,
                    None => break,
                },
                // (Un)subscriptions: reading them is what records them in the socket.
                subscription = self.socket.recv() => if let Err(e) = subscription {
                    tracing::debug!(error = %e, "PUB subscriber gone");
                },
            }
        }
        let _ = self.socket.close().await;
    }

    async fn publish(&mut self, events: Vec<Event>) {
        if !self.wanted() {
            return;
        }
        let mut sent = 0u64;
        for event in &events {
            let topic = format!("{}.{}", event.store(), event.topic());
            let body = match serde_json::to_vec(&EventJson {
                event,
                light: false,
            }) {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!(error = %e, seq = event.seq(), "cannot encode an event for PUB");
                    continue;
                }
            };
            let Ok(msg) = ZmqMessage::try_from(vec![Bytes::from(topic), Bytes::from(body)]) else {
                continue;
            };
            if self.socket.send(msg).await.is_ok() {
                sent += 1;
            }
        }
        self.counters.pub_sent.fetch_add(sent, Ordering::Relaxed);
    }

    fn wanted(&self) -> bool {
        self.subscribers.load(Ordering::Relaxed) > 0
    }
}
