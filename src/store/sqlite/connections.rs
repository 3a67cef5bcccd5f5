//! The threads that own the SQLite connections: one writer, a fixed set of readers, and the
//! background checkpointer. An async caller hands a closure to a thread and awaits its answer
//! through a oneshot, so no SQLite call ever runs on a runtime worker, and rows are decoded on the
//! thread that stepped them, straight into the caller's types.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use crate::store::StoreError;

/// How long a statement waits for a lock another connection holds (e.g. `auditor user add` in
/// another process, or the checkpointer's `ANALYZE`) before it fails as busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared statements kept per connection. Every fixed statement, and each shape of event query
/// in use (one per combination of filters), is prepared once and then reused.
const STATEMENT_CACHE: usize = 64;

/// The writer's page cache, in KiB (SQLite's negative `cache_size`). An append touches the
/// right-hand edges of a few B-trees, and a flush or merge writes its run in key order: the
/// cache holds those edges and a merge's current pages.
const WRITER_CACHE_KIB: i64 = -16384;

/// Each reader's page cache, in KiB. A query reads a key's postings in several runs and the
/// events they name; a page found here costs no system call (with SQLite's default 2 MiB,
/// `pread` and the kernel's page-cache lookups took a fifth of a reader's time). SQLite empties
/// it when a read transaction starts after a commit, so it serves the pages one query reads
/// more than once, such as the B-trees' upper levels.
const READER_CACHE_KIB: i64 = -16384;

/// WAL pages after which the writer checkpoints by itself: only a safety net for when the
/// background checkpointer cannot keep up (SQLite's default is 1000).
const WRITER_AUTOCHECKPOINT_PAGES: i64 = 16384;

/// How often the background checkpointer copies the WAL into the database file.
const WAL_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(200);

/// How often the planner's statistics are brought up to date (`PRAGMA optimize`), in ticks of
/// the checkpointer: every 30 s.
const OPTIMIZE_EVERY_TICKS: u32 = 150;

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode::{
            CannotOpen, DatabaseBusy, DatabaseLocked, DiskFull, SystemIoFailure,
        };
        match &error {
            // Another process holds the lock past the busy timeout, or the file cannot be
            // reached: worth retrying later, unlike a statement the schema refuses.
            rusqlite::Error::SqliteFailure(e, _)
                if matches!(
                    e.code,
                    DatabaseBusy | DatabaseLocked | CannotOpen | SystemIoFailure | DiskFull
                ) =>
            {
                Self::Unavailable(Box::new(error)).counted()
            }
            _ => Self::Other(error.into()).counted(),
        }
    }
}

/// Where the database file is, from a `sqlite://path` (or `sqlite:path`) URL.
#[derive(Debug, Clone)]
pub(super) struct Location {
    path: PathBuf,
}

