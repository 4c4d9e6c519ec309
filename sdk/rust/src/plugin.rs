//! [`Plugin`]: declare entries and lifecycle hooks, then [`Plugin::run`].
//!
//! `run` is the production edge: it sets up logging, reads the environment, listens for SIGTERM and
//! turns the outcome into an exit code. [`Plugin::run_with`] is the same plugin with those inputs
//! injected, so tests drive a real plugin in-process against a socket they bind.

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use neko_protocol::{EventSpec, Hello, Message, PLUGIN_ENTRY, PROTOCOL_VERSION, Welcome};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};

use crate::context::{Context, PluginInfo};
use crate::entry::{BoxFuture, Entry, Handler, HandlerResult, blocking_handlers_running};
use crate::env::PluginEnv;
use crate::error::{EntryError, RunError};
use crate::link::Link;
use crate::serve::{Registered, Serve, ServeArgs};
use crate::sync_call::async_scope;
use crate::{SDK_NAME, SDK_VERSION, logging};

/// `on_startup`, stored.
pub(crate) type StartupHook = Box<dyn FnOnce(Context) -> BoxFuture<Result<(), EntryError>> + Send>;
/// `on_shutdown`, stored.
pub(crate) type ShutdownHook = Box<dyn FnOnce(Context) -> BoxFuture<()> + Send>;

/// A plugin under construction: its entries and hooks. See the crate docs for an example.
#[derive(Default)]
pub struct Plugin {
    entries: Vec<(Entry, Handler)>,
    /// Custom events: (event type, the event as an entry, its handler).
    events: Vec<(String, Entry, Handler)>,
    on_startup: Option<StartupHook>,
    on_shutdown: Option<ShutdownHook>,
}

impl Plugin {
    /// A plugin with no entries.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares `entry`, served by the async `handler`. Each TRIGGER runs it in its own task; on
    /// CANCEL or past the deadline the task is dropped at its next `.await`.
    pub fn entry<F, Fut>(mut self, entry: Entry, handler: F) -> Self
    where
        F: Fn(Context, serde_json::Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.entries.push((entry, Handler::from_async(handler)));
        self
    }

    /// Declares the custom event `event_type`/`entry`'s id (the reference's `@custom_event`),
    /// served by the async `handler` like an entry. It is not an entry (`POST /runs` cannot start
    /// it); other plugins call it by `"<plugin_id>:<event_type>:<id>"`
    /// ([`crate::Plugins::call_event`]). `event_type` must not be `plugin_entry`.
    pub fn event<F, Fut>(mut self, event_type: impl Into<String>, entry: Entry, handler: F) -> Self
    where
        F: Fn(Context, serde_json::Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.events
            .push((event_type.into(), entry, Handler::from_async(handler)));
        self
    }

    /// Declares `entry`, served by the synchronous `handler` on tokio's blocking pool, for CPU-bound
    /// or blocking code. It cannot be interrupted: on CANCEL or past the deadline the caller gets
    /// its error at once, the handler's [`Context::is_cancelled`] turns true, and whatever it
    /// returns later is discarded.
    pub fn sync_entry<F>(mut self, entry: Entry, handler: F) -> Self
    where
        F: Fn(Context, serde_json::Value) -> HandlerResult + Send + Sync + 'static,
    {
        self.entries
            .push((entry, Handler::Blocking(Arc::new(handler))));
        self
    }

