//! What a datanode reports in a heartbeat, as domain types, and the validation that turns a
//! protobuf `HeartbeatRequest` into them. Pure: the `HeartbeatSession` calls [`validate`] and
//! refuses the stream with the returned reason.

use crate::ids::IdSet;
use std::net::SocketAddr;

use serde::Serialize;

use crate::proto::v1 as pb;

/// The most regions one heartbeat may report; more is taken as a broken or hostile sender.
pub const MAX_REGIONS_PER_HEARTBEAT: usize = 100_000;
/// The highest CPU usage believed (percent of one core times cores; 100k% = 1,000 cores).
const MAX_CPU_USAGE: f64 = 100_000.0;

/// Node-level load for one report.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NodeStats {
    pub rcus: u64,
    pub wcus: u64,
    pub table_num: u64,
    pub region_num: u64,
    pub cpu_usage: f64,
    pub load: f64,
    pub read_io_rate: f64,
    pub write_io_rate: f64,
    /// Cores the node may use (0: unknown); `cpu_usage` is full at `100 x cpu_cores`.
    pub cpu_cores: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RegionRole {
    Leader,
    Follower,
}

/// Load and role of one region on the reporting node. The region id names its table (its
/// high 32 bits), so the table name a datanode may send along is not kept: one string per
/// region per heartbeat is the largest cost of a report at a million regions.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RegionStats {
    pub region_id: u64,
    pub rcus: u64,
    pub wcus: u64,
    pub approximate_size: u64,
    pub approximate_rows: u64,
    /// Bytes scanned from storage in the period.
    pub scanned_bytes: u64,
    /// CPU milliseconds spent on the region in the period (saturating: 49 days fit).
    pub cpu_time_ms: u32,
    pub role: RegionRole,
}

/// A follower of one of the reporting node's leader regions.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReplicaStats {
    pub region_id: u64,
    pub peer_id: u64,
    pub in_sync: bool,
    pub is_learner: bool,
}

/// The result of an instruction, as the node reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstructionOutcome {
    pub instruction_id: u64,
    pub success: bool,
    pub error: Option<String>,
}

/// A validated heartbeat.
#[derive(Clone, Debug, PartialEq)]
pub struct Heartbeat {
    pub node_id: u64,
    pub addr: String,
    pub instance_id: String,
    /// The stats; `None` for a request that only carries instruction results (a datanode
    /// answering at once, between its periodic reports): the node's stats stay as they were.
    pub report: Option<StatsReport>,
    pub results: Vec<InstructionOutcome>,
}

/// The stats part of a heartbeat.
#[derive(Clone, Debug, PartialEq)]
pub struct StatsReport {
    pub node: NodeStats,
    /// The period the report covers (from `report_interval`), if the node said: load per
    /// second is the report's units over it.
    pub period_ms: Option<u64>,
    pub regions: Vec<RegionStats>,
    pub replicas: Vec<ReplicaStats>,
}

fn check_rate(name: &str, value: f64, max: f64) -> Result<(), String> {
    if !value.is_finite() || value < 0.0 || value > max {
        return Err(format!(
            "node_stat.{name} = {value} is not a plausible value"
        ));
    }
    Ok(())
}

