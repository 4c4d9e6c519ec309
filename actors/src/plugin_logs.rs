//! Per-plugin log files: written from a plugin's output, read back for `GET /plugin/{id}/logs`.
//!
//! **Writing.** Every line a plugin prints on stdout or stderr is forwarded into `tracing` by
//! [`crate::process_host::child`]; with `[log] plugin_files` on, the same task also appends it to
//! `<data_dir>/logs/plugins/<id>/<id>_<YYYYmmdd_HHMMSS>.log` (one file per process start) as
//! `YYYY-MM-DD HH:MM:SS | LEVEL | message`, local time, the reference's format. A file that reaches
//! `plugin_max_file_bytes` is closed and a new one opened; at most `plugin_max_files` files are kept
//! per plugin (the oldest go first). Writes go through a buffer flushed once per burst of lines
//! (one read from the pipe); an I/O error is logged once at warn and ends writing for that launch,
//! so a full disk never stops the forwarding (and with it the plugin, whose pipe would fill).
//!
//! **Reading.** Blocking file I/O, so the gateway runs [`read_logs`] and [`list_log_files`] on a
//! blocking thread. The newest `<id>_*.log` in neko's folder for the plugin is read, else the one in
//! `<plugin_dir>/logs/`, where the Python SDK's `enable_plugin_file_logging` writes
//! (`YYYY-MM-DD HH:MM:SS.mmm | LEVEL | <plugin_id> | message`). Only the last lines are read, from
//! the end of the file ([`tail_lines`]), whatever its size.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use neko_protocol::PluginId;
use serde::Serialize;

/// Where and how much plugin output is kept on disk (`[log]` in neko's settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginLogSettings {
    /// Write the files at all.
    pub enabled: bool,
    /// The folder that holds one folder per plugin (`<data_dir>/logs/plugins`).
    pub dir: PathBuf,
    /// Size at which a file is closed and the next one opened (0: no cap).
    pub max_file_bytes: u64,
    /// Files kept per plugin, the current one included (0: no limit).
    pub max_files: usize,
}

impl PluginLogSettings {
    /// Off: no files are written (tests, and `plugin_files = false`).
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            dir: PathBuf::new(),
            max_file_bytes: 0,
            max_files: 0,
        }
    }

    /// The folder of one plugin's files.
    pub fn plugin_dir(&self, plugin_id: &PluginId) -> PathBuf {
        self.dir.join(plugin_id.as_str())
    }
}

/// One launch's log file, shared by the tasks forwarding its stdout and stderr.
#[derive(Clone)]
pub struct PluginLogWriter(Arc<Mutex<WriterState>>);

struct WriterState {
    plugin_id: PluginId,
    settings: PluginLogSettings,
    /// `None` once writing failed: the launch writes nothing more.
    file: Option<BufWriter<File>>,
    path: PathBuf,
    /// Bytes in the current file.
    written: u64,
}

impl PluginLogWriter {
    /// Creates the launch's file (and its folder) and removes the oldest files over the limit.
    /// `None` when writing is off or the file cannot be created (logged at warn).
    pub fn open(settings: &PluginLogSettings, plugin_id: &PluginId) -> Option<Self> {
        if !settings.enabled {
            return None;
        }
        match new_file(settings, plugin_id) {
            Ok((file, path)) => Some(Self(Arc::new(Mutex::new(WriterState {
                plugin_id: plugin_id.clone(),
                settings: settings.clone(),
                file: Some(BufWriter::new(file)),
                path,
                written: 0,
            })))),
            Err(e) => {
                tracing::warn!(plugin_id = %plugin_id, dir = %settings.plugin_dir(plugin_id).display(), error = %e, "cannot create the plugin's log file; its output goes to neko's log only");
                None
            }
        }
    }

    /// Appends `YYYY-MM-DD HH:MM:SS | LEVEL | line` to the buffer (`line` as it is when it has a
    /// time and level of its own: `own_shape`), opening the next file first when this one is full.
    pub fn write_line(&self, level: &str, line: &str, own_shape: bool) {
        let Ok(mut state) = self.0.lock() else {
            return;
        };
        let record = if own_shape {
            format!("{line}\n")
        } else {
            format!("{} | {level} | {line}\n", local_time(SystemTime::now()).0)
        };
        let cap = state.settings.max_file_bytes;
        if cap > 0 && state.written > 0 && state.written + record.len() as u64 > cap {
            state.rotate();
        }
        let result = match state.file.as_mut() {
            Some(file) => file.write_all(record.as_bytes()),
            None => return,
        };
        match result {
            Ok(()) => state.written += record.len() as u64,
            Err(e) => state.fail(e),
        }
    }

    /// Writes the buffered lines out (once per burst of output).
    pub fn flush(&self) {
        let Ok(mut state) = self.0.lock() else {
            return;
        };
        if let Some(Err(e)) = state.file.as_mut().map(|f| f.flush()) {
            state.fail(e);
        }
    }

    /// The file written now.
    pub fn path(&self) -> Option<PathBuf> {
        self.0.lock().ok().map(|s| s.path.clone())
    }
}

