//! The settlement spool: settlements the meter could not take, kept in fsync'd
//! local files and replayed in the background until the meter takes them.
//!
//! Replay is idempotent because the meter dedupes by event id: delivering an
//! entry twice is harmless, losing one is not. So every choice here trades
//! duplicates for durability: an append returns only once its bytes are on
//! disk, and replay forgets an entry only after the meter acknowledged it *and*
//! the new position is on disk.
//!
//! # Files (all in the spool directory)
//!
//! - `spool-<id:020>.log`, *segments*: an 8-byte header [`SEGMENT_MAGIC`], then
//!   records. A record is `"TMR1"`, the payload length (u32 LE), the CRC-32
//!   (IEEE) of the length bytes followed by the payload (u32 LE), then the
//!   payload: one prost-encoded `SettleRequest`. Appends go to the last segment;
//!   a new one starts when it reaches [`SpoolOptions::segment_bytes`].
//! - `committed`: the position (segment id, byte offset) of the first entry not
//!   yet acknowledged by the meter, with a CRC. Replaced atomically (write a
//!   temporary file, fsync, rename, fsync the directory). Segments entirely
//!   before it are deleted.
//! - `rejected.log`: dead letters, one JSON object per line, for entries the
//!   meter refused for good (e.g. an event older than its allowed lateness):
//!   event id, tenant, reservation, the reason, and the hex of the encoded
//!   `SettleRequest` so an operator can replay it by hand.
//! - `spool.lock`: held with an exclusive file lock while a [`Spool`] is open,
//!   so two processes never write the same spool.
//!
//! # Durability and group commit
//!
//! One writer thread owns the open segment. [`Spool::append`] frames the record,
//! hands it to the thread and waits. The thread takes every append queued while
//! it was busy, writes them with one `write` and one `sync_data`, then confirms
//! them all: appends that arrive during an fsync share the next one (group
//! commit; `examples/spool_bench.rs` measures it). A new segment is fsync'd and
//! so is the directory before it is used. After a failed write or fsync the
//! segment is cut back to its last durable length and abandoned for a new one:
//! after a failed fsync the kernel may have dropped the dirty pages, and a retry
//! could report success without the data.
//!
//! # Recovery
//!
//! [`Spool::open`] scans every segment. A record whose magic, length or CRC is
//! wrong is skipped by searching forward for the next intact record (a valid
//! CRC-32 over a random length and payload is a 1-in-4-billion accident), so a
//! flipped byte costs exactly the record it hit. Bytes after the last intact
//! record, a write torn by a crash, are truncated away. Both are logged at warn
//! level; neither stops the spool from opening.
//!
//! # Replay
//!
//! [`Spool::replay`] delivers entries in append order, one at a time. It
//! persists its position every [`SpoolOptions::commit_every`] acknowledged
//! entries and at the end of the pass, so a crash (or a dropped replay future)
//! re-delivers at most that many already acknowledged entries. A
//! [`DeliverError::Retryable`] ends the pass and keeps the entry; a
//! [`DeliverError::Rejected`] moves it to `rejected.log` (fsync'd before the
//! position moves past it) and replay goes on.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread;
use std::time::Duration;

use prost::Message as _;
use tenantmeter_proto::v1::{SettleOutcome, SettleRequest, SettleResponse};
use tenantmeter_runtime::shutdown::Shutdown;
use tokio::sync::{OwnedMutexGuard, oneshot, watch};
use tokio::task::JoinHandle;

/// First bytes of every segment file: format name and version.
pub const SEGMENT_MAGIC: &[u8; 8] = b"TMSPOOL1";
/// Length of a segment's header, [`SEGMENT_MAGIC`].
pub const SEGMENT_HEADER_LEN: u64 = 8;
/// First bytes of every record; what recovery searches for after a bad record.
pub const RECORD_MAGIC: &[u8; 4] = b"TMR1";
/// Bytes of a record before its payload: magic, length, CRC.
pub const RECORD_HEADER_LEN: u64 = 12;
/// Largest payload a record may carry. A `SettleRequest` is a few hundred bytes
/// (its tags are capped at 16 x 128 + 128 bytes); the cap bounds what a corrupt
/// length field can make recovery read.
pub const MAX_RECORD_LEN: u32 = 1 << 20;
/// The dead-letter file, in the spool directory.
pub const REJECTED_FILE: &str = "rejected.log";

const RECORD_HEADER: usize = 12;
const COMMITTED_FILE: &str = "committed";
const COMMITTED_TMP_FILE: &str = "committed.tmp";
const COMMITTED_MAGIC: &[u8; 8] = b"TMCOMMIT";
const COMMITTED_LEN: usize = 28;
const LOCK_FILE: &str = "spool.lock";
const SEGMENT_PREFIX: &str = "spool-";
const SEGMENT_SUFFIX: &str = ".log";
/// The replayer's longest wait between two attempts while the meter is down.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Tuning of a [`Spool`]; the defaults suit the gateway.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// A segment is closed, and a new one started, once it holds this many
    /// bytes. Fully replayed segments are deleted, so this bounds the disk held
    /// by acknowledged entries.
    pub segment_bytes: u64,
    /// Replay persists its position after this many acknowledged entries (and
    /// at the end of each pass): the most entries a crash can make it deliver
    /// twice.
    pub commit_every: usize,
    /// The most appends one fsync covers.
    pub max_group: usize,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        Self {
            segment_bytes: 8 << 20,
            commit_every: 64,
            max_group: 1024,
        }
    }
}

