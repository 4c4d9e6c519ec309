//! The I/O loop after WELCOME. One task owns the [`Link`]; everything else reaches the socket
//! through it: call tasks return their RESULT through a `JoinSet`, contexts send STATUS and
//! REQUESTs through an unbounded channel (the outbox). A REQUEST's waiter is recorded in
//! [`Pending`] and completed when the RESPONSE with its id arrives; when the loop ends the table
//! drops, and every request still waiting fails with `NOT_READY`.
//!
//! Each turn of the loop waits for whichever comes first: a message from the supervisor, a STATUS
//! or REQUEST to send, a finished call, the heartbeat tick, the parent-watch tick, the external
//! shutdown signal (SIGTERM), the end of `on_startup`, or the end of the shutdown sequence.
//!
//! Lifecycle: `on_startup` runs while the loop already turns (heartbeats flow, so a slow startup is
//! not mistaken for a hang); TRIGGERs that arrive before it finishes wait in a queue. STOP (or the
//! shutdown signal) runs `on_shutdown` bounded by the grace period while the loop keeps turning,
//! then the loop ends: in-flight async calls are aborted and synchronous ones are told to cancel.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use neko_protocol::{
    CallResult, ErrorCode, Heartbeat, Message, PLUGIN_ENTRY, Request, Response, Trigger, WireError,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinError, JoinSet};
use tokio::time::{Instant, MissedTickBehavior, interval, interval_at, timeout};

use crate::call::{self, Call};
use crate::context::{CallInfo, CancelSignal, Context, PluginInfo};
use crate::entry::{BoxFuture, Handler, catch_panic};
use crate::error::{EntryError, RunError};
use crate::link::{Link, LinkError};
use crate::plugin::{ShutdownHook, StartupHook};
use crate::request::{Outgoing, Pending};

/// How often the parent pid is compared with the supervisor's.
const PARENT_POLL: Duration = Duration::from_millis(250);

/// The grace period when the stop comes from SIGTERM rather than STOP: the supervisor sends
/// SIGTERM only after a STOP's grace ran out, and follows it with SIGKILL soon after.
const SIGTERM_GRACE: Duration = Duration::from_millis(1000);

/// A declared entry as the loop needs it.
pub(crate) struct Registered {
    pub(crate) handler: Handler,
    pub(crate) timeout_ms: Option<u64>,
}

/// The I/O loop's state.
pub(crate) struct Serve {
    link: Link,
    plugin: Arc<PluginInfo>,
    entries: HashMap<String, Registered>,
    /// Custom events by (event type, id).
    events: HashMap<(String, String), Registered>,
    /// In-flight calls by call id, so CANCEL can reach them. Removed when their RESULT is sent.
    calls: HashMap<String, Arc<CancelSignal>>,
    /// The call tasks; dropping the set aborts every async handler still running.
    tasks: JoinSet<(String, CallResult)>,
    /// STATUS messages and REQUESTs from contexts (the sending half lives in `plugin`).
    outbox: mpsc::UnboundedReceiver<Outgoing>,
    /// REQUESTs sent and not yet answered.
    pending: Pending,
    heartbeat: Duration,
    supervisor_pid: Option<u32>,
    /// `on_startup`, while it runs.
    startup: Option<BoxFuture<Result<(), String>>>,
    /// TRIGGERs received while `on_startup` runs.
    queued: Vec<Trigger>,
    /// `on_shutdown`, until a stop begins.
    shutdown_hook: Option<ShutdownHook>,
    /// The shutdown sequence, once a stop began.
    stopping: Option<BoxFuture<()>>,
}

/// Arguments of [`Serve::new`], named because several have the same type.
pub(crate) struct ServeArgs {
    pub(crate) link: Link,
    pub(crate) plugin: Arc<PluginInfo>,
    pub(crate) outbox: mpsc::UnboundedReceiver<Outgoing>,
    pub(crate) entries: HashMap<String, Registered>,
    pub(crate) events: HashMap<(String, String), Registered>,
    pub(crate) heartbeat: Duration,
    pub(crate) supervisor_pid: Option<u32>,
    pub(crate) on_startup: Option<StartupHook>,
    pub(crate) on_shutdown: Option<ShutdownHook>,
}