impl WriterState {
    fn rotate(&mut self) {
        if let Some(Err(e)) = self.file.as_mut().map(|f| f.flush()) {
            return self.fail(e);
        }
        match new_file(&self.settings, &self.plugin_id) {
            Ok((file, path)) => {
                self.file = Some(BufWriter::new(file));
                self.path = path;
                self.written = 0;
            }
            Err(e) => self.fail(e),
        }
    }

    /// Logs the error once and stops writing this launch's output.
    fn fail(&mut self, error: std::io::Error) {
        if self.file.take().is_some() {
            tracing::warn!(plugin_id = %self.plugin_id, path = %self.path.display(), %error, "writing the plugin's log file failed; no more of this launch's output goes to it");
        }
    }
}

/// Creates `<dir>/<id>/<id>_<YYYYmmdd_HHMMSS>.log` (`_1`, `_2` … appended when a file of that
/// second exists) and prunes the folder to `max_files`.
fn new_file(
    settings: &PluginLogSettings,
    plugin_id: &PluginId,
) -> std::io::Result<(File, PathBuf)> {
    let dir = settings.plugin_dir(plugin_id);
    std::fs::create_dir_all(&dir)?;
    let stamp = local_time(SystemTime::now()).1;
    let mut n = 0;
    let (file, path) = loop {
        let name = match n {
            0 => format!("{plugin_id}_{stamp}.log"),
            _ => format!("{plugin_id}_{stamp}_{n}.log"),
        };
        let path = dir.join(name);
        match File::options().append(true).create_new(true).open(&path) {
            Ok(f) => break (f, path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
            Err(e) => return Err(e),
        }
    };
    if settings.max_files > 0 {
        for old in log_files(&dir, plugin_id.as_str(), false)
            .into_iter()
            .skip(settings.max_files)
        {
            let _ = std::fs::remove_file(dir.join(&old.filename));
        }
    }
    Ok((file, path))
}

/// Local time as `YYYY-MM-DD HH:MM:SS` (lines) and `YYYYmmdd_HHMMSS` (file names).
fn local_time(t: SystemTime) -> (String, String) {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as libc::time_t;
    // SAFETY: localtime_r only writes into the `tm` we pass; all-zero is a valid `tm`.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    unsafe { libc::localtime_r(&secs, &mut tm) };
    let (y, mo, d) = (tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
    let (h, mi, s) = (tm.tm_hour, tm.tm_min, tm.tm_sec);
    (
        format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}"),
        format!("{y:04}{mo:02}{d:02}_{h:02}{mi:02}{s:02}"),
    )
}

/// One log file, as `GET /plugin/{id}/logs/files` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogFileInfo {
    pub filename: String,
    pub size: u64,
    /// Last modification, seconds since the Unix epoch.
    pub modified: f64,
}

/// The files of `plugin_id` in `dir`, newest first: `<id>_*.log`, and with `rotated` also the
/// rotated copies (`<id>_*.log.1` …) the Python SDK leaves.
fn log_files(dir: &Path, plugin_id: &str, rotated: bool) -> Vec<LogFileInfo> {
    let prefix = format!("{plugin_id}_");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<LogFileInfo> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let rest = name.strip_prefix(&prefix)?;
            let matches = rest.ends_with(".log") || (rotated && rest.contains(".log."));
            let meta = e.metadata().ok().filter(|m| m.is_file() && matches)?;
            let modified = meta
                .modified()
                .ok()
                .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
                .map_or(0.0, |d| d.as_secs_f64());
            Some(LogFileInfo {
                filename: name,
                size: meta.len(),
                modified,
            })
        })
        .collect();
    files.sort_by(|a, b| {
        b.modified
            .total_cmp(&a.modified)
            .then_with(|| b.filename.cmp(&a.filename))
    });
    files
}

/// Where a plugin's logs are read from: neko's folder for it when it holds a log file, else the
/// plugin's own `logs/` folder (the Python SDK's file logging), else nothing.
fn log_dir(neko_dir: &Path, plugin_dir: Option<&Path>, plugin_id: &PluginId) -> Option<PathBuf> {
    let ours = neko_dir.join(plugin_id.as_str());
    std::iter::once(ours)
        .chain(plugin_dir.map(|d| d.join("logs")))
        .find(|d| !log_files(d, plugin_id.as_str(), false).is_empty())
}

/// The log files of a plugin, newest first (empty when it has none). `_server` has none: neko
/// logs to stderr.
pub fn list_log_files(
    neko_dir: &Path,
    plugin_dir: Option<&Path>,
    plugin_id: &PluginId,
) -> Vec<LogFileInfo> {
    log_dir(neko_dir, plugin_dir, plugin_id)
        .map(|d| log_files(&d, plugin_id.as_str(), true))
        .unwrap_or_default()
}

/// What `GET /plugin/{id}/logs` asks for.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// How many of the last lines to read.
    pub lines: usize,
    /// Keep only this level (compared upper-cased).
    pub level: Option<String>,
    /// Keep only messages containing this, ignoring case.
    pub search: Option<String>,
}

/// One parsed log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogEntry {
    /// `YYYY-MM-DD HH:MM:SS` as written (empty when the line has none).
    pub timestamp: String,
    /// Upper-cased; `UNKNOWN` for a line in no known format.
    pub level: String,
    /// Source file and line, for formats that carry them (neither of neko's nor the SDK's does).
    pub file: String,
    pub line: u64,
    pub message: String,
}

