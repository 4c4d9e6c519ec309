//! RunDb: the run store. Run records, export items and blob metadata in one SQLite database
//! (a file under the data dir, or in memory when persistence is off, so there is one code path).
//!
//! Synchronous on purpose: the RunTracker owns the one connection and calls it from its handler,
//! so writes are ordered by the actor's mailbox and no lock or pool is needed.
//!
//! Each record is stored as its JSON next to the columns that queries filter or sort on. Durability:
//! WAL with `synchronous=NORMAL` makes every committed write survive a kill of the process (not a
//! power cut), which is the guarantee the supervisor gives.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use neko_protocol::{ErrorCode, ExportItem, RunRecord, RunStatus, WireError};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, Row, Rows, TransactionBehavior, params, params_from_iter};
use serde::de::DeserializeOwned;

/// Bumped when the tables change; a database from a newer neko is refused rather than misread.
const SCHEMA_VERSION: i64 = 1;

/// `finished_at` is set only for terminal runs, so it doubles as "terminal?" for recovery and
/// retention (both go through its index).
const SCHEMA: &str = "
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY NOT NULL,
    plugin_id TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    finished_at REAL,
    idempotency_key TEXT,
    record TEXT NOT NULL
);
CREATE INDEX runs_by_created ON runs (created_at, run_id);
CREATE INDEX runs_by_plugin ON runs (plugin_id, created_at, run_id);
CREATE INDEX runs_by_finished ON runs (finished_at, run_id);
CREATE INDEX runs_by_idempotency_key ON runs (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE TABLE exports (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    export_item_id TEXT NOT NULL UNIQUE,
    run_id TEXT NOT NULL,
    item TEXT NOT NULL
);
CREATE INDEX exports_by_run ON exports (run_id, seq);
CREATE TABLE blobs (
    blob_id TEXT PRIMARY KEY NOT NULL,
    run_id TEXT NOT NULL,
    meta TEXT NOT NULL
);
CREATE INDEX blobs_by_run ON blobs (run_id);
";

const PUT_RUN: &str = "
INSERT INTO runs (run_id, plugin_id, status, created_at, finished_at, idempotency_key, record)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
ON CONFLICT (run_id) DO UPDATE SET
    plugin_id = excluded.plugin_id, status = excluded.status, created_at = excluded.created_at,
    finished_at = excluded.finished_at, idempotency_key = excluded.idempotency_key,
    record = excluded.record";

const GET_RUN: &str = "SELECT record FROM runs WHERE run_id = ?1";

/// Most runs one `list_runs` page returns.
const MAX_PAGE: usize = 1000;

/// Why the run store failed.
#[derive(Debug, thiserror::Error)]
pub enum RunDbError {
    #[error("run store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("run store: bad stored record: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("run store: cannot create {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "run store: schema version {found} was written by a newer neko (this one knows {SCHEMA_VERSION})"
    )]
    NewerSchema { found: i64 },
    #[error("run store: bad cursor")]
    BadCursor,
}

/// The run store; see the module docs.
pub struct RunDb {
    conn: Connection,
}

/// Filters of GET /runs.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub plugin_id: Option<String>,
    /// Any of these; empty = every status.
    pub status: Vec<RunStatus>,
    /// Clamped to 1..=1000.
    pub limit: usize,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Blob metadata (an upload session, then a finished blob).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BlobMeta {
    pub blob_id: String,
    pub run_id: String,
    pub filename: Option<String>,
    pub mime: Option<String>,
    pub max_bytes: u64,
    /// None while uploading.
    pub size: Option<u64>,
    pub created_at: f64,
}

/// What a `prune` removed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pruned {
    pub runs: usize,
    /// Blobs of the removed runs, whose files the caller deletes.
    pub blob_ids: Vec<String>,
    /// When the oldest finished run left finished: the next one an age limit removes.
    pub oldest_finished_at: Option<f64>,
    /// The pass stopped at its limit: more may be due.
    pub more: bool,
}

