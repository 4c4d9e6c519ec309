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
//! Its monitor reports connections but not disconnections, so while anyone is counted the task
//! recounts the connections to its endpoint from the kernel's socket tables once a second.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use zeromq::{Endpoint, Socket, SocketEvent, SocketRecv, SocketSend, XPubSocket, ZmqMessage};

use super::PlaneCounters;
use super::codec::EventJson;
use super::store::Event;

/// Batches of events waiting for the PUB owner, at most.
const QUEUE_BATCHES: usize = 256;

/// How often connections are recounted while someone is counted as subscribed.
const RECOUNT_INTERVAL: Duration = Duration::from_secs(1);

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
    /// The bound endpoint, whose connections are recounted.
    endpoint: Option<Endpoint>,
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
            endpoint: None,
        },
    )
}

impl Publisher {
    /// Binds the socket (before the task runs, so the address is known at startup).
    pub async fn bind(&mut self, endpoint: &str) -> zeromq::ZmqResult<Endpoint> {
        let bound = self.socket.bind(endpoint).await?;
        self.endpoint = Some(bound.clone());
        Ok(bound)
    }

    /// Publishes until shutdown (or until the plane is gone).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut recount = tokio::time::interval(RECOUNT_INTERVAL);
        recount.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = recount.tick(), if self.wanted() => {
                    if let Some(n) = self.endpoint.as_ref().and_then(connections) {
                        self.subscribers.store(n, Ordering::Relaxed);
                    }
                }
                event = self.monitor.next() => match event {
                    // (XPUB never reports `Disconnected`: the recount above takes them off.)
                    Some(SocketEvent::Accepted(..)) => {
                        self.subscribers.fetch_add(1, Ordering::Relaxed);
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

/// Connections to `endpoint` that are up now, from the kernel's socket tables; None when they
/// cannot be read (the count then only grows, as the monitor reports it).
fn connections(endpoint: &Endpoint) -> Option<usize> {
    match endpoint {
        Endpoint::Tcp(_, port) => {
            let mut tables = ["/proc/net/tcp", "/proc/net/tcp6"]
                .iter()
                .filter_map(|t| std::fs::read_to_string(t).ok())
                .peekable();
            tables.peek()?;
            Some(tables.map(|t| tcp_established_on(&t, *port)).sum())
        }
        Endpoint::Ipc(Some(path)) => {
            let table = std::fs::read_to_string("/proc/net/unix").ok()?;
            Some(unix_connected_on(&table, path))
        }
        _ => None,
    }
}

/// Rows of `/proc/net/tcp{,6}` in state ESTABLISHED (`01`) whose local port is `port`: the
/// accepted side of every connection to a socket listening there.
fn tcp_established_on(table: &str, port: u16) -> usize {
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_ascii_whitespace();
            let local = fields.nth(1);
            let state = fields.nth(1);
            state == Some("01")
                && local
                    .and_then(|l| l.rsplit_once(':'))
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                    == Some(port)
        })
        .count()
}

/// Rows of `/proc/net/unix` in state connected (`03`) bound to `path`: accepted sockets carry
/// the listener's path, the connecting side has none.
fn unix_connected_on(table: &str, path: &Path) -> usize {
    let path = path.to_string_lossy();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            // Num RefCount Protocol Flags Type St Inode Path; the path (last) may hold spaces.
            let mut rest = line.trim_start();
            let mut state = "";
            for i in 0..7 {
                let (field, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if i == 5 {
                    state = field;
                }
                rest = tail.trim_start();
            }
            state == "03" && rest == path
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn established_tcp_rows_on_the_port_are_counted() {
        // Local 127.0.0.1:38866 (0x97D2): listening (0A), two accepted (01), one closing (06);
        // a client connection from another port to it (01, local port 0xB0F4) is not ours.
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:97D2 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:97D2 0100007F:B0F4 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 0100007F:97D2 0100007F:B0F6 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
   3: 0100007F:97D2 0100007F:B0F8 06 00000000:00000000 00:00000000 00000000     0        0 0 3 0 0 0 0 0 0
   4: 0100007F:B0F4 0100007F:97D2 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0 20 4 30 10 -1
";
        assert_eq!(tcp_established_on(table, 0x97D2), 2);
        assert_eq!(tcp_established_on(table, 80), 0);
        assert_eq!(tcp_established_on("", 80), 0);
    }

    #[test]
    fn connected_unix_rows_bound_to_the_path_are_counted() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 100 /run/neko dir/pub.sock
0000000000000000: 00000003 00000000 00000000 0001 03 101 /run/neko dir/pub.sock
0000000000000000: 00000003 00000000 00000000 0001 03 102
0000000000000000: 00000003 00000000 00000000 0001 03 103 /run/neko dir/pub.sock.other
0000000000000000: 00000003 00000000 00000000 0001 03 104 /run/neko dir/pub.sock
";
        assert_eq!(
            unix_connected_on(table, Path::new("/run/neko dir/pub.sock")),
            2
        );
        assert_eq!(unix_connected_on(table, Path::new("/elsewhere.sock")), 0);
    }
}