/// The answer of `GET /plugin/{id}/logs`, without the plugin id.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LogsPage {
    pub logs: Vec<LogEntry>,
    /// Lines read from the end of the file, before filtering.
    pub total_lines: usize,
    pub returned_lines: usize,
    /// The file read (its name), `null` when the plugin has none.
    pub log_file: Option<String>,
}

/// Reads the last `query.lines` lines of the plugin's newest log file, parsed and filtered.
/// A plugin without log files (unknown ones, and `_server`: neko logs to stderr) gets an empty
/// page; only a file that exists but cannot be read is an error.
pub fn read_logs(
    neko_dir: &Path,
    plugin_dir: Option<&Path>,
    plugin_id: &PluginId,
    query: &LogQuery,
) -> std::io::Result<LogsPage> {
    let Some((path, filename)) = newest_file(neko_dir, plugin_dir, plugin_id) else {
        return Ok(LogsPage::default());
    };
    let mut file = File::open(path)?;
    let lines = tail_lines(&mut file, query.lines, TAIL_BLOCK)?;
    let total_lines = lines.len();
    let logs: Vec<LogEntry> = lines
        .iter()
        .map(|l| parse_line(l))
        .filter(|e| matches(e, query))
        .collect();
    Ok(LogsPage {
        returned_lines: logs.len(),
        logs,
        total_lines,
        log_file: Some(filename),
    })
}

/// The plugin's newest log file (path and name), by the rule [`read_logs`] reads.
fn newest_file(
    neko_dir: &Path,
    plugin_dir: Option<&Path>,
    plugin_id: &PluginId,
) -> Option<(PathBuf, String)> {
    let dir = log_dir(neko_dir, plugin_dir, plugin_id)?;
    let newest = log_files(&dir, plugin_id.as_str(), false)
        .into_iter()
        .next()?;
    Some((dir.join(&newest.filename), newest.filename))
}

/// Follows a plugin's newest log file for `WS /ws/logs/{id}`: [`LogFollower::initial`] reads the
/// last lines, then each [`LogFollower::poll`] returns the complete lines appended since.
///
/// It remembers the file (path and inode) and the offset of the first byte not yet returned,
/// which is always the start of a line: a last line without its newline is left in the file and
/// read again next time, until its newline arrives. When a newer file appears (a plugin restart
/// starts one), the rest of the old file is returned first, then the new file from its start. A
/// file that shrank (truncated) or was replaced (another inode) is read again from its start.
/// Each poll reads at most `max_bytes` and returns at most `max_lines`; the rest comes next
/// time. Blocking I/O: the gateway calls it on a blocking thread.
#[derive(Debug)]
pub struct LogFollower {
    neko_dir: PathBuf,
    plugin_dir: Option<PathBuf>,
    plugin_id: PluginId,
    current: Option<Followed>,
}

/// The file followed and how far it has been returned.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Followed {
    path: PathBuf,
    /// `(device, inode)`: the same path may later name another file.
    identity: (u64, u64),
    offset: u64,
}

impl LogFollower {
    pub fn new(neko_dir: PathBuf, plugin_dir: Option<PathBuf>, plugin_id: PluginId) -> Self {
        Self {
            neko_dir,
            plugin_dir,
            plugin_id,
            current: None,
        }
    }

    /// Whether a file is followed (the socket polls less often while there is none).
    pub fn has_file(&self) -> bool {
        self.current.is_some()
    }

    /// The last `n` lines of the newest file, parsed (a [`LogsPage`] with every line), and from
    /// then on that file is followed from its end. A last line without its newline is left for
    /// [`Self::poll`].
    pub fn initial(&mut self, n: usize) -> std::io::Result<LogsPage> {
        self.current = None;
        let Some((path, filename)) = self.newest() else {
            return Ok(LogsPage::default());
        };
        let mut file = File::open(&path)?;
        let meta = file.metadata()?;
        let end = complete_end(&mut file, meta.len())?;
        let lines = tail_lines(
            &mut Prefix {
                file: &mut file,
                len: end,
                pos: 0,
            },
            n,
            TAIL_BLOCK,
        )?;
        self.current = Some(Followed {
            path,
            identity: identity(&meta),
            offset: end,
        });
        let logs: Vec<LogEntry> = lines.iter().map(|l| parse_line(l)).collect();
        Ok(LogsPage {
            total_lines: logs.len(),
            returned_lines: logs.len(),
            logs,
            log_file: Some(filename),
        })
    }

