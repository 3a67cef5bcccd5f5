//! The single write path. Every append in the process goes through one task that gathers
//! concurrent submissions into one transaction (group commit), so `seq` and the chain are
//! assigned in commit order and one fsync serves many requests. A caller is answered only after
//! the transaction holding its events has committed.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::{EVENTS_INGESTED, WRITE_BATCH_EVENTS, WRITE_COMMIT_DURATION, WRITE_FAILURES};
use crate::model::Submission;
use crate::store::{Appended, Store, StoreError};

/// How the writer gathers batches; see `[writer]` in the configuration.
#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    /// Submissions that may wait for the writer; beyond it callers are turned away (503).
    pub queue_capacity: usize,
    /// Most events committed in one transaction.
    pub batch_max_events: usize,
    /// How long the writer waits for more submissions once it has one; zero takes only what is
    /// already queued, which under load is already a full batch.
    pub batch_wait: Duration,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            queue_capacity: 8192,
            batch_max_events: 1000,
            batch_wait: Duration::ZERO,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the write queue is full")]
    QueueFull,
    #[error("the writer has stopped")]
    Stopped,
    #[error("the database is unavailable")]
    Unavailable,
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for WriteError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "append failed: database unavailable");
                Self::Unavailable
            }
            other => Self::Store(other),
        }
    }
}

struct Job {
    submission: Submission,
    reply: oneshot::Sender<Result<Appended, WriteError>>,
}

/// A cheap, cloneable way to hand submissions to the writer task.
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Job>,
    commits: watch::Receiver<u64>,
    closing: CancellationToken,
}

impl Writer {
    /// Starts the writer task. It ends when every `Writer` handle is dropped, or [`Self::close`]
    /// is called, and the queue is drained.
    pub fn spawn<S: Store>(store: S, options: WriterOptions) -> (Self, JoinHandle<()>) {
        let (queue, jobs) = mpsc::channel(options.queue_capacity.max(1));
        let (committed, commits) = watch::channel(0);
        let closing = CancellationToken::new();
        let task = tokio::spawn(run(store, jobs, options, committed, closing.clone()));
        let writer = Self {
            queue,
            commits,
            closing,
        };
        (writer, task)
    }

    /// Stops taking submissions, also while handles remain (a connection that outlived the
    /// shutdown's grace holds one): what is queued is still committed and answered, later
    /// appends fail with [`WriteError::Stopped`], and the task ends once the queue is drained.
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// A count of this process's committed write transactions, changed after each: a reader
    /// waiting for new events (a live tail) wakes on it instead of polling the database.
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.commits.clone()
    }

    /// False once the writer task has ended (it only ends on shutdown, or by a bug).
    pub fn is_running(&self) -> bool {
        !self.queue.is_closed()
    }

    /// Submissions waiting for the writer now, and the most that may.
    pub fn queue_depth(&self) -> (usize, usize) {
        let capacity = self.queue.max_capacity();
        (capacity - self.queue.capacity(), capacity)
    }

    /// Appends one submission atomically and waits for its commit.
    pub async fn append(&self, submission: Submission) -> Result<Appended, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send(Job { submission, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    metrics::counter!(WRITE_FAILURES, "reason" => "queue_full").increment(1);
                    WriteError::QueueFull
                }
                mpsc::error::TrySendError::Closed(_) => WriteError::Stopped,
            })?;
        answer.await.map_err(|_| WriteError::Stopped)?
    }
}

async fn run<S: Store>(
    store: S,
    mut jobs: mpsc::Receiver<Job>,
    options: WriterOptions,
    committed: watch::Sender<u64>,
    closing: CancellationToken,
) {
    let mut closed = false;
    loop {
        let next = tokio::select! {
            job = jobs.recv() => job,
            () = closing.cancelled(), if !closed => {
                jobs.close();
                closed = true;
                continue;
            }
        };
        let Some(first) = next else { break };
        let batch = gather(first, &mut jobs, &options).await;
        commit(&store, batch).await;
        committed.send_modify(|count| *count += 1);
    }
    tracing::debug!("writer stopped: queue closed and drained");
}

