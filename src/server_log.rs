//! neko's own log, also written as the `_server` plugin's log file, where `GET
//! /plugin/_server/logs` reads it (the reference's server log): one `YYYY-MM-DD HH:MM:SS | LEVEL |
//! message` line per event, with the plugin files' size cap and rotation.

use std::io::Write;

use neko_actors::plugin_logs::{PluginLogSettings, PluginLogWriter};
use neko_protocol::PluginId;
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// The log id the reference's routes use for the server.
pub const SERVER_LOG_ID: &str = "_server";

/// Hands the fmt layer one writer per event; the writer knows the event's level.
pub struct ServerLogFile(PluginLogWriter);

impl ServerLogFile {
    /// `None` when plugin log files are off or the file cannot be created.
    pub fn open(settings: &PluginLogSettings) -> Option<Self> {
        let id = PluginId::new(SERVER_LOG_ID).expect("a valid id");
        PluginLogWriter::open(settings, &id).map(Self)
    }
}

impl<'a> MakeWriter<'a> for ServerLogFile {
    type Writer = EventLine;

    fn make_writer(&'a self) -> Self::Writer {
        EventLine::new(self.0.clone(), "INFO")
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        let level = match *meta.level() {
            Level::ERROR => "ERROR",
            Level::WARN => "WARNING",
            Level::INFO => "INFO",
            Level::DEBUG => "DEBUG",
            Level::TRACE => "TRACE",
        };
        EventLine::new(self.0.clone(), level)
    }
}

/// One event's text, written as one line when the fmt layer is done with it.
pub struct EventLine {
    out: PluginLogWriter,
    level: &'static str,
    text: Vec<u8>,
}

impl EventLine {
    fn new(out: PluginLogWriter, level: &'static str) -> Self {
        Self {
            out,
            level,
            text: Vec::with_capacity(128),
        }
    }
}

impl Write for EventLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventLine {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.text);
        let text = text.trim_end();
        if !text.is_empty() {
            self.out.write_line(self.level, text, false);
            self.out.flush();
        }
    }
}