    /// The complete lines appended since the last call (at most `max_lines`, from at most
    /// `max_bytes` read), parsed.
    pub fn poll(&mut self, max_lines: usize, max_bytes: usize) -> std::io::Result<Vec<LogEntry>> {
        let newest = self.newest().map(|(path, _)| path);
        let Some(current) = self.current.as_mut() else {
            // No file until now: a new one is read from its start.
            let Some(path) = newest else {
                return Ok(Vec::new());
            };
            let meta = std::fs::metadata(&path)?;
            self.current = Some(Followed {
                path,
                identity: identity(&meta),
                offset: 0,
            });
            return self.poll(max_lines, max_bytes);
        };
        let meta = std::fs::metadata(&current.path).ok();
        if meta.as_ref().map(identity) != Some(current.identity) {
            // Replaced by another file of the same name (or removed): read it again from its
            // start, or move on to the newest.
            let Some(m) = &meta else {
                self.current = None;
                return match newest {
                    Some(_) => self.poll(max_lines, max_bytes),
                    None => Ok(Vec::new()),
                };
            };
            current.identity = identity(m);
            current.offset = 0;
        }
        let len = meta.map_or(0, |m| m.len());
        if len < current.offset {
            current.offset = 0;
        }
        let mut chunk = vec![0u8; (len - current.offset).min(max_bytes as u64) as usize];
        if !chunk.is_empty() {
            let mut file = File::open(&current.path)?;
            file.seek(SeekFrom::Start(current.offset))?;
            let read = read_up_to(&mut file, &mut chunk)?;
            chunk.truncate(read);
        }
        let finished = newest.as_ref().is_some_and(|n| n != &current.path);
        let drained = current.offset + chunk.len() as u64 >= len;
        let (lines, consumed) = complete_lines(&chunk, max_lines, finished && drained, max_bytes);
        current.offset += consumed as u64;
        let entries: Vec<LogEntry> = lines.iter().map(|l| parse_line(l)).collect();
        if finished && current.offset >= len {
            // The old file is done: the newer one is read from its start next time.
            self.current = None;
            if entries.is_empty() {
                return self.poll(max_lines, max_bytes);
            }
        }
        Ok(entries)
    }

    fn newest(&self) -> Option<(PathBuf, String)> {
        newest_file(&self.neko_dir, self.plugin_dir.as_deref(), &self.plugin_id)
    }
}

/// The complete lines at the start of `chunk` (at most `max_lines`) and how many bytes they
/// take, newlines included. What follows the last newline is a line still being written and is
/// left, unless `take_rest` (the file is finished) or it fills `max_bytes` (a line longer than
/// a read is cut, so memory stays bounded).
fn complete_lines(
    chunk: &[u8],
    max_lines: usize,
    take_rest: bool,
    max_bytes: usize,
) -> (Vec<String>, usize) {
    let mut lines = Vec::new();
    let mut consumed = 0;
    while lines.len() < max_lines {
        let rest = &chunk[consumed..];
        let line = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                consumed += i + 1;
                &rest[..i]
            }
            None if !rest.is_empty() && (take_rest || rest.len() >= max_bytes) => {
                consumed += rest.len();
                rest
            }
            None => break,
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        lines.push(String::from_utf8_lossy(line).into_owned());
    }
    (lines, consumed)
}

fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// Reads until `buf` is full or the file ends; the bytes read.
fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut read = 0;
    while read < buf.len() {
        match file.read(&mut buf[read..])? {
            0 => break,
            n => read += n,
        }
    }
    Ok(read)
}

/// The end of the last complete line within the first `len` bytes: `len` when the file ends
/// with a newline (or the last line is longer than [`TAIL_BLOCK`], which is then taken whole).
fn complete_end(file: &mut File, len: u64) -> std::io::Result<u64> {
    let start = len.saturating_sub(TAIL_BLOCK as u64);
    let mut buf = vec![0u8; (len - start) as usize];
    file.seek(SeekFrom::Start(start))?;
    let read = read_up_to(file, &mut buf)?;
    buf.truncate(read);
    let end = start + buf.len() as u64;
    Ok(match buf.iter().rposition(|&b| b == b'\n') {
        Some(i) => start + i as u64 + 1,
        None if start == 0 => 0,
        None => end,
    })
}

/// The first `len` bytes of a file, so [`tail_lines`] reads a file only up to where it was
/// measured (lines written meanwhile are left for the follower).
struct Prefix<'a> {
    file: &'a mut File,
    len: u64,
    pos: u64,
}

impl Read for Prefix<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let room = self.len.saturating_sub(self.pos).min(buf.len() as u64) as usize;
        let n = self.file.read(&mut buf[..room])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Prefix<'_> {
    fn seek(&mut self, from: SeekFrom) -> std::io::Result<u64> {
        let to = match from {
            SeekFrom::Start(p) => p,
            SeekFrom::End(d) => self.len.saturating_add_signed(d),
            SeekFrom::Current(d) => self.pos.saturating_add_signed(d),
        }
        .min(self.len);
        self.pos = self.file.seek(SeekFrom::Start(to))?;
        Ok(self.pos)
    }
}

/// How much of a file [`tail_lines`] reads at a time.
const TAIL_BLOCK: usize = 64 * 1024;