/// Why a spool operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    /// A file operation failed.
    #[error("spool: {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error (shared: one failed fsync fails every
        /// append of its group).
        #[source]
        source: Arc<io::Error>,
    },
    /// Another [`Spool`] (in this process or another) has the directory open.
    #[error("spool directory {} is in use by another spool", .0.display())]
    Locked(PathBuf),
    /// The settlement does not fit in one record.
    #[error("settlement of {len} bytes is larger than the spool's record limit of {max} bytes")]
    TooLarge {
        /// Its encoded length.
        len: usize,
        /// [`MAX_RECORD_LEN`].
        max: u32,
    },
    /// The writer thread is gone (it only stops when the spool is dropped).
    #[error("the spool's writer has stopped")]
    Closed,
}

fn io_error(op: &'static str, path: &Path, source: io::Error) -> SpoolError {
    SpoolError::Io {
        op,
        path: path.to_path_buf(),
        source: Arc::new(source),
    }
}

/// The meter's answer to a delivered entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// The meter recorded it now.
    Recorded,
    /// The meter had already counted the event id (an earlier delivery that
    /// was not acknowledged in time): nothing changed.
    Duplicate,
}

impl From<SettleResponse> for Delivered {
    fn from(response: SettleResponse) -> Self {
        Delivered::from(&response)
    }
}

impl From<&SettleResponse> for Delivered {
    fn from(response: &SettleResponse) -> Self {
        if response.outcome == SettleOutcome::Duplicate as i32 {
            Delivered::Duplicate
        } else {
            Delivered::Recorded
        }
    }
}

/// Why an entry was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliverError {
    /// The meter cannot be reached or asked to retry: stop this pass and keep
    /// the entry for the next one.
    #[error("retryable: {0}")]
    Retryable(String),
    /// The meter refused the entry for good (e.g. INVALID_ARGUMENT for an event
    /// older than its allowed lateness): it goes to `rejected.log` with this
    /// reason and is not retried.
    #[error("rejected: {0}")]
    Rejected(String),
}

/// What one [`Spool::replay`] pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Entries the meter acknowledged (duplicates included).
    pub delivered: u64,
    /// Of those, entries the meter had already counted.
    pub duplicates: u64,
    /// Entries moved to `rejected.log` (refused by the meter, or unreadable).
    pub rejected: u64,
    /// Entries still pending when the pass ended.
    pub remaining: u64,
    /// Why the pass stopped early: the [`DeliverError::Retryable`] reason.
    /// `None` when it reached the end of the spool.
    pub interrupted: Option<String>,
}

/// Counters of a spool since it was opened, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Entries appended (and fsync'd).
    pub appended: u64,
    /// Fsyncs those appends took; `appended / group_commits` is the mean group size.
    pub group_commits: u64,
}

/// A place in the spool: segment id and byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Position {
    segment: u64,
    offset: u64,
}

struct State {
    /// Durable length of every live segment, by id; the last one takes appends.
    segments: BTreeMap<u64, u64>,
    /// The first entry not yet acknowledged (always in a live segment).
    committed: Position,
}

struct Shared {
    dir: PathBuf,
    state: Mutex<State>,
    pending: watch::Sender<u64>,
    appended: AtomicU64,
    group_commits: AtomicU64,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock, and every update leaves the
        // state consistent, so a poisoned lock still holds good data.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct AppendCommand {
    record: Vec<u8>,
    done: oneshot::Sender<Result<(), SpoolError>>,
}

struct Inner {
    shared: Arc<Shared>,
    options: SpoolOptions,
    commands: Option<mpsc::Sender<AppendCommand>>,
    writer: Option<thread::JoinHandle<()>>,
    replay_lock: Arc<tokio::sync::Mutex<()>>,
    // Held for the lock it carries; released when the file is closed.
    _lock: File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel stops the writer once it has confirmed what it
        // holds; joining it means a spool reopened right after sees every file
        // handle of this one closed.
        drop(self.commands.take());
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("spool writer thread panicked");
        }
    }
}

/// An fsync'd local spool of settlements. Cheap to clone: clones share the
/// same files, writer and counters.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

impl fmt::Debug for Spool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.inner.shared.dir)
            .field("pending", &self.pending())
            .finish_non_exhaustive()
    }
}

