//! Settings: one serde [`Config`], read from a TOML file, then overridden by `METASRV_*`
//! environment variables, then by command-line flags (applied in `main.rs`). Every field has a
//! documented default, so `metasrv start` with nothing else runs standalone.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::failure_detector::FailureDetectorConfig;
use crate::store::etcd::EtcdConfig;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The cluster this metasrv serves; requests for another cluster are refused. Default: 0.
    pub cluster_id: u64,
    /// This replica's id, unique among the metasrv replicas of the cluster. Default: 1.
    pub member_id: u64,
    /// A human-readable name for this replica. Default: `metasrv-{member_id}`.
    pub member_name: Option<String>,
    /// gRPC listen address. Default: `127.0.0.1:3002`.
    pub grpc_addr: SocketAddr,
    /// HTTP listen address (`/health`, `/metrics`). Default: `127.0.0.1:4002`.
    pub http_addr: SocketAddr,
    /// The address clients are told to reach this member at (AskLeader). Default: the bound
    /// gRPC address.
    pub advertise_addr: Option<String>,
    /// The heartbeat interval datanodes are asked to keep. Default: `1s`.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// TTL of the etcd lease behind this member's candidacy: a leader that stops renewing it
    /// (crash, pause, partition) is replaced about this long after. Default: `3s` (long enough
    /// that an etcd leader change lapses no region lease, see the timing rule).
    #[serde(with = "humantime_serde")]
    pub election_lease_ttl: Duration,
    /// Length of the region leases granted on each heartbeat: a datanode stops serving a region
    /// this long after the request whose answer last renewed it. Default: `3s` (three 1 s
    /// heartbeats of slack; shorter than failure detection, so a dead node's leases have lapsed
    /// by the time it is declared dead).
    #[serde(with = "humantime_serde")]
    pub region_lease: Duration,
    /// Regions moved at once by failovers, migrations and drains together. Default: 32.
    pub max_concurrent_failovers: usize,
    /// Extra wait past a dead node's last possible region lease before its regions are served
    /// elsewhere (covers clock rate differences and transit). Default: `500ms`.
    #[serde(with = "humantime_serde")]
    pub failover_safety_margin: Duration,
    /// How long a datanode must stay dead before the follower copies it held are made again
    /// on other nodes (a node that restarts sooner comes back with them). A copy a failover
    /// dropped is made again at once. Default: `10m`.
    #[serde(with = "humantime_serde")]
    pub replica_repair_after: Duration,
    /// How long a datanode has to report the result of an instruction. Default: `10s`.
    #[serde(with = "humantime_serde")]
    pub instruction_timeout: Duration,
    /// How long a datanode may report a region that no route names (and no create or move in
    /// progress explains) before it is told to close it: what a refused or failed create
    /// opened, or a drop the node missed. Must exceed `instruction_timeout` (a create's regions
    /// are unrouted until it commits). Default: `60s`.
    #[serde(with = "humantime_serde")]
    pub orphan_region_grace: Duration,
    /// Threads that run heartbeat sessions. Default: 0, meaning one per CPU core.
    pub session_threads: usize,
    /// Region placement policy: `least_loaded` or `round_robin`. Default: `least_loaded`.
    pub selector: crate::selector::SelectorKind,
    /// The most regions one table's partition rule may give. Default: 1024.
    pub max_regions_per_table: u32,
    /// Stats samples kept per node (at 1 s heartbeats, 300 is five minutes). Default: 300.
    pub node_history: usize,
    /// Reports a region's load average spans (an exponentially weighted average, not a ring:
    /// regions are many). Default: 60.
    pub region_history: usize,
    /// The largest request accepted, in bytes (etcd's default cap). Default: 1572864 (1.5 MiB).
    pub max_request_bytes: usize,
    /// The most keys in one batch or transaction (etcd's default cap). Default: 128.
    pub max_batch_ops: usize,
    /// Where the metadata lives.
    pub store: StoreConfig,
    /// When a silent datanode is suspected and declared dead.
    pub failure_detector: FailureDetectorConfig,
    /// How to reach etcd, when `store.backend = "etcd"`.
    pub etcd: EtcdConfig,
    /// TLS and authentication of metasrv's own listeners (see `src/security/`). Default: none
    /// (plaintext, open: a standalone metasrv needs no setup, and says so at startup).
    pub security: crate::security::SecurityConfig,
    /// Load-aware rebalancing and the Autoadmin (the Central Nervous System).
    pub cns: crate::cns::CnsConfig,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A durable single-file store under `store.data_dir`: one machine, no setup.
    Embedded,
    /// An etcd cluster (see `[etcd]`).
    Etcd,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `embedded` or `etcd`. Default: `embedded`.
    pub backend: Backend,
    /// Directory of the embedded store. Default: `./data`.
    pub data_dir: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Embedded,
            data_dir: PathBuf::from("./data"),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cluster_id: 0,
            member_id: 1,
            member_name: None,
            // Loopback by default: an operator opts in to exposing the server.
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 3002)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 4002)),
            advertise_addr: None,
            heartbeat_interval: Duration::from_secs(1),
            election_lease_ttl: Duration::from_secs(3),
            region_lease: Duration::from_secs(3),
            failover_safety_margin: Duration::from_millis(500),
            replica_repair_after: Duration::from_secs(600),
            max_concurrent_failovers: 32,
            instruction_timeout: Duration::from_secs(10),
            orphan_region_grace: Duration::from_secs(60),
            session_threads: 0,
            selector: crate::selector::SelectorKind::LeastLoaded,
            max_regions_per_table: 1024,
            node_history: 300,
            region_history: 60,
            max_request_bytes: 1536 * 1024,
            max_batch_ops: 128,
            store: StoreConfig::default(),
            failure_detector: FailureDetectorConfig::default(),
            etcd: EtcdConfig::default(),
            security: crate::security::SecurityConfig::default(),
            cns: crate::cns::CnsConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("environment variable {name}={value:?} is invalid: {reason}")]
    Env {
        name: String,
        value: String,
        reason: String,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    pub fn from_toml_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// The name of this replica, derived from its id when not set.
    pub fn member_name(&self) -> String {
        self.member_name
            .clone()
            .unwrap_or_else(|| format!("metasrv-{}", self.member_id))
    }

    /// Applies `METASRV_*` variables from `vars` (normally `std::env::vars()`). Unknown
    /// `METASRV_*` names are refused so that a typo does not go unnoticed.
    pub fn apply_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        for (name, value) in vars {
            let Some(field) = name.strip_prefix("METASRV_") else {
                continue;
            };
            let bad = |reason: &dyn std::fmt::Display| ConfigError::Env {
                name: name.clone(),
                value: value.clone(),
                reason: reason.to_string(),
            };
            fn parse<T: std::str::FromStr>(value: &str) -> Result<T, String>
            where
                T::Err: std::fmt::Display,
            {
                value.parse().map_err(|e: T::Err| e.to_string())
            }
            let duration = |v: &str| humantime::parse_duration(v).map_err(|e| e.to_string());
            let optional = |v: &str| (!v.is_empty()).then(|| v.to_owned());
            match field {
                "CLUSTER_ID" => self.cluster_id = parse(&value).map_err(|e| bad(&e))?,
                "MEMBER_ID" => self.member_id = parse(&value).map_err(|e| bad(&e))?,
                "MEMBER_NAME" => self.member_name = optional(&value),
                "GRPC_ADDR" => self.grpc_addr = parse(&value).map_err(|e| bad(&e))?,
                "HTTP_ADDR" => self.http_addr = parse(&value).map_err(|e| bad(&e))?,
                "HEARTBEAT_INTERVAL" => {
                    self.heartbeat_interval = duration(&value).map_err(|e| bad(&e))?
                }
                "ADVERTISE_ADDR" => self.advertise_addr = optional(&value),
                "ELECTION_LEASE_TTL" => {
                    self.election_lease_ttl = duration(&value).map_err(|e| bad(&e))?
                }
                "MAX_CONCURRENT_FAILOVERS" => {
                    self.max_concurrent_failovers = parse(&value).map_err(|e| bad(&e))?
                }
                "FAILOVER_SAFETY_MARGIN" => {
                    self.failover_safety_margin = duration(&value).map_err(|e| bad(&e))?
                }
                "REPLICA_REPAIR_AFTER" => {
                    self.replica_repair_after = duration(&value).map_err(|e| bad(&e))?
                }
                "REGION_LEASE" => self.region_lease = duration(&value).map_err(|e| bad(&e))?,
                "INSTRUCTION_TIMEOUT" => {
                    self.instruction_timeout = duration(&value).map_err(|e| bad(&e))?
                }
                "ORPHAN_REGION_GRACE" => {
                    self.orphan_region_grace = duration(&value).map_err(|e| bad(&e))?
                }
                "SELECTOR" => {
                    self.selector =
                        <crate::selector::SelectorKind as clap::ValueEnum>::from_str(&value, true)
                            .map_err(|e| bad(&e))?
                }
                "MAX_REGIONS_PER_TABLE" => {
                    self.max_regions_per_table = parse(&value).map_err(|e| bad(&e))?
                }
                "SESSION_THREADS" => self.session_threads = parse(&value).map_err(|e| bad(&e))?,
                "PHI_THRESHOLD" => {
                    self.failure_detector.threshold = parse(&value).map_err(|e| bad(&e))?
                }
                "PHI_SUSPECT_THRESHOLD" => {
                    self.failure_detector.suspect_threshold = parse(&value).map_err(|e| bad(&e))?
                }
                "ACCEPTABLE_HEARTBEAT_PAUSE" => {
                    self.failure_detector.acceptable_heartbeat_pause =
                        duration(&value).map_err(|e| bad(&e))?
                }
                "MIN_STD_DEVIATION" => {
                    self.failure_detector.min_std_deviation =
                        duration(&value).map_err(|e| bad(&e))?
                }
                "MAX_REQUEST_BYTES" => {
                    self.max_request_bytes = parse(&value).map_err(|e| bad(&e))?
                }
                "MAX_BATCH_OPS" => self.max_batch_ops = parse(&value).map_err(|e| bad(&e))?,
                "STORE_BACKEND" | "BACKEND" => {
                    self.store.backend =
                        <Backend as clap::ValueEnum>::from_str(&value, true).map_err(|e| bad(&e))?
                }
                "DATA_DIR" | "STORE_DATA_DIR" => self.store.data_dir = PathBuf::from(&value),
                "ETCD_ENDPOINTS" => {
                    self.etcd.endpoints = value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                }
                "ETCD_KEY_PREFIX" => self.etcd.key_prefix = value.clone(),
                "ETCD_USERNAME" => self.etcd.username = optional(&value),
                "ETCD_PASSWORD" => self.etcd.password = optional(&value),
                "ETCD_TLS_CA" => self.etcd.tls_ca = optional(&value).map(PathBuf::from),
                "ETCD_TLS_CERT" => self.etcd.tls_cert = optional(&value).map(PathBuf::from),
                "ETCD_TLS_KEY" => self.etcd.tls_key = optional(&value).map(PathBuf::from),
                "ETCD_TLS_DOMAIN" => self.etcd.tls_domain = optional(&value),
                "ETCD_REQUEST_TIMEOUT" => {
                    self.etcd.request_timeout = duration(&value).map_err(|e| bad(&e))?
                }
                "TLS_CERT" => self.security.tls_cert = optional(&value).map(PathBuf::from),
                "TLS_KEY" => self.security.tls_key = optional(&value).map(PathBuf::from),
                "TLS_CLIENT_CA" => {
                    self.security.tls_client_ca = optional(&value).map(PathBuf::from)
                }
                "ETCD_ELECTION_TIMEOUT" => {
                    self.etcd.election_timeout = duration(&value).map_err(|e| bad(&e))?
                }
                "ETCD_CONNECT_TIMEOUT" => {
                    self.etcd.connect_timeout = duration(&value).map_err(|e| bad(&e))?
                }
                "CNS_MODE" => {
                    self.cns.mode = crate::cns::decisions::Mode::parse(&value)
                        .ok_or_else(|| bad(&"expected auto, dry-run or approve"))?
                }
                "CNS_INTERVAL" => self.cns.interval = duration(&value).map_err(|e| bad(&e))?,
                "CNS_SETTLE" => self.cns.settle = duration(&value).map_err(|e| bad(&e))?,
                "CNS_COOLDOWN" => self.cns.cooldown = duration(&value).map_err(|e| bad(&e))?,
                "CNS_TOLERANCE" => self.cns.tolerance = parse(&value).map_err(|e| bad(&e))?,
                // Read by the logger, not part of Config.
                "LOG" => {}
                _ => return Err(bad(&"unknown METASRV_ variable")),
            }
        }
        Ok(())
    }

    /// The timing rule that ties the heartbeat interval H, the region lease R and the election
    /// TTL T (README, "The timing rule"):
    /// 1. `R >= 2H`: a region lease outlives one lost heartbeat.
    /// 2. On etcd, `R - 2H + T/2 >= 2 x etcd.election_timeout`. A leader whose election lease
    ///    renewals fail grants nothing from 5/6 T after its last renewal; renewals are T/3 apart,
    ///    so an etcd outage of E withholds grants for at most E - T/2. A datanode's last lease
    ///    before that was asked for up to one heartbeat earlier, and its next grant comes up to
    ///    one heartbeat after, so its lease survives if E - T/2 < R - 2H. An etcd leader change
    ///    takes up to twice etcd's election timeout.
    ///
    /// (Streams are closed only after 4T/3 without a renewal, so such an outage closes none.
    /// Region failover never depends on these figures: a new leader waits one region lease plus
    /// the margin after its term starts.)
    pub fn check_timing_rule(&self) -> Result<(), ConfigError> {
        let (heartbeat, lease, ttl) = (
            self.heartbeat_interval,
            self.region_lease,
            self.election_lease_ttl,
        );
        if lease < heartbeat * 2 {
            return Err(ConfigError::Invalid(format!(
                "region_lease ({lease:?}) must be at least two heartbeat_interval ({heartbeat:?}): \
                 a region lease must outlive one lost heartbeat"
            )));
        }
        if self.store.backend == Backend::Etcd {
            let ridden_out = lease - heartbeat * 2 + ttl / 2;
            let leader_change = self.etcd.election_timeout * 2;
            if ridden_out < leader_change {
                return Err(ConfigError::Invalid(format!(
                    "timing rule: region_lease - 2 x heartbeat_interval + election_lease_ttl / 2 \
                     ({ridden_out:?}) must be at least twice etcd.election_timeout \
                     ({leader_change:?}), or an etcd leader change lets region leases lapse \
                     cluster-wide; raise region_lease or election_lease_ttl"
                )));
            }
        }
        Ok(())
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval.is_zero() {
            return Err(ConfigError::Invalid(
                "heartbeat_interval must be positive".into(),
            ));
        }
        if self.election_lease_ttl < Duration::from_secs(1) {
            return Err(ConfigError::Invalid(
                "election_lease_ttl must be at least 1s (etcd leases count whole seconds)".into(),
            ));
        }
        self.check_timing_rule()?;
        // A dead node's followers are replaced only once its leases surely lapsed and it had
        // a chance to come back; shorter would copy regions on every blip.
        if self.replica_repair_after < self.region_lease {
            return Err(ConfigError::Invalid(format!(
                "replica_repair_after ({:?}) must be at least region_lease ({:?})",
                self.replica_repair_after, self.region_lease
            )));
        }
        if self.instruction_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "instruction_timeout must be positive".into(),
            ));
        }
        if self.orphan_region_grace <= self.instruction_timeout {
            return Err(ConfigError::Invalid(format!(
                "orphan_region_grace ({:?}) must exceed instruction_timeout ({:?}): a create's \
                 regions are unrouted until it commits",
                self.orphan_region_grace, self.instruction_timeout
            )));
        }
        self.security.validate().map_err(ConfigError::Invalid)?;
        self.cns.check().map_err(ConfigError::Invalid)?;
        let detector = &self.failure_detector;
        if detector.min_std_deviation.is_zero() {
            return Err(ConfigError::Invalid(
                "failure_detector.min_std_deviation must be positive".into(),
            ));
        }
        if !(detector.suspect_threshold > 0.0 && detector.suspect_threshold <= detector.threshold) {
            return Err(ConfigError::Invalid(format!(
                "failure_detector: need 0 < suspect_threshold ({}) <= threshold ({})",
                detector.suspect_threshold, detector.threshold
            )));
        }
        if self.max_request_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "max_request_bytes must be at least 1024".into(),
            ));
        }
        if self.max_batch_ops == 0 {
            return Err(ConfigError::Invalid(
                "max_batch_ops must be positive".into(),
            ));
        }
        if self.store.backend == Backend::Etcd && self.etcd.endpoints.is_empty() {
            return Err(ConfigError::Invalid(
                "the etcd backend needs at least one endpoint".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_timing_rule_is_checked() {
        let defaults = Config::default();
        defaults.validate().expect("the defaults keep the rule");
        let etcd = |region_lease: u64, heartbeat: u64, ttl: u64| Config {
            region_lease: Duration::from_millis(region_lease),
            heartbeat_interval: Duration::from_millis(heartbeat),
            election_lease_ttl: Duration::from_millis(ttl),
            store: StoreConfig {
                backend: Backend::Etcd,
                ..StoreConfig::default()
            },
            ..Config::default()
        };
        etcd(3_000, 1_000, 3_000)
            .validate()
            .expect("the defaults on etcd");
        etcd(3_000, 1_000, 2_000)
            .validate()
            .expect("exactly on the bound");
        let lost_heartbeat = etcd(1_500, 1_000, 3_000)
            .validate()
            .expect_err("1.5 heartbeats");
        assert!(lost_heartbeat
            .to_string()
            .contains("two heartbeat_interval"));
        let hiccup = etcd(3_000, 1_000, 1_000)
            .validate()
            .expect_err("a short TTL");
        assert!(
            hiccup.to_string().contains("etcd leader change"),
            "{hiccup}"
        );
        // The embedded store has no election lease.
        Config {
            election_lease_ttl: Duration::from_secs(5),
            ..Config::default()
        }
        .validate()
        .expect("no election TTL on the embedded store");
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let config: Config = toml::from_str("").expect("empty toml parses");
        assert_eq!(config, Config::default());
        assert_eq!(config.store.backend, Backend::Embedded);
        assert_eq!(config.member_name(), "metasrv-1");
    }

    #[test]
    fn a_file_sets_nested_fields_and_durations() {
        let config: Config = toml::from_str(
            r#"
            cluster_id = 7
            heartbeat_interval = "250ms"
            [store]
            backend = "etcd"
            [etcd]
            endpoints = ["127.0.0.1:1", "127.0.0.1:2"]
            request_timeout = "2s"
            "#,
        )
        .expect("valid toml");
        assert_eq!(config.cluster_id, 7);
        assert_eq!(config.heartbeat_interval, Duration::from_millis(250));
        assert_eq!(config.store.backend, Backend::Etcd);
        assert_eq!(config.etcd.endpoints.len(), 2);
        assert_eq!(config.etcd.request_timeout, Duration::from_secs(2));
        assert_eq!(config.etcd.key_prefix, "/metasrv");
    }

    #[test]
    fn replica_repair_waits_at_least_a_region_lease() {
        let mut config = Config::default();
        config
            .apply_env(vars(&[("METASRV_REPLICA_REPAIR_AFTER", "2m")]))
            .expect("valid env");
        assert_eq!(config.replica_repair_after, Duration::from_secs(120));
        assert!(config.validate().is_ok());
        config.replica_repair_after = config.region_lease / 2;
        let refused = config.validate().expect_err("shorter than a lease");
        assert!(
            refused.to_string().contains("replica_repair_after"),
            "{refused}"
        );
    }

    #[test]
    fn unknown_fields_in_the_file_are_refused() {
        assert!(toml::from_str::<Config>("grpc_adr = \"x\"").is_err());
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut config = Config::default();
        config
            .apply_env(vars(&[
                ("METASRV_CLUSTER_ID", "9"),
                ("METASRV_STORE_BACKEND", "etcd"),
                ("METASRV_ETCD_ENDPOINTS", "a:1, b:2"),
                ("METASRV_HEARTBEAT_INTERVAL", "3s"),
                ("PATH", "/bin"),
            ]))
            .expect("valid env");
        assert_eq!(config.cluster_id, 9);
        assert_eq!(config.store.backend, Backend::Etcd);
        assert_eq!(config.etcd.endpoints, vec!["a:1", "b:2"]);
        assert_eq!(config.heartbeat_interval, Duration::from_secs(3));
    }

    #[test]
    fn bad_or_unknown_environment_variables_are_refused_with_their_name() {
        let err = Config::default()
            .apply_env(vars(&[("METASRV_CLUSTER_ID", "seven")]))
            .expect_err("not a number");
        assert!(err.to_string().contains("METASRV_CLUSTER_ID"), "{err}");
        let err = Config::default()
            .apply_env(vars(&[("METASRV_GRPC_ADR", "x")]))
            .expect_err("typo");
        assert!(err.to_string().contains("unknown"), "{err}");
    }
}
