//! The ZeroMQ link between a ProcessHost and its plugin: a ROUTER socket the supervisor binds for
//! one launch, a reader task that verifies frames and forwards their messages to the host, and a
//! writer task that seals and sends what the host queued.
//!
//! Batching: the writer seals everything queued by the time it runs in one go. To a plugin that
//! announced `batch` in its HELLO, messages queued together leave as one `batch` frame (one MAC,
//! one ZeroMQ message); a burst of calls then costs both sides far less per message. The reader
//! unpacks batches from any plugin and hands their messages over one by one, in order.
//!
//! The reader drops, counts and logs (rate-limited) every frame that fails verification: wrong
//! secret, replayed sequence number, oversized, undecodable. A frame that passes is from a process
//! holding this launch's secret.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use neko_protocol::{Direction, FrameKey, Message, PluginId, Session};
use ractor::ActorRef;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use zeromq::{RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use super::ProcessHostMsg;

/// How the plugin reaches the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// A Unix socket in the private runtime directory (default).
    Ipc,
    /// `tcp://127.0.0.1:<ephemeral port>`.
    Tcp,
}

/// The longest Unix socket path Linux accepts (`sun_path` is 108 bytes, NUL included).
const MAX_IPC_PATH: usize = 107;

/// Most messages the writer puts in one frame (a frame also stays under the plugin's size limit).
const MAX_BATCH: usize = 256;

/// A bound link. Dropping it stops both tasks and removes the socket file.
pub struct Link {
    endpoint: String,
    socket_path: Option<PathBuf>,
    peer: Option<Bytes>,
    tx: mpsc::UnboundedSender<Outgoing>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

/// What the host hands the writer task.
enum Outgoing {
    /// Send to this peer from now on; `batch`: it understands `batch` frames.
    Peer {
        identity: Bytes,
        batch: bool,
    },
    Message(Message),
}

/// Why a message could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the plugin has not said HELLO yet")]
    NoPeer,
    #[error("the link is closed")]
    Closed,
}

