//! The ZeroMQ link between a ProcessHost and its plugin: a ROUTER socket the supervisor binds for
//! one launch, a reader task that verifies frames and forwards them to the host, and a writer task
//! that sends what the host sealed.
//!
//! The reader drops, counts and logs (rate-limited) every frame that fails verification: wrong
//! secret, replayed sequence number, oversized, undecodable. A frame that passes is from a process
//! holding this launch's secret.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use neko_protocol::{CodecError, Direction, FrameKey, Message, PluginId, Session};
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

/// A bound link. Dropping it stops both tasks and removes the socket file.
pub struct Link {
    endpoint: String,
    socket_path: Option<PathBuf>,
    outbound: Session,
    peer: Option<Bytes>,
    tx: mpsc::UnboundedSender<ZmqMessage>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

/// Why a message could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the plugin has not said HELLO yet")]
    NoPeer,
    #[error(transparent)]
    Codec(#[from] CodecError),
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
        let inbound = Session::new(key.clone(), Direction::SupervisorToPlugin, max_frame_bytes);
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(recv_half, inbound, host, plugin_id.clone()));
        let writer = tokio::spawn(write_loop(send_half, rx));
        Ok(Self {
            endpoint,
            socket_path,
            outbound: Session::new(key.clone(), Direction::SupervisorToPlugin, max_frame_bytes),
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

    /// Pins the link to the peer that sent the accepted HELLO.
    pub fn set_peer(&mut self, identity: Bytes) {
        self.peer = Some(identity);
    }

    /// Whether `identity` is the pinned peer.
    pub fn is_peer(&self, identity: &Bytes) -> bool {
        self.peer.as_ref() == Some(identity)
    }

    /// Seals `msg` and queues it for the plugin.
    pub fn send(&mut self, msg: Message) -> Result<(), LinkError> {
        let peer = self.peer.clone().ok_or(LinkError::NoPeer)?;
        let [mac, payload] = self.outbound.seal(msg)?;
        let frames = vec![peer, Bytes::from(mac), Bytes::from(payload)];
        let zmsg = ZmqMessage::try_from(frames).map_err(|_| LinkError::Closed)?;
        self.tx.send(zmsg).map_err(|_| LinkError::Closed)
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
                if host
                    .cast(ProcessHostMsg::FrameReceived { identity, envelope })
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

async fn write_loop(
    mut socket: zeromq::RouterSendHalf,
    mut rx: mpsc::UnboundedReceiver<ZmqMessage>,
) {
    while let Some(msg) = rx.recv().await {
        if let Err(e) = socket.send(msg).await {
            tracing::debug!(error = %e, "plugin link send failed (peer gone?)");
        }
    }
}