impl RunDb {
    /// `Some(path)`: a file (parent dirs created, WAL journal, synchronous=NORMAL — durable
    /// against a process kill, which is the guarantee we need, busy_timeout set); `None`: in memory.
    pub fn open(path: Option<&Path>) -> Result<RunDb, RunDbError> {
        let conn = match path {
            Some(path) => {
                create_private_file(path)?;
                let conn = Connection::open(path)?;
                let mode: String =
                    conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
                if !mode.eq_ignore_ascii_case("wal") {
                    // Still durable against a kill with a rollback journal, only slower.
                    tracing::warn!(path = %path.display(), %mode, "run store: WAL unavailable");
                }
                conn.pragma_update(None, "synchronous", "NORMAL")?;
                // NORMAL syncs only at checkpoints: fewer, larger ones halve the cost of a write
                // (measured). The WAL grows to ~40 MiB, trimmed back after big transactions.
                conn.pragma_update(None, "wal_autocheckpoint", 10_000)?;
                conn.pragma_update(None, "journal_size_limit", 64 << 20)?;
                conn
            }
            None => Connection::open_in_memory()?,
        };
        conn.busy_timeout(Duration::from_secs(5))?;
        // list_runs has a statement per filter shape; keep the hot ones from being evicted.
        conn.set_prepared_statement_cache_capacity(64);
        let mut db = RunDb { conn };
        db.migrate()?;
        Ok(db)
    }

