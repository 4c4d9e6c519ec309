//! neko: a plugin supervisor. This crate is the edge of the system: command line, settings and the
//! HTTP gateway. Everything with a mailbox lives in `neko-actors`; everything on the wire in
//! `neko-protocol`.
//!
//! Layout:
//! - [`cli`]: clap types.
//! - [`settings`]: the one `Settings` struct, its defaults and load order.
//! - [`admin_token`]: the admin bearer token (from the environment or generated, saved 0600).
//! - [`http`]: the router and one file per route group.
//! - [`error`]: `ApiError`, where errors become HTTP.
//! - [`memory`]: gives back the code pages only start-up used.
//! - [`run`]: starts the supervision tree and serves HTTP until shutdown.

pub mod admin_token;
pub mod cli;
pub mod error;
pub mod http;
pub mod memory;
pub mod server_log;
pub mod settings;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use neko_actors::plugin_supervisor::PluginSupervisorMsg;
use neko_actors::python_env::PythonSettings;
use neko_actors::run_token::RunTokenSigner;
use neko_actors::run_tracker::RunStoreSettings;
use neko_actors::{TreeArgs, spawn_tree};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use settings::Settings;

/// Run changes buffered for slow WebSocket clients; one that falls further behind re-reads.
const RUN_EVENTS_BUFFER: usize = 4096;

/// At shutdown, how long open WebSockets get to send their close frame.
const WEBSOCKET_CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Starts the supervision tree, serves HTTP on `listener` until `shutdown` resolves (or the tree
/// gives up), then stops every plugin and the tree.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    admin_token: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let data_dir = absolute(&settings.gateway.data_dir)?;
    let runtime_dir = data_dir.join("run");
    make_private_dir(&runtime_dir)?;
    // Plugins' "memory" states live as long as this run: a new neko starts without them.
    let state_dir = runtime_dir.join(neko_actors::process_host::STATE_DIR_NAME);
    let _ = std::fs::remove_dir_all(&state_dir);
    make_private_dir(&state_dir)?;
    let plugins_dir = absolute(&settings.plugins.dir)?;
    let plugin_logs_dir = settings::plugin_logs_dir(&data_dir);
    let signer = RunTokenSigner::new(match &settings.runs.token_secret {
        Some(s) => s.as_bytes().to_vec(),
        None => rand::random::<[u8; 32]>().to_vec(),
    });
    let run_events = tokio::sync::broadcast::channel(RUN_EVENTS_BUFFER).0;
    let host_settings = settings.host_settings(
        runtime_dir,
        plugin_logs_dir.clone(),
        (&plugins_dir, &data_dir),
    );
    let tree = spawn_tree(TreeArgs {
        plugins_dir,
        host_settings,
        restart_defaults: settings.restart_policy.clone(),
        python: PythonSettings {
            interpreter: settings.python.interpreter.clone(),
            root: match &settings.python.env_dir {
                Some(dir) => absolute(dir)?,
                None => data_dir.join("python"),
            },
            pip_args: settings.python.pip_args.clone(),
        },
        run_token_signer: signer.clone(),
        run_token_ttl: Duration::from_secs(settings.runs.token_ttl_seconds),
        run_store: RunStoreSettings {
            path: settings.runs.persist.then(|| data_dir.join("runs.sqlite3")),
            max_records: settings.runs.max_records,
            max_age: (settings.runs.max_age_seconds > 0)
                .then(|| Duration::from_secs(settings.runs.max_age_seconds)),
            blob_dir: data_dir.join("blobs"),
            blob_max_bytes: settings.runs.blob_max_bytes,
        },
        run_events: run_events.clone(),
        autostart: settings.plugins.autostart,
        message_plane: settings.message_plane()?,
        metrics: settings.metrics.collector_settings(),
    })
    .await
    .context("could not start the supervision tree")?;

    // Serve only once the plugins started at boot are up (or failed), so a client that sees
    // /health can list their entries and run them.
    let startup_wait = Duration::from_millis(settings.plugins.startup_wait_ms);
    let current = tree.refs.borrow().clone();
    if let Some(refs) = current {
        match refs
            .plugins
            .call(PluginSupervisorMsg::AwaitStartup, Some(startup_wait))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(())) => {
                tracing::info!("plugins started at boot are up; serving")
            }
            _ => tracing::warn!(
                waited_ms = settings.plugins.startup_wait_ms,
                "some plugins are still starting; serving anyway"
            ),
        }
    }

    let sup = &settings.supervision;
    let state = http::AppState {
        refs: tree.refs.clone(),
        admin_token: Arc::from(admin_token.to_ascii_uppercase()),
        request_timeout: Duration::from_millis(settings.gateway.request_timeout_ms),
        lifecycle_timeout: Duration::from_millis(
            sup.stop_grace_ms + sup.term_grace_ms + sup.handshake_timeout_ms + 5_000,
        ),
        started: Instant::now(),
        run_events,
        run_tokens: signer,
        plugin_logs_dir,
        shutdown: CancellationToken::new(),
        sockets: TaskTracker::new(),
    };
    let (ws_shutdown, sockets) = (state.shutdown.clone(), state.sockets.clone());
    let app = http::router(state, settings.gateway.max_body_bytes);
    match memory::release_startup_pages() {
        Ok(r) => tracing::info!(
            mappings = r.mappings,
            kib = r.kib,
            "released start-up code pages"
        ),
        Err(e) => tracing::warn!(error = %e, "could not release start-up code pages"),
    }

    // The tree ends on its own only when it gave up; then the server stops too.
    let mut refs = tree.refs.clone();
    let tree_gone = async move { while refs.changed().await.is_ok() {} };
    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
        tokio::select! {
            _ = shutdown => tracing::info!("shutdown requested; stopping plugins"),
            _ = tree_gone => tracing::error!("supervision tree stopped; shutting down"),
        }
        ws_shutdown.cancel();
    });
    let served = serve.await;
    // Upgraded connections outlive the server: let each WebSocket send its close frame.
    sockets.close();
    if tokio::time::timeout(WEBSOCKET_CLOSE_WAIT, sockets.wait())
        .await
        .is_err()
    {
        tracing::warn!(open = sockets.len(), "WebSockets still open at shutdown");
    }
    tree.shutdown(Duration::from_millis(sup.shutdown_timeout_ms))
        .await;
    tracing::info!("neko stopped");
    served.context("HTTP server failed")
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("bad path {}", p.display()))
}

/// Creates `dir` (and parents) with mode 0700 and removes stale socket files in it.
fn make_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.path().extension().is_some_and(|e| e == "sock") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}