impl Location {
    /// The path is taken as written after the scheme, percent-escapes decoded, as sqlx read it:
    /// `sqlite://auditor.db` is `auditor.db`, `sqlite:///var/lib/auditor.db` is absolute. URL
    /// parameters (`?mode=…`) are refused rather than ignored: the file is always created if
    /// missing, and opened read-write.
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let invalid = |why: &str| StoreError::Other(anyhow::anyhow!("SQLite URL `{url}`: {why}"));
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| invalid("does not start with sqlite://"))?;
        if rest.contains('?') {
            return Err(invalid("parameters are not supported; give only the path"));
        }
        if rest.is_empty() || rest == ":memory:" {
            return Err(invalid(
                "needs the path of a file (an in-memory database cannot be shared by the \
                 writer and the readers, and would lose the log at exit)",
            ));
        }
        let path = percent_decoded(rest).ok_or_else(|| invalid("has an invalid %-escape"))?;
        Ok(Self { path: path.into() })
    }

    fn open(&self, flags: OpenFlags) -> Result<Connection, StoreError> {
        let conn =
            Connection::open_with_flags(&self.path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        conn.pragma_update(None, "foreign_keys", true)?;
        Ok(conn)
    }

    /// The one connection that writes: creates the file if missing and puts it in WAL mode.
    /// `synchronous = FULL`: a commit is on disk before the writer acknowledges it, even across
    /// power loss; group commit amortises the fsync over every event of the batch. Transactions
    /// begin IMMEDIATE (write lock up front), also those of the migration runner.
    /// `secure_delete` always: whatever a write frees (a moved cell, a split page's old content,
    /// a page put on the freelist) is zeroed, so that an erased value leaves no stale copy that
    /// an earlier write left behind (turned on for erasures only, copies from before stayed).
    pub fn open_writer(&self) -> Result<Connection, StoreError> {
        // SQLite says only "unable to open database file" when the folder is missing.
        if let Some(folder) = self.path.parent().filter(|f| !f.as_os_str().is_empty())
            && !folder.is_dir()
        {
            return Err(StoreError::Other(anyhow::anyhow!(
                "the folder {} of the SQLite database does not exist; create it first (the \
                 database file itself is created on the first start)",
                folder.display()
            )));
        }
        let mut conn =
            self.open(OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Other(anyhow::anyhow!(
                "SQLite refused WAL mode for {} (journal_mode is {mode})",
                self.path.display()
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "secure_delete", true)?;
        conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB)?;
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)?;
        conn.set_transaction_behavior(TransactionBehavior::Immediate);
        Ok(conn)
    }

    /// A read-only connection: in WAL mode it reads the last committed state and never waits
    /// for the writer.
    pub fn open_reader(&self) -> Result<Connection, StoreError> {
        let conn = self.open(OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.pragma_update(None, "cache_size", READER_CACHE_KIB)?;
        // No map of the file: SQLite drops a reader's map, like its page cache, at the start
        // of every read transaction that follows a commit, and the log is written all the time
        // (each query records its read). On 1M `bench/run` events with reads recorded, c=16,
        // unmapping and faulting the pages in again took 46 % of the server's CPU; with `pread`
        // the queries went from 407 / 1,258 / 1,298 to 685 / 2,256 / 1,584 a second
        // (`user_identity` / `event_data.account_id` / one-hour range). Only a log that nobody
        // writes to reads faster mapped (1,722 against 1,225 a second by `user_identity`).
        conn.pragma_update(None, "mmap_size", 0)?;
        Ok(conn)
    }

    /// The checkpointer's connection; FULL, so that the checkpoint is fsynced too.
    pub fn open_checkpointer(&self) -> Result<Connection, StoreError> {
        let conn = self.open(OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        Ok(conn)
    }
}

/// `%XX` escapes decoded, as in a URL's path; `None` if one is malformed or the result is not
/// UTF-8.
fn percent_decoded(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Work for a connection's thread. It sends its own answer, so a job that panics drops its
/// sender and the caller gets an error instead of waiting forever.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Threads that each own one connection and take jobs from one shared queue: the writer is one
/// of these with a single connection, the readers another with several. The threads end when
/// every handle is dropped and the queue is drained, closing their connections.
///
/// The queue is tokio's: a thread waiting on it parks at once. `std::sync::mpsc` spins and
/// calls `sched_yield` before it parks, and on a busy machine a thread that yielded waits
/// behind the other processes' time slices when its next job arrives: single-event appends
/// ran at a third of their rate in about half the benchmark runs that way.
pub(super) struct Threads {
    role: &'static str,
    jobs: mpsc::UnboundedSender<Job>,
    running: Arc<AtomicUsize>,
    /// Threads running a job now.
    busy: Arc<AtomicUsize>,
}

impl Threads {
    pub fn start(role: &'static str, connections: Vec<Connection>) -> Result<Self, StoreError> {
        let (jobs, queue) = mpsc::unbounded_channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let running = Arc::new(AtomicUsize::new(0));
        let busy = Arc::new(AtomicUsize::new(0));
        for (i, conn) in connections.into_iter().enumerate() {
            let queue = Arc::clone(&queue);
            let running = Arc::clone(&running);
            let busy = Arc::clone(&busy);
            running.fetch_add(1, Ordering::SeqCst);
            std::thread::Builder::new()
                .name(format!("sqlite-{role}-{i}"))
                .spawn(move || {
                    serve(role, conn, &queue, &busy);
                    running.fetch_sub(1, Ordering::SeqCst);
                })
                .map_err(|e| {
                    StoreError::Other(anyhow::Error::new(e).context("starting a SQLite thread"))
                })?;
        }
        Ok(Self {
            role,
            jobs,
            running,
            busy,
        })
    }

    /// False once every thread has stopped (only after a panic it could not roll back).
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst) > 0
    }

    /// The threads (each with its connection) that are running, and of them those running a
    /// job now.
    pub fn usage(&self) -> (usize, usize) {
        (
            self.running.load(Ordering::Relaxed),
            self.busy.load(Ordering::Relaxed),
        )
    }

    /// Runs `job` on one of the threads and returns its result. A job whose caller has gone
    /// (a request that timed out while queued) is skipped; one that has started always runs to
    /// its end, commit included.
    pub async fn run<T, F>(&self, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            if !reply.is_closed() {
                let _ = reply.send(job(conn));
            }
        });
        self.jobs.send(job).map_err(|_| {
            StoreError::Unavailable(format!("the SQLite {} threads have stopped", self.role).into())
        })?;
        answer.await.map_err(|_| {
            StoreError::Other(anyhow::anyhow!(
                "the SQLite {} thread dropped this request: it panicked (see the log), and \
                 nothing of the request was committed",
                self.role
            ))
        })?
    }
}