    fn migrate(&mut self) -> Result<(), RunDbError> {
        // IMMEDIATE: two processes opening a fresh file cannot both create the tables.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        match found {
            0 => {
                tx.execute_batch(SCHEMA)?;
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            }
            SCHEMA_VERSION => {}
            found => return Err(RunDbError::NewerSchema { found }),
        }
        tx.commit()?;
        Ok(())
    }

    /// Starts a batch: the writes until [`RunDb::commit_batch`] are one transaction, so many
    /// writes share one commit (the tracker's group commit).
    pub fn begin_batch(&mut self) -> Result<(), RunDbError> {
        self.conn.execute_batch("BEGIN")?;
        Ok(())
    }

    /// Commits the batch [`RunDb::begin_batch`] started; if that fails, the batch is rolled back
    /// (never left open).
    pub fn commit_batch(&mut self) -> Result<(), RunDbError> {
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            if !self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// Whether a batch is open.
    pub fn in_batch(&self) -> bool {
        !self.conn.is_autocommit()
    }

    /// Every run not in a terminal state becomes `failed` with error {code: SUPERVISOR_RESTARTED,
    /// message: "the supervisor stopped while the run was in flight"}, finished_at=updated_at=now.
    /// Returns how many. Called once at start.
    pub fn recover_interrupted(&mut self, now: f64) -> Result<usize, RunDbError> {
        let tx = self.conn.transaction()?;
        let interrupted: Vec<RunRecord> = {
            let mut stmt = tx.prepare("SELECT record FROM runs WHERE finished_at IS NULL")?;
            decode_all(stmt.query([])?)?
        };
        let count = interrupted.len();
        for mut run in interrupted {
            run.status = RunStatus::Failed;
            run.error = Some(WireError::new(
                ErrorCode::SupervisorRestarted,
                "the supervisor stopped while the run was in flight",
            ));
            run.finished_at = Some(now);
            run.updated_at = now;
            put_run_on(&tx, &run)?;
        }
        tx.commit()?;
        Ok(count)
    }

    /// Insert or replace, in one statement (so one transaction).
    pub fn put_run(&mut self, run: &RunRecord) -> Result<(), RunDbError> {
        put_run_on(&self.conn, run)
    }

    pub fn get_run(&self, run_id: &str) -> Result<Option<RunRecord>, RunDbError> {
        let mut stmt = self.conn.prepare_cached(GET_RUN)?;
        decode_first(stmt.query([run_id])?)
    }

    /// The first run created with this key (the tracker keeps keys unique; the index is not
    /// UNIQUE so that a duplicate can never make a write fail).
    pub fn run_by_idempotency_key(&self, key: &str) -> Result<Option<RunRecord>, RunDbError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT record FROM runs WHERE idempotency_key = ?1 \
             ORDER BY created_at, run_id LIMIT 1",
        )?;
        decode_first(stmt.query([key])?)
    }

    /// Newest first (by created_at, then run_id), at most `limit` (clamp 1..=1000); `cursor` is
    /// the opaque string returned as next cursor by the previous page; returns (page,
    /// next_cursor or None when no more).
    pub fn list_runs(
        &self,
        filter: &RunFilter,
    ) -> Result<(Vec<RunRecord>, Option<String>), RunDbError> {
        let limit = filter.limit.clamp(1, MAX_PAGE);
        let mut sql = String::from("SELECT record FROM runs WHERE 1");
        let mut args: Vec<SqlValue> = Vec::new();
        if let Some(plugin_id) = &filter.plugin_id {
            sql.push_str(" AND plugin_id = ?");
            args.push(SqlValue::Text(plugin_id.clone()));
        }
        if !filter.status.is_empty() {
            let marks = vec!["?"; filter.status.len()].join(", ");
            sql.push_str(&format!(" AND status IN ({marks})"));
            args.extend(
                filter
                    .status
                    .iter()
                    .map(|s| SqlValue::Text(status_name(*s).into())),
            );
        }
        if let Some(cursor) = &filter.cursor {
            let (created_at, run_id) = decode_cursor(cursor)?;
            sql.push_str(" AND (created_at, run_id) < (?, ?)");
            args.push(SqlValue::Real(created_at));
            args.push(SqlValue::Text(run_id));
        }
        sql.push_str(" ORDER BY created_at DESC, run_id DESC LIMIT ?");
        // One extra row tells whether another page exists.
        args.push(SqlValue::Integer(limit as i64 + 1));
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut page: Vec<RunRecord> = decode_all(stmt.query(params_from_iter(args))?)?;
        let next = if page.len() > limit {
            page.truncate(limit);
            page.last().map(|r| encode_cursor(r.created_at, &r.run_id))
        } else {
            None
        };
        Ok((page, next))
    }

    /// Insert, or replace the item with the same id in place (it keeps its position).
    pub fn put_export(&mut self, item: &ExportItem) -> Result<(), RunDbError> {
        let json = serde_json::to_string(item)?;
        self.conn
            .prepare_cached(
                "INSERT INTO exports (export_item_id, run_id, item) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (export_item_id) DO UPDATE SET \
                 run_id = excluded.run_id, item = excluded.item",
            )?
            .execute(params![item.export_item_id, item.run_id, json])?;
        Ok(())
    }

    /// The reference's paging: items in insertion order; start after the item whose id is
    /// `after` (unknown `after` → from the beginning); page of max(1, limit); next_after = last id
    /// of the page if more remain, else None.
    pub fn list_exports(
        &self,
        run_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<ExportItem>, Option<String>), RunDbError> {
        let limit = limit.max(1);
        // An id of another run is as unknown here as a made-up one.
        let start: i64 = match after {
            Some(after) => self
                .conn
                .prepare_cached(
                    "SELECT seq FROM exports WHERE export_item_id = ?1 AND run_id = ?2",
                )?
                .query_row(params![after, run_id], |r| r.get(0))
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(0),
                    e => Err(e),
                })?,
            None => 0,
        };
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
        let mut stmt = self.conn.prepare_cached(
            "SELECT item FROM exports WHERE run_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let mut page: Vec<ExportItem> = decode_all(stmt.query(params![run_id, start, fetch])?)?;
        let next = if page.len() > limit {
            page.truncate(limit);
            page.last().map(|i| i.export_item_id.clone())
        } else {
            None
        };
        Ok((page, next))
    }

    pub fn put_blob(&mut self, blob: &BlobMeta) -> Result<(), RunDbError> {
        let json = serde_json::to_string(blob)?;
        self.conn
            .prepare_cached(
                "INSERT INTO blobs (blob_id, run_id, meta) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (blob_id) DO UPDATE SET run_id = excluded.run_id, meta = excluded.meta",
            )?
            .execute(params![blob.blob_id, blob.run_id, json])?;
        Ok(())
    }

    pub fn get_blob(&self, blob_id: &str) -> Result<Option<BlobMeta>, RunDbError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT meta FROM blobs WHERE blob_id = ?1")?;
        decode_first(stmt.query([blob_id])?)
    }

    /// Deletes terminal runs finished before now - max_age (if set) and, beyond max_count (if
    /// set), the oldest terminal runs (finished longest ago); with their export items and blobs.
    /// Never deletes a non-terminal run, so more than `max_count` may remain. One transaction of
    /// at most `limit` runs (oldest first), so a large backlog is deleted in several passes.
    pub fn prune(
        &mut self,
        now: f64,
        max_age_secs: Option<f64>,
        max_count: Option<usize>,
        limit: usize,
    ) -> Result<Pruned, RunDbError> {
        let tx = self.conn.transaction()?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut doomed: Vec<String> = Vec::new();
        if let Some(age) = max_age_secs {
            let mut stmt = tx.prepare(
                "SELECT run_id FROM runs WHERE finished_at IS NOT NULL AND finished_at < ?1 \
                 ORDER BY finished_at, run_id LIMIT ?2",
            )?;
            for id in stmt.query_map(params![now - age, limit], |r| r.get(0))? {
                doomed.push(id?);
            }
            delete_runs(&tx, &doomed)?;
        }
        let room = limit - doomed.len() as i64;
        if let (Some(max), true) = (max_count, room > 0) {
            let total: i64 = tx.query_row("SELECT COUNT(*) FROM runs", [], |r| r.get(0))?;
            let excess = total.saturating_sub(i64::try_from(max).unwrap_or(i64::MAX));
            if excess > 0 {
                let mut stmt = tx.prepare(
                    "SELECT run_id FROM runs WHERE finished_at IS NOT NULL \
                     ORDER BY finished_at, run_id LIMIT ?1",
                )?;
                let by_count = stmt
                    .query_map([excess.min(room)], |r| r.get(0))?
                    .collect::<Result<Vec<String>, _>>()?;
                delete_runs(&tx, &by_count)?;
                doomed.extend(by_count);
            }
        }
        let more = doomed.len() as i64 >= limit;
        let mut blob_ids = Vec::new();
        {
            let mut blobs = tx.prepare_cached("SELECT blob_id FROM blobs WHERE run_id = ?1")?;
            let mut drop_blobs = tx.prepare_cached("DELETE FROM blobs WHERE run_id = ?1")?;
            for id in &doomed {
                for blob in blobs.query_map([id], |r| r.get(0))? {
                    blob_ids.push(blob?);
                }
                drop_blobs.execute([id])?;
            }
        }
        let oldest_finished_at = tx.query_row(
            "SELECT MIN(finished_at) FROM runs WHERE finished_at IS NOT NULL",
            [],
            |r| r.get(0),
        )?;
        tx.commit()?;
        Ok(Pruned {
            runs: doomed.len(),
            blob_ids,
            oldest_finished_at,
            more,
        })
    }

    pub fn count_runs(&self) -> Result<usize, RunDbError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM runs", [], |r| r.get(0))?;
        Ok(usize::try_from(n).unwrap_or(0))
    }
}

