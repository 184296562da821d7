//! When a new term may start counting the silence of registered nodes it has not heard from.
//!
//! After a takeover every datanode reconnects at once; at 10,000 nodes on a loaded machine the
//! last ones arrive seconds after the first. A node seeded at the term's start that is still
//! queued behind the others is not dead, and failing it over (moving every region it holds)
//! only adds work to the burst that delays it. So the silence of nodes not heard from yet
//! counts only once the reconnections have settled: no node has come back for a grace, or the
//! term is `MAX_HOLD_GRACES` graces old (a steady trickle of arrivals must not hold back the
//! failover of a node that really died before the leader change). Pure: the clock is passed in.

use std::time::{Duration, Instant};

/// The longest the reconnections can hold back a death, in graces from the term's start.
pub const MAX_HOLD_GRACES: u32 = 4;

/// The reconnections of one term.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reconnections {
    /// When the term began serving (None: not leading).
    term_started: Option<Instant>,
    /// When a node this term had not heard from last reached it.
    last_arrival: Option<Instant>,
}

impl Reconnections {
    /// A term begins serving at `now`.
    pub fn term_started(now: Instant) -> Self {
        Self {
            term_started: Some(now),
            last_arrival: None,
        }
    }

    /// A node the term had not heard from reached it at `now`.
    pub fn arrived(&mut self, now: Instant) {
        self.last_arrival = Some(self.last_arrival.map_or(now, |last| last.max(now)));
    }

    /// Whether the silence of a node not heard from yet counts at `now` (`grace`: how long a
    /// seeded node has to come back, see `SeedNodes`).
    pub fn settled(&self, now: Instant, grace: Duration) -> bool {
        let Some(started) = self.term_started else {
            return true;
        };
        let quiet_since = self.last_arrival.map_or(started, |last| last.max(started));
        now >= quiet_since + grace || now >= started + grace * MAX_HOLD_GRACES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(3);

    #[test]
    fn a_quiet_term_counts_silence_after_one_grace() {
        let start = Instant::now();
        let reconnections = Reconnections::term_started(start);
        assert!(!reconnections.settled(start + GRACE - Duration::from_millis(1), GRACE));
        assert!(reconnections.settled(start + GRACE, GRACE));
    }

    #[test]
    fn arrivals_hold_it_until_a_grace_passes_without_one() {
        let start = Instant::now();
        let mut reconnections = Reconnections::term_started(start);
        reconnections.arrived(start + Duration::from_secs(2));
        reconnections.arrived(start + Duration::from_secs(5));
        // An answer delivered late does not move the window back.
        reconnections.arrived(start + Duration::from_secs(4));
        assert!(!reconnections.settled(start + Duration::from_secs(7), GRACE));
        assert!(reconnections.settled(start + Duration::from_secs(8), GRACE));
    }

    #[test]
    fn a_steady_trickle_of_arrivals_holds_it_at_most_four_graces() {
        let start = Instant::now();
        let mut reconnections = Reconnections::term_started(start);
        let mut at = start;
        while at < start + GRACE * 6 {
            reconnections.arrived(at);
            let limit = start + GRACE * MAX_HOLD_GRACES;
            assert_eq!(
                reconnections.settled(at, GRACE),
                at >= limit,
                "at {:?}",
                at - start
            );
            at += Duration::from_millis(500);
        }
    }

    #[test]
    fn a_member_that_does_not_lead_has_nothing_to_hold() {
        assert!(Reconnections::default().settled(Instant::now(), GRACE));
    }
}