impl Link {
    /// Binds a ROUTER for one launch of `plugin_id` and starts the reader and writer tasks.
    pub async fn bind(
        plugin_id: &PluginId,
        launch: u64,
        runtime_dir: &Path,
        transport: Transport,
        key: &FrameKey,
        max_frame_bytes: usize,
        host: ActorRef<ProcessHostMsg>,
    ) -> std::io::Result<Self> {
        let socket_file = runtime_dir.join(format!("{plugin_id}-{launch}.sock"));
        let use_ipc = transport == Transport::Ipc && socket_file.as_os_str().len() <= MAX_IPC_PATH;
        let mut socket = RouterSocket::new();
        let (endpoint, socket_path) = if use_ipc {
            // A stale file from a crashed run would make the bind fail.
            let _ = std::fs::remove_file(&socket_file);
            let ep = format!("ipc://{}", socket_file.display());
            socket.bind(&ep).await.map_err(std::io::Error::other)?;
            (ep, Some(socket_file))
        } else {
            let ep = socket
                .bind("tcp://127.0.0.1:0")
                .await
                .map_err(std::io::Error::other)?;
            (ep.to_string(), None)
        };
        let (send_half, recv_half) = socket.split();
        let session = || Session::new(key.clone(), Direction::SupervisorToPlugin, max_frame_bytes);
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(recv_half, session(), host, plugin_id.clone()));
        let writer = Writer {
            socket: send_half,
            session: session(),
            plugin_id: plugin_id.clone(),
            peer: None,
            batch: false,
            queued: Vec::new(),
        };
        let writer = tokio::spawn(write_loop(writer, rx));
        Ok(Self {
            endpoint,
            socket_path,
            peer: None,
            tx,
            reader,
            writer,
        })
    }

    /// The endpoint the plugin connects to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Pins the link to the peer that sent the accepted HELLO; `batch`: that HELLO announced
    /// batches.
    pub fn set_peer(&mut self, identity: Bytes, batch: bool) {
        self.peer = Some(identity.clone());
        let _ = self.tx.send(Outgoing::Peer { identity, batch });
    }

    /// Whether `identity` is the pinned peer.
    pub fn is_peer(&self, identity: &Bytes) -> bool {
        self.peer.as_ref() == Some(identity)
    }

    /// Queues `msg` for the plugin (the writer task seals it).
    pub fn send(&mut self, msg: Message) -> Result<(), LinkError> {
        if self.peer.is_none() {
            return Err(LinkError::NoPeer);
        }
        self.tx
            .send(Outgoing::Message(msg))
            .map_err(|_| LinkError::Closed)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
        if let Some(path) = &self.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

async fn read_loop(
    mut socket: zeromq::RouterRecvHalf,
    mut session: Session,
    host: ActorRef<ProcessHostMsg>,
    plugin_id: PluginId,
) {
    let mut rejected: u64 = 0;
    loop {
        let msg = match socket.recv().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(plugin_id = %plugin_id, error = %e, "plugin link receive failed");
                // The socket is broken; wait briefly rather than spin, then retry.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mut frames = msg.into_vec();
        if frames.is_empty() {
            continue;
        }
        let identity = frames.remove(0);
        let parts: Vec<&[u8]> = frames.iter().map(|b| b.as_ref()).collect();
        match session.open(&parts) {
            Ok(envelope) => {
                let messages = match envelope.msg {
                    Message::Batch(batch) => batch.messages,
                    one => vec![one],
                };
                if host
                    .cast(ProcessHostMsg::FrameReceived { identity, messages })
                    .is_err()
                {
                    return;
                }
            }
            Err(reason) => {
                rejected += 1;
                // Log the first few, then one in a thousand: a flood of forged frames must not
                // become a flood of log lines.
                if rejected <= 10 || rejected.is_multiple_of(1000) {
                    tracing::warn!(
                        plugin_id = %plugin_id,
                        %reason,
                        rejected_total = rejected,
                        "dropped a frame that failed verification"
                    );
                }
            }
        }
    }
}

/// The writer task's state: the session that seals, the peer it sends to, what waits to be sent.
struct Writer {
    socket: zeromq::RouterSendHalf,
    session: Session,
    plugin_id: PluginId,
    peer: Option<Bytes>,
    /// The peer understands `batch` frames.
    batch: bool,
    queued: Vec<Message>,
}

async fn write_loop(mut writer: Writer, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    while let Some(first) = rx.recv().await {
        // Everything queued meanwhile goes out in this round.
        let mut next = Some(first);
        while let Some(out) = next.take() {
            match out {
                Outgoing::Peer { identity, batch } => {
                    writer.send_queued().await;
                    writer.peer = Some(identity);
                    writer.batch = batch;
                }
                Outgoing::Message(msg) => writer.queued.push(msg),
            }
            if writer.queued.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        writer.send_queued().await;
    }
}

impl Writer {
    /// Seals and sends what is queued (in batches when the peer understands them).
    async fn send_queued(&mut self) {
        if self.queued.is_empty() {
            return;
        }
        let Some(peer) = self.peer.clone() else {
            self.queued.clear(); // `Link::send` refuses messages before the peer is known
            return;
        };
        let (frames, errors) = self
            .session
            .seal_many(std::mem::take(&mut self.queued), self.batch);
        for e in errors {
            tracing::warn!(plugin_id = %self.plugin_id, error = %e, "could not encode a message for the plugin; dropped");
        }
        for [mac, payload] in frames {
            let parts = vec![peer.clone(), Bytes::from(mac), Bytes::from(payload)];
            let Ok(msg) = ZmqMessage::try_from(parts) else {
                continue;
            };
            if let Err(e) = self.socket.send(msg).await {
                tracing::debug!(error = %e, "plugin link send failed (peer gone?)");
            }
        }
    }
}