/// The upsert, on a connection or inside a transaction.
fn put_run_on(conn: &Connection, run: &RunRecord) -> Result<(), RunDbError> {
    let json = serde_json::to_string(run)?;
    let finished_at = if run.status.is_terminal() {
        // A terminal run always gets a retention clock, even if a writer forgot finished_at.
        Some(run.finished_at.unwrap_or(run.updated_at))
    } else {
        None
    };
    conn.prepare_cached(PUT_RUN)?.execute(params![
        run.run_id,
        run.plugin_id,
        status_name(run.status),
        run.created_at,
        finished_at,
        run.idempotency_key,
        json,
    ])?;
    Ok(())
}

/// Removes runs and their export items (blobs are handled by the caller, which needs their ids).
fn delete_runs(conn: &Connection, run_ids: &[String]) -> Result<(), RunDbError> {
    let mut runs = conn.prepare_cached("DELETE FROM runs WHERE run_id = ?1")?;
    let mut exports = conn.prepare_cached("DELETE FROM exports WHERE run_id = ?1")?;
    for id in run_ids {
        runs.execute([id])?;
        exports.execute([id])?;
    }
    Ok(())
}

/// The database file, made owner-only before SQLite opens it (its WAL and shm files copy the
/// mode): run results may hold what users would not share.
fn create_private_file(path: &Path) -> Result<(), RunDbError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RunDbError::Create { path, source }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err(dir))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(err(path))?;
    Ok(())
}

/// The status as stored (its serde name, which is also what filters compare with).
fn status_name(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Queued => "queued",
        RunStatus::Running => "running",
        RunStatus::CancelRequested => "cancel_requested",
        RunStatus::Succeeded => "succeeded",
        RunStatus::Failed => "failed",
        RunStatus::Canceled => "canceled",
        RunStatus::Timeout => "timeout",
    }
}

/// Position after a run in the newest-first order: its created_at (exact bits) and run_id.
fn encode_cursor(created_at: f64, run_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{:016x}{run_id}", created_at.to_bits()))
}

fn decode_cursor(cursor: &str) -> Result<(f64, String), RunDbError> {
    let raw = URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or(RunDbError::BadCursor)?;
    let (bits, run_id) = raw.split_at_checked(16).ok_or(RunDbError::BadCursor)?;
    let bits = u64::from_str_radix(bits, 16).map_err(|_| RunDbError::BadCursor)?;
    Ok((f64::from_bits(bits), run_id.to_string()))
}

/// Decodes the JSON in column 0 of one row.
fn decode<T: DeserializeOwned>(row: &Row<'_>) -> Result<T, RunDbError> {
    let text = row.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?;
    Ok(serde_json::from_str(text)?)
}

fn decode_first<T: DeserializeOwned>(mut rows: Rows<'_>) -> Result<Option<T>, RunDbError> {
    rows.next()?.map(decode).transpose()
}