impl Spool {
    /// Opens (creating it if needed) the spool in `dir` with the default
    /// options, recovering what was written before a crash. Blocking file I/O:
    /// call it at startup, or from `spawn_blocking`.
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        Spool::open_with(dir, SpoolOptions::default())
    }

    /// [`Spool::open`] with explicit options.
    pub fn open_with(dir: &Path, options: SpoolOptions) -> Result<Spool, SpoolError> {
        let options = SpoolOptions {
            commit_every: options.commit_every.max(1),
            max_group: options.max_group.max(1),
            segment_bytes: options.segment_bytes.max(SEGMENT_HEADER_LEN + 1),
        };
        fs::create_dir_all(dir).map_err(|e| io_error("create directory", dir, e))?;
        if let Some(parent) = dir.parent() {
            // Best effort: makes the new directory's entry durable in its parent.
            if let Err(error) = sync_dir(parent) {
                tracing::debug!(%error, "could not fsync the spool's parent directory");
            }
        }
        let lock = lock_dir(dir)?;
        let recovered = recover(dir)?;
        let (pending, _) = watch::channel(recovered.pending);
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            state: Mutex::new(State {
                segments: recovered.segments,
                committed: recovered.committed,
            }),
            pending,
            appended: AtomicU64::new(0),
            group_commits: AtomicU64::new(0),
        });
        if recovered.pending > 0 {
            tracing::info!(
                dir = %dir.display(),
                pending = recovered.pending,
                "spool opened with settlements to replay"
            );
        }
        let (commands, receiver) = mpsc::channel();
        let writer = {
            let shared = Arc::clone(&shared);
            let options = options.clone();
            thread::Builder::new()
                .name("tenantmeter-spool-writer".to_owned())
                .spawn(move || run_writer(&shared, &receiver, recovered.active, &options))
                .map_err(|e| io_error("start writer thread for", dir, e))?
        };
        Ok(Spool {
            inner: Arc::new(Inner {
                shared,
                options,
                commands: Some(commands),
                writer: Some(writer),
                replay_lock: Arc::new(tokio::sync::Mutex::new(())),
                _lock: lock,
            }),
        })
    }

    /// The spool's directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }

    /// Appends a settlement and returns once it is on disk (written and
    /// fsync'd). Safe to call from many tasks at once: concurrent appends share
    /// fsyncs. If the future is dropped after the settlement was handed to the
    /// writer, it is still written.
    pub async fn append(&self, request: &SettleRequest) -> Result<(), SpoolError> {
        let record = frame(request)?;
        let (done, confirmed) = oneshot::channel();
        let commands = self.inner.commands.as_ref().ok_or(SpoolError::Closed)?;
        commands
            .send(AppendCommand { record, done })
            .map_err(|_| SpoolError::Closed)?;
        confirmed.await.map_err(|_| SpoolError::Closed)?
    }

    /// Entries on disk that the meter has not acknowledged yet.
    #[must_use]
    pub fn pending(&self) -> u64 {
        *self.inner.shared.pending.borrow()
    }

    /// A receiver of [`Spool::pending`] that sees every change (for health,
    /// metrics and logs).
    #[must_use]
    pub fn watch_pending(&self) -> watch::Receiver<u64> {
        self.inner.shared.pending.subscribe()
    }

    /// Counters since the spool was opened.
    #[must_use]
    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            appended: self.inner.shared.appended.load(Ordering::Relaxed),
            group_commits: self.inner.shared.group_commits.load(Ordering::Relaxed),
        }
    }

    /// Delivers pending entries, oldest first, one at a time, until the spool
    /// is empty or `deliver` answers [`DeliverError::Retryable`]. Acknowledged
    /// entries are removed durably; rejected ones go to `rejected.log`. One
    /// pass runs at a time (a second caller waits). Dropping the future is
    /// safe: what was acknowledged but not yet committed is delivered again.
    ///
    /// `deliver` may answer anything that converts into [`Delivered`], e.g. the
    /// meter's `SettleResponse`.
    pub async fn replay<F, Fut, D>(&self, mut deliver: F) -> Result<ReplayReport, SpoolError>
    where
        F: FnMut(SettleRequest) -> Fut,
        Fut: Future<Output = Result<D, DeliverError>>,
        D: Into<Delivered>,
    {
        let mut guard = Arc::clone(&self.inner.replay_lock).lock_owned().await;
        let shared = &self.inner.shared;
        let commit_every = self.inner.options.commit_every;
        let mut report = ReplayReport::default();
        loop {
            let (from, end, next_segment) = {
                let state = shared.state();
                let from = state.committed;
                let Some(&end) = state.segments.get(&from.segment) else {
                    // Cannot happen (the committed segment is never deleted);
                    // stop rather than guess.
                    tracing::error!(segment = from.segment, "spool position names no segment");
                    break;
                };
                let next = state
                    .segments
                    .range(from.segment.saturating_add(1)..)
                    .next()
                    .map(|(&id, _)| id);
                (from, end, next)
            };
            if from.offset >= end {
                match next_segment {
                    // This segment is done and closed: move on, which deletes it.
                    Some(next) => {
                        let to = Position {
                            segment: next,
                            offset: SEGMENT_HEADER_LEN,
                        };
                        guard = self.commit(guard, to, Vec::new(), 0).await?;
                        continue;
                    }
                    None => break,
                }
            }
            let path = segment_path(&shared.dir, from.segment);
            let bytes = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || read_range(&path, from.offset, end))
            }
            .await
            .map_err(|e| io_error("read (task failed)", &path, io::Error::other(e)))??;
            let scan = scan(&bytes);
            if !scan.skipped.is_empty() || scan.tail.is_some() {
                tracing::warn!(
                    path = %path.display(),
                    skipped = ?scan.skipped,
                    tail = ?scan.tail,
                    "replay skipped corrupt bytes in a spool segment"
                );
            }
            let mut cursor = from;
            let mut acknowledged = 0_u64;
            let mut dead = Vec::new();
            let mut interrupted = None;
            for record in &scan.records {
                let after = Position {
                    segment: from.segment,
                    offset: from.offset.saturating_add(to_u64(record.end)),
                };
                let payload = bytes.get(record.payload.clone()).unwrap_or_default();
                let delivered = match SettleRequest::decode(payload) {
                    Ok(request) => deliver(request).await.map(Into::into),
                    Err(error) => {
                        // The CRC matched, so these are the bytes that were
                        // written: a bug or a format change, not a crash.
                        // Retrying cannot help; keep them for an operator.
                        Err(DeliverError::Rejected(format!(
                            "undecodable entry: {error}"
                        )))
                    }
                };
                match delivered {
                    Ok(outcome) => {
                        report.delivered = report.delivered.saturating_add(1);
                        if outcome == Delivered::Duplicate {
                            report.duplicates = report.duplicates.saturating_add(1);
                        }
                    }
                    Err(DeliverError::Retryable(reason)) => {
                        interrupted = Some(reason);
                        break;
                    }
                    Err(DeliverError::Rejected(reason)) => {
                        // Decoded again (cheap, and rare) rather than cloned
                        // before every delivery, for the ids in the log line.
                        let request = SettleRequest::decode(payload).ok();
                        let letter = DeadLetter::new(payload, &reason, request.as_ref());
                        tracing::error!(
                            event_id = letter.event_id.as_deref(),
                            tenant_id = letter.tenant_id.as_deref(),
                            %reason,
                            "meter rejected a spooled settlement; moved to rejected.log"
                        );
                        dead.push(letter);
                        report.rejected = report.rejected.saturating_add(1);
                    }
                }
                cursor = after;
                acknowledged = acknowledged.saturating_add(1);
                if acknowledged >= to_u64(commit_every) {
                    guard = self
                        .commit(guard, cursor, std::mem::take(&mut dead), acknowledged)
                        .await?;
                    acknowledged = 0;
                }
            }
            if interrupted.is_none() {
                // Everything up to the durable end was read: records and any
                // corrupt bytes between or after them.
                cursor = Position {
                    segment: from.segment,
                    offset: end,
                };
            }
            guard = self.commit(guard, cursor, dead, acknowledged).await?;
            if interrupted.is_some() {
                report.interrupted = interrupted;
                break;
            }
        }
        drop(guard);
        report.remaining = self.pending();
        Ok(report)
    }

    /// Makes replay progress durable: dead letters first, then the new
    /// position, then deletes the segments before it and updates the pending
    /// count. Runs on the blocking pool and carries the replay lock with it, so
    /// a replay future dropped meanwhile cannot let another pass write the
    /// position at the same time.
    async fn commit(
        &self,
        guard: OwnedMutexGuard<()>,
        to: Position,
        dead: Vec<DeadLetter>,
        acknowledged: u64,
    ) -> Result<OwnedMutexGuard<()>, SpoolError> {
        let shared = Arc::clone(&self.inner.shared);
        let dir = shared.dir.clone();
        let (guard, result) = tokio::task::spawn_blocking(move || {
            let result = commit_blocking(&shared, to, &dead, acknowledged);
            (guard, result)
        })
        .await
        .map_err(|e| io_error("commit (task failed)", &dir, io::Error::other(e)))?;
        result.map(|()| guard)
    }

    /// Replays while entries are pending until `shutdown` triggers: a pass as
    /// soon as entries appear (after `every`, since the meter just failed to
    /// take them), then every `every` while passes end early, backing off
    /// exponentially (doubling, at most 5 minutes) while the meter stays
    /// unreachable. A pass in progress when shutdown triggers is dropped,
    /// which is safe (see [`Spool::replay`]).
    pub async fn run_replayer<F, Fut, D>(self, mut deliver: F, every: Duration, shutdown: Shutdown)
    where
        F: FnMut(SettleRequest) -> Fut,
        Fut: Future<Output = Result<D, DeliverError>>,
        D: Into<Delivered>,
    {
        let mut pending = self.watch_pending();
        let mut delay = every;
        // Entries left by an earlier run are replayed at once.
        let mut first = true;
        loop {
            if self.pending() == 0 {
                let appeared = async { pending.wait_for(|&n| n > 0).await.is_ok() };
                tokio::select! {
                    biased;
                    () = shutdown.triggered() => return,
                    alive = appeared => if !alive { return },
                }
                delay = every;
            } else if first {
                delay = Duration::ZERO;
            }
            first = false;
            tokio::select! {
                biased;
                () = shutdown.triggered() => return,
                () = tokio::time::sleep(delay) => {}
            }
            let outcome = tokio::select! {
                biased;
                () = shutdown.triggered() => return,
                outcome = self.replay(&mut deliver) => outcome,
            };
            match outcome {
                Ok(report) => {
                    if report.delivered > 0 || report.rejected > 0 {
                        tracing::info!(
                            delivered = report.delivered,
                            duplicates = report.duplicates,
                            rejected = report.rejected,
                            remaining = report.remaining,
                            "replayed spooled settlements"
                        );
                    }
                    match report.interrupted {
                        None => delay = every,
                        Some(reason) => {
                            delay = backoff(delay, every);
                            tracing::warn!(%reason, remaining = report.remaining, retry_in = ?delay, "meter unavailable for spool replay");
                        }
                    }
                }
                Err(error) => {
                    delay = backoff(delay, every);
                    tracing::error!(%error, retry_in = ?delay, "spool replay failed");
                }
            }
        }
    }

    /// Starts [`Spool::run_replayer`] on a clone of this spool as a task that
    /// `shutdown` tracks (so the binary waits for it before exiting).
    pub fn spawn_replayer<F, Fut, D>(
        &self,
        deliver: F,
        every: Duration,
        shutdown: &Shutdown,
    ) -> JoinHandle<()>
    where
        F: FnMut(SettleRequest) -> Fut + Send + 'static,
        Fut: Future<Output = Result<D, DeliverError>> + Send + 'static,
        D: Into<Delivered> + Send + 'static,
    {
        let spool = self.clone();
        shutdown.spawn(spool.run_replayer(deliver, every, shutdown.clone()))
    }
}

