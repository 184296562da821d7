//! The Autoadmin's decision log: every proposal of the planners, executed or not, with its
//! status as it changes. Bounded (the newest `capacity` decisions and as many events), shared
//! between the Autoadmin (the only writer) and the APIs that read and stream it.
//!
//! A decision has an id; every change of its status is an event with a sequence number, and the
//! stream (`Autoadmin.WatchDecisions`, `GET /v1/decisions?after_seq=`) resumes from one: a
//! watcher that reconnects with the last sequence it saw misses nothing the log still holds, and
//! is told when it asked for events the log no longer holds.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::planner::Proposal;

/// What the Autoadmin does with the planners' moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Carry them out at once.
    Auto,
    /// Record them only.
    DryRun,
    /// Record them and wait for an operator to approve or reject each.
    Approve,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::DryRun => "dry-run",
            Self::Approve => "approve",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "auto" => Some(Self::Auto),
            "dry-run" | "dry_run" | "dryrun" => Some(Self::DryRun),
            "approve" => Some(Self::Approve),
            _ => None,
        }
    }
}

/// Where a decision stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionStatus {
    /// For the platform (add, remove or replace datanodes): nothing runs here.
    Recommended,
    /// Recorded in dry-run mode: nothing runs.
    DryRun,
    /// Waiting for an operator (approve mode).
    Proposed,
    /// An operator refused it.
    Rejected,
    /// Not approved in time, or no longer possible when approved: nothing ran.
    Expired,
    /// Its procedure runs.
    Executing,
    Succeeded,
    Failed,
}

impl DecisionStatus {
    /// Whether the decision can still change.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Proposed | Self::Executing)
    }
}

/// One decision and what became of it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    pub id: u64,
    pub status: DecisionStatus,
    /// The mode it was made in.
    pub mode: Mode,
    #[serde(flatten)]
    pub proposal: Proposal,
    pub at_unix_ms: u64,
    pub updated_at_unix_ms: u64,
    /// The procedure carrying it out (`GET /v1/procedures/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub procedure_id: Option<String>,
    /// How it ended, or why it did not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

/// A change: the decision as it is after it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DecisionEvent {
    pub seq: u64,
    pub decision: Decision,
}

/// Events after a sequence number.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EventPage {
    pub events: Vec<DecisionEvent>,
    /// The log dropped events after the requested sequence (it keeps the newest only).
    pub truncated: bool,
    /// The latest sequence number (resume from it).
    pub last_seq: u64,
}

pub struct DecisionLog {
    capacity: usize,
    next_id: u64,
    next_seq: u64,
    decisions: BTreeMap<u64, Decision>,
    events: VecDeque<DecisionEvent>,
    sender: broadcast::Sender<DecisionEvent>,
}

/// The log as the Autoadmin and the APIs share it.
pub type SharedDecisionLog = Arc<Mutex<DecisionLog>>;

/// Events a slow watcher may fall behind by before its stream ends (it resumes from its last
/// sequence number).
const WATCH_BUFFER: usize = 1024;