/// Checks a request from a datanode and converts it. `cluster_id` is this metasrv's cluster.
/// The error is a sentence for the `InvalidArgument` status that closes the stream.
pub fn validate(request: pb::HeartbeatRequest, cluster_id: u64) -> Result<Heartbeat, String> {
    let header = request
        .header
        .ok_or("heartbeat has no header: set header.cluster_id")?;
    if header.cluster_id != cluster_id {
        return Err(format!(
            "heartbeat is for cluster {} but this metasrv serves cluster {cluster_id}",
            header.cluster_id
        ));
    }
    let peer = request
        .peer
        .ok_or("heartbeat has no peer: set peer.id and peer.addr")?;
    if peer.id == 0 {
        return Err("peer.id is 0: datanode ids start at 1".into());
    }
    if peer.addr.is_empty() {
        return Err(format!("peer {} has an empty address", peer.id));
    }
    if !is_host_port(&peer.addr) {
        return Err(format!(
            "peer {} address {:?} is not host:port",
            peer.id, peer.addr
        ));
    }
    if let Some(interval) = &request.report_interval {
        if interval.end_timestamp_millis < interval.start_timestamp_millis {
            return Err("report_interval ends before it starts".into());
        }
    }
    let results = request
        .instruction_results
        .into_iter()
        .map(|r| InstructionOutcome {
            instruction_id: r.instruction_id,
            success: r.success,
            error: (!r.error.is_empty()).then_some(r.error),
        })
        .collect();
    let Some(stat) = request.node_stat else {
        if !request.region_stats.is_empty() || !request.replica_stats.is_empty() {
            return Err("region_stats or replica_stats without node_stat".into());
        }
        return Ok(Heartbeat {
            node_id: peer.id,
            addr: peer.addr,
            instance_id: request.instance_id,
            report: None,
            results,
        });
    };
    check_rate("cpu_usage", stat.cpu_usage, MAX_CPU_USAGE)?;
    check_rate("load", stat.load, f64::MAX)?;
    check_rate("read_io_rate", stat.read_io_rate, f64::MAX)?;
    check_rate("write_io_rate", stat.write_io_rate, f64::MAX)?;
    check_rate("cpu_cores", stat.cpu_cores, MAX_CPU_USAGE / 100.0)?;
    let period_ms = request
        .report_interval
        .map(|interval| interval.end_timestamp_millis - interval.start_timestamp_millis)
        .filter(|&ms| ms > 0);
    if request.region_stats.len() > MAX_REGIONS_PER_HEARTBEAT {
        return Err(format!(
            "heartbeat reports {} regions, over the limit of {MAX_REGIONS_PER_HEARTBEAT}",
            request.region_stats.len()
        ));
    }
    let mut regions: Vec<RegionStats> = Vec::with_capacity(request.region_stats.len());
    // Ids in increasing order (as datanodes list them) cannot repeat: only from the first id
    // out of order on does a set of the ids seen find a repeated one (each error still named
    // at the region where it is).
    let mut seen: Option<IdSet> = None;
    for region in request.region_stats {
        if region.region_id == 0 {
            return Err("region_stats has region_id 0".into());
        }
        let in_order = seen.is_none()
            && regions
                .last()
                .is_none_or(|last| last.region_id < region.region_id);
        if !in_order {
            let seen = seen.get_or_insert_with(|| regions.iter().map(|r| r.region_id).collect());
            if !seen.insert(region.region_id) {
                return Err(format!(
                    "region {} is reported twice in one heartbeat",
                    region.region_id
                ));
            }
        }
        let role = match pb::RegionRole::try_from(region.role) {
            Ok(pb::RegionRole::Leader) => RegionRole::Leader,
            Ok(pb::RegionRole::Follower) => RegionRole::Follower,
            _ => {
                return Err(format!(
                    "region {} has no role: set leader or follower",
                    region.region_id
                ))
            }
        };
        regions.push(RegionStats {
            region_id: region.region_id,
            rcus: region.rcus,
            wcus: region.wcus,
            approximate_size: region.approximate_size,
            approximate_rows: region.approximate_rows,
            scanned_bytes: region.scanned_bytes,
            cpu_time_ms: u32::try_from(region.cpu_time_millis).unwrap_or(u32::MAX),
            role,
        });
    }
    let replicas = request
        .replica_stats
        .into_iter()
        .map(|replica| ReplicaStats {
            region_id: replica.region_id,
            peer_id: replica.peer.map(|p| p.id).unwrap_or_default(),
            in_sync: replica.in_sync,
            is_learner: replica.is_learner,
        })
        .collect();
    Ok(Heartbeat {
        node_id: peer.id,
        addr: peer.addr,
        instance_id: request.instance_id,
        report: Some(StatsReport {
            node: NodeStats {
                rcus: stat.rcus,
                wcus: stat.wcus,
                table_num: stat.table_num,
                region_num: stat.region_num,
                cpu_usage: stat.cpu_usage,
                load: stat.load,
                read_io_rate: stat.read_io_rate,
                write_io_rate: stat.write_io_rate,
                cpu_cores: stat.cpu_cores,
            },
            period_ms,
            regions,
            replicas,
        }),
        results,
    })
}