fn backoff(current: Duration, every: Duration) -> Duration {
    let ceiling = MAX_BACKOFF.max(every);
    current.max(every).saturating_mul(2).min(ceiling)
}

fn to_u64(n: usize) -> u64 {
    // usize is at most 64 bits on every supported target.
    u64::try_from(n).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------
// CRC-32 (IEEE 802.3, as zlib), from crc32fast: hardware-accelerated where
// the CPU has it, and a file format other tools can check.

fn crc32(parts: &[&[u8]]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize()
}

// ---------------------------------------------------------------------------
// Records.

fn frame(request: &SettleRequest) -> Result<Vec<u8>, SpoolError> {
    let payload = request.encode_to_vec();
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&len| len <= MAX_RECORD_LEN)
        .ok_or(SpoolError::TooLarge {
            len: payload.len(),
            max: MAX_RECORD_LEN,
        })?;
    let len_bytes = len.to_le_bytes();
    let mut record = Vec::with_capacity(RECORD_HEADER + payload.len());
    record.extend_from_slice(RECORD_MAGIC);
    record.extend_from_slice(&len_bytes);
    record.extend_from_slice(&crc32(&[&len_bytes, &payload]).to_le_bytes());
    record.extend_from_slice(&payload);
    Ok(record)
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let chunk: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(chunk))
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let chunk: [u8; 8] = bytes.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(chunk))
}

