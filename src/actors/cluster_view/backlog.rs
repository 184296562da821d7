//! How far behind ClusterView's view of the heartbeats is. Sessions read each stream as it comes,
//! but ClusterView takes the reports one at a time from one mailbox; when 10,000 streams
//! reconnect at once (or a failover's results arrive with the heartbeats) reports wait there for
//! seconds. A node whose report is still in the mailbox has not been silent: its failure
//! detector is judged at the time up to which reports have been taken, not at the wall clock,
//! or a backlog alone declares live nodes dead and fails them over. Pure: clocks are passed in.

use std::time::{Duration, Instant};

/// A backlog measured this long ago no longer says anything (nothing was reported since:
/// the nodes are silent, which is what the detector must see).
const FRESH_FOR: Duration = Duration::from_secs(1);

/// The lag of the last report ClusterView took.
#[derive(Clone, Copy, Debug, Default)]
pub struct Backlog {
    /// When it took it, and how long it had waited since the session received it.
    last: Option<(Instant, Duration)>,
}

impl Backlog {
    /// A report received by its session at `received_at` was taken at `now`.
    pub fn taken(&mut self, received_at: Instant, now: Instant) {
        self.last = Some((now, now.saturating_duration_since(received_at)));
    }

    /// When liveness is judged at wall-clock `now`: as of the reports already taken.
    pub fn judge_at(&self, now: Instant) -> Instant {
        match self.last {
            Some((taken_at, lag)) if now.saturating_duration_since(taken_at) < FRESH_FOR => {
                now.checked_sub(lag).unwrap_or(now)
            }
            _ => now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_mailbox_judges_at_the_wall_clock() {
        let now = Instant::now() + Duration::from_secs(10);
        assert_eq!(Backlog::default().judge_at(now), now);
        let mut backlog = Backlog::default();
        backlog.taken(now, now);
        assert_eq!(backlog.judge_at(now), now);
    }

    #[test]
    fn a_backlog_moves_the_judgement_back_by_its_lag() {
        let start = Instant::now();
        let mut backlog = Backlog::default();
        // A report received at 10 s was taken at 13 s: 3 s of reports still wait behind it.
        backlog.taken(
            start + Duration::from_secs(10),
            start + Duration::from_secs(13),
        );
        let now = start + Duration::from_millis(13_500);
        assert_eq!(backlog.judge_at(now), start + Duration::from_millis(10_500));
    }

    #[test]
    fn a_lag_measured_long_ago_no_longer_holds_silence_back() {
        let start = Instant::now();
        let mut backlog = Backlog::default();
        backlog.taken(start, start + Duration::from_secs(3));
        // Nothing reported for a second since: every node is silent, judge at the wall clock.
        let now = start + Duration::from_secs(4);
        assert_eq!(backlog.judge_at(now), now);
    }
}
