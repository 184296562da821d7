//! Each `metasrv ctl` command: what it asks, and how it prints the answer.

use std::io::Write;
use std::time::Duration;

use serde_json::{json, Value};

use super::output::{progress_bar, Table};
use super::{Ctl, CtlCommand, CtlError, KvAction, LeaderAction, Member, OnOff, OutputFormat};
use crate::proto::v1 as pb;
use crate::store::prefix_end;

/// How often an operation's progress is read while the CLI waits for it.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

pub(super) async fn run(
    ctl: &Ctl,
    command: CtlCommand,
    out: &mut dyn Write,
    progress: &mut dyn Write,
) -> Result<(), CtlError> {
    match command {
        CtlCommand::Status => status(ctl, out).await,
        CtlCommand::Nodes => nodes(ctl, out).await,
        CtlCommand::Tables => tables(ctl, out).await,
        CtlCommand::Route { table } => route(ctl, &table, out).await,
        CtlCommand::Procedures { steps } => procedures(ctl, steps, out).await,
        CtlCommand::Maintenance { mode } => maintenance(ctl, mode, out).await,
        CtlCommand::Leader { action } => leader(ctl, action, out).await,
        CtlCommand::Decisions { action } => super::decisions::run(ctl, action, out).await,
        CtlCommand::Kv { action } => kv(ctl, action, out).await,
        CtlCommand::MigrateRegion {
            region_id,
            to,
            no_wait,
        } => {
            let path = format!("/v1/regions/{region_id}/migrate?to={to}");
            operation(ctl, &path, !no_wait, out, progress).await
        }
        CtlCommand::TransferLeader {
            region_id,
            to,
            no_wait,
        } => {
            let path = format!("/v1/regions/{region_id}/transfer-leader?to={to}");
            operation(ctl, &path, !no_wait, out, progress).await
        }
        CtlCommand::DrainNode { node_id, no_wait } => {
            let path = format!("/v1/nodes/{node_id}/drain");
            operation(ctl, &path, !no_wait, out, progress).await
        }
        CtlCommand::CordonNode { node_id, reason } => {
            let query = reason.map_or_else(String::new, |r| format!("?reason={}", url_encode(&r)));
            let path = format!("/v1/nodes/{node_id}/cordon{query}");
            cordon(ctl, &path, out).await
        }
        CtlCommand::UncordonNode { node_id } => {
            cordon(ctl, &format!("/v1/nodes/{node_id}/uncordon"), out).await
        }
    }
}

/// Cordons or uncordons a node; prints what holds now.
async fn cordon(ctl: &Ctl, path: &str, out: &mut dyn Write) -> Result<(), CtlError> {
    let answer = ctl.on_leader("POST", path, None).await?;
    if ctl.format == OutputFormat::Json {
        return json_out(out, &answer);
    }
    let node = text(&answer["node_id"]);
    if answer["cordoned"] == true {
        writeln!(
            out,
            "node {node} cordoned ({}): it takes no new regions until uncordoned",
            text(&answer["reason"])
        )?;
    } else {
        writeln!(out, "node {node} uncordoned: it may take new regions")?;
    }
    Ok(())
}

/// Percent-encodes a query value (everything but RFC 3986's unreserved characters).
fn url_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn json_out(out: &mut dyn Write, value: &Value) -> Result<(), CtlError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CtlError::Refused(format!("cannot print the answer: {e}")))?;
    writeln!(out, "{text}")?;
    Ok(())
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `a ago` for a unix-ms instant (`-` for 0 or absent).
fn age(unix_ms: &Value) -> String {
    let Some(then) = unix_ms.as_u64().filter(|ms| *ms > 0) else {
        return "-".into();
    };
    let ms = crate::clock::unix_ms().saturating_sub(then);
    match ms {
        0..=9_999 => format!("{:.1}s ago", ms as f64 / 1000.0),
        10_000..=3_599_999 => format!("{}s ago", ms / 1000),
        _ => format!("{}h ago", ms / 3_600_000),
    }
}

