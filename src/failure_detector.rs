//! The phi-accrual failure detector (Hayashibara et al.), as Akka and Cassandra use it: instead of
//! a yes/no timeout it gives a suspicion level `phi` that grows the longer a heartbeat is overdue,
//! scaled by how regular the node's heartbeats have been. Pure and clock-free: callers pass times.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Tuning of the detector. The defaults suit 1 s heartbeats: a node that stops is suspected after
/// about 2.5 s and declared dead after about 3.5 s of silence.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FailureDetectorConfig {
    /// phi at which a node is declared dead. Default: 8 (a false positive chance of ~1e-8
    /// under the model).
    pub threshold: f64,
    /// phi at which a node is suspected (reported, nothing is moved yet). Default: 3.
    pub suspect_threshold: f64,
    /// A floor under the measured standard deviation, so that very regular heartbeats do not
    /// make the detector trigger on tiny delays. Default: 100ms.
    #[serde(with = "humantime_serde")]
    pub min_std_deviation: Duration,
    /// Extra silence tolerated on top of the mean interval (GC pauses, network blips).
    /// Default: 2s.
    #[serde(with = "humantime_serde")]
    pub acceptable_heartbeat_pause: Duration,
    /// How many recent intervals the statistics use. Default: 100.
    pub max_sample_size: usize,
}

impl Default for FailureDetectorConfig {
    fn default() -> Self {
        Self {
            threshold: 8.0,
            suspect_threshold: 3.0,
            min_std_deviation: Duration::from_millis(100),
            acceptable_heartbeat_pause: Duration::from_secs(2),
            max_sample_size: 100,
        }
    }
}

/// The detector of one node. Times are milliseconds on any monotonic clock.
#[derive(Clone, Debug)]
pub struct PhiAccrualDetector {
    intervals: VecDeque<f64>,
    sum: f64,
    sum_of_squares: f64,
    last_heartbeat_ms: Option<f64>,
    max_sample_size: usize,
    min_std_deviation_ms: f64,
    acceptable_pause_ms: f64,
}

impl PhiAccrualDetector {
    /// A detector seeded with the expected interval, so that a node that sends one heartbeat and
    /// stops is still detected.
    pub fn new(config: &FailureDetectorConfig, expected_interval: Duration) -> Self {
        let mut detector = Self {
            intervals: VecDeque::with_capacity(config.max_sample_size.max(2)),
            sum: 0.0,
            sum_of_squares: 0.0,
            last_heartbeat_ms: None,
            max_sample_size: config.max_sample_size.max(2),
            min_std_deviation_ms: config.min_std_deviation.as_secs_f64() * 1000.0,
            acceptable_pause_ms: config.acceptable_heartbeat_pause.as_secs_f64() * 1000.0,
        };
        // Bootstrap with two samples at the expected interval +- 10%: a narrow prior, so that a
        // node which fails soon after (re)registering is detected about as fast as one with a
        // long regular history (Akka's +- 25% made that up to ~1 s slower at 1 s heartbeats).
        let mean = expected_interval.as_secs_f64() * 1000.0;
        detector.record_interval(mean - mean / 10.0);
        detector.record_interval(mean + mean / 10.0);
        detector
    }

    fn record_interval(&mut self, interval_ms: f64) {
        if self.intervals.len() == self.max_sample_size {
            if let Some(old) = self.intervals.pop_front() {
                self.sum -= old;
                self.sum_of_squares -= old * old;
            }
        }
        self.intervals.push_back(interval_ms);
        self.sum += interval_ms;
        self.sum_of_squares += interval_ms * interval_ms;
    }

    /// Records a heartbeat that arrived at `now_ms`.
    pub fn heartbeat(&mut self, now_ms: f64) {
        if let Some(last) = self.last_heartbeat_ms {
            let interval = now_ms - last;
            if interval >= 0.0 {
                self.record_interval(interval);
            }
        }
        self.last_heartbeat_ms = Some(now_ms);
    }

    pub fn last_heartbeat_ms(&self) -> Option<f64> {
        self.last_heartbeat_ms
    }

