//! `metasrv ctl`: every read and every action an operator needs, from one command, against the
//! members' HTTP API (and the Store API over gRPC for `kv`). Output is aligned tables, or JSON
//! with `--output json`. It takes several members (`--endpoints`) and follows the leader; errors
//! say what to do next.

mod commands;
mod decisions;
mod http;
mod output;

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

use crate::client::ClientSecurity;
use http::{Answer, HttpClient};

#[derive(Args, Debug, Clone)]
pub struct CtlArgs {
    /// Members' HTTP addresses (host:port), comma separated; the leader is found from any.
    #[arg(
        long,
        value_delimiter = ',',
        env = "METASRV_ENDPOINTS",
        default_value = "127.0.0.1:4002"
    )]
    pub endpoints: Vec<String>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// PEM CA of the members' certificates: talk TLS.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// PEM client certificate (with --key), for members that require one.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// The name in the members' certificates [default: the endpoint's host].
    #[arg(long)]
    pub domain: Option<String>,
    /// A bearer token (better in METASRV_TOKEN: flags show in `ps`).
    #[arg(long, env = "METASRV_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The cluster id (for `kv`, which speaks gRPC).
    #[arg(long, default_value_t = 0)]
    pub cluster_id: u64,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Subcommand, Debug, Clone)]
