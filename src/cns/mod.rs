//! The Central Nervous System (the seed's last sections): the load unit ([`unit`]), what the
//! planners see ([`snapshot`]), the planners themselves ([`planner`], pure), and the decision
//! log the Autoadmin keeps and streams ([`decisions`]). The Autoadmin actor
//! (`crate::actors::autoadmin`) gathers snapshots, runs the planners each tick and carries out
//! or records what they propose.

pub mod decisions;
pub mod planner;
pub mod snapshot;
pub mod unit;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use decisions::Mode;
use planner::PlanLimits;
use unit::RuPrices;

/// `[cns]`: load-aware rebalancing and the Autoadmin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CnsConfig {
    /// `auto` (carry out moves), `dry-run` (record them only) or `approve` (wait for an
    /// operator). Changed at run time through `PUT /v1/autoadmin` (kept in the store, so a new
    /// leader keeps it). Default: `auto`.
    pub mode: Mode,
    /// How often the planners run. Default: `10s`.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How long a new leader watches before it moves anything: region loads are averages over
    /// reports, and a new term starts them afresh. Default: `60s`.
    #[serde(with = "humantime_serde")]
    pub settle: Duration,
    /// The band around the mean load (and counts) a node may sit in. Default: 0.1.
    pub tolerance: f64,
    /// A region moved is not moved again within this. Default: `5m`.
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    /// Moves in flight per node (source or target). Default: 2.
    pub max_moves_per_node: usize,
    /// Moves in flight in all. Default: 16.
    pub max_moves: usize,
    /// CPU share at which a node's leaders are evicted. Default: 0.9.
    pub overload: f64,
    /// A node whose learned capacity is under this share of the median is slow (its leaders
    /// leave; its replacement is recommended). Default: 0.5.
    pub slow_ratio: f64,
    /// Cluster utilization (RU over learned capacity) over which more datanodes are
    /// recommended, and under which fewer, once it held for `sustain`. Defaults: 0.75, 0.2.
    pub scale_out_at: f64,
    pub scale_in_at: f64,
    /// Default: `5m`.
    #[serde(with = "humantime_serde")]
    pub sustain: Duration,
    /// Liveness changes within `sustain` that make a node flapping. Default: 3.
    pub flap_limit: u32,
    /// A decision awaiting approval expires after this. Default: `10m`.
    #[serde(with = "humantime_serde")]
    pub approval_timeout: Duration,
    /// Decisions (and status changes) kept for `GET /v1/decisions`. Default: 10000.
    pub decisions_kept: usize,
    /// The prices of the request unit.
    pub ru_prices: RuPrices,
}

impl Default for CnsConfig {
    fn default() -> Self {
        let limits = PlanLimits::default();
        Self {
            mode: Mode::Auto,
            interval: Duration::from_secs(10),
            settle: Duration::from_secs(60),
            tolerance: limits.tolerance,
            cooldown: Duration::from_secs(300),
            max_moves_per_node: limits.max_moves_per_node,
            max_moves: limits.max_moves,
            overload: limits.overload,
            slow_ratio: limits.slow_ratio,
            scale_out_at: limits.scale_out_at,
            scale_in_at: limits.scale_in_at,
            sustain: Duration::from_secs(300),
            flap_limit: limits.flap_limit,
            approval_timeout: Duration::from_secs(600),
            decisions_kept: 10_000,
            ru_prices: RuPrices::default(),
        }
    }
}

impl CnsConfig {
    /// The planners' limits.
    pub fn limits(&self) -> PlanLimits {
        PlanLimits {
            tolerance: self.tolerance,
            max_moves_per_node: self.max_moves_per_node,
            max_moves: self.max_moves,
            overload: self.overload,
            slow_ratio: self.slow_ratio,
            scale_out_at: self.scale_out_at,
            scale_in_at: self.scale_in_at,
            sustain_ticks: self.sustain_ticks(),
            flap_limit: self.flap_limit,
            min_mean_ru: PlanLimits::default().min_mean_ru,
        }
    }

    /// Ticks in `sustain`, at least one.
    pub fn sustain_ticks(&self) -> usize {
        (self.sustain.as_secs_f64() / self.interval.as_secs_f64().max(0.001))
            .ceil()
            .max(1.0) as usize
    }

    /// Checks values a typo could make absurd.
    pub fn check(&self) -> Result<(), String> {
        self.ru_prices.check()?;
        if self.interval < Duration::from_millis(10) {
            return Err(format!(
                "cns.interval ({:?}) must be at least 10ms",
                self.interval
            ));
        }
        for (name, value) in [
            ("tolerance", self.tolerance),
            ("overload", self.overload),
            ("slow_ratio", self.slow_ratio),
            ("scale_out_at", self.scale_out_at),
            ("scale_in_at", self.scale_in_at),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(format!("cns.{name} = {value} must be a finite number >= 0"));
            }
        }
        if self.scale_in_at >= self.scale_out_at {
            return Err(format!(
                "cns.scale_in_at ({}) must be under cns.scale_out_at ({})",
                self.scale_in_at, self.scale_out_at
            ));
        }
        if self.max_moves == 0 || self.max_moves_per_node == 0 || self.decisions_kept == 0 {
            return Err(
                "cns.max_moves, cns.max_moves_per_node and cns.decisions_kept must be at least 1"
                    .into(),
            );
        }
        Ok(())
    }
}
