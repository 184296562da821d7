//! Load a simulated datanode reports: a [`Workload`] says what each region is asked per second
//! (read and write units, CPU time, bytes scanned), and the node reports it for the regions it
//! leads, with a CPU usage that follows (the CPU its regions used, over its cores and speed).
//! So load moves with leadership: a region migrated to another node takes its load along, which
//! is what the CNS scenarios watch. [`LoadModel`] is a workload a scenario changes as it runs
//! (a table turns hot, reads get heavier).

use std::collections::HashMap;

use parking_lot::RwLock;

/// What a region is asked per second.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RegionDemand {
    pub rcus: f64,
    pub wcus: f64,
    /// CPU milliseconds per second on a node of speed 1.
    pub cpu_ms: f64,
    pub scanned_bytes: f64,
}

impl RegionDemand {
    pub fn scaled(self, factor: f64) -> Self {
        Self {
            rcus: self.rcus * factor,
            wcus: self.wcus * factor,
            cpu_ms: self.cpu_ms * factor,
            scanned_bytes: self.scanned_bytes * factor,
        }
    }
}

/// The demand on each region, as the scenario has it now.
pub trait Workload: Send + Sync + 'static {
    fn demand(&self, region_id: u64) -> RegionDemand;
}

/// So that a node's configuration, which holds one, can be printed.
impl std::fmt::Debug for dyn Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Workload")
    }
}

/// A workload set per table (every region of a table alike) and per region (overrides), that a
/// scenario changes while it runs.
#[derive(Default)]
pub struct LoadModel {
    tables: RwLock<HashMap<u64, RegionDemand>>,
    regions: RwLock<HashMap<u64, RegionDemand>>,
}

impl LoadModel {
    /// Every region of table `table_id` (region ids `table_id << 32 | n`) is asked `demand`.
    pub fn set_table(&self, table_id: u64, demand: RegionDemand) {
        self.tables.write().insert(table_id, demand);
    }

    /// Region `region_id` is asked `demand`, whatever its table's.
    pub fn set_region(&self, region_id: u64, demand: RegionDemand) {
        self.regions.write().insert(region_id, demand);
    }
}

impl Workload for LoadModel {
    fn demand(&self, region_id: u64) -> RegionDemand {
        if let Some(demand) = self.regions.read().get(&region_id) {
            return *demand;
        }
        self.tables
            .read()
            .get(&crate::catalog::model::table_of_region(region_id))
            .copied()
            .unwrap_or_default()
    }
}