impl Serve {
    pub(crate) fn new(args: ServeArgs) -> Self {
        let startup = args.on_startup.map(|hook| {
            let work = hook(Context::for_plugin(args.plugin.clone()));
            let fut: BoxFuture<Result<(), String>> = Box::pin(async move {
                match catch_panic(work).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(panic) => Err(format!("panicked: {panic}")),
                }
            });
            fut
        });
        Self {
            link: args.link,
            plugin: args.plugin,
            entries: args.entries,
            events: args.events,
            calls: HashMap::new(),
            tasks: JoinSet::new(),
            outbox: args.outbox,
            pending: Pending::default(),
            heartbeat: args.heartbeat,
            supervisor_pid: args.supervisor_pid,
            startup,
            queued: Vec::new(),
            shutdown_hook: args.on_shutdown,
            stopping: None,
        }
    }

    /// Runs until STOP (or `shutdown`) completes, or the supervisor is gone.
    pub(crate) async fn run<S: Future<Output = ()>>(
        mut self,
        mut shutdown: Pin<&mut S>,
    ) -> Result<(), RunError> {
        // The first heartbeat is due one period after WELCOME, not immediately.
        let mut heartbeat = interval_at(Instant::now() + self.heartbeat, self.heartbeat);
        // A loop that was busy should not burst several heartbeats to catch up.
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut parent_check = interval(PARENT_POLL);
        let mut signalled = false;

        loop {
            tokio::select! {
                received = self.link.recv() => match received {
                    Ok(msg) => self.on_message(msg).await,
                    Err(e) => return Err(RunError::Link(e)),
                },
                Some(out) = self.outbox.recv() => self.send_outgoing(out).await,
                Some(joined) = self.tasks.join_next() => self.on_call_finished(joined).await,
                _ = heartbeat.tick() => self.send(Message::Heartbeat(Heartbeat {})).await,
                _ = parent_check.tick(), if self.supervisor_pid.is_some() => {
                    if self.supervisor_gone() {
                        return Ok(());
                    }
                }
                () = shutdown.as_mut(), if !signalled => {
                    signalled = true;
                    tracing::info!("shutdown signal (SIGTERM) received; shutting down");
                    self.begin_stop(SIGTERM_GRACE).await;
                }
                started = poll_some(&mut self.startup) => {
                    self.startup = None;
                    self.on_started(started).await?;
                }
                () = poll_some(&mut self.stopping) => break,
            }
        }

        // STATUS sent by `on_shutdown` should reach the supervisor before the process exits.
        self.flush_outbox().await;
        // Async handlers are aborted when `tasks` drops; synchronous ones can only be asked.
        for cancel in self.calls.values() {
            cancel.cancel();
        }
        tracing::info!("stopped");
        Ok(())
    }

    async fn on_message(&mut self, msg: Message) {
        match msg {
            Message::Trigger(trigger) if self.stopping.is_some() => {
                self.refuse_stopping(trigger).await;
            }
            Message::Trigger(trigger) if self.startup.is_some() => self.queued.push(trigger),
            Message::Trigger(trigger) => self.dispatch(trigger).await,
            Message::Cancel(cancel) => match self.calls.get(&cancel.call_id) {
                Some(signal) => {
                    tracing::info!(call_id = cancel.call_id, "call canceled by the supervisor");
                    signal.cancel();
                }
                // A call that already answered, or one the supervisor never sent.
                None => tracing::debug!(call_id = cancel.call_id, "CANCEL for no running call"),
            },
            Message::Stop(stop) => {
                tracing::info!(grace_ms = stop.grace_ms, "STOP received; shutting down");
                self.begin_stop(Duration::from_millis(stop.grace_ms)).await;
            }
            Message::Response(response) => self.pending.resolve(response),
            Message::Welcome(_) => tracing::debug!("repeated WELCOME ignored"),
            other => tracing::warn!(
                kind = other.kind(),
                "the supervisor sent a plugin-to-supervisor message; dropped"
            ),
        }
    }

    /// Starts a task for `trigger`, or answers NOT_FOUND at once.
    async fn dispatch(&mut self, trigger: Trigger) {
        let registered = match trigger.event_type.as_deref() {
            None | Some(PLUGIN_ENTRY) => self.entries.get(&trigger.entry_id),
            Some(event_type) => self
                .events
                .get(&(event_type.to_owned(), trigger.entry_id.clone())),
        };
        let Some(entry) = registered else {
            let what = match trigger.event_type.as_deref() {
                None | Some(PLUGIN_ENTRY) => format!("Entry '{}'", trigger.entry_id),
                Some(t) => format!("Custom event '{t}.{}'", trigger.entry_id),
            };
            let result = call::not_found(&trigger.call_id, &what, &self.plugin.plugin_id);
            self.send(Message::Result(result)).await;
            return;
        };
        if self.calls.contains_key(&trigger.call_id) {
            // Answering would be read as the answer to the first call with this id.
            tracing::warn!(
                call_id = trigger.call_id,
                "TRIGGER reuses the id of a running call; dropped"
            );
            return;
        }
        let cancel = Arc::new(CancelSignal::default());
        self.calls.insert(trigger.call_id.clone(), cancel.clone());
        // Older supervisors only put the run id under `_ctx`.
        let run_id = trigger.run_id.clone().or_else(|| {
            trigger.args[crate::CTX_KEY]["run_id"]
                .as_str()
                .map(str::to_owned)
        });
        let ctx = Context::for_call(
            self.plugin.clone(),
            CallInfo {
                call_id: trigger.call_id.clone(),
                entry_id: trigger.entry_id.clone(),
                run_id,
                cancel: cancel.clone(),
            },
        );
        tracing::debug!(
            call_id = trigger.call_id,
            entry_id = trigger.entry_id,
            "TRIGGER"
        );
        let call = Call {
            deadline: call::deadline(trigger.timeout_ms, entry.timeout_ms),
            handler: entry.handler.clone(),
            call_id: trigger.call_id,
            entry_id: trigger.entry_id,
            ctx,
            args: trigger.args,
            cancel,
        };
        self.tasks.spawn(call.run());
    }

    async fn on_call_finished(&mut self, joined: Result<(String, CallResult), JoinError>) {
        match joined {
            Ok((call_id, result)) => {
                self.calls.remove(&call_id);
                // STATUS the handler sent before returning goes first, so the supervisor sees a
                // call's messages in the order the handler produced them.
                self.flush_outbox().await;
                self.send(Message::Result(result)).await;
            }
            // Call tasks catch handler panics and are only aborted when the set drops, so this
            // is a bug in the SDK itself; the supervisor will time the call out.
            Err(e) => tracing::error!(error = %e, "a call task failed"),
        }
    }

    async fn on_started(&mut self, started: Result<(), String>) -> Result<(), RunError> {
        if let Err(message) = started {
            return Err(RunError::Startup(EntryError::internal(message)));
        }
        tracing::info!(queued = self.queued.len(), "on_startup finished");
        for trigger in std::mem::take(&mut self.queued) {
            self.dispatch(trigger).await;
        }
        Ok(())
    }

    /// Begins the shutdown sequence: `on_shutdown`, bounded by most of `grace` so that the process
    /// still exits within it. A second stop request changes nothing.
    async fn begin_stop(&mut self, grace: Duration) {
        if self.stopping.is_some() {
            return;
        }
        // A plugin told to stop while starting does not finish starting, and the calls that
        // waited for it will not run.
        self.startup = None;
        for trigger in std::mem::take(&mut self.queued) {
            self.refuse_stopping(trigger).await;
        }
        let hook = self.shutdown_hook.take();
        let ctx = Context::for_plugin(self.plugin.clone());
        let budget = grace * 9 / 10;
        self.stopping = Some(Box::pin(async move {
            let Some(hook) = hook else { return };
            match timeout(budget, catch_panic(hook(ctx))).await {
                Ok(Ok(())) => {}
                Ok(Err(panic)) => tracing::warn!(%panic, "on_shutdown panicked"),
                Err(_) => tracing::warn!(?budget, "on_shutdown did not finish in time"),
            }
        }));
    }

    /// Answers a TRIGGER that arrived too late to run.
    async fn refuse_stopping(&mut self, trigger: Trigger) {
        let result = CallResult::failure(
            trigger.call_id,
            WireError::new(
                ErrorCode::NotReady,
                format!("Plugin '{}' is stopping", self.plugin.plugin_id),
            ),
        );
        self.send(Message::Result(result)).await;
    }

    fn supervisor_gone(&self) -> bool {
        let parent = std::os::unix::process::parent_id();
        match self.supervisor_pid {
            Some(pid) if pid != parent => {
                tracing::info!(
                    supervisor_pid = pid,
                    parent_pid = parent,
                    "the supervisor is gone; exiting"
                );
                true
            }
            _ => false,
        }
    }

    /// Sends every STATUS and REQUEST queued so far.
    async fn flush_outbox(&mut self) {
        while let Ok(out) = self.outbox.try_recv() {
            self.send_outgoing(out).await;
        }
    }

    async fn send_outgoing(&mut self, out: Outgoing) {
        match out {
            Outgoing::Message(msg) => self.send(msg).await,
            Outgoing::Request(request, reply) => self.send_request(request, reply).await,
        }
    }

    /// Records the request's waiter, then sends it (so that even an immediate RESPONSE finds the
    /// waiter). A request that cannot be sent is answered here, so its waiter learns why at once
    /// instead of at its deadline.
    async fn send_request(&mut self, request: Request, reply: oneshot::Sender<Response>) {
        let request_id = request.request_id.clone();
        let op = request.op.clone();
        self.pending.insert(request_id.clone(), reply);
        tracing::debug!(request_id, op, "REQUEST");
        let Err(error) = self.link.send(Message::Request(request)).await else {
            return;
        };
        tracing::warn!(request_id, op, %error, "could not send a request to the supervisor");
        // Arguments too large for a frame are the caller's to fix; anything else is ours.
        let code = match error {
            LinkError::Codec(_) => ErrorCode::ValidationError,
            LinkError::Socket(_) => ErrorCode::Internal,
        };
        if let Some(reply) = self.pending.remove(&request_id) {
            let message = format!("could not send the {op} request: {error}");
            let _ = reply.send(Response::failure(request_id, WireError::new(code, message)));
        }
    }

    /// Sends `msg`, logging a failure: the supervisor notices missing heartbeats or results and
    /// acts on them, so a failed send is not a reason to exit here.
    async fn send(&mut self, msg: Message) {
        let kind = msg.kind();
        if let Err(error) = self.link.send(msg).await {
            tracing::warn!(kind, %error, "could not send to the supervisor");
        }
    }
}

/// Awaits the future in `slot`, or never completes when the slot is empty (a disabled branch).
async fn poll_some<T>(slot: &mut Option<BoxFuture<T>>) -> T {
    match slot {
        Some(fut) => fut.await,
        None => std::future::pending().await,
    }
}