async fn status(ctl: &Ctl, out: &mut dyn Write) -> Result<(), CtlError> {
    // Every member any endpoint knows of, then each asked for itself.
    let mut addresses: Vec<String> = ctl.endpoints.clone();
    for endpoint in &ctl.endpoints {
        if let Ok(answer) = ctl.http.request("GET", endpoint, "/v1/members", None).await {
            if answer.status == 401 || answer.status == 403 {
                return Err(ctl.refusal(endpoint, &answer));
            }
            for member in answer.body["members"].as_array().into_iter().flatten() {
                if let Some(addr) = member["member"]["http_addr"].as_str() {
                    if !addresses.iter().any(|a| a == addr) {
                        addresses.push(addr.to_owned());
                    }
                }
            }
            break;
        }
    }
    let mut members = Vec::new();
    for addr in &addresses {
        let health = ctl.http.request("GET", addr, "/health", None).await;
        let leader = ctl.http.request("GET", addr, "/v1/leader", None).await;
        let entry = match (health, leader) {
            (Ok(health), Ok(leader)) => json!({
                "endpoint": addr,
                "member_id": health.body["member_id"],
                "name": health.body["member_name"],
                "grpc_addr": leader.body["me"]["grpc_addr"],
                "leader": leader.body["is_leader"],
                "term": leader.body["term"],
                "leader_id": leader.body["leader"]["id"],
                "backend": health.body["backend"],
                "health": health.body["status"],
                "quarantined": health.body["quarantined"].as_array().map_or(0, Vec::len),
                "error": health.body["error"],
            }),
            (Err(e), _) | (_, Err(e)) => json!({
                "endpoint": addr,
                "health": "unreachable",
                "error": e.to_string(),
            }),
        };
        members.push(entry);
    }
    if ctl.format == OutputFormat::Json {
        return json_out(out, &json!({ "members": members }));
    }
    let mut table = Table::new(&[
        "MEMBER",
        "NAME",
        "HTTP",
        "GRPC",
        "ROLE",
        "TERM",
        "BACKEND",
        "HEALTH",
        "QUARANTINED",
    ]);
    for m in &members {
        let role = match m["leader"].as_bool() {
            Some(true) => "leader".to_owned(),
            Some(false) => match m["leader_id"].as_u64() {
                Some(id) => format!("follower (leader: {id})"),
                None => "follower (no leader)".into(),
            },
            None => "-".into(),
        };
        table.row(vec![
            text(&m["member_id"]),
            text(&m["name"]),
            text(&m["endpoint"]),
            text(&m["grpc_addr"]),
            role,
            text(&m["term"]),
            text(&m["backend"]),
            text(&m["health"]),
            text(&m["quarantined"]),
        ]);
    }
    table.write(out)?;
    for m in &members {
        if !m["error"].is_null() {
            writeln!(out, "{}: {}", text(&m["endpoint"]), text(&m["error"]))?;
        }
    }
    Ok(())
}

