//! The push side of the message plane: a bounded outbox of INGEST batches.
//!
//! A push encodes its message straight into the open batch (msgpack, under a short lock), so
//! nothing is allocated per message on one thread and freed on another, and the task that owns
//! the PUSH socket only frames whole batches and sends them. A batch is sealed when it holds
//! [`BATCH_MAX`] messages or its first message is [`FLUSH_EVERY`] old; at most [`QUEUE_MAX`]
//! messages wait. Beyond that a push waits for room ([`Outbox::push_waiting`], the producer is
//! slowed to what the plane takes) or is refused ([`Outbox::push`], the caller counts a drop).

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
    /// Wakes pushers waiting for room: a batch went out.
    room: Notify,
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
            room: Notify::new(),
        }
    }

    /// Refuses further pushes; what is queued is still sent.
    pub(crate) fn close(&self) {
        self.state().closed = true;
        self.wake.notify_one();
        self.room.notify_waiters();
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is consistent after every statement that can panic (none do in practice).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds an item to the open batch: `write` appends it, as msgpack, to the batch's bytes.
    /// Refused at once when the outbox is full.
    pub(crate) fn push(
        &self,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
    ) -> Result<(), Refused> {
        self.try_push(write).map_err(|(refused, _)| refused)
    }

    /// As [`Outbox::push`], but a full outbox is waited on (until `deadline`): the pusher goes
    /// at the pace the sending task gets batches out.
    pub(crate) async fn push_waiting<W>(
        &self,
        mut write: W,
        deadline: Instant,
    ) -> Result<(), Refused>
    where
        W: FnOnce(&mut Vec<u8>) -> Result<(), String>,
    {
        loop {
            // Registered before the attempt, so a batch sent in between still wakes us.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_push(write) {
                Err((Refused::Full, Some(unused))) => write = unused,
                done => return done.map_err(|(refused, _)| refused),
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return Err(Refused::Full);
            }
        }
    }

    /// `count` messages left (sent or lost): room for as many pushes.
    fn sent(&self, count: usize) {
        self.state().queued -= count;
        self.room.notify_waiters();
    }

    /// One attempt; a full outbox hands `write` back (unused) with the refusal.
    fn try_push<W>(&self, write: W) -> Result<(), (Refused, Option<W>)>
    where
        W: FnOnce(&mut Vec<u8>) -> Result<(), String>,
    {
        let mut state = self.state();
        if state.closed {
            return Err((Refused::Closed, None));
        }
        if state.queued >= QUEUE_MAX {
            return Err((Refused::Full, Some(write)));
        }
        let before = state.open.bytes.len();
        if let Err(e) = write(&mut state.open.bytes) {
            state.open.bytes.truncate(before);
            return Err((Refused::Unencodable(e), None));
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
                outbox.sent(batch.count);
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

    /// A push into a full outbox waits until a batch goes out, or gives up at its deadline.
    #[tokio::test]
    async fn a_waiting_push_goes_when_there_is_room() {
        let outbox = Arc::new(Outbox::new());
        let item = |out: &mut Vec<u8>| {
            rmp_serde::encode::write_named(out, &json!("x")).map_err(|e| e.to_string())
        };
        for _ in 0..QUEUE_MAX {
            outbox.push(item).unwrap();
        }
        let soon = Instant::now() + std::time::Duration::from_millis(20);
        assert!(matches!(
            outbox.push_waiting(item, soon).await,
            Err(Refused::Full)
        ));

        let later = Instant::now() + std::time::Duration::from_secs(30);
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.push_waiting(item, later).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let batch = outbox.state().sealed.pop_front().unwrap();
        outbox.sent(batch.count);
        waiting.await.unwrap().unwrap();
        assert_eq!(outbox.state().queued, QUEUE_MAX - BATCH_MAX + 1);

        // Closing wakes a waiter, which is then refused.
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move {
                let fill = QUEUE_MAX - outbox.state().queued;
                for _ in 0..fill {
                    outbox.push(item).unwrap();
                }
                outbox.push_waiting(item, later).await
            }
        });
        while outbox.state().queued < QUEUE_MAX {
            tokio::task::yield_now().await;
        }
        tokio::task::yield_now().await;
        outbox.close();
        assert!(matches!(waiting.await.unwrap(), Err(Refused::Closed)));
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
