//! `metasrv ctl decisions`: the Autoadmin's decisions (why regions moved, what it recommends),
//! approving or rejecting them, and its mode.

use std::io::Write;

use serde_json::Value;

use super::output::Table;
use super::{Ctl, CtlError, DecisionAction, OutputFormat};

pub(super) async fn run(
    ctl: &Ctl,
    action: DecisionAction,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let answer = match &action {
        DecisionAction::List {
            region,
            status,
            limit,
        } => {
            let mut path = format!("/v1/decisions?limit={limit}");
            if let Some(region) = region {
                path.push_str(&format!("&region={region}"));
            }
            if let Some(status) = status {
                path.push_str(&format!("&status={status}"));
            }
            ctl.on_leader("GET", &path, None).await?
        }
        DecisionAction::Approve { id } => {
            ctl.on_leader("POST", &format!("/v1/decisions/{id}/approve"), None)
                .await?
        }
        DecisionAction::Reject { id } => {
            ctl.on_leader("POST", &format!("/v1/decisions/{id}/reject"), None)
                .await?
        }
        DecisionAction::Mode { mode: None } => ctl.on_leader("GET", "/v1/autoadmin", None).await?,
        DecisionAction::Mode { mode: Some(mode) } => {
            ctl.on_leader("PUT", &format!("/v1/autoadmin?mode={}", mode.name()), None)
                .await?
        }
        DecisionAction::Plan => ctl.on_leader("POST", "/v1/autoadmin/plan", None).await?,
    };
    if ctl.format == OutputFormat::Json {
        let text = serde_json::to_string_pretty(&answer)
            .map_err(|e| CtlError::Refused(format!("cannot print the answer: {e}")))?;
        writeln!(out, "{text}")?;
        return Ok(());
    }
    match action {
        DecisionAction::Mode { .. } => {
            writeln!(
                out,
                "autoadmin mode {}",
                answer["mode"].as_str().unwrap_or("unknown")
            )?;
            Ok(())
        }
        DecisionAction::Approve { .. } | DecisionAction::Reject { .. } => {
            write_decisions(std::slice::from_ref(&answer["decision"]), out)
        }
        DecisionAction::List { .. } | DecisionAction::Plan => {
            let decisions = answer["decisions"].as_array().cloned().unwrap_or_default();
            if decisions.is_empty() {
                writeln!(out, "no decisions")?;
                return Ok(());
            }
            write_decisions(&decisions, out)
        }
    }
}

/// What a decision does, in a few words.
fn describe(action: &Value) -> String {
    let n = |key: &str| action[key].as_u64().unwrap_or_default();
    match action["kind"].as_str().unwrap_or_default() {
        "migrate" => format!(
            "migrate region {} {} -> {}",
            n("region_id"),
            n("from"),
            n("to")
        ),
        "transfer_leader" => format!(
            "transfer region {} {} -> {}",
            n("region_id"),
            n("from"),
            n("to")
        ),
        "add_datanodes" => format!("recommend: add {} datanodes", n("count")),
        "remove_datanodes" => format!("recommend: remove datanodes {}", action["nodes"]),
        "replace_node" => format!("recommend: replace node {}", n("node_id")),
        other => other.to_string(),
    }
}

fn write_decisions(decisions: &[Value], out: &mut dyn Write) -> Result<(), CtlError> {
    let mut table = Table::new(&["ID", "STATUS", "PLANNER", "ACTION", "REASON", "OUTCOME"]);
    for d in decisions {
        let text = |key: &str| d[key].as_str().unwrap_or_default().to_string();
        table.row(vec![
            d["id"].as_u64().unwrap_or_default().to_string(),
            text("status"),
            text("planner"),
            describe(&d["action"]),
            text("reason"),
            text("outcome"),
        ]);
    }
    table.write(out)?;
    Ok(())
}