fn serve(
    role: &'static str,
    mut conn: Connection,
    queue: &Mutex<mpsc::UnboundedReceiver<Job>>,
    busy: &AtomicUsize,
) {
    loop {
        // Only the receiving is under the lock; the jobs of several threads run in parallel.
        let job = queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .blocking_recv();
        let Some(job) = job else { break };
        busy.fetch_add(1, Ordering::Relaxed);
        let finished = catch_unwind(AssertUnwindSafe(|| job(&mut conn))).is_ok();
        busy.fetch_sub(1, Ordering::Relaxed);
        if finished {
            continue;
        }
        // rusqlite's `Transaction` rolls back when dropped by the unwinding; make sure, or stop
        // rather than run the next job inside the broken one's transaction.
        if !conn.is_autocommit() && conn.execute_batch("ROLLBACK").is_err() {
            tracing::error!(
                role,
                "a SQLite job panicked inside a transaction that could not be rolled back; \
                 the thread stops"
            );
            break;
        }
        tracing::error!(
            role,
            "a SQLite job panicked; its transaction was rolled back"
        );
    }
}

/// Starts the thread that copies the WAL back into the database file on a connection of its
/// own; it stops when `stop`'s sender is dropped. Left to the writer, every thousandth page of
/// WAL makes one commit also write and fsync the database file, which cost a third of the append
/// rate; here that work runs beside the appends, which keep writing to the WAL meanwhile (a
/// PASSIVE checkpoint never blocks them).
///
/// The same connection keeps the planner's statistics current (nobody else runs ANALYZE on an
/// embedded database): with them SQLite can weigh an index over a filter against walking `seq`
/// for the page order. `analysis_limit` bounds each ANALYZE to a sample, and `optimize` skips
/// tables whose statistics are still good.
pub(super) fn spawn_checkpointer(
    conn: Connection,
    stop: std::sync::mpsc::Receiver<()>,
) -> Result<(), StoreError> {
    std::thread::Builder::new()
        .name("sqlite-checkpointer".into())
        .spawn(move || {
            for ticks in 0u32.. {
                match stop.recv_timeout(WAL_CHECKPOINT_INTERVAL) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
                if ticks % OPTIMIZE_EVERY_TICKS == OPTIMIZE_EVERY_TICKS - 1
                    && let Err(error) =
                        conn.execute_batch("PRAGMA analysis_limit = 1000; PRAGMA optimize = 0x10002")
                {
                    tracing::warn!(%error, "updating the query planner's statistics failed");
                }
                if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                {
                    tracing::warn!(%error, "WAL checkpoint failed; the writer's own checkpoints remain");
                }
            }
        })
        .map(drop)
        .map_err(|e| StoreError::Other(anyhow::Error::new(e).context("starting a SQLite thread")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `.cargo/config.toml` compiles SQLite for readers that do not queue on a process-wide
    /// mutex; a build without it is slower, not wrong, and fails here.
    #[test]
    fn sqlite_is_compiled_as_the_readers_need() {
        let conn = Connection::open_in_memory().unwrap();
        let options: Vec<String> = conn
            .prepare("PRAGMA compile_options")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "{options:?}"
        );
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "{options:?}"
        );
    }

    /// Readers read the file, they do not map it (see `open_reader`).
    #[test]
    fn readers_do_not_map_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let location =
            Location::parse(&format!("sqlite://{}", dir.path().join("a.db").display())).unwrap();
        drop(location.open_writer().unwrap());
        let reader = location.open_reader().unwrap();
        let mapped: i64 = reader
            .query_row("PRAGMA mmap_size", [], |row| row.get(0))
            .unwrap();
        assert_eq!(mapped, 0);
    }

    fn scratch() -> Threads {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (n INTEGER)").unwrap();
        Threads::start("test", vec![conn]).unwrap()
    }

    fn count(conn: &mut Connection) -> Result<i64, StoreError> {
        Ok(conn.query_row("SELECT count(*) FROM t", [], |row| row.get(0))?)
    }

    /// A job that panics answers its caller with an error, its transaction is rolled back, and
    /// the thread goes on with the next job.
    #[tokio::test]
    async fn a_panicking_job_fails_its_caller_alone() {
        let threads = scratch();
        let panicked = threads
            .run(|conn| -> Result<(), StoreError> {
                let tx = conn.transaction()?;
                tx.execute("INSERT INTO t VALUES (1)", [])?;
                panic!("a bug in the job");
            })
            .await;
        assert!(
            matches!(panicked, Err(StoreError::Other(_))),
            "{panicked:?}"
        );
        assert_eq!(threads.run(count).await.unwrap(), 0, "rolled back");
        assert!(threads.is_running());
    }

    /// A panic that leaves a transaction open, outside rusqlite's guard, is rolled back too.
    #[tokio::test]
    async fn a_transaction_left_open_by_a_panic_is_rolled_back() {
        let threads = scratch();
        let panicked = threads
            .run(|conn| -> Result<(), StoreError> {
                conn.execute_batch("BEGIN; INSERT INTO t VALUES (1)")?;
                panic!("a bug in the job");
            })
            .await;
        assert!(panicked.is_err());
        assert_eq!(threads.run(count).await.unwrap(), 0);
    }

    #[test]
    fn urls_name_a_file_and_nothing_else() {
        let path = |url: &str| Location::parse(url).map(|l| l.path);
        assert_eq!(
            path("sqlite://auditor.db").unwrap(),
            PathBuf::from("auditor.db")
        );
        assert_eq!(
            path("sqlite:auditor.db").unwrap(),
            PathBuf::from("auditor.db")
        );
        assert_eq!(
            path("sqlite:///var/lib/a%20b.db").unwrap(),
            PathBuf::from("/var/lib/a b.db")
        );
        for refused in [
            "sqlite://a.db?mode=rwc",
            "sqlite::memory:",
            "sqlite://",
            "sqlite://a%zz.db",
            "postgres://x/y",
        ] {
            assert!(path(refused).is_err(), "{refused}");
        }
    }
}
