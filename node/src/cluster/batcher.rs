//! Group commit at the proposer: proposals made while earlier ones are committing go to Raft as
//! one log entry ([`ClusterCommand::Batch`]), so a burst of joins, stored messages and
//! registrations costs one append and one fsync per node instead of one each.

use openraft::error::{ClientWriteError, RaftError};
use switchboard_proto::cluster::ClusterCommand;
use switchboard_proto::rooms::{NodeId, Outcome};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::types::Raft;

/// Most commands in one entry.
const MAX_COMMANDS: usize = 512;
/// Most (approximate) bytes in one entry: a follower's append stays far below the frame cap.
const MAX_BYTES: usize = 512 * 1024;
/// Proposals waiting for a slot; beyond this a proposer waits to queue.
const QUEUE: usize = 16 * 1024;

/// Why a write did not apply.
#[derive(Debug, Clone)]
pub enum WriteError {
    /// This node does not lead; the leader, if known.
    NotLeader(Option<NodeId>),
    /// The entry was replaced by another leader's before it committed: not applied.
    Replaced,
    /// Raft refused or failed.
    Failed(String),
}

struct Job {
    cmd: ClusterCommand,
    reply: oneshot::Sender<Result<(Outcome, u64), WriteError>>,
}

/// Queues proposals for this node's Raft; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Job>,
}

impl Batcher {
    /// Starts the batching task for `raft`.
    pub fn start(raft: Raft) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        actix::spawn(run(raft, rx));
        Batcher { tx }
    }

    /// Writes `cmd` (alone or with others), answering its outcome and log index.
    pub async fn write(&self, cmd: ClusterCommand) -> Result<(Outcome, u64), WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Job { cmd, reply }).await.map_err(|_| WriteError::Failed("raft stopped".into()))?;
        rx.await.unwrap_or_else(|_| Err(WriteError::Failed("raft stopped".into())))
    }
}

/// One entry is committed at a time; proposals arriving meanwhile queue and go together next.
/// openraft 0.9 appends one entry after another, each once durable, so more in flight only made
/// the entries smaller: one gave 12 200 joins/s at 64 at once where four gave 11 100.
async fn run(raft: Raft, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut bytes = first.cmd.approx_bytes();
        let mut jobs = vec![first];
        while jobs.len() < MAX_COMMANDS && bytes < MAX_BYTES {
            match rx.try_recv() {
                Ok(j) => {
                    bytes += j.cmd.approx_bytes();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        metrics::histogram!("switchboard_raft_batch_commands").record(jobs.len() as f64);
        write(&raft, jobs).await;
    }
}

async fn write(raft: &Raft, jobs: Vec<Job>) {
    let (cmds, replies): (Vec<_>, Vec<_>) = jobs.into_iter().map(|j| (j.cmd, j.reply)).unzip();
    let n = cmds.len();
    // Even a lone command goes as a batch: its id tells its own answer from another entry's.
    let id: u64 = rand::random();
    let answer = match raft.client_write(ClusterCommand::Batch { id, cmds }).await {
        Ok(r) => match r.data {
            Outcome::Batch { id: got, outcomes } if got == id && outcomes.len() == n => {
                let index = r.log_id.index;
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok((outcome, index)));
                }
                return;
            }
            Outcome::Batch { .. } => {
                // Another entry took this index (a leader change replaced ours): not applied.
                debug!("proposal replaced by a leader change; to be proposed again");
                WriteError::Replaced
            }
            other => {
                warn!(?other, "a batch was answered with another outcome");
                WriteError::Replaced
            }
        },
        Err(e) => error(e),
    };
    for reply in replies {
        let _ = reply.send(Err(answer.clone()));
    }
}

fn error(e: RaftError<NodeId, ClientWriteError<NodeId, super::types::PeerInfo>>) -> WriteError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => WriteError::NotLeader(f.leader_id),
        e => WriteError::Failed(e.to_string()),
    }
}
