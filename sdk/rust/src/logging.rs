//! Logging for plugin processes: `tracing` to stderr, one plain line per event.
//!
//! neko reads the child's stderr and stdout line by line into its own log, which stamps and
//! labels each line, so the lines carry no timestamp and no ANSI colours unless stderr is a
//! terminal (a plugin run by hand). `RUST_LOG` sets the filter; the default is `info`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the subscriber. A subscriber the plugin installed itself wins, so the error from a
/// second installation is ignored on purpose.
pub(crate) fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .with_env_filter(filter)
        .try_init();
}
