// The metasrv dashboard: polls the JSON API (same origin) and redraws. Hand-written, no
// dependencies; everything is built with DOM calls (no innerHTML of data from the server).
"use strict";

// ?refresh=ms, at least 250 ms (each refresh makes seven API calls).
const REFRESH_MS = Math.max(250,
  Number(new URLSearchParams(location.search).get("refresh")) || 1000);
const HEAT_SAMPLES = 30;
const TIMELINE_WINDOW_MS = 10 * 60 * 1000;
const SVG = "http://www.w3.org/2000/svg";
const NODE_COLORS = ["#4c9aff", "#2ea043", "#d29922", "#a371f7", "#f778ba", "#3fb9a5",
  "#db6d28", "#8b949e", "#e3b341", "#56d4dd"];

let token = sessionStorage.getItem("metasrv-token") || "";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function nodeColor(id) {
  return NODE_COLORS[Number(id) % NODE_COLORS.length];
}

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = "Bearer " + token;
  const response = await fetch(path, { headers, cache: "no-store" });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (!response.ok) {
    throw new HttpError(response.status, (body && body.error) || "HTTP " + response.status);
  }
  return body;
}

function ago(unixMs) {
  if (!unixMs) return "never";
  const s = Math.max(0, (Date.now() - unixMs) / 1000);
  if (s < 10) return s.toFixed(1) + " s ago";
  if (s < 3600) return Math.round(s) + " s ago";
  return Math.round(s / 3600) + " h ago";
}

function renderMembers(members, leader) {
  const box = document.getElementById("members");
  box.replaceChildren();
  const leaderId = leader.leader ? leader.leader.id : null;
  for (const entry of members.members || []) {
    const m = entry.member;
    const isLeader = m.id === leaderId;
    box.append(el("span", {
      class: "member" + (isLeader ? " leader" : ""),
      "data-member-id": m.id,
      title: "gRPC " + m.grpc_addr + ", HTTP " + m.http_addr,
    }, m.name + (isLeader ? " (leader, term " + leader.term + ")" : "")));
  }
}

function renderMaintenance(maintenance) {
  const badge = document.getElementById("maintenance");
  badge.className = "badge " + (maintenance.enabled ? "on" : "off");
  badge.textContent = maintenance.enabled ? "maintenance: failover paused" : "failover active";
}

function renderNodes(nodes, total) {
  const box = document.getElementById("nodes");
  box.replaceChildren();
  const counts = { alive: 0, suspect: 0, dead: 0 };
  for (const node of nodes) {
    counts[node.status] = (counts[node.status] || 0) + 1;
    const leads = node.leader_regions || 0;
    const follows = node.follower_regions || 0;
    const stats = node.stats || {};
    const cpu = typeof stats.cpu_usage === "number" ? stats.cpu_usage : 0;
    box.append(el("div", {
      class: "node",
      "data-node-id": node.id,
      "data-state": node.status,
    },
      el("div", { class: "title" },
        el("span", {}, "node " + node.id),
        el("span", { class: "state" }, node.status)),
      el("div", { class: "addr" }, node.addr),
      el("div", { class: "bar", title: "CPU " + cpu.toFixed(1) + "%" },
        el("span", { style: "width:" + Math.min(100, cpu).toFixed(1) + "%" })),
      el("div", { class: "figures" },
        el("span", {}, "cpu " + cpu.toFixed(0) + "%"),
        el("span", {}, "load " + (stats.load || 0).toFixed(2))),
      el("div", { class: "figures" },
        el("span", { title: "regions led / followed" }, leads + " led / " + follows + " fol."),
        el("span", { title: "suspicion (phi)" }, "φ " + Math.max(0, node.phi || 0).toFixed(1))),
      el("div", { class: "addr" }, "heard " + ago(node.last_heartbeat_unix_ms))));
  }
  // A listing is one page (the first 1,000 nodes by id); the counts are of the page.
  const shown = total > nodes.length ? "first " + nodes.length + " of " + total : nodes.length;
  document.getElementById("node-summary").textContent =
    shown + " nodes: " + counts.alive + " alive, " + (counts.suspect || 0) +
    " suspect, " + (counts.dead || 0) + " dead";
}

function heatColor(cpu) {
  // 0% dark blue-grey to 100% red through amber.
  const t = Math.max(0, Math.min(1, cpu / 100));
  const hue = 210 - t * 210;
  const light = 22 + t * 30;
  return "hsl(" + hue.toFixed(0) + ", 70%, " + light.toFixed(0) + "%)";
}

function renderHeatmap(load) {
  const box = document.getElementById("heatmap");
  const nodes = load.nodes || [];
  if (nodes.length === 0) {
    box.replaceChildren(el("span", { class: "muted" }, "no datanode has reported yet"));
    return;
  }
  const label = 70, cell = 18, gap = 3;
  const width = label + HEAT_SAMPLES * (cell + gap);
  const height = nodes.length * (cell + gap);
  const chart = svg("svg", { viewBox: "0 0 " + width + " " + height, width, height });
  nodes.forEach((node, row) => {
    const y = row * (cell + gap);
    chart.append(svg("text", { x: 0, y: y + cell - 3 }, "node " + node.id));
    const samples = node.samples || [];
    const offset = HEAT_SAMPLES - samples.length;
    samples.forEach((sample, i) => {
      const cpu = sample.stats.cpu_usage;
      const rect = svg("rect", {
        x: label + (offset + i) * (cell + gap), y, width: cell, height: cell, rx: 2,
        fill: node.status === "dead" && i === samples.length - 1 ? "#5a1e1e" : heatColor(cpu),
        "data-node-id": node.id,
      });
      rect.append(svg("title", {}, "node " + node.id + ": cpu " + cpu.toFixed(1) + "%, load " +
        sample.stats.load.toFixed(2) + ", " + ago(sample.at_unix_ms)));
      chart.append(rect);
    });
  });
  box.replaceChildren(chart);
}