/// An intact record of a buffer: where its payload is and where it ends.
#[derive(Debug)]
struct ScannedRecord {
    payload: Range<usize>,
    end: usize,
}

/// The intact record starting at `pos`, if there is one.
fn parse_record(buf: &[u8], pos: usize) -> Option<ScannedRecord> {
    if buf.get(pos..pos.checked_add(4)?)? != RECORD_MAGIC {
        return None;
    }
    let len = read_u32(buf, pos.checked_add(4)?)?;
    if len > MAX_RECORD_LEN {
        return None;
    }
    let crc = read_u32(buf, pos.checked_add(8)?)?;
    let start = pos.checked_add(RECORD_HEADER)?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    let payload = buf.get(start..end)?;
    (crc32(&[&len.to_le_bytes(), payload]) == crc).then_some(ScannedRecord {
        payload: start..end,
        end,
    })
}

/// The records of a buffer of records, with what was not a record.
#[derive(Debug, Default)]
struct Scan {
    records: Vec<ScannedRecord>,
    /// Corrupt ranges followed by an intact record.
    skipped: Vec<Range<usize>>,
    /// Where trailing bytes that hold no intact record start (a torn write).
    tail: Option<usize>,
}

fn scan(buf: &[u8]) -> Scan {
    let mut result = Scan::default();
    let mut pos = 0;
    while pos < buf.len() {
        if let Some(record) = parse_record(buf, pos) {
            pos = record.end;
            result.records.push(record);
            continue;
        }
        let next = (pos.saturating_add(1)..buf.len()).find(|&candidate| {
            buf.get(candidate..candidate.saturating_add(4)) == Some(RECORD_MAGIC.as_slice())
                && parse_record(buf, candidate).is_some()
        });
        match next {
            Some(next) => {
                result.skipped.push(pos..next);
                pos = next;
            }
            None => {
                result.tail = Some(pos);
                break;
            }
        }
    }
    result
}

// ---------------------------------------------------------------------------
// Files.

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{SEGMENT_PREFIX}{id:020}{SEGMENT_SUFFIX}"))
}

fn segment_id(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    // Directories cannot be opened for fsync here; renames are durable on
    // their own on the platforms that matter (NTFS journals metadata).
    Ok(())
}

fn lock_dir(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_error("open", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(SpoolError::Locked(dir.to_path_buf())),
        Err(fs::TryLockError::Error(e)) => Err(io_error("lock", &path, e)),
    }
}

fn read_range(path: &Path, from: u64, to: u64) -> Result<Vec<u8>, SpoolError> {
    let len = to
        .checked_sub(from)
        .and_then(|len| usize::try_from(len).ok())
        .ok_or_else(|| {
            io_error(
                "read",
                path,
                io::Error::new(io::ErrorKind::InvalidInput, "bad range"),
            )
        })?;
    let mut file = File::open(path).map_err(|e| io_error("open", path, e))?;
    file.seek(SeekFrom::Start(from))
        .map_err(|e| io_error("seek", path, e))?;
    let mut buf = vec![0; len];
    file.read_exact(&mut buf)
        .map_err(|e| io_error("read", path, e))?;
    Ok(buf)
}

/// The open segment, owned by the writer thread.
struct ActiveSegment {
    id: u64,
    path: PathBuf,
    file: File,
    len: u64,
}

/// Creates the segment after the last one and makes it durable (file and
/// directory entry) before anything is appended to it.
fn new_segment(shared: &Shared) -> Result<ActiveSegment, SpoolError> {
    let id = {
        let state = shared.state();
        state
            .segments
            .last_key_value()
            .map_or(1, |(&id, _)| id.saturating_add(1))
    };
    let path = segment_path(&shared.dir, id);
    let created = create_segment_file(&shared.dir, &path);
    match created {
        Ok(file) => {
            shared.state().segments.insert(id, SEGMENT_HEADER_LEN);
            Ok(ActiveSegment {
                id,
                path,
                file,
                len: SEGMENT_HEADER_LEN,
            })
        }
        Err(error) => {
            // Leave no half-made segment behind; if this fails too, the next
            // attempt truncates it.
            if let Err(remove) = fs::remove_file(&path) {
                tracing::debug!(error = %remove, path = %path.display(), "could not remove a failed segment");
            }
            Err(error)
        }
    }
}

