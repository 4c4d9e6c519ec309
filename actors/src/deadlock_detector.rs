//! DeadlockDetector: the wait-for graph of plugin-to-plugin calls in flight.
//!
//! Parent: the root supervisor, which restarts it alone (nobody holds its reference; hosts look
//! it up in the published tree references per call). Senders: each ProcessHost, for every
//! `plugin.call` its plugin makes (Enter before the call is routed, Leave when it ends), and the
//! gateway (`GET /calls`).
//!
//! Every call is an edge: the caller plugin, waiting in one of its handlers, → the callee. A
//! handler that was itself called by another plugin knows that call (its *parent* edge), so the
//! plugins waiting behind a new call form a chain: the caller, the caller's caller, and so on.
//! A call to any plugin already on that chain would make it wait on itself, which is how
//! synchronous handlers, thread pools and locks deadlock; it is refused at once with `DEADLOCK`
//! naming the chain, unless the plugin declared `[plugin.safety] reentrant = true`. The check
//! walks one chain (its length, not the number of calls in flight) and never blocks.
//!
//! If the detector restarts, the edges it knew are forgotten: those calls still end by reply or
//! deadline, and their Leave is ignored.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use neko_protocol::{ErrorCode, PLUGIN_ENTRY, PluginId, WireError};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::clock::{iso_from_unix, iso_now, unix_now};
use crate::message_plane::{Doc, StoreName};
use crate::root::TreeRefs;

/// The DeadlockDetector actor.
pub struct DeadlockDetector;

/// A fresh id for a plugin-to-plugin call, unique within this supervisor's life. Hosts take
/// one before they ask the detector, so they can cancel the call by it at any time.
pub fn next_call_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// One plugin-to-plugin call: an edge of the wait-for graph.
#[derive(Debug, Clone)]
pub struct CallEdge {
    pub id: u64,
    pub caller: PluginId,
    /// The entry (or event) the caller's waiting handler serves; `None` outside handlers.
    pub caller_entry: Option<String>,
    /// The caller accepts calls back into itself (`[plugin.safety] reentrant`).
    pub caller_reentrant: bool,
    /// The plugin-to-plugin call the caller's handler is serving, if it serves one.
    pub parent: Option<u64>,
    pub callee: PluginId,
    pub event_type: String,
    pub event_id: String,
    /// The callee's deadline (already cut to what the caller has left).
    pub timeout: Duration,
    pub started: Instant,
    /// Unix seconds, for the records.
    pub started_at: f64,
}

impl CallEdge {
    /// `beta.bounce`, or `beta.timer:tick` for a custom event.
    fn target(&self) -> String {
        if self.event_type == PLUGIN_ENTRY {
            format!("{}.{}", self.callee, self.event_id)
        } else {
            format!("{}.{}:{}", self.callee, self.event_type, self.event_id)
        }
    }
}

/// Messages of the DeadlockDetector.
pub enum DeadlockDetectorMsg {
    /// A plugin is about to call another: record the edge, or refuse it with `DEADLOCK`.
    Enter(CallEdge, RpcReplyPort<Result<(), WireError>>),
    /// A call ended (answered, failed, timed out, canceled, a side crashed): drop its edge and
    /// write its `events` record.
    Leave {
        id: u64,
        outcome: Result<(), WireError>,
    },
    /// The calls in flight and the plugin-level wait-for graph, for `GET /calls`.
    Snapshot(RpcReplyPort<Value>),
}

/// The DeadlockDetector's state.
pub struct DeadlockDetectorState {
    edges: HashMap<u64, CallEdge>,
    /// Where records go (the current message plane).
    tree: watch::Receiver<Option<TreeRefs>>,
    served: u64,
    refused: u64,
}

impl Actor for DeadlockDetector {
    type Msg = DeadlockDetectorMsg;
    type State = DeadlockDetectorState;
    type Arguments = watch::Receiver<Option<TreeRefs>>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        tree: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(DeadlockDetectorState {
            edges: HashMap::new(),
            tree,
            served: 0,
            refused: 0,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DeadlockDetectorMsg::Enter(edge, reply) => {
                let _ = reply.send(state.enter(edge));
            }
            DeadlockDetectorMsg::Leave { id, outcome } => state.leave(id, outcome),
            DeadlockDetectorMsg::Snapshot(reply) => {
                let _ = reply.send(state.snapshot());
            }
        }
        Ok(())
    }
}