impl DecisionLog {
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(WATCH_BUFFER);
        Self {
            capacity: capacity.max(1),
            next_id: 1,
            next_seq: 1,
            decisions: BTreeMap::new(),
            events: VecDeque::new(),
            sender,
        }
    }

    pub fn shared(capacity: usize) -> SharedDecisionLog {
        Arc::new(Mutex::new(Self::new(capacity)))
    }

    fn publish(&mut self, decision: Decision) {
        let event = DecisionEvent {
            seq: self.next_seq,
            decision,
        };
        self.next_seq += 1;
        if self.events.len() >= self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(event.clone());
        // No watcher is not an error.
        let _ = self.sender.send(event);
    }

    /// Records a new decision.
    pub fn record(
        &mut self,
        proposal: Proposal,
        mode: Mode,
        status: DecisionStatus,
        now_unix_ms: u64,
    ) -> Decision {
        let decision = Decision {
            id: self.next_id,
            status,
            mode,
            proposal,
            at_unix_ms: now_unix_ms,
            updated_at_unix_ms: now_unix_ms,
            procedure_id: None,
            outcome: None,
        };
        self.next_id += 1;
        while self.decisions.len() >= self.capacity {
            // The oldest closed decision goes first: an open one must be able to end.
            let oldest_closed = self
                .decisions
                .values()
                .find(|d| !d.status.is_open())
                .map(|d| d.id);
            match oldest_closed {
                Some(id) => {
                    self.decisions.remove(&id);
                }
                None => {
                    self.decisions.pop_first();
                }
            }
        }
        self.decisions.insert(decision.id, decision.clone());
        self.publish(decision.clone());
        decision
    }

    /// Changes a decision's status (and its procedure and outcome when given).
    pub fn update(
        &mut self,
        id: u64,
        status: DecisionStatus,
        procedure_id: Option<String>,
        outcome: Option<String>,
        now_unix_ms: u64,
    ) -> Option<Decision> {
        let decision = self.decisions.get_mut(&id)?;
        decision.status = status;
        decision.updated_at_unix_ms = now_unix_ms;
        if procedure_id.is_some() {
            decision.procedure_id = procedure_id;
        }
        if outcome.is_some() {
            decision.outcome = outcome;
        }
        let decision = decision.clone();
        self.publish(decision.clone());
        Some(decision)
    }

    pub fn get(&self, id: u64) -> Option<&Decision> {
        self.decisions.get(&id)
    }

    /// Up to `limit` decisions, newest first, with ids below `before` if given.
    pub fn list(&self, before: Option<u64>, limit: usize) -> Vec<Decision> {
        self.list_where(before, limit, |_| true)
    }

    /// [`DecisionLog::list`] of the decisions `keep` keeps (only those are copied).
    pub fn list_where(
        &self,
        before: Option<u64>,
        limit: usize,
        keep: impl Fn(&Decision) -> bool,
    ) -> Vec<Decision> {
        self.decisions
            .range(..before.unwrap_or(u64::MAX))
            .rev()
            .map(|(_, d)| d)
            .filter(|d| keep(d))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Decisions still open (awaiting approval or executing).
    pub fn open(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.values().filter(|d| d.status.is_open())
    }

    /// Up to `limit` events after `after_seq`, oldest first.
    pub fn events_after(&self, after_seq: u64, limit: usize) -> EventPage {
        let oldest = self.events.front().map_or(self.next_seq, |e| e.seq);
        // A sequence past this log's end comes from another log (another leader's):
        // everything here is news to that watcher.
        let foreign = after_seq >= self.next_seq;
        let after_seq = if foreign { 0 } else { after_seq };
        EventPage {
            truncated: foreign || after_seq + 1 < oldest,
            events: self
                .events
                .iter()
                .filter(|e| e.seq > after_seq)
                .take(limit)
                .cloned()
                .collect(),
            last_seq: self.next_seq - 1,
        }
    }

    /// Events after `after_seq` the log holds, and a receiver of every later one: taken under
    /// the log's lock, so nothing falls between them.
    pub fn watch(&self, after_seq: u64) -> (EventPage, broadcast::Receiver<DecisionEvent>) {
        (
            self.events_after(after_seq, usize::MAX),
            self.sender.subscribe(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cns::planner::{Action, PlannerKind};

    fn proposal(region_id: u64) -> Proposal {
        Proposal {
            planner: PlannerKind::HotRegions,
            action: Action::Migrate {
                region_id,
                from: 1,
                to: 2,
            },
            reason: "hot".into(),
            figures: BTreeMap::new(),
            expected: "cooler".into(),
        }
    }

    #[test]
    fn every_change_is_an_event_and_a_watcher_resumes_from_its_last_sequence() {
        let mut log = DecisionLog::new(10);
        let first = log.record(proposal(1), Mode::Approve, DecisionStatus::Proposed, 5);
        let (page, mut rx) = log.watch(0);
        assert_eq!(page.events.len(), 1);
        log.update(
            first.id,
            DecisionStatus::Executing,
            Some("p1".into()),
            None,
            6,
        );
        log.update(
            first.id,
            DecisionStatus::Succeeded,
            None,
            Some("moved".into()),
            7,
        );
        let seen: Vec<(u64, DecisionStatus)> = (0..2)
            .map(|_| {
                let e = rx.try_recv().expect("an event");
                (e.seq, e.decision.status)
            })
            .collect();
        assert_eq!(
            seen,
            [
                (2, DecisionStatus::Executing),
                (3, DecisionStatus::Succeeded)
            ]
        );
        let done = log.get(first.id).expect("kept");
        assert_eq!(done.procedure_id.as_deref(), Some("p1"));
        assert_eq!(done.outcome.as_deref(), Some("moved"));
        let resumed = log.events_after(2, 10);
        assert_eq!(resumed.events.len(), 1);
        assert_eq!((resumed.truncated, resumed.last_seq), (false, 3));
        assert_eq!(log.open().count(), 0);
    }

    #[test]
    fn the_log_keeps_the_newest_and_says_when_a_watcher_missed_some() {
        let mut log = DecisionLog::new(3);
        for region in 1..=5 {
            log.record(proposal(region), Mode::DryRun, DecisionStatus::DryRun, 1);
        }
        let ids: Vec<u64> = log.list(None, 10).iter().map(|d| d.id).collect();
        assert_eq!(ids, [5, 4, 3]);
        assert_eq!(
            log.list(Some(5), 1)
                .iter()
                .map(|d| d.id)
                .collect::<Vec<_>>(),
            [4]
        );
        let page = log.events_after(0, 10);
        assert!(page.truncated);
        assert_eq!(
            page.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert!(!log.events_after(2, 10).truncated);
        assert_eq!(log.update(1, DecisionStatus::Rejected, None, None, 2), None);
        // A watcher from another log (another leader's, further along) gets all of this one.
        let foreign = log.events_after(500, 10);
        assert!(foreign.truncated);
        assert_eq!(foreign.events.len(), 3);
        assert!(log.events_after(u64::MAX, 10).truncated, "no overflow");
    }

    #[test]
    fn an_open_decision_outlives_closed_ones_in_a_full_log() {
        let mut log = DecisionLog::new(2);
        let open = log.record(proposal(1), Mode::Approve, DecisionStatus::Proposed, 1);
        log.record(proposal(2), Mode::DryRun, DecisionStatus::DryRun, 1);
        log.record(proposal(3), Mode::DryRun, DecisionStatus::DryRun, 1);
        assert!(log.get(open.id).is_some(), "still there to end");
        assert!(log
            .update(open.id, DecisionStatus::Rejected, None, None, 2)
            .is_some());
    }
}