/// Creates (or truncates: a file with a fresh id can only be the remains of an
/// earlier attempt that failed before the segment was registered) a segment
/// file holding only its header, durable with its directory entry.
fn create_segment_file(dir: &Path, path: &Path) -> Result<File, SpoolError> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .map_err(|e| io_error("create", path, e))?;
    file.write_all(SEGMENT_MAGIC)
        .map_err(|e| io_error("write", path, e))?;
    file.sync_data().map_err(|e| io_error("fsync", path, e))?;
    sync_dir(dir).map_err(|e| io_error("fsync", dir, e))?;
    Ok(file)
}

fn run_writer(
    shared: &Shared,
    commands: &mpsc::Receiver<AppendCommand>,
    mut active: Option<ActiveSegment>,
    options: &SpoolOptions,
) {
    while let Ok(first) = commands.recv() {
        let mut group = vec![first];
        while group.len() < options.max_group {
            match commands.try_recv() {
                Ok(command) => group.push(command),
                Err(_) => break,
            }
        }
        let result = write_group(shared, &mut active, &group, options);
        for command in group {
            // A waiter that went away (its append future was dropped) needs no
            // answer: the entry is on disk, or the error was logged.
            let _ = command.done.send(result.clone());
        }
    }
}

fn write_group(
    shared: &Shared,
    active: &mut Option<ActiveSegment>,
    group: &[AppendCommand],
    options: &SpoolOptions,
) -> Result<(), SpoolError> {
    let segment = match active {
        Some(segment) => segment,
        None => active.insert(new_segment(shared)?),
    };
    let mut buf = Vec::with_capacity(group.iter().map(|c| c.record.len()).sum());
    for command in group {
        buf.extend_from_slice(&command.record);
    }
    let start = segment.len;
    let written = segment
        .file
        .write_all(&buf)
        .map_err(|e| io_error("write", &segment.path, e))
        .and_then(|()| {
            segment
                .file
                .sync_data()
                .map_err(|e| io_error("fsync", &segment.path, e))
        });
    if let Err(error) = written {
        tracing::error!(%error, entries = group.len(), "spool append failed; starting a new segment");
        // Cut the file back to what is known durable, so recovery does not
        // find half a group, then abandon it (see the module docs on fsync).
        if let Err(truncate) = segment.file.set_len(start) {
            tracing::warn!(error = %truncate, path = %segment.path.display(), "could not cut back a failed spool segment");
        }
        *active = None;
        return Err(error);
    }
    segment.len = segment.len.saturating_add(to_u64(buf.len()));
    shared.state().segments.insert(segment.id, segment.len);
    let entries = to_u64(group.len());
    shared
        .pending
        .send_modify(|pending| *pending = pending.saturating_add(entries));
    shared.appended.fetch_add(entries, Ordering::Relaxed);
    shared.group_commits.fetch_add(1, Ordering::Relaxed);
    if segment.len >= options.segment_bytes {
        match new_segment(shared) {
            Ok(next) => *active = Some(next),
            // The full segment still works; try again after the next group.
            Err(error) => tracing::warn!(%error, "could not start a new spool segment"),
        }
    }
    Ok(())
}

fn write_committed(dir: &Path, position: Position) -> Result<(), SpoolError> {
    let mut bytes = Vec::with_capacity(COMMITTED_LEN);
    bytes.extend_from_slice(COMMITTED_MAGIC);
    bytes.extend_from_slice(&position.segment.to_le_bytes());
    bytes.extend_from_slice(&position.offset.to_le_bytes());
    let crc = crc32(&[&bytes]);
    bytes.extend_from_slice(&crc.to_le_bytes());
    let tmp = dir.join(COMMITTED_TMP_FILE);
    let path = dir.join(COMMITTED_FILE);
    let mut file = File::create(&tmp).map_err(|e| io_error("create", &tmp, e))?;
    file.write_all(&bytes)
        .map_err(|e| io_error("write", &tmp, e))?;
    file.sync_all().map_err(|e| io_error("fsync", &tmp, e))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(|e| io_error("rename to", &path, e))?;
    sync_dir(dir).map_err(|e| io_error("fsync", dir, e))
}

fn read_committed(dir: &Path) -> Option<Position> {
    let path = dir.join(COMMITTED_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return None,
        Err(error) => {
            tracing::warn!(%error, path = %path.display(), "cannot read the spool position; replaying from the oldest segment");
            return None;
        }
    };
    let position = parse_committed(&bytes);
    if position.is_none() {
        // Replaying from the start only re-delivers what the meter dedupes.
        tracing::warn!(path = %path.display(), "corrupt spool position; replaying from the oldest segment");
    }
    position
}

fn parse_committed(bytes: &[u8]) -> Option<Position> {
    if bytes.len() != COMMITTED_LEN || bytes.get(..8)? != COMMITTED_MAGIC {
        return None;
    }
    let crc = read_u32(bytes, 24)?;
    if crc32(&[bytes.get(..24)?]) != crc {
        return None;
    }
    Some(Position {
        segment: read_u64(bytes, 8)?,
        offset: read_u64(bytes, 16)?,
    })
}

/// One line of `rejected.log`.
struct DeadLetter {
    event_id: Option<String>,
    tenant_id: Option<String>,
    line: String,
}