    /// The suspicion level at `now_ms`: 0 right after a heartbeat, growing with silence.
    pub fn phi(&self, now_ms: f64) -> f64 {
        let Some(last) = self.last_heartbeat_ms else {
            return 0.0;
        };
        let n = self.intervals.len() as f64;
        let mean = self.sum / n;
        let variance = (self.sum_of_squares / n - mean * mean).max(0.0);
        let std_deviation = variance.sqrt().max(self.min_std_deviation_ms);
        phi(
            now_ms - last,
            mean + self.acceptable_pause_ms,
            std_deviation,
        )
    }
}

/// phi for a silence of `elapsed_ms` given the interval distribution, with the logistic
/// approximation of the normal CDF that Akka uses (error under 0.02% and no overflow).
fn phi(elapsed_ms: f64, mean_ms: f64, std_deviation_ms: f64) -> f64 {
    let y = (elapsed_ms - mean_ms) / std_deviation_ms;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    let p = if elapsed_ms > mean_ms {
        e / (1.0 + e)
    } else {
        1.0 - 1.0 / (1.0 + e)
    };
    // p underflows to 0 for very long silences: cap phi instead of returning infinity.
    if p <= f64::MIN_POSITIVE {
        return f64::MAX_EXP as f64;
    }
    // p rounds to just above 1 when the heartbeat is early: never report a negative phi.
    (-p.log10()).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector() -> PhiAccrualDetector {
        PhiAccrualDetector::new(&FailureDetectorConfig::default(), Duration::from_secs(1))
    }

    /// The first time (ms after the last heartbeat) at which phi reaches `level`.
    fn time_to(detector: &PhiAccrualDetector, last: f64, level: f64) -> f64 {
        (0..100_000)
            .map(|step| last + step as f64)
            .find(|t| detector.phi(*t) >= level)
            .expect("phi reaches the level within 100 s")
            - last
    }

    #[test]
    fn phi_is_low_on_time_and_grows_with_silence() {
        let mut d = detector();
        for i in 0..20 {
            d.heartbeat(i as f64 * 1000.0);
        }
        let last = 19_000.0;
        assert!(
            d.phi(last + 500.0) < 0.1,
            "on time: {}",
            d.phi(last + 500.0)
        );
        assert!(d.phi(last + 2000.0) < d.phi(last + 3000.0));
        assert!(d.phi(last + 3000.0) < d.phi(last + 4000.0));
        assert!(d.phi(last + 60_000.0).is_finite());
    }

    #[test]
    fn default_tuning_declares_a_silent_1s_node_dead_within_4s() {
        let mut d = detector();
        for i in 0..20 {
            d.heartbeat(i as f64 * 1000.0);
        }
        let suspect = time_to(&d, 19_000.0, 3.0);
        let dead = time_to(&d, 19_000.0, 8.0);
        assert!(
            (2_000.0..3_500.0).contains(&suspect),
            "suspect after {suspect} ms"
        );
        assert!((3_000.0..4_000.0).contains(&dead), "dead after {dead} ms");
    }

    #[test]
    fn irregular_heartbeats_widen_the_tolerance() {
        let mut regular = detector();
        let mut jittery = detector();
        let mut t = 0.0;
        for i in 0..50 {
            regular.heartbeat(i as f64 * 1000.0);
            t += if i % 2 == 0 { 400.0 } else { 1600.0 };
            jittery.heartbeat(t);
        }
        let regular_dead = time_to(&regular, 49_000.0, 8.0);
        let jittery_dead = time_to(&jittery, t, 8.0);
        assert!(
            jittery_dead > regular_dead + 1000.0,
            "{jittery_dead} vs {regular_dead}"
        );
    }

    #[test]
    fn a_new_node_is_detected_about_as_fast_as_an_old_one() {
        let mut fresh = detector();
        fresh.heartbeat(0.0);
        fresh.heartbeat(1000.0);
        let mut old = detector();
        for i in 0..50 {
            old.heartbeat(i as f64 * 1000.0);
        }
        let fresh_dead = time_to(&fresh, 1000.0, 8.0);
        let old_dead = time_to(&old, 49_000.0, 8.0);
        assert!(fresh_dead < old_dead + 300.0, "{fresh_dead} vs {old_dead}");
    }

    #[test]
    fn a_node_that_sent_one_heartbeat_is_still_detected() {
        let mut d = detector();
        d.heartbeat(0.0);
        assert!(d.phi(10_000.0) >= 8.0);
    }
}