async fn nodes(ctl: &Ctl, out: &mut dyn Write) -> Result<(), CtlError> {
    // Every page: a listing answers at most 1,000 nodes at a time.
    let mut listed: Vec<Value> = Vec::new();
    let mut path = String::from("/v1/nodes");
    let mut previous: Option<u64> = None;
    loop {
        let page = ctl.on_leader("GET", &path, None).await?;
        listed.extend(page["nodes"].as_array().into_iter().flatten().cloned());
        // Pages move forward by id: a member that answers otherwise would loop forever.
        match page["next_after"].as_u64() {
            Some(after) if previous.is_none_or(|previous| after > previous) => {
                previous = Some(after);
                path = format!("/v1/nodes?after={after}");
            }
            _ => break,
        }
    }
    let answer = json!({ "nodes": listed });
    if ctl.format == OutputFormat::Json {
        return json_out(out, &answer);
    }
    let mut table = Table::new(&[
        "ID",
        "ADDRESS",
        "STATE",
        "CONNECTED",
        "PHI",
        "CPU",
        "LOAD",
        "RCU",
        "WCU",
        "LEADS",
        "FOLLOWS",
        "LAST HEARTBEAT",
    ]);
    for node in answer["nodes"].as_array().into_iter().flatten() {
        let stats = &node["stats"];
        table.row(vec![
            text(&node["id"]),
            text(&node["addr"]),
            match node["cordoned"].as_str() {
                Some(_) => format!("{} (cordoned)", text(&node["status"])),
                None => text(&node["status"]),
            },
            text(&node["connected"]),
            node["phi"]
                .as_f64()
                .map_or("-".into(), |phi| format!("{:.2}", phi.max(0.0))),
            stats["cpu_usage"]
                .as_f64()
                .map_or("-".into(), |cpu| format!("{cpu:.2}")),
            stats["load"]
                .as_f64()
                .map_or("-".into(), |load| format!("{load:.2}")),
            text(&stats["rcus"]),
            text(&stats["wcus"]),
            text(&node["leader_regions"]),
            text(&node["follower_regions"]),
            age(&node["last_heartbeat_unix_ms"]),
        ]);
    }
    table.write(out)?;
    Ok(())
}

fn table_name(value: &Value) -> String {
    format!(
        "{}.{}.{}",
        text(&value["catalog"]),
        text(&value["schema"]),
        text(&value["table"])
    )
}

