//! The load unit of the Central Nervous System: one request unit (RU) per region and per node,
//! folded from what a heartbeat reports, and each node's capacity in RU learned from its history.
//!
//! The seed measures load in RCU (a 4 KiB read) and WCU (a 1 KiB write). In a time-series
//! database that misdescribes reads: an aggregation over a week of data returns a few rows and
//! burns seconds of CPU. So a region also reports the CPU time of its queries and writes and the
//! bytes it scanned, and one RU prices all three (TiKV's resource-control unit is the model: read
//! bytes, write bytes and CPU milliseconds, each with a price). Two regions with equal RCU but
//! very different CPU per read weigh differently, which is what the planners balance.

use serde::{Deserialize, Serialize};

/// The prices of one request unit. Defaults are TiKV's: 1 RU per 64 KiB read, per KiB written,
/// per 3 ms of CPU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuPrices {
    /// RU per KiB read: the larger of what the reads returned (`rcus` x 4 KiB) and what they
    /// scanned (`scanned_bytes`), so that a datanode that reports only RCU is still priced and
    /// a read is not counted twice. Default: 1/64.
    pub per_read_kib: f64,
    /// RU per KiB written (one WCU). Default: 1.
    pub per_write_kib: f64,
    /// RU per millisecond of CPU time. Default: 1/3.
    pub per_cpu_ms: f64,
}

impl Default for RuPrices {
    fn default() -> Self {
        Self {
            per_read_kib: 1.0 / 64.0,
            per_write_kib: 1.0,
            per_cpu_ms: 1.0 / 3.0,
        }
    }
}

impl RuPrices {
    /// The RU a region used in one report: `rcus` and `wcus` units, `cpu_ms` of CPU and
    /// `scanned_bytes` read from storage.
    pub fn units(&self, rcus: u64, wcus: u64, cpu_ms: u64, scanned_bytes: u64) -> f64 {
        let read_kib = (rcus as f64 * 4.0).max(scanned_bytes as f64 / 1024.0);
        read_kib * self.per_read_kib
            + wcus as f64 * self.per_write_kib
            + cpu_ms as f64 * self.per_cpu_ms
    }

    /// Whether every price is a finite, non-negative number (configuration check).
    pub fn check(&self) -> Result<(), String> {
        for (name, price) in [
            ("per_read_kib", self.per_read_kib),
            ("per_write_kib", self.per_write_kib),
            ("per_cpu_ms", self.per_cpu_ms),
        ] {
            if !price.is_finite() || price < 0.0 {
                return Err(format!(
                    "cns.ru_prices.{name} = {price} must be a finite number >= 0"
                ));
            }
        }
        Ok(())
    }
}

/// The share of a node's CPU a sample used: `cpu_usage` is percent of one core times cores, so
/// a node with `cores` cores is full at `100 x cores` (unknown cores count as one).
pub fn utilization(cpu_usage: f64, cores: f64) -> f64 {
    let cores = if cores.is_finite() && cores > 0.0 {
        cores
    } else {
        1.0
    };
    (cpu_usage / (100.0 * cores)).max(0.0)
}

/// Samples below this utilization say little about capacity: a node's idle overhead (its own
/// heartbeats, compactions) dominates them.
const MIN_UTILIZATION: f64 = 0.05;
/// Samples a capacity is learned from, at least.
pub const MIN_CAPACITY_SAMPLES: usize = 5;

/// A node's capacity in RU per second at full CPU, learned from `(ru_per_second, utilization)`
/// samples of its history: the RU it served over the CPU share it used to serve them. `None`
/// until enough samples show the node working (fewer than [`MIN_CAPACITY_SAMPLES`] at 5% or
/// more): planners then take the node as average.
pub fn learn_capacity(samples: impl IntoIterator<Item = (f64, f64)>) -> Option<f64> {
    let mut tally = CapacityTally::default();
    for (ru, share) in samples {
        tally.add(ru, share);
    }
    tally.capacity()
}

/// The sums [`learn_capacity`] divides, kept as samples come and go: a node's history keeps
/// one, so that a planning round reads each node's capacity without a pass over its history.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CapacityTally {
    served: f64,
    used: f64,
    count: usize,
}

impl CapacityTally {
    fn counts(ru: f64, share: f64) -> bool {
        share >= MIN_UTILIZATION && ru.is_finite() && ru >= 0.0 && share.is_finite()
    }

    pub fn add(&mut self, ru: f64, share: f64) {
        if Self::counts(ru, share) {
            self.served += ru;
            self.used += share;
            self.count += 1;
        }
    }

    /// Takes out a sample [`CapacityTally::add`] put in.
    pub fn remove(&mut self, ru: f64, share: f64) {
        if Self::counts(ru, share) {
            self.count = self.count.saturating_sub(1);
            if self.count == 0 {
                // No rounding left behind.
                *self = Self::default();
            } else {
                self.served -= ru;
                self.used -= share;
            }
        }
    }

    pub fn capacity(&self) -> Option<f64> {
        (self.count >= MIN_CAPACITY_SAMPLES && self.used > 0.0 && self.served > 0.0)
            .then(|| self.served / self.used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_prices_read_bytes_write_bytes_and_cpu() {
        let prices = RuPrices::default();
        // 16 RCU = 64 KiB returned = 1 RU; 2 WCU = 2 RU; 3 ms = 1 RU.
        assert_eq!(prices.units(16, 2, 3, 0), 4.0);
        // A scan larger than what the reads returned is priced by what was scanned; a smaller
        // one is not counted a second time.
        assert_eq!(prices.units(16, 0, 0, 128 * 1024), 2.0);
        assert_eq!(prices.units(16, 0, 0, 1024), 1.0);
    }

    #[test]
    fn equal_read_units_with_different_cpu_weigh_differently() {
        let prices = RuPrices::default();
        let light = prices.units(100, 0, 10, 400 * 1024);
        let heavy = prices.units(100, 0, 300, 400 * 1024);
        assert!(heavy > 10.0 * light, "light {light} heavy {heavy}");
    }

    #[test]
    fn prices_must_be_finite_and_not_negative() {
        let bad = RuPrices {
            per_cpu_ms: -1.0,
            ..RuPrices::default()
        };
        assert!(bad.check().expect_err("refused").contains("per_cpu_ms"));
        assert!(RuPrices::default().check().is_ok());
    }

    #[test]
    fn capacity_is_ru_served_over_cpu_used_once_the_node_worked_enough() {
        assert_eq!(utilization(150.0, 2.0), 0.75);
        assert_eq!(utilization(50.0, 0.0), 0.5, "unknown cores count as one");
        // 1,000 RU/s at half the CPU: 2,000 RU/s at full CPU.
        let working = vec![(1_000.0, 0.5); MIN_CAPACITY_SAMPLES];
        assert_eq!(learn_capacity(working), Some(2_000.0));
        // Idle samples do not count, and too few samples learn nothing.
        let idle = vec![(10.0, 0.01); 100];
        assert_eq!(learn_capacity(idle), None);
        let few = vec![(1_000.0, 0.5); MIN_CAPACITY_SAMPLES - 1];
        assert_eq!(learn_capacity(few), None);
        let mixed = (0..10).map(|i| {
            if i % 2 == 0 {
                (300.0, 0.1)
            } else {
                (900.0, 0.3)
            }
        });
        let capacity = learn_capacity(mixed).expect("learned");
        assert!((capacity - 3_000.0).abs() < 1e-6, "{capacity}");
    }
}