impl DeadLetter {
    fn new(payload: &[u8], reason: &str, request: Option<&SettleRequest>) -> Self {
        let event = request.and_then(|r| r.event.as_ref());
        let event_id = event.map(|e| e.event_id.clone());
        let tenant_id = event.map(|e| e.tenant_id.clone());
        let line = serde_json::json!({
            "event_id": event_id,
            "tenant_id": tenant_id,
            "reservation_id": request.map(|r| r.reservation_id.as_str()),
            "reason": reason,
            "settle_request_hex": hex(payload),
        })
        .to_string();
        Self {
            event_id,
            tenant_id,
            line,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len().saturating_mul(2));
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

fn write_dead_letters(dir: &Path, dead: &[DeadLetter]) -> Result<(), SpoolError> {
    let path = dir.join(REJECTED_FILE);
    let existed = path.exists();
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| io_error("open", &path, e))?;
    let mut text = String::new();
    for letter in dead {
        text.push_str(&letter.line);
        text.push('\n');
    }
    file.write_all(text.as_bytes())
        .map_err(|e| io_error("write", &path, e))?;
    file.sync_data().map_err(|e| io_error("fsync", &path, e))?;
    if !existed {
        sync_dir(dir).map_err(|e| io_error("fsync", dir, e))?;
    }
    Ok(())
}

fn commit_blocking(
    shared: &Shared,
    to: Position,
    dead: &[DeadLetter],
    acknowledged: u64,
) -> Result<(), SpoolError> {
    if !dead.is_empty() {
        write_dead_letters(&shared.dir, dead)?;
    }
    let current = shared.state().committed;
    if to != current {
        write_committed(&shared.dir, to)?;
    }
    let obsolete: Vec<u64> = {
        let mut state = shared.state();
        state.committed = to;
        let obsolete: Vec<u64> = state
            .segments
            .range(..to.segment)
            .map(|(&id, _)| id)
            .collect();
        for id in &obsolete {
            state.segments.remove(id);
        }
        obsolete
    };
    for id in obsolete {
        let path = segment_path(&shared.dir, id);
        // A segment that survives is deleted at the next open (it is before
        // the committed position), so failing here loses nothing.
        if let Err(error) = fs::remove_file(&path) {
            tracing::warn!(%error, path = %path.display(), "could not delete a replayed spool segment");
        }
    }
    shared
        .pending
        .send_modify(|pending| *pending = pending.saturating_sub(acknowledged));
    Ok(())
}

/// What [`recover`] found.
struct Recovered {
    segments: BTreeMap<u64, u64>,
    committed: Position,
    pending: u64,
    active: Option<ActiveSegment>,
}

/// Scans the spool directory: repairs segments, finds the position, counts
/// the entries after it, and opens the last segment for appends.
fn recover(dir: &Path) -> Result<Recovered, SpoolError> {
    let stale_tmp = dir.join(COMMITTED_TMP_FILE);
    if stale_tmp.exists()
        && let Err(error) = fs::remove_file(&stale_tmp)
    {
        tracing::warn!(%error, path = %stale_tmp.display(), "could not remove a stale spool file");
    }
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_error("list", dir, e))? {
        let entry = entry.map_err(|e| io_error("list", dir, e))?;
        if let Some(id) = entry.file_name().to_str().and_then(segment_id) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    let on_disk = read_committed(dir);
    let committed = on_disk;
    let last_id = ids.last().copied();

    // Segments entirely before the position were replayed: delete them.
    let mut segments = BTreeMap::new();
    let mut counts = BTreeMap::new();
    for id in ids {
        let path = segment_path(dir, id);
        if committed.is_some_and(|c| id < c.segment) {
            if let Err(error) = fs::remove_file(&path) {
                tracing::warn!(%error, path = %path.display(), "could not delete a replayed spool segment");
            }
            continue;
        }
        let is_last = Some(id) == last_id;
        if let Some((len, records)) = recover_segment(&path, is_last)? {
            segments.insert(id, len);
            counts.insert(id, records);
        }
    }

    let mut committed = resolve_committed(committed, &segments);
    let active;
    if let Some((&id, &len)) = segments.last_key_value() {
        let path = segment_path(dir, id);
        let mut file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| io_error("open", &path, e))?;
        file.seek(SeekFrom::Start(len))
            .map_err(|e| io_error("seek", &path, e))?;
        active = Some(ActiveSegment {
            id,
            path,
            file,
            len,
        });
    } else {
        // No segment yet: start one numbered after the position read, so that
        // position can never claim entries of the new segment.
        let id = committed.map_or(1, |c| c.segment.saturating_add(1));
        let path = segment_path(dir, id);
        let file = create_segment_file(dir, &path)?;
        segments.insert(id, SEGMENT_HEADER_LEN);
        counts.insert(id, Vec::new());
        committed = Some(Position {
            segment: id,
            offset: SEGMENT_HEADER_LEN,
        });
        active = Some(ActiveSegment {
            id,
            path,
            file,
            len: SEGMENT_HEADER_LEN,
        });
    }
    let committed = committed.unwrap_or(Position {
        segment: segments.first_key_value().map_or(1, |(&id, _)| id),
        offset: SEGMENT_HEADER_LEN,
    });
    if on_disk != Some(committed) {
        // The position moved (repairs, a lost or corrupt position file, a new
        // segment): persist it before any append, or a later open could take
        // new entries written below the old position for acknowledged ones.
        write_committed(dir, committed)?;
    }
    let pending = counts
        .iter()
        .filter(|&(&id, _)| id >= committed.segment)
        .map(|(&id, starts)| {
            let pending = if id == committed.segment {
                starts.iter().filter(|&&s| s >= committed.offset).count()
            } else {
                starts.len()
            };
            to_u64(pending)
        })
        .sum();
    Ok(Recovered {
        segments,
        committed,
        pending,
        active,
    })
}

