//! The link to the supervisor: a ZeroMQ DEALER socket plus the signed [`Session`] over it.
//!
//! Bytes, frames and meaning stay apart: the socket moves multipart messages, the session turns
//! them into [`Message`]s and back, and nothing above this module sees a frame.
//!
//! Cancel safety: [`Link::recv`] is awaited inside `tokio::select!` next to other branches. That
//! is sound because zeromq 0.7's `DealerRecvHalf::recv` is a loop over its fair queue's `next()`,
//! whose `poll_next` puts a pending peer stream back untouched and returns a ready message without
//! awaiting anything else (the crate tests exactly this:
//! `test_fair_queue_next_future_can_be_dropped_after_pending`); the ZMTP decoder keeps partial
//! frames in its own buffer. After the socket returns a message, `recv` below decodes it without
//! another await, so dropping the future never loses a message. The socket is split so that the
//! I/O loop can send while a receive is pending without aliasing one `&mut`.

use bytes::Bytes;
use neko_protocol::{CallResult, CodecError, Direction, ErrorCode, Message, Session, WireError};
use zeromq::{
    DealerRecvHalf, DealerSendHalf, DealerSocket, Socket, SocketRecv, SocketSend, ZmqError,
    ZmqMessage,
};

use crate::env::PluginEnv;

/// Why a message could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The message could not be encoded (or is over the frame limit and is not a RESULT).
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The socket refused it (no peer, closed link, ZMTP error).
    #[error(transparent)]
    Socket(#[from] ZmqError),
}

/// The plugin's end of the link. Owned by one task at a time (the handshake, then the I/O loop).
pub(crate) struct Link {
    tx: DealerSendHalf,
    rx: DealerRecvHalf,
    session: Session,
    max_frame_bytes: usize,
}

impl Link {
    /// Connects the DEALER socket to the supervisor's endpoint.
    pub(crate) async fn connect(env: &PluginEnv) -> Result<Self, ZmqError> {
        let mut socket = DealerSocket::new();
        socket.connect(&env.endpoint).await?;
        let (tx, rx) = socket.split();
        Ok(Self {
            tx,
            rx,
            session: Session::new(
                env.secret.clone(),
                Direction::PluginToSupervisor,
                env.max_frame_bytes,
            ),
            max_frame_bytes: env.max_frame_bytes,
        })
    }

    /// Signs and sends one message.
    pub(crate) async fn send(&mut self, msg: Message) -> Result<(), LinkError> {
        let [mac, payload] = self.seal(msg)?;
        let mut frames = ZmqMessage::from(Bytes::from(mac));
        frames.push_back(Bytes::from(payload));
        self.tx.send(frames).await?;
        Ok(())
    }

    /// Waits for the next message that passes the session's checks. Refused frames (bad MAC,
    /// replay, oversized, undecodable, wrong frame count) are logged and skipped; an error from
    /// the socket itself ends the wait, since the link is then unusable.
    pub(crate) async fn recv(&mut self) -> Result<Message, LinkError> {
        loop {
            let frames = self.rx.recv().await?;
            let parts: Vec<&[u8]> = frames.iter().map(Bytes::as_ref).collect();
            match self.session.open(&parts) {
                Ok(envelope) => return Ok(envelope.msg),
                Err(reason) => tracing::warn!(%reason, "dropped a frame from the supervisor"),
            }
        }
    }

    /// Seals `msg`. A RESULT too large for the supervisor to accept is replaced by an
    /// `INVALID_RESPONSE` error for the same call, so the caller learns why instead of waiting for
    /// its deadline.
    fn seal(&mut self, msg: Message) -> Result<[Vec<u8>; 2], CodecError> {
        let call_id = match &msg {
            Message::Result(r) => Some(r.call_id.clone()),
            _ => None,
        };
        let frames = self.session.seal(msg)?;
        let size = frames[1].len();
        if size <= self.max_frame_bytes {
            return Ok(frames);
        }
        let limit = self.max_frame_bytes;
        match call_id {
            Some(call_id) => {
                tracing::warn!(
                    call_id,
                    size,
                    limit,
                    "result too large; sending an error instead"
                );
                self.session.seal(Message::Result(CallResult::failure(
                    call_id,
                    WireError::new(
                        ErrorCode::InvalidResponse,
                        format!("result of {size} bytes exceeds the frame limit of {limit} bytes"),
                    ),
                )))
            }
            None => Err(CodecError::TooLarge { size, limit }),
        }
    }
}