    /// Runs `hook` once after the handshake. TRIGGERs that arrive meanwhile wait for it; if it
    /// fails (or panics) the plugin exits non-zero.
    pub fn on_startup<F, Fut>(mut self, hook: F) -> Self
    where
        F: FnOnce(Context) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), EntryError>> + Send + 'static,
    {
        self.on_startup = Some(Box::new(move |ctx| {
            let fut: BoxFuture<Result<(), EntryError>> = Box::pin(async_scope(hook(ctx)));
            fut
        }));
        self
    }

    /// Runs `hook` once on STOP or SIGTERM, bounded by the grace period; then the plugin exits 0.
    pub fn on_shutdown<F, Fut>(mut self, hook: F) -> Self
    where
        F: FnOnce(Context) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_shutdown = Some(Box::new(move |ctx| {
            let fut: BoxFuture<()> = Box::pin(async_scope(hook(ctx)));
            fut
        }));
        self
    }

    /// Runs the plugin as neko's child: logs to stderr, reads the environment, serves until STOP,
    /// SIGTERM or the supervisor's death. Returns success after a stop and failure (with an
    /// `ERROR` line saying why) when the plugin could not start or its link broke.
    pub async fn run(self) -> ExitCode {
        logging::init();
        let env = match PluginEnv::from_env() {
            Ok(env) => env,
            Err(e) => {
                tracing::error!("cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        let outcome = self.run_with(env, sigterm()).await;
        if let Err(e) = &outcome {
            tracing::error!("plugin exiting: {e}");
        }
        let stuck = blocking_handlers_running();
        if stuck > 0 {
            // Returning would make tokio wait for these threads when the runtime drops, and a
            // handler that never checks its cancel flag would outlive the supervisor's grace.
            tracing::warn!(stuck, "exiting with synchronous handlers still running");
            std::process::exit(if outcome.is_ok() { 0 } else { 1 });
        }
        match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        }
    }

    /// Runs the plugin with explicit settings: connect to `env.endpoint`, HELLO, wait for WELCOME
    /// (within `env.handshake_timeout`), then serve until STOP, until `shutdown` completes (treated
    /// like SIGTERM), or until the parent is not `env.supervisor_pid`. `Ok` means a clean stop.
    pub async fn run_with(
        self,
        env: PluginEnv,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), RunError> {
        let mut shutdown = pin!(shutdown);
        let mut entries = HashMap::new();
        let mut specs = Vec::with_capacity(self.entries.len());
        for (entry, handler) in self.entries {
            let spec = entry.spec().clone();
            let registered = Registered {
                handler,
                timeout_ms: spec.timeout_ms,
            };
            if entries.insert(spec.id.clone(), registered).is_some() {
                return Err(RunError::DuplicateEntry(spec.id));
            }
            specs.push(spec);
        }
        let mut events = HashMap::new();
        let mut event_specs = Vec::with_capacity(self.events.len());
        for (event_type, entry, handler) in self.events {
            let spec = entry.spec();
            if event_type.is_empty() || event_type == PLUGIN_ENTRY {
                return Err(RunError::BadEventType(event_type));
            }
            let registered = Registered {
                handler,
                timeout_ms: spec.timeout_ms,
            };
            let key = (event_type.clone(), spec.id.clone());
            if events.insert(key, registered).is_some() {
                return Err(RunError::DuplicateEntry(format!(
                    "{event_type}.{}",
                    spec.id
                )));
            }
            event_specs.push(EventSpec {
                event_type,
                id: spec.id.clone(),
            });
        }

        let deadline = Instant::now() + env.handshake_timeout;
        let mut link = match timeout_at(deadline, Link::connect(&env)).await {
            Ok(Ok(link)) => link,
            Ok(Err(source)) => {
                return Err(RunError::Connect {
                    endpoint: env.endpoint,
                    source,
                });
            }
            Err(_) => {
                return Err(RunError::ConnectTimeout {
                    endpoint: env.endpoint,
                    after: env.handshake_timeout,
                });
            }
        };
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            plugin_id: env.plugin_id.clone(),
            sdk: SDK_NAME.to_string(),
            sdk_version: SDK_VERSION.to_string(),
            pid: std::process::id(),
            entries: specs,
            input_schema: None,
            events: event_specs,
            features: Vec::new(),
        };
        link.send(Message::Hello(hello))
            .await
            .map_err(RunError::Hello)?;
        tracing::info!(
            plugin_id = env.plugin_id,
            endpoint = env.endpoint,
            "HELLO sent"
        );

        let welcome = tokio::select! {
            welcomed = timeout_at(deadline, wait_for_welcome(&mut link)) => match welcomed {
                Ok(Ok(Some(welcome))) => welcome,
                Ok(Ok(None)) => return Ok(()),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(RunError::NoWelcome(env.handshake_timeout)),
            },
            () = shutdown.as_mut() => {
                tracing::info!("shutdown signal (SIGTERM) received before WELCOME; exiting");
                return Ok(());
            }
        };
        if welcome.plugin_id != env.plugin_id {
            tracing::warn!(
                ours = env.plugin_id,
                theirs = welcome.plugin_id,
                "WELCOME names another plugin id"
            );
        }
        // WELCOME is the supervisor's current word on the period; the environment is the fallback.
        let heartbeat = match welcome.heartbeat_interval_ms {
            0 => env.heartbeat,
            ms => Duration::from_millis(ms),
        };
        tracing::info!(
            heartbeat_ms = heartbeat.as_millis(),
            "WELCOME received; serving"
        );

        let (outbox_tx, outbox) = mpsc::unbounded_channel();
        let plugin = Arc::new(PluginInfo::new(
            env.plugin_id,
            env.plugin_dir,
            env.plugin_config,
            outbox_tx,
        ));
        Serve::new(ServeArgs {
            link,
            plugin,
            outbox,
            entries,
            events,
            heartbeat,
            supervisor_pid: env.supervisor_pid,
            on_startup: self.on_startup,
            on_shutdown: self.on_shutdown,
        })
        .run(shutdown)
        .await
    }
}

/// Waits for WELCOME; `None` when the supervisor sends STOP first.
async fn wait_for_welcome(link: &mut Link) -> Result<Option<Welcome>, RunError> {
    loop {
        match link.recv().await.map_err(RunError::Link)? {
            Message::Welcome(welcome) => return Ok(Some(welcome)),
            Message::Stop(_) => {
                tracing::info!("STOP received before WELCOME; exiting");
                return Ok(None);
            }
            other => tracing::warn!(kind = other.kind(), "message before WELCOME; dropped"),
        }
    }
}

/// Completes on SIGTERM. If the handler cannot be installed the plugin still stops on STOP.
async fn sigterm() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            term.recv().await;
        }
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM: {e}");
            std::future::pending::<()>().await;
        }
    }
}
