//! The push side of the message plane: a bounded outbox of INGEST batches.
//!
//! A push encodes its message straight into the open batch (msgpack, under a short lock), so
//! nothing is allocated per message on one thread and freed on another, and the task that owns
//! the PUSH socket only frames whole batches and sends them. A batch is sealed when it holds
//! [`BATCH_MAX`] messages or its first message is [`FLUSH_EVERY`] old; at most [`QUEUE_MAX`]
//! messages wait, beyond that a push is refused (the caller counts it as dropped).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;
use tokio::time::Instant;
use zeromq::{PushSocket, SocketSend, ZmqMessage};

use crate::bus::{BATCH_MAX, FLUSH_EVERY, QUEUE_MAX, unix_now};

/// Why a push was not taken.
#[derive(Debug)]
pub(crate) enum Refused {
    /// [`QUEUE_MAX`] messages are waiting already.
    Full,
    /// The message cannot be written as msgpack.
    Unencodable(String),
    /// The outbox is closed.
    Closed,
}

/// Messages waiting for the PUSH socket, shared by the pushers and the sending task.
pub(crate) struct Outbox {
    state: Mutex<State>,
    /// Wakes the sending task: a batch was sealed, or the first message of one arrived.
    wake: Notify,
}

#[derive(Default)]
struct State {
    /// The batch being filled: its messages, encoded one after the other.
    open: Batch,
    /// When the open batch got its first message.
    opened_at: Option<Instant>,
    /// Full (or old enough) batches, oldest first.
    sealed: VecDeque<Batch>,
    /// Messages in `open` and `sealed`, and in the batch being sent.
    queued: usize,
    /// No more pushes: the sending task sends what is left, then ends.
    closed: bool,
}

#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    count: usize,
}

impl State {
    fn seal(&mut self) {
        let capacity = self.open.bytes.len();
        let full = std::mem::replace(
            &mut self.open,
            Batch {
                bytes: Vec::with_capacity(capacity),
                count: 0,
            },
        );
        self.sealed.push_back(full);
        self.opened_at = None;
    }
}

impl Outbox {
    /// An empty outbox and the task that sends its batches on `socket` (as plugin `from`).
    pub(crate) fn start(socket: PushSocket, from: Arc<str>) -> Arc<Self> {
        let outbox = Arc::new(Self::new());
        tokio::spawn(send_batches(socket, outbox.clone(), from));
        outbox
    }

    fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
        }
    }

    /// Refuses further pushes; what is queued is still sent.
    pub(crate) fn close(&self) {
        self.state().closed = true;
        self.wake.notify_one();
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is consistent after every statement that can panic (none do in practice).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds an item to the open batch: `write` appends it, as msgpack, to the batch's bytes.
    pub(crate) fn push(
        &self,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
    ) -> Result<(), Refused> {
        let mut state = self.state();
        if state.closed {
            return Err(Refused::Closed);
        }
        if state.queued >= QUEUE_MAX {
            return Err(Refused::Full);
        }
        let before = state.open.bytes.len();
        if let Err(e) = write(&mut state.open.bytes) {
            state.open.bytes.truncate(before);
            return Err(Refused::Unencodable(e));
        }
        state.open.count += 1;
        state.queued += 1;
        if state.open.count == 1 {
            state.opened_at = Some(Instant::now());
            self.wake.notify_one();
        } else if state.open.count == BATCH_MAX {
            state.seal();
            self.wake.notify_one();
        }
        Ok(())
    }
}

/// What the sending task does next.
enum Step {
    Send(Batch),
    /// Nothing to send before this instant (or before a wake-up, if `None`).
    Wait(Option<Instant>),
}