/// The last `n` lines of `file`, oldest first, read backwards in blocks of `block` bytes so only
/// about those lines are read. A last line without a newline counts; invalid UTF-8 is replaced.
pub fn tail_lines(
    file: &mut (impl Read + Seek),
    n: usize,
    block: usize,
) -> std::io::Result<Vec<String>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let len = file.seek(SeekFrom::End(0))?;
    let mut pos = len;
    // Blocks read so far, last first.
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    let mut newlines = 0usize;
    let mut first_block = true;
    while pos > 0 {
        let size = block.max(1).min(pos as usize);
        pos -= size as u64;
        file.seek(SeekFrom::Start(pos))?;
        let mut buf = vec![0u8; size];
        file.read_exact(&mut buf)?;
        let mut counted = &buf[..];
        if first_block {
            // The newline that ends the file closes the last line; it separates nothing.
            if let Some(stripped) = counted.strip_suffix(b"\n") {
                counted = stripped;
            }
            first_block = false;
        }
        newlines += counted.iter().filter(|&&b| b == b'\n').count();
        blocks.push(buf);
        // n separators mean the last n lines are complete.
        if newlines >= n {
            break;
        }
    }
    let mut bytes: Vec<u8> = Vec::with_capacity(blocks.iter().map(Vec::len).sum());
    for b in blocks.iter().rev() {
        bytes.extend_from_slice(b);
    }
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    if bytes.is_empty() && len == 0 {
        return Ok(Vec::new());
    }
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    let skip = lines.len().saturating_sub(n);
    Ok(lines[skip..]
        .iter()
        .map(|l| {
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            String::from_utf8_lossy(l).into_owned()
        })
        .collect())
}

/// The level a plugin's printed line gives itself, when it has one of the shapes [`parse_line`]
/// reads (the Python SDK's, the reference's `logging` ones); None for plain output.
pub fn own_level(line: &str) -> Option<String> {
    parse_known(line)
        .or_else(|| parse_dashed(line))
        .map(|entry| entry.level)
}

/// Parses `YYYY-MM-DD HH:MM:SS | LEVEL | message` (neko's files),
/// `YYYY-MM-DD HH:MM:SS.mmm | LEVEL | <plugin_id> | message` (the Python SDK's), and the
/// reference's Python `logging` shapes `<time> - [name] - LEVEL - file:line - message` and
/// `<time> - name - LEVEL - message` (time with `,mmm`, as `logging` writes it); anything else is
/// level `UNKNOWN` with the whole line as the message. neko's files keep a plugin's output as
/// `<time> | INFO | <the line it printed>`: when that line has one of these shapes itself, its
/// own level, place and message are the entry's.
pub fn parse_line(line: &str) -> LogEntry {
    let parse = |l: &str| parse_known(l).or_else(|| parse_dashed(l));
    match parse(line) {
        Some(outer) => parse(&outer.message).unwrap_or(outer),
        None => LogEntry {
            timestamp: String::new(),
            level: "UNKNOWN".into(),
            file: String::new(),
            line: 0,
            message: line.to_string(),
        },
    }
}