function renderTables(tables) {
  const box = document.getElementById("tables");
  const list = tables.tables || [];
  document.getElementById("table-summary").textContent = list.length + " tables";
  if (list.length === 0) {
    box.replaceChildren(el("span", { class: "muted" }, "no tables"));
    return;
  }
  const body = el("tbody");
  for (const t of list) {
    const spread = el("div", { class: "spread", title: "leaders by node" });
    for (const [node, count] of Object.entries(t.leaders_by_node || {})) {
      spread.append(el("span", {
        style: "flex:" + count + ";background:" + nodeColor(node),
        title: "node " + node + ": " + count + " leaders",
      }));
    }
    body.append(el("tr", { "data-table-id": t.id },
      el("td", {}, t.name.catalog + "." + t.name.schema + "." + t.name.table),
      el("td", {}, t.regions),
      el("td", {}, t.replicas),
      el("td", {}, spread,
        el("div", { class: "muted legend" }, Object.entries(t.leaders_by_node || {})
          .map(([node, count]) => "node " + node + ": " + count).join(", ")))));
  }
  box.replaceChildren(el("table", {},
    el("thead", {}, el("tr", {},
      el("th", {}, "table"), el("th", {}, "regions"), el("th", {}, "copies"),
      el("th", {}, "leaders by node"))),
    body));
}

function renderProcedures(procedures) {
  const box = document.getElementById("procedures");
  const now = Date.now();
  const recent = (procedures.procedures || [])
    .filter((p) => p.state === "running" || now - p.updated_at_unix_ms < TIMELINE_WINDOW_MS)
    .slice(-12);
  if (recent.length === 0) {
    box.replaceChildren(el("span", { class: "muted" }, "no procedure in the last 10 minutes"));
    return;
  }
  const label = 190, width = 600, row = 18;
  const height = recent.length * row + 16;
  // From the earliest shown start (at least a minute back) to now.
  const earliest = Math.min(...recent.map((p) => p.started_at_unix_ms));
  const span = Math.min(TIMELINE_WINDOW_MS, Math.max(60 * 1000, now - earliest + 5000));
  const start = now - span;
  const x = (t) => label + Math.max(0, (t - start) / span) * (width - label - 30);
  const chart = svg("svg", { viewBox: "0 0 " + width + " " + height, class: "timeline" });
  recent.forEach((p, i) => {
    const y = i * row;
    const target = p.kind === "migrate_region" || p.kind === "transfer_leader"
      ? " " + p.node_id + "→" + p.target_node : " node " + p.node_id;
    chart.append(svg("text", { x: 0, y: y + 12 }, p.kind + target));
    const end = p.state === "running" ? now : p.updated_at_unix_ms;
    const color = p.state === "done" ? "#2ea043" : p.state === "failed" ? "#da3633" : "#4c9aff";
    const bar = svg("rect", {
      x: x(p.started_at_unix_ms), y: y + 3,
      width: Math.max(3, x(end) - x(p.started_at_unix_ms)), height: row - 6, rx: 2, fill: color,
      "data-procedure-id": p.id,
    });
    const last = (p.steps || [])[p.steps.length - 1] || "";
    bar.append(svg("title", {}, p.kind + " " + p.state + ": " + last));
    chart.append(bar);
  });
  const minutes = span / 60000;
  const startLabel = minutes >= 2 ? "−" + Math.round(minutes) + " min" : "−" + Math.round(span / 1000) + " s";
  chart.append(svg("text", { x: label, y: height - 2, class: "axis" }, startLabel));
  chart.append(svg("text", { x: width - 24, y: height - 2, class: "axis" }, "now"));
  const box2 = el("div", { class: "timeline" });
  box2.append(chart);
  box.replaceChildren(box2);
}

function renderDecisions() {
  document.getElementById("decisions").textContent =
    "This metasrv has no load-aware scheduler yet, so there are no rebalancing decisions to " +
    "show; failovers, migrations and drains appear under Procedures.";
}

function showProblem(message) {
  const box = document.getElementById("problem");
  box.hidden = !message;
  box.textContent = message || "";
}

async function refresh() {
  try {
    const [leader, members, maintenance, nodes, load, tables, procedures] = await Promise.all([
      api("/v1/leader"), api("/v1/members"), api("/v1/maintenance"), api("/v1/nodes"),
      api("/v1/load?samples=" + HEAT_SAMPLES), api("/v1/tables"), api("/v1/procedures"),
    ]);
    document.getElementById("auth").hidden = true;
    showProblem(null);
    renderMembers(members, leader);
    renderMaintenance(maintenance);
    renderNodes(nodes.nodes || [], nodes.total || 0);
    renderHeatmap(load);
    renderTables(tables);
    renderProcedures(procedures);
    renderDecisions();
    document.getElementById("updated").textContent =
      "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    if (e instanceof HttpError && (e.status === 401 || e.status === 403)) {
      document.getElementById("auth").hidden = false;
      document.getElementById("auth-error").textContent = token ? e.message : "";
    } else if (e instanceof HttpError && e.status === 503) {
      showProblem("This member cannot serve the dashboard now: " + e.message +
        ". Open the dashboard on the leader.");
    } else {
      showProblem("Cannot reach metasrv: " + e.message);
    }
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

document.getElementById("auth-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = document.getElementById("token").value.trim();
  sessionStorage.setItem("metasrv-token", token);
});

refresh();