/// `node:count` pairs, largest first.
fn spread(counts: &Value) -> String {
    let mut pairs: Vec<(String, u64)> = counts
        .as_object()
        .into_iter()
        .flatten()
        .map(|(node, count)| (node.clone(), count.as_u64().unwrap_or(0)))
        .collect();
    pairs.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if pairs.is_empty() {
        return "-".into();
    }
    pairs
        .iter()
        .map(|(node, count)| format!("{node}:{count}"))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn tables(ctl: &Ctl, out: &mut dyn Write) -> Result<(), CtlError> {
    let answer = ctl.on_leader("GET", "/v1/tables", None).await?;
    if ctl.format == OutputFormat::Json {
        return json_out(out, &answer);
    }
    let mut table = Table::new(&[
        "ID",
        "TABLE",
        "REGIONS",
        "COPIES",
        "VERSION",
        "LEADERS BY NODE",
        "FOLLOWERS BY NODE",
    ]);
    for t in answer["tables"].as_array().into_iter().flatten() {
        table.row(vec![
            text(&t["id"]),
            table_name(&t["name"]),
            text(&t["regions"]),
            text(&t["replicas"]),
            text(&t["version"]),
            spread(&t["leaders_by_node"]),
            spread(&t["followers_by_node"]),
        ]);
    }
    table.write(out)?;
    Ok(())
}

/// `catalog.schema.table`, `schema.table` or `table` (greptime and public by default).
fn parse_table(name: &str) -> Result<[String; 3], CtlError> {
    let parts: Vec<&str> = name.split('.').collect();
    let (catalog, schema, table) = match parts.as_slice() {
        [table] => ("greptime", "public", *table),
        [schema, table] => ("greptime", *schema, *table),
        [catalog, schema, table] => (*catalog, *schema, *table),
        _ => {
            return Err(CtlError::Usage(format!(
                "{name:?} is not a table name: use catalog.schema.table"
            )))
        }
    };
    if [catalog, schema, table].iter().any(|p| p.is_empty()) {
        return Err(CtlError::Usage(format!("{name:?} has an empty part")));
    }
    Ok([catalog.into(), schema.into(), table.into()])
}

async fn route(ctl: &Ctl, name: &str, out: &mut dyn Write) -> Result<(), CtlError> {
    let [catalog, schema, table] = parse_table(name)?;
    let path = format!("/v1/tables/{catalog}/{schema}/{table}");
    let answer = ctl.on_leader("GET", &path, None).await?;
    if ctl.format == OutputFormat::Json {
        return json_out(out, &answer);
    }
    let t = &answer["table"];
    writeln!(
        out,
        "table {} (id {}), route version {}, {} copies per region",
        table_name(&t["name"]),
        text(&t["id"]),
        text(&t["version"]),
        text(&t["replicas"])
    )?;
    let mut rows = Table::new(&["REGION", "NUMBER", "LEADER", "FOLLOWERS"]);
    for region in t["regions"].as_array().into_iter().flatten() {
        let peer = |p: &Value| format!("{}@{}", text(&p["id"]), text(&p["addr"]));
        let followers: Vec<String> = region["followers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(peer)
            .collect();
        rows.row(vec![
            text(&region["region_id"]),
            text(&region["region_number"]),
            peer(&region["leader"]),
            if followers.is_empty() {
                "-".into()
            } else {
                followers.join(" ")
            },
        ]);
    }
    rows.write(out)?;
    Ok(())
}

fn procedure_target(p: &Value) -> String {
    match p["kind"].as_str() {
        Some("migrate_region" | "transfer_leader") => format!(
            "region {} {} -> {}",
            text(&p["region_id"]),
            text(&p["node_id"]),
            text(&p["target_node"])
        ),
        _ => format!("node {}", text(&p["node_id"])),
    }
}

fn procedure_progress(p: &Value) -> String {
    let progress = &p["progress"];
    match progress["total"].as_u64() {
        Some(total) if total > 0 => format!(
            "{}/{total} ({} failed)",
            text(&progress["moved"]),
            text(&progress["failed"])
        ),
        _ => "-".into(),
    }
}

fn write_procedures(
    procedures: &[Value],
    all_steps: bool,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let mut table = Table::new(&[
        "ID",
        "KIND",
        "STATE",
        "TARGET",
        "PROGRESS",
        "ATTEMPTS",
        "STARTED",
        "LAST STEP",
    ]);
    for p in procedures {
        let steps = p["steps"].as_array();
        table.row(vec![
            text(&p["id"]),
            text(&p["kind"]),
            text(&p["state"]),
            procedure_target(p),
            procedure_progress(p),
            text(&p["attempts"]),
            age(&p["started_at_unix_ms"]),
            steps.and_then(|s| s.last()).map_or("-".into(), text),
        ]);
    }
    table.write(out)?;
    if all_steps {
        for p in procedures {
            writeln!(out, "\n{} {}:", text(&p["kind"]), text(&p["id"]))?;
            if let Some(omitted) = p["steps_omitted"].as_u64().filter(|n| *n > 0) {
                writeln!(out, "  ({omitted} earlier steps omitted)")?;
            }
            for step in p["steps"].as_array().into_iter().flatten() {
                writeln!(out, "  {}", text(step))?;
            }
        }
    }
    Ok(())
}

async fn procedures(ctl: &Ctl, all_steps: bool, out: &mut dyn Write) -> Result<(), CtlError> {
    let answer = ctl.on_leader("GET", "/v1/procedures", None).await?;
    if ctl.format == OutputFormat::Json {
        return json_out(out, &answer);
    }
    // Running first, then the most recent.
    let mut procedures: Vec<Value> = answer["procedures"].as_array().cloned().unwrap_or_default();
    procedures.sort_by_key(|p| {
        (
            p["state"] != "running",
            std::cmp::Reverse(p["started_at_unix_ms"].as_u64().unwrap_or(0)),
        )
    });
    write_procedures(&procedures, all_steps, out)
}

async fn maintenance(ctl: &Ctl, mode: Option<OnOff>, out: &mut dyn Write) -> Result<(), CtlError> {
    let answer = match mode {
        None => ctl.on_leader("GET", "/v1/maintenance", None).await?,
        Some(mode) => {
            let path = format!("/v1/maintenance?enabled={}", mode == OnOff::On);
            ctl.on_leader("PUT", &path, None).await?
        }
    };
    if ctl.format == OutputFormat::Json {
        return json_out(out, &answer);
    }
    let enabled = answer["enabled"].as_bool().unwrap_or(false);
    writeln!(
        out,
        "maintenance {}{}",
        if enabled { "on" } else { "off" },
        if enabled {
            ": dead datanodes are not failed over until it is turned off"
        } else {
            ": dead datanodes are failed over"
        }
    )?;
    Ok(())
}

async fn leader(ctl: &Ctl, action: LeaderAction, out: &mut dyn Write) -> Result<(), CtlError> {
    match action {
        LeaderAction::Show => {
            let leader = ctl.leader().await?;
            if ctl.format == OutputFormat::Json {
                return json_out(
                    out,
                    &json!({ "leader": {
                        "id": leader.id, "name": leader.name,
                        "grpc_addr": leader.grpc_addr, "http_addr": leader.http_addr,
                    }}),
                );
            }
            writeln!(
                out,
                "{} (member {}) leads: gRPC {}, HTTP {}",
                leader.name, leader.id, leader.grpc_addr, leader.http_addr
            )?;
        }
        LeaderAction::Resign => {
            let answer = ctl.on_leader("POST", "/v1/leader/resign", None).await?;
            if ctl.format == OutputFormat::Json {
                return json_out(out, &answer);
            }
            writeln!(
                out,
                "{} (member {}) resigned; `metasrv ctl status` shows who leads next",
                text(&answer["member"]["name"]),
                text(&answer["member"]["id"])
            )?;
        }
    }
    Ok(())
}

/// Starts an operation and, unless told not to, follows it to its end (a progress bar for
/// drains); prints the procedure. A failed procedure is an error.
async fn operation(
    ctl: &Ctl,
    path: &str,
    wait: bool,
    out: &mut dyn Write,
    progress: &mut dyn Write,
) -> Result<(), CtlError> {
    let started = ctl.on_leader("POST", path, None).await?;
    let mut procedure = started["procedure"].clone();
    let id = text(&procedure["id"]);
    if wait {
        let mut shown = false;
        while procedure["state"] == "running" {
            if let Some(total) = procedure["progress"]["total"].as_u64().filter(|t| *t > 0) {
                let moved = procedure["progress"]["moved"].as_u64().unwrap_or(0);
                let failed = procedure["progress"]["failed"].as_u64().unwrap_or(0);
                write!(progress, "\r{}", progress_bar(moved, failed, total))?;
                progress.flush()?;
                shown = true;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
            let answer = ctl
                .on_leader("GET", &format!("/v1/procedures/{id}"), None)
                .await?;
            procedure = answer["procedure"].clone();
        }
        // The final figures (a fast drain may end before the first poll).
        let progress_of = &procedure["progress"];
        let total = progress_of["total"].as_u64().unwrap_or(0);
        if shown || total > 0 {
            let moved = progress_of["moved"].as_u64().unwrap_or(0);
            let failed = progress_of["failed"].as_u64().unwrap_or(0);
            writeln!(progress, "\r{}", progress_bar(moved, failed, total))?;
        }
    }
    if ctl.format == OutputFormat::Json {
        json_out(out, &json!({ "procedure": procedure }))?;
    } else {
        write_procedures(std::slice::from_ref(&procedure), true, out)?;
    }
    if procedure["state"] == "failed" {
        let last = procedure["steps"]
            .as_array()
            .and_then(|s| s.last())
            .map_or("-".into(), text);
        return Err(CtlError::Refused(format!("procedure {id} failed: {last}")));
    }
    Ok(())
}

async fn kv(ctl: &Ctl, action: KvAction, out: &mut dyn Write) -> Result<(), CtlError> {
    let leader: Member = ctl.leader().await?;
    let security = ctl.http.security();
    let channel = crate::client::connect_with(&leader.grpc_addr, security)
        .await
        .map_err(|e| CtlError::Unreachable(format!("{}: {e}", leader.grpc_addr)))?;
    let bearer = security
        .bearer()
        .map_err(|e| CtlError::Usage(e.to_string()))?;
    let mut store = pb::store_client::StoreClient::with_interceptor(channel, bearer);
    let header = crate::client::header(ctl.cluster_id, 0);
    let refused = |status: tonic::Status| {
        CtlError::Refused(format!(
            "{} answered {:?}: {}",
            leader.grpc_addr,
            status.code(),
            status.message()
        ))
    };
    let pairs = |kvs: &[pb::KeyValue]| -> Vec<Value> {
        kvs.iter()
            .map(|kv| {
                json!({
                    "key": String::from_utf8_lossy(&kv.key),
                    "value": String::from_utf8_lossy(&kv.value),
                })
            })
            .collect()
    };
    let (answer, rows) = match action {
        KvAction::Get { key } => {
            let response = store
                .range(pb::RangeRequest {
                    header,
                    key: key.clone().into_bytes(),
                    limit: 1,
                    ..Default::default()
                })
                .await
                .map_err(refused)?
                .into_inner();
            if response.kvs.is_empty() {
                return Err(CtlError::Refused(format!("no key {key:?}")));
            }
            let kvs = pairs(&response.kvs);
            (json!({ "kvs": kvs }), kvs)
        }
        KvAction::Range {
            key,
            end,
            prefix,
            limit,
        } => {
            let range_end = match (end, prefix) {
                (Some(end), _) => end.into_bytes(),
                (None, true) => prefix_end(key.as_bytes()),
                (None, false) => Vec::new(),
            };
            let response = store
                .range(pb::RangeRequest {
                    header,
                    key: key.into_bytes(),
                    range_end,
                    limit,
                    ..Default::default()
                })
                .await
                .map_err(refused)?
                .into_inner();
            let kvs = pairs(&response.kvs);
            (json!({ "kvs": kvs, "more": response.more }), kvs)
        }
        KvAction::Put { key, value } => {
            store
                .put(pb::PutRequest {
                    header,
                    key: key.clone().into_bytes(),
                    value: value.clone().into_bytes(),
                    prev_kv: false,
                })
                .await
                .map_err(refused)?;
            let kvs = vec![json!({ "key": key, "value": value })];
            (json!({ "put": kvs[0] }), kvs)
        }
        KvAction::Delete { key, prefix } => {
            let range_end = if prefix {
                prefix_end(key.as_bytes())
            } else {
                Vec::new()
            };
            let response = store
                .delete_range(pb::DeleteRangeRequest {
                    header,
                    key: key.into_bytes(),
                    range_end,
                    prev_kv: true,
                })
                .await
                .map_err(refused)?
                .into_inner();
            let kvs = pairs(&response.prev_kvs);
            (json!({ "deleted": response.deleted, "kvs": kvs }), kvs)
        }
    };
    if ctl.format == OutputFormat::Json {
        return json_out(out, &answer);
    }
    let mut table = Table::new(&["KEY", "VALUE"]);
    for kv in &rows {
        table.row(vec![text(&kv["key"]), text(&kv["value"])]);
    }
    table.write(out)?;
    if answer["more"] == true {
        writeln!(out, "(more keys: raise --limit)")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_default_their_catalog_and_schema() {
        assert_eq!(
            parse_table("cpu").expect("valid"),
            ["greptime", "public", "cpu"]
        );
        assert_eq!(
            parse_table("ops.cpu").expect("valid"),
            ["greptime", "ops", "cpu"]
        );
        assert_eq!(parse_table("c.s.t").expect("valid"), ["c", "s", "t"]);
        assert!(parse_table("a.b.c.d").is_err());
        assert!(parse_table("a..c").is_err());
    }
}