impl DeadlockDetectorState {
    fn enter(&mut self, edge: CallEdge) -> Result<(), WireError> {
        if let Some(cycle) = self.cycle(&edge) {
            self.refused += 1;
            let error = deadlock_error(&cycle, &edge);
            tracing::warn!(
                caller = %edge.caller,
                callee = %edge.callee,
                entry_id = %edge.event_id,
                cycle = %error.message,
                "plugin call refused: it would deadlock"
            );
            self.record(&edge, Err(&error));
            return Err(error);
        }
        self.edges.insert(edge.id, edge);
        Ok(())
    }

    /// The waiting chain this call would close into a cycle, outermost first, as
    /// `(plugin, the entry its handler serves)`; `None` when the call is allowed.
    fn cycle(&self, edge: &CallEdge) -> Option<Vec<(PluginId, Option<String>)>> {
        // Innermost first: the caller itself, then whoever waits on it, up the parents.
        let mut chain = vec![(
            edge.caller.clone(),
            edge.caller_entry.clone(),
            edge.caller_reentrant,
        )];
        let mut next = edge.parent;
        // Parents always precede children, so a chain cannot loop; the bound is a safeguard.
        while let Some(parent) = next.and_then(|id| self.edges.get(&id)) {
            if chain.len() > self.edges.len() {
                break;
            }
            chain.push((
                parent.caller.clone(),
                parent.caller_entry.clone(),
                parent.caller_reentrant,
            ));
            next = parent.parent;
        }
        let at = chain.iter().position(|(p, _, _)| *p == edge.callee)?;
        if chain[at].2 {
            return None; // written for re-entry: allowed (and still time-limited)
        }
        chain.truncate(at + 1);
        Some(chain.into_iter().rev().map(|(p, e, _)| (p, e)).collect())
    }

    fn leave(&mut self, id: u64, outcome: Result<(), WireError>) {
        let Some(edge) = self.edges.remove(&id) else {
            return; // forgotten by a restart of this actor
        };
        self.served += 1;
        self.record(&edge, outcome.as_ref().map(|_| ()));
    }

    /// The call's `events` record: who called whom, how long it took, how it ended.
    fn record(&self, edge: &CallEdge, outcome: Result<(), &WireError>) {
        let Some(messages) = self.tree.borrow().as_ref().map(|t| t.messages.clone()) else {
            return;
        };
        let event_id = uuid::Uuid::new_v4().to_string();
        let (code, error) = match outcome {
            Ok(()) => ("ok".to_string(), Doc::Nil),
            Err(e) => (e.code.to_string(), Doc::str(&e.message)),
        };
        messages.publish_doc(
            StoreName::Events,
            "all",
            &Doc::Map(vec![
                ("type", Doc::str("plugin_call")),
                ("event_id", Doc::str(&event_id)),
                ("trace_id", Doc::Str(event_id)),
                ("plugin_id", Doc::str(edge.caller.as_str())),
                ("caller", Doc::str(edge.caller.as_str())),
                ("caller_entry", Doc::opt_str(edge.caller_entry.as_deref())),
                ("callee", Doc::str(edge.callee.as_str())),
                ("event_type", Doc::str(&edge.event_type)),
                ("entry_id", Doc::str(&edge.event_id)),
                (
                    "duration_ms",
                    Doc::Float(edge.started.elapsed().as_secs_f64() * 1000.0),
                ),
                ("outcome", Doc::Str(code)),
                ("error", error),
                ("received_at", Doc::Str(iso_from_unix(edge.started_at))),
                ("time", Doc::Str(iso_now())),
            ]),
        );
    }

    fn snapshot(&self) -> Value {
        let now = unix_now();
        let mut calls: Vec<&CallEdge> = self.edges.values().collect();
        calls.sort_by_key(|e| e.id);
        let mut graph: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for e in &calls {
            *graph
                .entry((e.caller.as_str(), e.callee.as_str()))
                .or_default() += 1;
        }
        json!({
            "calls": calls.iter().map(|e| json!({
                "id": e.id, "caller": e.caller, "caller_entry": e.caller_entry,
                "parent": e.parent, "callee": e.callee, "event_type": e.event_type,
                "entry_id": e.event_id, "started_at": e.started_at,
                "elapsed_ms": ((now - e.started_at) * 1000.0).max(0.0),
                "timeout_ms": e.timeout.as_millis() as u64,
            })).collect::<Vec<_>>(),
            "wait_for": graph.into_iter().map(|((from, to), calls)| json!({
                "from": from, "to": to, "calls": calls,
            })).collect::<Vec<_>>(),
            "in_flight": calls.len(),
            "completed": self.served,
            "refused": self.refused,
        })
    }
}