/// `host:port` with a non-empty host and a numeric port (IP or DNS name).
fn is_host_port(addr: &str) -> bool {
    if addr.parse::<SocketAddr>().is_ok() {
        return true;
    }
    match addr.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && port.parse::<u16>().is_ok()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> pb::HeartbeatRequest {
        pb::HeartbeatRequest {
            header: Some(pb::RequestHeader {
                cluster_id: 1,
                member_id: 7,
            }),
            peer: Some(pb::Peer {
                id: 7,
                addr: "10.0.0.7:4001".into(),
            }),
            node_stat: Some(pb::NodeStat {
                cpu_usage: 50.0,
                load: 1.5,
                ..Default::default()
            }),
            region_stats: vec![pb::RegionStat {
                region_id: 1,
                role: pb::RegionRole::Leader as i32,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_results_only_request_carries_no_report() {
        let mut r = request();
        r.node_stat = None;
        r.region_stats.clear();
        r.instruction_results.push(pb::InstructionResult {
            instruction_id: 9,
            success: true,
            error: String::new(),
        });
        let hb = validate(r, 1).expect("valid");
        assert_eq!(hb.report, None);
        assert_eq!(hb.results[0].instruction_id, 9);
    }

    #[test]
    fn a_good_request_converts() {
        let hb = validate(request(), 1).expect("valid");
        assert_eq!(hb.node_id, 7);
        let report = hb.report.expect("stats");
        assert_eq!(report.regions[0].role, RegionRole::Leader);
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        type Breaker = Box<dyn Fn(&mut pb::HeartbeatRequest)>;
        let cases: Vec<(&str, Breaker)> = vec![
            ("no header", Box::new(|r| r.header = None)),
            (
                "cluster 2",
                Box::new(|r| r.header.as_mut().unwrap().cluster_id = 2),
            ),
            ("no peer", Box::new(|r| r.peer = None)),
            (
                "peer.id is 0",
                Box::new(|r| r.peer.as_mut().unwrap().id = 0),
            ),
            (
                "empty address",
                Box::new(|r| r.peer.as_mut().unwrap().addr.clear()),
            ),
            (
                "not host:port",
                Box::new(|r| r.peer.as_mut().unwrap().addr = "x y".into()),
            ),
            (
                "cpu_usage",
                Box::new(|r| r.node_stat.as_mut().unwrap().cpu_usage = f64::NAN),
            ),
            (
                "load",
                Box::new(|r| r.node_stat.as_mut().unwrap().load = -1.0),
            ),
            ("without node_stat", Box::new(|r| r.node_stat = None)),
            ("region_id 0", Box::new(|r| r.region_stats[0].region_id = 0)),
            (
                "twice",
                Box::new(|r| r.region_stats.push(r.region_stats[0].clone())),
            ),
            (
                // Adjacent repeats break the increasing order too.
                "twice",
                Box::new(|r| r.region_stats.insert(0, r.region_stats[0].clone())),
            ),
            (
                // Named where it is: a repeat before a region without a role.
                "twice",
                Box::new(|r| {
                    let first = r.region_stats[0].clone();
                    r.region_stats.push(first.clone());
                    r.region_stats.push(pb::RegionStat {
                        region_id: first.region_id + 1,
                        role: 0,
                        ..first
                    });
                }),
            ),
            ("no role", Box::new(|r| r.region_stats[0].role = 0)),
            (
                "ends before",
                Box::new(|r| {
                    r.report_interval = Some(pb::TimeInterval {
                        start_timestamp_millis: 10,
                        end_timestamp_millis: 5,
                    })
                }),
            ),
        ];
        for (needle, break_it) in cases {
            let mut r = request();
            break_it(&mut r);
            let reason = validate(r, 1).expect_err(needle);
            assert!(
                reason.contains(needle),
                "{reason:?} should mention {needle:?}"
            );
        }
    }
}
