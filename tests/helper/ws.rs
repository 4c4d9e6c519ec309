//! A real WebSocket client for the gateway's sockets (`/ws/run`, `/ws/admin`, `/ws/logs`).

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{Neko, TIMEOUT};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens `path` (with its query) on `neko`'s gateway; the handshake's error when refused.
pub async fn try_connect(neko: &Neko, path: &str) -> Result<Ws, Error> {
    let url = format!("{}{path}", neko.base.replacen("http", "ws", 1));
    tokio_tungstenite::connect_async(url)
        .await
        .map(|(ws, _)| ws)
}

/// The next text frame, as JSON, within `within`; fails the test if the socket closes first.
pub async fn next_json(ws: &mut Ws, within: Duration) -> Value {
    loop {
        let msg = tokio::time::timeout(within, ws.next())
            .await
            .expect("a frame in time")
            .expect("socket open")
            .expect("frame read");
        let Message::Text(text) = msg else {
            assert!(!msg.is_close(), "closed unexpectedly: {msg:?}");
            continue;
        };
        return serde_json::from_str(&text).expect("JSON frame");
    }
}

/// Reads until the close frame and returns its code and reason; fails the test if the socket
/// ends without one.
pub async fn closed(ws: &mut Ws) -> (u16, String) {
    loop {
        let msg = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .expect("closed in time");
        match msg {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string());
            }
            Some(Ok(Message::Close(None))) | None => panic!("closed without a close frame"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("socket failed before its close frame: {e}"),
        }
    }
}