/// `DEADLOCK`, naming the whole cycle: `call would deadlock: alpha.cycle → beta.bounce → alpha`.
fn deadlock_error(cycle: &[(PluginId, Option<String>)], edge: &CallEdge) -> WireError {
    let mut text: Vec<String> = cycle
        .iter()
        .map(|(p, entry)| match entry {
            Some(e) => format!("{p}.{e}"),
            None => p.to_string(),
        })
        .collect();
    text.push(edge.callee.to_string());
    let chain = text.join(" → ");
    let mut plugins: Vec<&str> = cycle.iter().map(|(p, _)| p.as_str()).collect();
    plugins.push(edge.callee.as_str());
    WireError {
        code: ErrorCode::Deadlock,
        message: format!(
            "call would deadlock: {chain} ('{}' would wait on itself calling {}; a plugin written \
             for re-entry can allow it with [plugin.safety] reentrant = true)",
            edge.callee,
            edge.target()
        ),
        details: Some(json!({"cycle": plugins, "chain": chain})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> DeadlockDetectorState {
        DeadlockDetectorState {
            edges: HashMap::new(),
            tree: watch::channel(None).1,
            served: 0,
            refused: 0,
        }
    }

    fn pid(s: &str) -> PluginId {
        PluginId::new(s).unwrap()
    }

    /// `caller.entry` (inside the call `parent`) calls `callee.target`.
    fn edge(
        caller: &str,
        entry: &str,
        parent: Option<u64>,
        callee: &str,
        target: &str,
    ) -> CallEdge {
        CallEdge {
            id: next_call_id(),
            caller: pid(caller),
            caller_entry: Some(entry.to_string()),
            caller_reentrant: false,
            parent,
            callee: pid(callee),
            event_type: PLUGIN_ENTRY.to_string(),
            event_id: target.to_string(),
            timeout: Duration::from_secs(10),
            started: Instant::now(),
            started_at: unix_now(),
        }
    }

    #[test]
    fn a_chain_without_repeats_is_allowed_and_leaves_clean() {
        let mut s = state();
        let ab = edge("alpha", "start", None, "beta", "relay");
        let ab_id = ab.id;
        s.enter(ab).unwrap();
        let bc = edge("beta", "relay", Some(ab_id), "gamma", "work");
        let bc_id = bc.id;
        s.enter(bc).unwrap();
        assert_eq!(s.snapshot()["in_flight"], 2);
        s.leave(bc_id, Ok(()));
        s.leave(ab_id, Ok(()));
        assert_eq!(s.snapshot()["in_flight"], 0);
        assert_eq!(s.served, 2);
    }

    #[test]
    fn a_call_back_into_a_waiting_plugin_names_the_cycle() {
        let mut s = state();
        let ab = edge("alpha", "cycle", None, "beta", "bounce");
        let ab_id = ab.id;
        s.enter(ab).unwrap();
        let err = s
            .enter(edge("beta", "bounce", Some(ab_id), "alpha", "cycle"))
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Deadlock);
        assert!(
            err.message
                .starts_with("call would deadlock: alpha.cycle → beta.bounce → alpha"),
            "{}",
            err.message
        );
        assert_eq!(
            err.details.unwrap()["cycle"],
            json!(["alpha", "beta", "alpha"])
        );
        assert_eq!(s.edges.len(), 1, "a refused call leaves no edge");
    }

    #[test]
    fn three_plugin_cycles_and_self_calls_are_refused() {
        let mut s = state();
        let ab = edge("a", "x", None, "b", "y");
        let ab_id = ab.id;
        s.enter(ab).unwrap();
        let bc = edge("b", "y", Some(ab_id), "c", "z");
        let bc_id = bc.id;
        s.enter(bc).unwrap();
        let err = s.enter(edge("c", "z", Some(bc_id), "a", "x")).unwrap_err();
        assert!(
            err.message.contains("a.x → b.y → c.z → a"),
            "{}",
            err.message
        );
        let own = s.enter(edge("a", "x", None, "a", "x")).unwrap_err();
        assert!(own.message.contains("a.x → a"), "{}", own.message);
    }

    #[test]
    fn reentrant_plugins_accept_calls_back_into_themselves() {
        let mut s = state();
        let mut ab = edge("alpha", "outer", None, "beta", "bounce");
        ab.caller_reentrant = true;
        let ab_id = ab.id;
        s.enter(ab).unwrap();
        s.enter(edge("beta", "bounce", Some(ab_id), "alpha", "inner"))
            .unwrap();
        // A reentrant plugin may call itself too.
        let mut self_call = edge("alpha", "outer", None, "alpha", "inner");
        self_call.caller_reentrant = true;
        s.enter(self_call).unwrap();
    }

    #[test]
    fn a_forgotten_parent_ends_the_chain() {
        let mut s = state();
        // The parent call already ended (or the detector restarted): nothing to follow.
        s.enter(edge("beta", "bounce", Some(u64::MAX), "alpha", "x"))
            .unwrap();
    }

    /// 1,000 calls in flight: 250 chains four deep, each a child of the one before.
    fn thousand_calls() -> Vec<Vec<CallEdge>> {
        (0..250)
            .map(|chain| {
                let mut parent = None;
                (0..4)
                    .map(|depth| {
                        let caller = format!("p{chain}x{depth}");
                        let callee = format!("p{chain}x{}", depth + 1);
                        let e = edge(&caller, "h", parent, &callee, "h");
                        parent = Some(e.id);
                        e
                    })
                    .collect()
            })
            .collect()
    }

    /// The detector's cost per call (Enter + Leave) with 1,000 calls in flight:
    /// `cargo test -p neko-actors --release deadlock_detector -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bench_detector_cost_with_1000_calls_in_flight() {
        let mut s = state();
        let chains = thousand_calls();
        let parents: Vec<u64> = chains.iter().map(|c| c[3].id).collect();
        for e in chains.into_iter().flatten() {
            s.enter(e).unwrap();
        }
        assert_eq!(s.edges.len(), 1000);
        let n = 200_000;
        let t = Instant::now();
        for i in 0..n {
            let parent = parents[i % parents.len()];
            let e = edge("leaf", "h", Some(parent), "other", "h");
            let id = e.id;
            s.enter(e).unwrap();
            s.leave(id, Ok(()));
        }
        let per = t.elapsed() / n as u32;
        println!("detector enter+leave with 1000 calls in flight, chain depth 5: {per:?} per call");
    }

    /// The same through the actor, as a host pays it: an Enter call (a round trip through the
    /// mailbox) and a Leave cast, with 1,000 calls in flight.
    #[tokio::test]
    #[ignore]
    async fn bench_detector_actor_round_trip_with_1000_calls_in_flight() {
        let (detector, _) = Actor::spawn(None, DeadlockDetector, watch::channel(None).1)
            .await
            .unwrap();
        let timeout = Some(Duration::from_secs(5));
        let chains = thousand_calls();
        let parents: Vec<u64> = chains.iter().map(|c| c[3].id).collect();
        for e in chains.into_iter().flatten() {
            detector
                .call(|r| DeadlockDetectorMsg::Enter(e, r), timeout)
                .await
                .unwrap();
        }
        let n = 50_000;
        let t = Instant::now();
        for i in 0..n {
            let e = edge("leaf", "h", Some(parents[i % parents.len()]), "other", "h");
            let id = e.id;
            let entered = detector
                .call(|r| DeadlockDetectorMsg::Enter(e, r), timeout)
                .await
                .unwrap();
            assert!(matches!(entered, ractor::rpc::CallResult::Success(Ok(()))));
            detector
                .cast(DeadlockDetectorMsg::Leave {
                    id,
                    outcome: Ok(()),
                })
                .unwrap();
        }
        let per = t.elapsed() / n as u32;
        let snap = detector
            .call(DeadlockDetectorMsg::Snapshot, timeout)
            .await
            .unwrap();
        assert!(matches!(snap, ractor::rpc::CallResult::Success(s) if s["in_flight"] == 1000));
        println!(
            "detector actor Enter call + Leave cast with 1000 calls in flight: {per:?} per call"
        );
        detector.stop(None);
    }
}