pub enum CtlCommand {
    /// Members, who leads and in which term, the backend, health.
    Status,
    /// Datanodes: address, state, phi, load, regions led and followed.
    Nodes,
    /// Tables: id, regions, copies, and how their leaders spread over the nodes.
    Tables,
    /// One table's route: every region with its leader and followers.
    Route {
        /// catalog.schema.table, or schema.table, or table (defaults: greptime, public).
        table: String,
    },
    /// Procedures, running and recent, with their latest steps.
    Procedures {
        /// Show every step line, not only the last.
        #[arg(long)]
        steps: bool,
    },
    /// Shows maintenance mode, or turns it on or off (automatic failover paused while on).
    Maintenance {
        #[arg(value_enum)]
        mode: Option<OnOff>,
    },
    /// The Autoadmin's decisions (why regions moved, what it recommends), approval, its mode.
    Decisions {
        #[command(subcommand)]
        action: DecisionAction,
    },
    /// Leadership: `leader resign` hands it to another member.
    Leader {
        #[command(subcommand)]
        action: LeaderAction,
    },
    /// The user key space of the Store API.
    Kv {
        #[command(subcommand)]
        action: KvAction,
    },
    /// Moves a region's leader to another node (open there, downgrade, upgrade, route, close).
    MigrateRegion {
        region_id: u64,
        /// The node to move it to.
        #[arg(long)]
        to: u64,
        /// Answer at once with the procedure instead of waiting for it to finish.
        #[arg(long)]
        no_wait: bool,
    },
    /// Makes one of a region's followers its leader (the old leader stays a follower).
    TransferLeader {
        region_id: u64,
        #[arg(long)]
        to: u64,
        #[arg(long)]
        no_wait: bool,
    },
    /// Moves every region copy off a node, with a progress bar until done. The node stays
    /// cordoned afterwards (see `uncordon-node`).
    DrainNode {
        node_id: u64,
        #[arg(long)]
        no_wait: bool,
    },
    /// Keeps new regions off a node (placement, failovers, migrations, the CNS) until
    /// uncordoned; its own regions stay. Survives leader changes.
    CordonNode {
        node_id: u64,
        /// Why (shown by `nodes`).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lets a cordoned (or drained) node take new regions again.
    UncordonNode { node_id: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Subcommand, Debug, Clone)]
pub enum DecisionAction {
    /// Newest first.
    List {
        /// Only decisions that move this region.
        #[arg(long)]
        region: Option<u64>,
        /// Only decisions in this status (proposed, executing, succeeded, failed, dry_run, ...).
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Carries out a decision awaiting approval.
    Approve { id: u64 },
    /// Refuses a decision awaiting approval.
    Reject { id: u64 },
    /// Shows the mode, or sets it: auto, dry-run or approve.
    Mode {
        #[arg(value_enum)]
        mode: Option<crate::cns::decisions::Mode>,
    },
    /// Runs the planners now and shows their decisions.
    Plan,
}

#[derive(Subcommand, Debug, Clone)]
pub enum LeaderAction {
    /// Who leads.
    Show,
    /// The leader steps down; another member takes over if one is campaigning.
    Resign,
}

#[derive(Subcommand, Debug, Clone)]
pub enum KvAction {
    Get {
        key: String,
    },
    Put {
        key: String,
        value: String,
    },
    /// Keys from `key` (inclusive) to `--end` (exclusive), or every key under `--prefix`.
    Range {
        key: String,
        #[arg(long, conflicts_with = "prefix")]
        end: Option<String>,
        #[arg(long)]
        prefix: bool,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    Delete {
        key: String,
        /// Every key under `key`.
        #[arg(long)]
        prefix: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Bad flags or arguments.
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach metasrv: {0}")]
    Unreachable(String),
    /// metasrv refused or failed the request; the message says why and what to do.
    #[error("{0}")]
    Refused(String),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

/// A member as `/v1/leader` and `/v1/members` name it.
#[derive(Clone, Debug, serde::Deserialize)]
struct Member {
    id: u64,
    name: String,
    grpc_addr: String,
    http_addr: String,
}

/// `addr` as a client can dial it: an unspecified host (a member listening on every address)
/// becomes the host of `via`, the endpoint that named it.
fn reachable(addr: &str, via: &str) -> String {
    let Ok(socket) = addr.parse::<std::net::SocketAddr>() else {
        return addr.to_owned();
    };
    if !socket.ip().is_unspecified() {
        return addr.to_owned();
    }
    let host = via.rsplit_once(':').map_or(via, |(host, _)| host);
    format!("{host}:{}", socket.port())
}

/// The connection settings shared by every command.
struct Ctl {
    endpoints: Vec<String>,
    http: HttpClient,
    format: OutputFormat,
    cluster_id: u64,
}

/// Runs one command, writing its result to `out` and progress (drain) to `progress`.
pub async fn run(
    args: CtlArgs,
    out: &mut dyn Write,
    progress: &mut dyn Write,
) -> Result<(), CtlError> {
    if args.endpoints.is_empty() {
        return Err(CtlError::Usage("--endpoints names no member".into()));
    }
    let security = ClientSecurity {
        ca: args.ca,
        cert: args.cert,
        key: args.key,
        domain: args.domain,
        token: args.token,
    };
    let ctl = Ctl {
        endpoints: args.endpoints,
        http: HttpClient::new(security)?,
        format: args.output,
        cluster_id: args.cluster_id,
    };
    commands::run(&ctl, args.command, out, progress).await
}

impl Ctl {
    /// The leader, as the first member that knows names it.
    async fn leader(&self) -> Result<Member, CtlError> {
        let mut reasons = Vec::new();
        for endpoint in &self.endpoints {
            match self.http.request("GET", endpoint, "/v1/leader", None).await {
                Ok(answer) if answer.status == 200 => {
                    match serde_json::from_value::<Member>(answer.body["leader"].clone()) {
                        Ok(mut leader) => {
                            // A member bound to 0.0.0.0 names that: reach it the way we reached
                            // the one that answered.
                            leader.http_addr = reachable(&leader.http_addr, endpoint);
                            leader.grpc_addr = reachable(&leader.grpc_addr, endpoint);
                            return Ok(leader);
                        }
                        Err(_) => reasons.push(format!("{endpoint}: knows no leader yet")),
                    }
                }
                Ok(answer) => return Err(self.refusal(endpoint, &answer)),
                Err(e) => reasons.push(e.to_string()),
            }
        }
        Err(CtlError::Unreachable(format!(
            "no member named a leader ({}); check --endpoints, or wait for an election",
            reasons.join("; ")
        )))
    }

    /// A request to the leader; a member that says it no longer leads sends us to the one
    /// that does (once).
    async fn on_leader(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CtlError> {
        let mut leader = self.leader().await?;
        let mut asked_again = false;
        loop {
            let answer = self
                .http
                .request(method, &leader.http_addr, path, body)
                .await?;
            if (200..300).contains(&answer.status) {
                return Ok(answer.body);
            }
            // Not (or no longer) the leader, or unsure of it: ask once more who leads.
            if answer.status == 503 && !asked_again {
                asked_again = true;
                leader = self.leader().await?;
                continue;
            }
            return Err(self.refusal(&leader.http_addr, &answer));
        }
    }

    /// What a refusal means for the operator, with what to do.
    fn refusal(&self, endpoint: &str, answer: &Answer) -> CtlError {
        let message = answer.message();
        CtlError::Refused(match answer.status {
            401 => format!(
                "{endpoint} wants credentials ({message}): pass --token (or METASRV_TOKEN), or a \
                 client certificate with --cert and --key"
            ),
            403 => format!("{endpoint} refused: {message}"),
            503 if message.contains("not the leader") => format!(
                "not the leader: {message}; add that member to --endpoints, or retry once the \
                 election settles"
            ),
            _ => format!("{endpoint} answered {}: {message}", answer.status),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::reachable;

    #[test]
    fn unspecified_hosts_are_reached_through_the_answering_endpoint() {
        assert_eq!(reachable("0.0.0.0:4002", "10.0.0.7:4002"), "10.0.0.7:4002");
        assert_eq!(reachable("[::]:3002", "db-1.prod:4002"), "db-1.prod:3002");
        assert_eq!(reachable("10.0.0.8:4002", "10.0.0.7:4002"), "10.0.0.8:4002");
        assert_eq!(reachable("meta-2:4002", "10.0.0.7:4002"), "meta-2:4002");
    }
}