/// Owns the PUSH socket: sends each sealed batch as one INGEST frame; seals the open batch once
/// its first message is [`FLUSH_EVERY`] old.
async fn send_batches(mut socket: PushSocket, outbox: Arc<Outbox>, from: Arc<str>) {
    let mut frames: u64 = 0;
    loop {
        let step = {
            let mut state = outbox.state();
            match state.opened_at {
                _ if !state.sealed.is_empty() => {}
                Some(at) if state.closed || at.elapsed() >= FLUSH_EVERY => state.seal(),
                _ => {}
            }
            match state.sealed.pop_front() {
                Some(batch) => Step::Send(batch),
                None if state.closed => break,
                None => Step::Wait(state.opened_at.map(|at| at + FLUSH_EVERY)),
            }
        };
        match step {
            Step::Send(batch) => {
                frames += 1;
                let frame = delta_batch(&from, frames, &batch);
                if let Err(e) = socket.send(ZmqMessage::from(frame)).await {
                    tracing::warn!(error = %e, "message plane: push failed; batch lost");
                }
                outbox.state().queued -= batch.count;
            }
            Step::Wait(None) => outbox.wake.notified().await,
            Step::Wait(Some(deadline)) => {
                tokio::select! {
                    _ = outbox.wake.notified() => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            }
        }
    }
}

/// The INGEST frame `{"v":1,"kind":"delta_batch","from","ts","batch_id","items":[...]}` around
/// the batch's encoded messages.
fn delta_batch(from: &str, n: u64, batch: &Batch) -> Vec<u8> {
    use rmp::encode::{write_array_len, write_f64, write_map_len, write_str, write_uint};
    let mut out = Vec::with_capacity(batch.bytes.len() + 128 + 2 * from.len());
    // Writing to a Vec cannot fail.
    let _ = write_map_len(&mut out, 6);
    let _ = write_str(&mut out, "v");
    let _ = write_uint(&mut out, 1);
    let _ = write_str(&mut out, "kind");
    let _ = write_str(&mut out, "delta_batch");
    let _ = write_str(&mut out, "from");
    let _ = write_str(&mut out, from);
    let _ = write_str(&mut out, "ts");
    let _ = write_f64(&mut out, unix_now());
    let _ = write_str(&mut out, "batch_id");
    let _ = write_str(&mut out, &format!("{from}-{n}"));
    let _ = write_str(&mut out, "items");
    let _ = write_array_len(&mut out, batch.count as u32);
    out.extend_from_slice(&batch.bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Batches seal at BATCH_MAX; beyond QUEUE_MAX waiting messages a push is refused; a closed
    /// outbox refuses everything.
    #[test]
    fn pushes_are_batched_and_bounded() {
        let outbox = Outbox::new();
        let item = |i: usize| {
            move |out: &mut Vec<u8>| {
                rmp_serde::encode::write_named(out, &json!({"n": i})).map_err(|e| e.to_string())
            }
        };
        for i in 0..QUEUE_MAX {
            outbox.push(item(i)).unwrap();
        }
        assert!(matches!(outbox.push(item(0)), Err(Refused::Full)));
        let state = outbox.state();
        assert_eq!(state.sealed.len(), QUEUE_MAX / BATCH_MAX);
        assert!(state.sealed.iter().all(|b| b.count == BATCH_MAX));
        assert_eq!(state.open.count, QUEUE_MAX % BATCH_MAX);
        assert_eq!(state.queued, QUEUE_MAX);
        drop(state);
        outbox.close();
        assert!(matches!(outbox.push(item(0)), Err(Refused::Closed)));
    }

    /// A frame decodes to the envelope with every message, in push order.
    #[test]
    fn frames_hold_the_pushed_items() {
        let mut batch = Batch::default();
        for i in 0..300 {
            rmp_serde::encode::write_named(&mut batch.bytes, &json!({"n": i, "s": "x"})).unwrap();
            batch.count += 1;
        }
        let frame = delta_batch("echo", 7, &batch);
        let decoded: serde_json::Value = rmp_serde::from_slice(&frame).unwrap();
        assert_eq!(decoded["v"], 1);
        assert_eq!(decoded["kind"], "delta_batch");
        assert_eq!(decoded["from"], "echo");
        assert_eq!(decoded["batch_id"], "echo-7");
        assert!(decoded["ts"].as_f64().unwrap() > 0.0);
        let items = decoded["items"].as_array().unwrap();
        assert_eq!(items.len(), 300);
        assert_eq!(items[299], json!({"n": 299, "s": "x"}));
    }
}
