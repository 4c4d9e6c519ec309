//! The `neko` binary: parse the command line, load settings, set up logging, bind, print the
//! address and admin token, and hand over to `neko::run`.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use neko::cli::{Cli, Command, LogFormat};
use neko::server_log::ServerLogFile;
use neko::settings::Settings;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, fmt};

// glibc's malloc was a quarter of neko's CPU under load (perf, 32 HTTP clients): every request,
// frame and record allocates. mimalloc's thread-local free lists make that cheap.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc v2's `mi_option_arena_eager_commit` (mimalloc.h). Eager arena commit, its default
/// on Linux, faults whole arenas in as huge pages: +13 MiB RSS at idle for nothing.
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Runs from `.init_array`, before Rust's runtime makes the first allocation (which reserves the
/// first arena), so the option applies to every arena.
extern "C" fn configure_allocator() {
    // SAFETY: sets a plain option value; no allocation has happened yet.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
}

#[used]
#[unsafe(link_section = ".init_array")]
static CONFIGURE_ALLOCATOR: extern "C" fn() = configure_allocator;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let serve = match cli.command {
        Some(Command::Serve(args)) => args,
        None => cli.serve,
    };
    let loaded = match Settings::load(&serve) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("neko: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&loaded.settings);
    match serve_until_signal(loaded).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve_until_signal(loaded: neko::settings::Loaded) -> anyhow::Result<()> {
    let settings = loaded.settings;
    match &loaded.config_file {
        Some(f) => tracing::info!(config = %f.display(), "settings loaded"),
        None => tracing::info!("no config file; using built-in defaults"),
    }
    let token = neko::admin_token::obtain()?;
    let token_file = neko::admin_token::save(&settings.gateway.data_dir, &token)?;
    let addr = format!("{}:{}", settings.gateway.host, settings.gateway.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    // stdout carries exactly these lines, so scripts and tests can read the address and token.
    let mut out = std::io::stdout().lock();
    writeln!(out, "neko listening on http://{bound}")?;
    writeln!(out, "admin token: {token}")?;
    writeln!(
        out,
        "(saved to {}; send it as 'Authorization: Bearer <token>')",
        token_file.display()
    )?;
    out.flush()?;
    drop(out);
    tracing::info!(address = %bound, "neko gateway listening");
    neko::run(settings, listener, token, shutdown_signal()).await
}

/// Resolves on the first SIGINT/SIGTERM; a second one exits at once, killing every plugin group.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers neko can still be stopped by SIGKILL; plugins die by PDEATHSIG.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        eprintln!("neko: second signal; exiting now");
        neko_actors::process_host::child::kill_all_groups();
        std::process::exit(130);
    });
}

fn init_tracing(settings: &Settings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let stderr = fmt::layer().with_writer(std::io::stderr);
    let stderr = match settings.log.format {
        LogFormat::Json => stderr.json().flatten_event(true).boxed(),
        LogFormat::Human => stderr
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
    };
    // The same events as `_server`'s log file (time and level are the file's own prefix).
    let data_dir = std::path::absolute(&settings.gateway.data_dir)
        .unwrap_or_else(|_| settings.gateway.data_dir.clone());
    let file = ServerLogFile::open(
        &settings
            .log
            .plugin_log_settings(neko::settings::plugin_logs_dir(&data_dir)),
    )
    .map(|file| {
        fmt::layer()
            .with_writer(file)
            .with_ansi(false)
            .without_time()
            .with_level(false)
            .with_target(false)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(file)
        .init();
}