fn parse_known(line: &str) -> Option<LogEntry> {
    let (stamp, rest) = line.split_once(" | ")?;
    let (level, rest) = rest.split_once(" | ").unwrap_or((rest, ""));
    let level = level.trim();
    if !is_timestamp(stamp) || level.is_empty() || !level.bytes().all(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    let (timestamp, millis) = stamp.split_at(19);
    // The SDK's lines carry milliseconds and the logger's name before the message.
    let message = match millis {
        "" => rest,
        _ => rest.split_once(" | ").map_or(rest, |(_, m)| m),
    };
    Some(LogEntry {
        timestamp: timestamp.to_string(),
        level: level.to_ascii_uppercase(),
        file: String::new(),
        line: 0,
        message: message.to_string(),
    })
}

/// `<time> - [name] - LEVEL - file:line - message` or `<time> - name - LEVEL - message`.
fn parse_dashed(line: &str) -> Option<LogEntry> {
    let mut parts = line.splitn(4, " - ");
    let (stamp, _name, level, rest) = (parts.next()?, parts.next()?, parts.next()?, parts.next());
    let level = level.trim();
    if !is_timestamp(stamp) || level.is_empty() || !level.bytes().all(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    let rest = rest.unwrap_or("");
    // `file:line - message`, where the first part is a path and a line number.
    let located = rest.split_once(" - ").and_then(|(place, message)| {
        let (file, line) = place.rsplit_once(':')?;
        let line = line.parse::<u64>().ok()?;
        (!file.is_empty() && !file.contains(' ')).then_some((file, line, message))
    });
    let (file, line_no, message) = located.unwrap_or(("", 0, rest));
    Some(LogEntry {
        timestamp: stamp[..19].to_string(),
        level: level.to_ascii_uppercase(),
        file: file.to_string(),
        line: line_no,
        message: message.to_string(),
    })
}

/// `YYYY-MM-DD HH:MM:SS`, optionally followed by `.` or `,` and digits.
fn is_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 19 {
        return false;
    }
    let shape_ok = b[..19].iter().enumerate().all(|(i, &c)| match i {
        4 | 7 => c == b'-',
        10 => c == b' ',
        13 | 16 => c == b':',
        _ => c.is_ascii_digit(),
    });
    let frac_ok = match &b[19..] {
        [] => true,
        [b'.' | b',', digits @ ..] => !digits.is_empty() && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    shape_ok && frac_ok
}

/// The `level` (exact, upper-cased) and `search` (substring of the message, any case) filters.
pub fn matches(entry: &LogEntry, query: &LogQuery) -> bool {
    let level_ok = query
        .level
        .as_deref()
        .filter(|l| !l.is_empty())
        .is_none_or(|l| entry.level == l.to_ascii_uppercase());
    let search_ok = query
        .search
        .as_deref()
        .filter(|s| !s.is_empty())
        .is_none_or(|s| entry.message.to_lowercase().contains(&s.to_lowercase()));
    level_ok && search_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn tail(text: &str, n: usize, block: usize) -> Vec<String> {
        tail_lines(&mut Cursor::new(text.as_bytes().to_vec()), n, block).unwrap()
    }

    /// The last lines come back oldest first, whatever the block size, with or without a
    /// newline after the last line.
    #[test]
    fn tail_reads_the_last_lines_from_the_end() {
        let text: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        let want: Vec<String> = (91..=100).map(|i| format!("line {i}")).collect();
        for block in [1, 3, 7, 64, 1 << 20] {
            assert_eq!(tail(&text, 10, block), want, "block {block}");
            assert_eq!(tail(text.trim_end(), 10, block), want, "block {block}");
        }
        assert_eq!(tail(&text, 1000, 5).len(), 100);
        assert_eq!(tail("a\r\nb", 5, 2), vec!["a", "b"]);
        assert_eq!(tail("only", 3, 2), vec!["only"]);
        assert_eq!(tail("", 3, 2), Vec::<String>::new());
        assert_eq!(tail("x\n", 0, 2), Vec::<String>::new());
        // Empty lines count as lines.
        assert_eq!(tail("a\n\nb\n", 2, 1), vec!["", "b"]);
    }

    /// A file much larger than the tail block: only the end is read, and the lines are whole.
    #[test]
    fn tail_of_a_file_larger_than_the_block() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.log");
        let mut f = BufWriter::new(File::create(&path).unwrap());
        for i in 0..50_000 {
            writeln!(f, "2026-01-02 03:04:05 | INFO | message number {i:06}").unwrap();
        }
        write!(f, "last line without newline").unwrap();
        drop(f);
        let mut file = File::open(&path).unwrap();
        assert!(file.metadata().unwrap().len() > 4 * TAIL_BLOCK as u64);
        let lines = tail_lines(&mut file, 3, TAIL_BLOCK).unwrap();
        assert_eq!(
            lines,
            vec![
                "2026-01-02 03:04:05 | INFO | message number 049998",
                "2026-01-02 03:04:05 | INFO | message number 049999",
                "last line without newline",
            ]
        );
        let lines = tail_lines(&mut file, 5_000, TAIL_BLOCK).unwrap();
        assert_eq!(lines.len(), 5_000);
        assert_eq!(
            lines[0],
            "2026-01-02 03:04:05 | INFO | message number 045001"
        );
    }

    /// neko's format, the SDK's format, and anything else.
    #[test]
    fn lines_parse_in_both_formats() {
        let e = parse_line("2026-01-02 03:04:05 | ERROR | disk | full | really");
        assert_eq!(e.timestamp, "2026-01-02 03:04:05");
        assert_eq!(e.level, "ERROR");
        assert_eq!(e.message, "disk | full | really");
        let e = parse_line("2026-01-02 03:04:05.123 | WARNING  | my_plugin | careful now");
        assert_eq!(e.timestamp, "2026-01-02 03:04:05");
        assert_eq!(e.level, "WARNING");
        assert_eq!(e.message, "careful now");
        let e = parse_line("2026-01-02 03:04:05 | info | ");
        assert_eq!((e.level.as_str(), e.message.as_str()), ("INFO", ""));
        // The reference's `logging` shapes, with and without a source position.
        let e = parse_line(
            "2026-01-02 03:04:05,678 - [weather] - ERROR - main.py:42 - no data - retry",
        );
        assert_eq!(e.timestamp, "2026-01-02 03:04:05");
        assert_eq!(
            (e.level.as_str(), e.file.as_str(), e.line),
            ("ERROR", "main.py", 42)
        );
        assert_eq!(e.message, "no data - retry");
        let e = parse_line("2026-01-02 03:04:05 - weather - info - fetched 3 cities");
        assert_eq!((e.level.as_str(), e.file.as_str(), e.line), ("INFO", "", 0));
        assert_eq!(e.message, "fetched 3 cities");
        // A plugin's output as neko's file keeps it: the printed line's own level and place win.
        let e = parse_line(
            "2026-01-02 03:04:09 | INFO | 2026-01-02 03:04:05.123 | ERROR    | hello | Entry 'boom' raised",
        );
        assert_eq!(
            (e.level.as_str(), e.message.as_str()),
            ("ERROR", "Entry 'boom' raised")
        );
        assert_eq!(e.timestamp, "2026-01-02 03:04:05");
        let e = parse_line(
            "2026-01-02 03:04:09 | INFO | 2026-01-02 03:04:05,1 - [w] - WARNING - a.py:7 - hm",
        );
        assert_eq!(
            (e.level.as_str(), e.file.as_str(), e.line),
            ("WARNING", "a.py", 7)
        );
        let e = parse_line("2026-01-02 03:04:09 | INFO | plain print output");
        assert_eq!(
            (e.level.as_str(), e.message.as_str()),
            ("INFO", "plain print output")
        );
        let e = parse_line("2026-01-02 03:04:05 - w - DEBUG - ratio 3:4 - kept");
        assert_eq!(
            (e.file.as_str(), e.message.as_str()),
            ("", "ratio 3:4 - kept")
        );
        for junk in [
            "Traceback (most recent call last):",
            "2026-01-02 | INFO | no time",
            "2026-01-02 03:04:05 | not a level | x",
            "2026-01-02 03:04:05 - name - not a level - x",
            "yesterday - name - INFO - x",
            "",
        ] {
            let e = parse_line(junk);
            assert_eq!(e.level, "UNKNOWN", "{junk}");
            assert_eq!(e.message, junk);
            assert_eq!(e.timestamp, "");
        }
    }

    /// Level is exact after upper-casing; search is a substring of the message in any case.
    #[test]
    fn filters_by_level_and_search() {
        let e = parse_line("2026-01-02 03:04:05 | WARNING | Disk Almost Full");
        let q = |level: Option<&str>, search: Option<&str>| LogQuery {
            lines: 10,
            level: level.map(str::to_string),
            search: search.map(str::to_string),
        };
        assert!(matches(&e, &q(None, None)));
        assert!(matches(&e, &q(Some("warning"), Some("almost"))));
        assert!(matches(&e, &q(Some(""), Some(""))));
        assert!(!matches(&e, &q(Some("WARN"), None)));
        assert!(!matches(&e, &q(None, Some("empty"))));
    }

    fn settings(dir: &Path, max_file_bytes: u64, max_files: usize) -> PluginLogSettings {
        PluginLogSettings {
            enabled: true,
            dir: dir.to_path_buf(),
            max_file_bytes,
            max_files,
        }
    }

    /// Lines land in `<dir>/<id>/<id>_<stamp>.log` in neko's format and read back parsed.
    #[test]
    fn written_lines_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let id = PluginId::new("p1").unwrap();
        let w = PluginLogWriter::open(&settings(dir.path(), 0, 0), &id).unwrap();
        w.write_line("INFO", "hello", false);
        w.write_line("INFO", "world", false);
        w.flush();
        let path = w.path().unwrap();
        assert_eq!(path.parent().unwrap(), dir.path().join("p1"));
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("p1_") && name.ends_with(".log"), "{name}");
        assert_eq!(name.len(), "p1_YYYYmmdd_HHMMSS.log".len(), "{name}");
        let page = last_line(dir.path(), &id);
        assert_eq!(page.total_lines, 1);
        assert_eq!(page.logs[0].message, "world");
        assert_eq!(page.logs[0].level, "INFO");
        assert_eq!(page.log_file.as_deref(), Some(name));
        // A line with its own time and level is kept as printed, and read back with them.
        let sdk_line = "2026-01-02 03:04:05.678 | ERROR    | p1 | disk full";
        w.write_line("INFO", sdk_line, true);
        w.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.ends_with(&format!("| INFO | world\n{sdk_line}\n")),
            "{text}"
        );
        let page = last_line(dir.path(), &id);
        assert_eq!(
            (page.logs[0].level.as_str(), page.logs[0].message.as_str()),
            ("ERROR", "disk full")
        );
        assert_eq!(own_level(sdk_line).as_deref(), Some("ERROR"));
        assert_eq!(own_level("plain print output"), None);
        // Disabled: nothing is written.
        assert!(PluginLogWriter::open(&PluginLogSettings::disabled(), &id).is_none());
    }

    /// The newest line of `id`'s newest file in neko's folder `dir`.
    fn last_line(dir: &Path, id: &PluginId) -> LogsPage {
        let query = LogQuery {
            lines: 1,
            ..Default::default()
        };
        read_logs(dir, None, id, &query).unwrap()
    }

    /// A full file is followed by a new one; only `max_files` are kept.
    #[test]
    fn files_rotate_at_the_cap_and_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let id = PluginId::new("p2").unwrap();
        let w = PluginLogWriter::open(&settings(dir.path(), 100, 3), &id).unwrap();
        for i in 0..20 {
            w.write_line("INFO", &format!("line {i:02} padding padding"), false);
        }
        w.flush();
        let files = list_log_files(dir.path(), None, &id);
        assert_eq!(files.len(), 3, "{files:?}");
        assert!(files.iter().all(|f| f.size <= 100), "{files:?}");
        // The newest holds the last line.
        let page = last_line(dir.path(), &id);
        assert_eq!(page.logs[0].message, "line 19 padding padding");
        assert_eq!(page.log_file.as_deref(), Some(files[0].filename.as_str()));
    }

    /// Without files in neko's folder the plugin's own `logs/` is read; without either, nothing.
    #[test]
    fn falls_back_to_the_plugin_folder() {
        let dir = tempfile::tempdir().unwrap();
        let id = PluginId::new("py").unwrap();
        let plugin_dir = dir.path().join("plugin");
        std::fs::create_dir_all(plugin_dir.join("logs")).unwrap();
        std::fs::write(
            plugin_dir.join("logs/py_20260102_030405.log"),
            "2026-01-02 03:04:05.001 | DEBUG    | py | from the sdk\n",
        )
        .unwrap();
        std::fs::write(plugin_dir.join("logs/other_20260102_030405.log"), "x\n").unwrap();
        let neko_dir = dir.path().join("neko");
        let q = LogQuery {
            lines: 100,
            ..Default::default()
        };
        let page = read_logs(&neko_dir, Some(&plugin_dir), &id, &q).unwrap();
        assert_eq!(page.logs.len(), 1);
        assert_eq!(page.logs[0].level, "DEBUG");
        assert_eq!(page.logs[0].message, "from the sdk");
        assert_eq!(list_log_files(&neko_dir, Some(&plugin_dir), &id).len(), 1);
        let none = read_logs(&neko_dir, None, &id, &q).unwrap();
        assert_eq!(none, LogsPage::default());
    }

    fn append(path: &Path, text: &str) {
        let mut f = File::options()
            .append(true)
            .create(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn messages(entries: &[LogEntry]) -> Vec<&str> {
        entries.iter().map(|e| e.message.as_str()).collect()
    }

    /// Complete lines are split off; the line still being written is left unless the file is
    /// finished or it fills a whole read; `max_lines` caps what one call takes.
    #[test]
    fn complete_lines_hold_back_the_partial_line() {
        assert_eq!(
            complete_lines(b"a\nb\r\nc", 10, false, 100),
            (vec!["a".into(), "b".into()], 5)
        );
        assert_eq!(
            complete_lines(b"a\nb\nc", 10, true, 100).0,
            vec!["a", "b", "c"]
        );
        assert_eq!(
            complete_lines(b"a\nb\nc\n", 2, false, 100),
            (vec!["a".into(), "b".into()], 4)
        );
        assert_eq!(
            complete_lines(b"abcd", 10, false, 4),
            (vec!["abcd".into()], 4)
        );
        assert_eq!(complete_lines(b"abc", 10, false, 4), (vec![], 0));
        assert_eq!(complete_lines(b"", 10, true, 4), (vec![], 0));
    }

    /// The initial tail, then only what is appended, a partial line once its newline arrives,
    /// a truncated file from its start, and a newer file (after the rest of the old one).
    #[test]
    fn follower_returns_appended_lines_and_follows_new_files() {
        let dir = tempfile::tempdir().unwrap();
        let id = PluginId::new("f").unwrap();
        let ours = dir.path().join("f");
        let mut fol = LogFollower::new(dir.path().to_path_buf(), None, id);
        // No file yet.
        assert_eq!(fol.initial(100).unwrap(), LogsPage::default());
        assert!(!fol.has_file());
        assert!(fol.poll(10, 1024).unwrap().is_empty());
        std::fs::create_dir_all(&ours).unwrap();
        let first = ours.join("f_20260101_000000.log");
        append(&first, "2026-01-01 00:00:00 | INFO | one\ntwo\n");
        // A file that appears later is read from its start.
        assert_eq!(messages(&fol.poll(10, 1024).unwrap()), vec!["one", "two"]);
        assert!(fol.has_file());
        let page = fol.initial(1).unwrap();
        assert_eq!(messages(&page.logs), vec!["two"]);
        assert_eq!(page.total_lines, 1);
        assert_eq!(page.log_file.as_deref(), Some("f_20260101_000000.log"));
        assert!(fol.poll(10, 1024).unwrap().is_empty());
        append(&first, "three\nfou");
        assert_eq!(messages(&fol.poll(10, 1024).unwrap()), vec!["three"]);
        assert!(fol.poll(10, 1024).unwrap().is_empty());
        append(&first, "r\n5\n6\n7\n");
        // At most two lines per call; the rest next time.
        assert_eq!(messages(&fol.poll(2, 1024).unwrap()), vec!["four", "5"]);
        assert_eq!(messages(&fol.poll(2, 1024).unwrap()), vec!["6", "7"]);
        // Truncated: read again from the start.
        std::fs::write(&first, "again\n").unwrap();
        assert_eq!(messages(&fol.poll(10, 1024).unwrap()), vec!["again"]);
        // A newer file: the old one's rest (even without a newline) comes first.
        append(&first, "last of old");
        let second = ours.join("f_20260101_000001.log");
        append(&second, "new 1\nnew 2\n");
        let t = SystemTime::now() + std::time::Duration::from_secs(5);
        File::options()
            .append(true)
            .open(&second)
            .unwrap()
            .set_modified(t)
            .unwrap();
        assert_eq!(messages(&fol.poll(10, 1024).unwrap()), vec!["last of old"]);
        assert_eq!(
            messages(&fol.poll(10, 1024).unwrap()),
            vec!["new 1", "new 2"]
        );
        assert!(fol.poll(10, 1024).unwrap().is_empty());
        // Reads are bounded: a small read returns what it holds, the rest later.
        append(&second, "aaaa\nbbbb\n");
        assert_eq!(messages(&fol.poll(10, 7).unwrap()), vec!["aaaa"]);
        assert_eq!(messages(&fol.poll(10, 7).unwrap()), vec!["bbbb"]);
    }

    /// The initial read stops at the last newline; the partial line comes once complete.
    #[test]
    fn follower_initial_leaves_a_partial_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("g")).unwrap();
        let file = dir.path().join("g/g_20260101_000000.log");
        append(&file, "a\nb\nhal");
        let mut fol = LogFollower::new(dir.path().to_path_buf(), None, PluginId::new("g").unwrap());
        assert_eq!(messages(&fol.initial(100).unwrap().logs), vec!["a", "b"]);
        append(&file, "f\n");
        assert_eq!(messages(&fol.poll(10, 1024).unwrap()), vec!["half"]);
    }
}