fn decode_all<T: DeserializeOwned>(mut rows: Rows<'_>) -> Result<Vec<T>, RunDbError> {
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(decode(row)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, json};
    use std::time::Instant;

    const ALL: [RunStatus; 7] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::CancelRequested,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Canceled,
        RunStatus::Timeout,
    ];

    fn run(id: &str, plugin: &str, status: RunStatus, created_at: f64) -> RunRecord {
        let terminal = status.is_terminal();
        RunRecord {
            run_id: id.into(),
            plugin_id: plugin.into(),
            entry_id: "e".into(),
            status,
            created_at,
            updated_at: created_at,
            task_id: None,
            trace_id: Some("t".into()),
            idempotency_key: None,
            started_at: Some(created_at),
            finished_at: terminal.then_some(created_at + 1.0),
            progress: Some(0.5),
            stage: None,
            message: None,
            step: Some(1),
            step_total: Some(2),
            eta_seconds: None,
            metrics: Map::new(),
            cancel_requested: status == RunStatus::CancelRequested,
            cancel_reason: None,
            cancel_requested_at: None,
            error: None,
            result_refs: Vec::new(),
            result: terminal.then(|| json!({"ok": true, "n": 1})),
        }
    }

    fn export(id: &str, run_id: &str) -> ExportItem {
        ExportItem {
            export_item_id: id.into(),
            run_id: run_id.into(),
            kind: "text".into(),
            created_at: 1.0,
            description: None,
            text: Some(format!("text of {id}")),
            url: None,
            binary_url: None,
            binary: None,
            mime: None,
            metadata: Map::new(),
        }
    }

    fn blob(id: &str, run_id: &str) -> BlobMeta {
        BlobMeta {
            blob_id: id.into(),
            run_id: run_id.into(),
            filename: Some("f.bin".into()),
            mime: None,
            max_bytes: 1 << 20,
            size: None,
            created_at: 1.0,
        }
    }

    fn ids(runs: &[RunRecord]) -> Vec<&str> {
        runs.iter().map(|r| r.run_id.as_str()).collect()
    }

    /// The ids of the (at most 10) runs the store holds, newest first.
    fn stored_ids(db: &RunDb) -> Vec<String> {
        let filter = RunFilter {
            limit: 10,
            ..Default::default()
        };
        let (runs, _) = db.list_runs(&filter).unwrap();
        runs.into_iter().map(|r| r.run_id).collect()
    }

    #[test]
    fn status_names_are_the_serde_names() {
        for s in ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), status_name(s));
        }
    }

    #[test]
    fn run_roundtrips_and_upserts() {
        let mut db = RunDb::open(None).unwrap();
        let mut r = run("a", "p", RunStatus::Running, 10.0);
        r.metrics.insert("m".into(), json!(1.5));
        db.put_run(&r).unwrap();
        assert_eq!(db.get_run("a").unwrap(), Some(r.clone()));
        assert_eq!(db.get_run("nope").unwrap(), None);

        r.status = RunStatus::Succeeded;
        r.finished_at = Some(12.0);
        r.result = Some(json!("done"));
        db.put_run(&r).unwrap();
        assert_eq!(db.get_run("a").unwrap(), Some(r));
        assert_eq!(db.count_runs().unwrap(), 1);
    }

    #[test]
    fn idempotency_key_finds_its_run() {
        let mut db = RunDb::open(None).unwrap();
        let mut r = run("a", "p", RunStatus::Queued, 1.0);
        r.idempotency_key = Some("k1".into());
        db.put_run(&r).unwrap();
        db.put_run(&run("b", "p", RunStatus::Queued, 2.0)).unwrap();
        assert_eq!(db.run_by_idempotency_key("k1").unwrap(), Some(r));
        assert_eq!(db.run_by_idempotency_key("k2").unwrap(), None);
    }

    /// Newest first, filters combine, and the cursor walks pages without gaps or repeats, also
    /// across runs with the same created_at.
    #[test]
    fn list_filters_and_cursor_pages() {
        let mut db = RunDb::open(None).unwrap();
        for i in 0..7 {
            let status = if i % 2 == 0 {
                RunStatus::Succeeded
            } else {
                RunStatus::Running
            };
            // r0..r3 share created_at: the run_id breaks the tie.
            let created = if i < 4 { 100.0 } else { 100.0 + i as f64 };
            db.put_run(&run(&format!("r{i}"), "p", status, created))
                .unwrap();
        }
        db.put_run(&run("other", "q", RunStatus::Succeeded, 500.0))
            .unwrap();

        let all = |f: &RunFilter| db.list_runs(f).unwrap();
        let (page, next) = all(&RunFilter {
            limit: 100,
            ..Default::default()
        });
        assert_eq!(
            ids(&page),
            ["other", "r6", "r5", "r4", "r3", "r2", "r1", "r0"]
        );
        assert_eq!(next, None);

        // Three pages of 3, 3, 1 for plugin p.
        let mut filter = RunFilter {
            plugin_id: Some("p".into()),
            limit: 3,
            ..Default::default()
        };
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let (page, next) = all(&filter);
            pages += 1;
            seen.extend(page.iter().map(|r| r.run_id.clone()));
            match next {
                Some(c) => filter.cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(seen, ["r6", "r5", "r4", "r3", "r2", "r1", "r0"]);

        let (page, _) = all(&RunFilter {
            plugin_id: Some("p".into()),
            status: vec![RunStatus::Succeeded, RunStatus::Failed],
            limit: 100,
            cursor: None,
        });
        assert_eq!(ids(&page), ["r6", "r4", "r2", "r0"]);

        // limit 0 is clamped to 1.
        let (page, next) = all(&RunFilter::default());
        assert_eq!(ids(&page), ["other"]);
        assert!(next.is_some());

        let bad = RunFilter {
            cursor: Some("!!".into()),
            ..Default::default()
        };
        assert!(matches!(db.list_runs(&bad), Err(RunDbError::BadCursor)));
    }

    #[test]
    fn export_paging_follows_the_reference() {
        let mut db = RunDb::open(None).unwrap();
        // Ids out of lexical order: only insertion order counts.
        for id in ["e3", "e1", "e2", "e0"] {
            db.put_export(&export(id, "r")).unwrap();
        }
        db.put_export(&export("x", "other")).unwrap();
        let page_ids = |items: &[ExportItem]| {
            items
                .iter()
                .map(|i| i.export_item_id.clone())
                .collect::<Vec<_>>()
        };

        let (p, next) = db.list_exports("r", None, 2).unwrap();
        assert_eq!(page_ids(&p), ["e3", "e1"]);
        assert_eq!(next.as_deref(), Some("e1"));
        let (p, next) = db.list_exports("r", next.as_deref(), 2).unwrap();
        assert_eq!(page_ids(&p), ["e2", "e0"]);
        assert_eq!(next, None, "nothing remains after an exactly full page");

        // Unknown `after` (or one of another run) starts from the beginning.
        let (p, _) = db.list_exports("r", Some("nope"), 10).unwrap();
        assert_eq!(page_ids(&p), ["e3", "e1", "e2", "e0"]);
        let (p, _) = db.list_exports("r", Some("x"), 10).unwrap();
        assert_eq!(p.len(), 4);
        // limit 0 means 1.
        let (p, next) = db.list_exports("r", Some("e2"), 0).unwrap();
        assert_eq!(page_ids(&p), ["e0"]);
        assert_eq!(next, None);
        let (p, next) = db.list_exports("none", None, 5).unwrap();
        assert!(p.is_empty() && next.is_none());

        // Replacing an item keeps its place.
        let mut e1 = export("e1", "r");
        e1.text = Some("changed".into());
        db.put_export(&e1).unwrap();
        let (p, _) = db.list_exports("r", None, 10).unwrap();
        assert_eq!(page_ids(&p), ["e3", "e1", "e2", "e0"]);
        assert_eq!(p[1], e1);
    }

    #[test]
    fn blobs_roundtrip() {
        let mut db = RunDb::open(None).unwrap();
        let mut b = blob("b1", "r");
        db.put_blob(&b).unwrap();
        assert_eq!(db.get_blob("b1").unwrap(), Some(b.clone()));
        b.size = Some(42);
        db.put_blob(&b).unwrap();
        assert_eq!(db.get_blob("b1").unwrap(), Some(b));
        assert_eq!(db.get_blob("b2").unwrap(), None);
    }

    #[test]
    fn recover_fails_runs_in_flight_only() {
        let mut db = RunDb::open(None).unwrap();
        for (i, s) in ALL.iter().enumerate() {
            db.put_run(&run(&format!("r{i}"), "p", *s, i as f64))
                .unwrap();
        }
        assert_eq!(db.recover_interrupted(1000.0).unwrap(), 3);
        for (i, s) in ALL.iter().enumerate() {
            let got = db.get_run(&format!("r{i}")).unwrap().unwrap();
            if s.is_terminal() {
                assert_eq!(got, run(&format!("r{i}"), "p", *s, i as f64));
            } else {
                assert_eq!(got.status, RunStatus::Failed);
                let err = got.error.unwrap();
                assert_eq!(err.code, ErrorCode::SupervisorRestarted);
                assert_eq!(
                    err.message,
                    "the supervisor stopped while the run was in flight"
                );
                assert_eq!(got.finished_at, Some(1000.0));
                assert_eq!(got.updated_at, 1000.0);
            }
        }
        assert_eq!(db.recover_interrupted(2000.0).unwrap(), 0);
        let (failed, _) = db
            .list_runs(&RunFilter {
                status: vec![RunStatus::Failed],
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(failed.len(), 4);
    }

    #[test]
    fn file_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/runs.sqlite3");
        let r = run("a", "p", RunStatus::Running, 1.0);
        {
            let mut db = RunDb::open(Some(&path)).unwrap();
            db.put_run(&r).unwrap();
            db.put_export(&export("e", "a")).unwrap();
            db.put_blob(&blob("b", "a")).unwrap();
        }
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let mut db = RunDb::open(Some(&path)).unwrap();
        assert_eq!(db.get_run("a").unwrap(), Some(r));
        assert_eq!(db.list_exports("a", None, 10).unwrap().0.len(), 1);
        assert!(db.get_blob("b").unwrap().is_some());
        assert_eq!(db.recover_interrupted(5.0).unwrap(), 1);
        drop(db);
        let db = RunDb::open(Some(&path)).unwrap();
        assert_eq!(db.get_run("a").unwrap().unwrap().status, RunStatus::Failed);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.sqlite3");
        drop(RunDb::open(Some(&path)).unwrap());
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        assert!(matches!(
            RunDb::open(Some(&path)),
            Err(RunDbError::NewerSchema { .. })
        ));
    }

    /// Age and count retention remove terminal runs with their exports and blobs, never a run in
    /// flight.
    #[test]
    fn prune_by_age_and_count_keeps_runs_in_flight() {
        let mut db = RunDb::open(None).unwrap();
        // Terminal runs t0..t4 finished at 11, 21, 31, 41, 51; in-flight runs created early.
        for i in 0..5 {
            let id = format!("t{i}");
            db.put_run(&run(&id, "p", RunStatus::Succeeded, 10.0 * (i + 1) as f64))
                .unwrap();
            db.put_export(&export(&format!("e{i}"), &id)).unwrap();
            db.put_blob(&blob(&format!("b{i}"), &id)).unwrap();
        }
        db.put_run(&run("live1", "p", RunStatus::Running, 0.0))
            .unwrap();
        db.put_run(&run("live2", "p", RunStatus::Queued, 0.0))
            .unwrap();
        db.put_blob(&blob("blive", "live1")).unwrap();

        // Age: finished before 100 - 70 = 30 → t0 (11), t1 (21).
        let pruned = db.prune(100.0, Some(70.0), None, 100).unwrap();
        assert_eq!(pruned.runs, 2);
        let mut blobs = pruned.blob_ids;
        blobs.sort();
        assert_eq!(blobs, ["b0", "b1"]);
        assert_eq!(pruned.oldest_finished_at, Some(31.0));
        assert!(db.get_run("t0").unwrap().is_none());
        assert!(db.get_blob("b0").unwrap().is_none());
        assert!(db.list_exports("t0", None, 10).unwrap().0.is_empty());
        assert_eq!(db.count_runs().unwrap(), 5);

        // Count 3: drop the two oldest finished (t2, t3), keep t4 and both live runs.
        let pruned = db.prune(100.0, None, Some(3), 100).unwrap();
        assert_eq!(pruned.runs, 2);
        assert_eq!(pruned.blob_ids, ["b2", "b3"]);
        assert_eq!(pruned.oldest_finished_at, Some(51.0));
        assert_eq!(db.count_runs().unwrap(), 3);
        assert!(db.get_run("t4").unwrap().is_some());
        assert_eq!(db.list_exports("t4", None, 10).unwrap().0.len(), 1);

        // Count 0 and any age: only the live runs remain, and they stay.
        let pruned = db.prune(1e9, Some(0.0), Some(0), 100).unwrap();
        assert_eq!(pruned.runs, 1);
        assert_eq!(pruned.blob_ids, ["b4"]);
        assert_eq!(stored_ids(&db), ["live2", "live1"]);
        assert!(db.get_blob("blive").unwrap().is_some());
        assert_eq!(db.prune(1e9, None, None, 100).unwrap(), Pruned::default());
    }

    /// A pass deletes at most its limit, oldest first, and says when it stopped there.
    #[test]
    fn prune_goes_in_passes_of_at_most_its_limit() {
        let mut db = RunDb::open(None).unwrap();
        for i in 0..7 {
            db.put_run(&run(
                &format!("t{i}"),
                "p",
                RunStatus::Failed,
                10.0 * (i + 1) as f64,
            ))
            .unwrap();
        }
        // Age removes t0..t3 (finished before 50), count keeps 2: five are due, three a pass.
        let first = db.prune(100.0, Some(50.0), Some(2), 3).unwrap();
        assert_eq!((first.runs, first.more), (3, true));
        assert!(db.get_run("t2").unwrap().is_none() && db.get_run("t3").unwrap().is_some());
        let second = db.prune(100.0, Some(50.0), Some(2), 3).unwrap();
        assert_eq!((second.runs, second.more), (2, false));
        assert_eq!(stored_ids(&db), ["t6", "t5"]);
        let idle = db.prune(100.0, Some(50.0), Some(2), 3).unwrap();
        assert_eq!((idle.runs, idle.more), (0, false));
    }

    /// Figures for the issue: start-up cost with a large store, and the write rate.
    /// `cargo test -p neko-actors --release run_db -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn recovery_time_with_100k_runs() {
        const N: usize = 100_000;
        const IN_FLIGHT_EVERY: usize = 100;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.sqlite3");
        let killed = dir.path().join("killed.sqlite3");
        let t = Instant::now();
        let fill = {
            let mut db = RunDb::open(Some(&path)).unwrap();
            for i in 0..N {
                let status = if i % IN_FLIGHT_EVERY == 0 {
                    RunStatus::Running
                } else {
                    RunStatus::Succeeded
                };
                let mut r = run(&uuid::Uuid::new_v4().to_string(), "p", status, i as f64);
                r.idempotency_key = Some(format!("key-{i}"));
                db.put_run(&r).unwrap();
            }
            let fill = t.elapsed();
            // What a SIGKILL leaves (database and WAL, no clean close), copied while idle.
            let wal = |p: &Path| PathBuf::from(format!("{}-wal", p.display()));
            std::fs::copy(&path, &killed).unwrap();
            std::fs::copy(wal(&path), wal(&killed)).unwrap();
            fill
        };
        let size = std::fs::metadata(&path).unwrap().len();

        let start = |p: &Path| {
            let t = Instant::now();
            let mut db = RunDb::open(Some(p)).unwrap();
            let opened = t.elapsed();
            let t = Instant::now();
            let recovered = db.recover_interrupted(1e9).unwrap();
            assert_eq!(recovered, N / IN_FLIGHT_EVERY);
            (db, opened, t.elapsed())
        };
        let (_, killed_open, killed_recover) = start(&killed);
        let (mut db, opened, recover) = start(&path);

        let t = Instant::now();
        let mut fresh = Vec::with_capacity(10_000);
        for i in 0..10_000 {
            let r = run(
                &uuid::Uuid::new_v4().to_string(),
                "p",
                RunStatus::Queued,
                (N + i) as f64,
            );
            db.put_run(&r).unwrap();
            fresh.push(r);
        }
        let inserts = t.elapsed();
        let t = Instant::now();
        for r in &mut fresh {
            r.status = RunStatus::Succeeded;
            r.finished_at = Some(r.created_at + 1.0);
            db.put_run(r).unwrap();
        }
        let updates = t.elapsed();
        let t = Instant::now();
        for r in &fresh {
            assert!(db.get_run(&r.run_id).unwrap().is_some());
        }
        let gets = t.elapsed();
        // Retention down to 50,000 runs, in the tracker's passes of 500.
        let t = Instant::now();
        let (mut passes, mut slowest) = (0, Duration::ZERO);
        loop {
            let pass = Instant::now();
            let pruned = db.prune(1e9, None, Some(50_000), 500).unwrap();
            slowest = slowest.max(pass.elapsed());
            passes += 1;
            if !pruned.more {
                break;
            }
        }
        let prune = t.elapsed();

        eprintln!(
            "run_db figures ({N} runs, {} in flight, file {size} bytes):",
            N / IN_FLIGHT_EVERY
        );
        eprintln!("  fill {N} put_run: {fill:?}");
        eprintln!("  after a clean close: open {opened:?}, recover_interrupted {recover:?}");
        eprintln!("  after a kill: open {killed_open:?}, recover_interrupted {killed_recover:?}");
        eprintln!(
            "  10k put_run (insert): {inserts:?} ({:.1} us/call)",
            inserts.as_secs_f64() * 100.0
        );
        eprintln!(
            "  10k put_run (update to terminal): {updates:?} ({:.1} us/call)",
            updates.as_secs_f64() * 100.0
        );
        eprintln!(
            "  10k get_run: {gets:?} ({:.1} us/call)",
            gets.as_secs_f64() * 100.0
        );
        eprintln!("  retention to 50k runs: {prune:?} in {passes} passes, slowest {slowest:?}");
    }
}