async fn gather(first: Job, jobs: &mut mpsc::Receiver<Job>, options: &WriterOptions) -> Vec<Job> {
    let mut events = first.submission.events.len();
    let mut batch = vec![first];
    let deadline = tokio::time::Instant::now() + options.batch_wait;
    while events < options.batch_max_events {
        let next = match jobs.try_recv() {
            Ok(job) => Some(job),
            Err(_) if options.batch_wait.is_zero() => None,
            Err(_) => tokio::time::timeout_at(deadline, jobs.recv())
                .await
                .ok()
                .flatten(),
        };
        let Some(job) = next else { break };
        events += job.submission.events.len();
        batch.push(job);
    }
    batch
}

/// How often a commit that is still waiting for the database says so.
const STALL_WARNING_EVERY: Duration = Duration::from_secs(10);

/// Awaits `append`, warning every [`STALL_WARNING_EVERY`] while it waits: a database that
/// hangs (a lock held, a server that stopped answering) rather than fails would otherwise stall
/// every write, from every way in, without a word.
async fn watched<T>(append: impl Future<Output = T>, submissions: usize) -> T {
    let started = Instant::now();
    let mut warn_at = tokio::time::interval_at(
        tokio::time::Instant::now() + STALL_WARNING_EVERY,
        STALL_WARNING_EVERY,
    );
    tokio::pin!(append);
    loop {
        tokio::select! {
            result = &mut append => return result,
            _ = warn_at.tick() => tracing::warn!(
                submissions,
                waited_secs = started.elapsed().as_secs(),
                "a commit is still waiting for the database (a lock held, or the server not \
                 answering?); writes wait behind it"
            ),
        }
    }
}

async fn commit<S: Store>(store: &S, batch: Vec<Job>) {
    let (submissions, replies): (Vec<Submission>, Vec<_>) =
        batch.into_iter().map(|j| (j.submission, j.reply)).unzip();
    tracing::trace!(submissions = submissions.len(), "committing batch");
    let started = Instant::now();
    match watched(store.append(&submissions), submissions.len()).await {
        Ok(outcomes) => {
            observe_commit(started, &submissions, &outcomes);
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        // The database is down: every submission in the batch fails alike, and fast.
        Err(StoreError::Unavailable(cause)) => {
            tracing::warn!(error = %cause, size = submissions.len(), "append failed: database unavailable");
            metrics::counter!(WRITE_FAILURES, "reason" => "unavailable")
                .increment(submissions.len() as u64);
            for reply in replies {
                let _ = reply.send(Err(WriteError::Unavailable));
            }
        }
        // One bad submission must not sink the others that shared its transaction: retry each
        // alone, so only the culprit sees the error.
        Err(error) if submissions.len() > 1 => {
            tracing::warn!(error = %error, size = submissions.len(), "batch append failed; retrying one by one");
            for (submission, reply) in submissions.iter().zip(replies) {
                let started = Instant::now();
                let alone = std::slice::from_ref(submission);
                let result = store
                    .append(alone)
                    .await
                    .inspect(|outcomes| observe_commit(started, alone, outcomes))
                    .inspect_err(|_| failed(1))
                    .map_err(WriteError::from)
                    .and_then(|mut outcomes| {
                        outcomes.pop().ok_or_else(|| {
                            WriteError::Store(StoreError::Other(anyhow::anyhow!(
                                "append returned no outcome"
                            )))
                        })
                    });
                let _ = reply.send(result);
            }
        }
        Err(error) => {
            failed(1);
            if let Some(reply) = replies.into_iter().next() {
                let _ = reply.send(Err(error.into()));
            }
        }
    }
}

/// Counts a committed transaction: its size, its time, and its new events per tenant.
fn observe_commit(started: Instant, submissions: &[Submission], outcomes: &[Appended]) {
    metrics::histogram!(WRITE_COMMIT_DURATION).record(started.elapsed().as_secs_f64());
    let mut batch = 0;
    for (submission, outcome) in submissions.iter().zip(outcomes) {
        let new = match outcome {
            Appended::Created { replayed, .. } => replayed.iter().filter(|r| !**r).count(),
            _ => 0,
        };
        batch += new;
        if new > 0 {
            metrics::counter!(EVENTS_INGESTED, "tenant" => submission.tenant.to_string())
                .increment(new as u64);
        }
    }
    metrics::histogram!(WRITE_BATCH_EVENTS).record(batch as f64);
}

fn failed(submissions: u64) {
    metrics::counter!(WRITE_FAILURES, "reason" => "rejected").increment(submissions);
}