/// Where replay resumes, given the position read from disk and the segments
/// found.
fn resolve_committed(
    committed: Option<Position>,
    segments: &BTreeMap<u64, u64>,
) -> Option<Position> {
    let committed = committed?;
    if let Some(&len) = segments.get(&committed.segment) {
        if committed.offset > len {
            tracing::warn!(
                offset = committed.offset,
                len,
                "spool position is past its segment's intact end; resuming at that end"
            );
        }
        return Some(Position {
            segment: committed.segment,
            offset: committed.offset.clamp(SEGMENT_HEADER_LEN, len),
        });
    }
    // The positioned segment is gone: resume at the first one after it.
    segments
        .range(committed.segment..)
        .next()
        .map(|(&id, _)| Position {
            segment: id,
            offset: SEGMENT_HEADER_LEN,
        })
        .or_else(|| {
            segments.last_key_value().map(|(&id, &len)| Position {
                segment: id,
                offset: len,
            })
        })
}

/// Checks one segment: its header, its records; truncates a torn tail.
/// Returns its intact length and the start offsets of its records, or `None`
/// when the file is not a usable segment (set aside or removed).
fn recover_segment(path: &Path, is_last: bool) -> Result<Option<(u64, Vec<u64>)>, SpoolError> {
    let bytes = fs::read(path).map_err(|e| io_error("read", path, e))?;
    let header = usize::try_from(SEGMENT_HEADER_LEN).unwrap_or(8);
    if bytes.len() < header && SEGMENT_MAGIC.starts_with(&bytes) {
        // A crash while the segment was being created: it never held a record.
        if is_last {
            let mut file = OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(path)
                .map_err(|e| io_error("open", path, e))?;
            file.write_all(SEGMENT_MAGIC)
                .map_err(|e| io_error("write", path, e))?;
            file.sync_data().map_err(|e| io_error("fsync", path, e))?;
            return Ok(Some((SEGMENT_HEADER_LEN, Vec::new())));
        }
        if let Err(error) = fs::remove_file(path) {
            tracing::warn!(%error, path = %path.display(), "could not remove an empty spool segment");
        }
        return Ok(None);
    }
    if bytes.get(..header) != Some(SEGMENT_MAGIC.as_slice()) {
        // Not ours, or its header is damaged: keep it aside for an operator
        // rather than guess, and go on with the rest.
        let aside = path.with_extension("log.corrupt");
        tracing::warn!(path = %path.display(), aside = %aside.display(), "spool segment has a bad header; set aside");
        fs::rename(path, &aside).map_err(|e| io_error("rename", path, e))?;
        return Ok(None);
    }
    let body = bytes.get(header..).unwrap_or_default();
    let scan = scan(body);
    for skipped in &scan.skipped {
        tracing::warn!(
            path = %path.display(),
            from = to_u64(skipped.start).saturating_add(SEGMENT_HEADER_LEN),
            bytes = skipped.len(),
            "corrupt record in spool segment skipped"
        );
    }
    let starts: Vec<u64> = scan
        .records
        .iter()
        .map(|r| {
            to_u64(r.payload.start)
                .saturating_sub(RECORD_HEADER_LEN)
                .saturating_add(SEGMENT_HEADER_LEN)
        })
        .collect();
    let mut len = to_u64(bytes.len());
    if let Some(tail) = scan.tail {
        let intact = to_u64(tail).saturating_add(SEGMENT_HEADER_LEN);
        tracing::warn!(
            path = %path.display(),
            intact_len = intact,
            dropped_bytes = len.saturating_sub(intact),
            "torn or corrupt end of spool segment truncated"
        );
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| io_error("open", path, e))?;
        file.set_len(intact)
            .map_err(|e| io_error("truncate", path, e))?;
        file.sync_data().map_err(|e| io_error("fsync", path, e))?;
        len = intact;
    }
    Ok(Some((len, starts)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
        assert_eq!(crc32(&[b"1234", b"56789"]), 0xCBF4_3926);
        assert_eq!(crc32(&[b""]), 0);
    }

    #[test]
    fn scan_skips_a_corrupt_record_and_reports_a_torn_tail() {
        let request = SettleRequest {
            reservation_id: "r".to_owned(),
            event: None,
        };
        let record = frame(&request).unwrap();
        let mut buf = Vec::new();
        for _ in 0..3 {
            buf.extend_from_slice(&record);
        }
        // Damage the second record's payload, then add half a record.
        let second_payload = record.len() + RECORD_HEADER;
        buf[second_payload] ^= 0xFF;
        buf.extend_from_slice(&record[..5]);
        let scan = scan(&buf);
        assert_eq!(scan.records.len(), 2);
        assert_eq!(scan.skipped, vec![record.len()..2 * record.len()]);
        assert_eq!(scan.tail, Some(3 * record.len()));
    }

    #[test]
    fn segment_names_round_trip() {
        let path = segment_path(Path::new("/x"), 42);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, "spool-00000000000000000042.log");
        assert_eq!(segment_id(name), Some(42));
        assert_eq!(segment_id("spool-42.log"), None);
        assert_eq!(segment_id("rejected.log"), None);
    }
}
