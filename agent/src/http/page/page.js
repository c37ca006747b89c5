// rackwarden site page: fetches /api/v1/status every 2 s and draws it, and the last hour
// of /api/v1/history every 10 s as charts (uPlot, vendored under vendor/uplot with its
// licence; no build step). Every figure carries data-node/data-zone and data-field
// attributes so a test (and a curious operator) can match it against the API; the
// charts' own data is written to #chart-data for the same reason.
"use strict";

const $ = (id) => document.getElementById(id);
const fmt = (v) => (v === null || v === undefined || Number.isNaN(v)) ? "—" : Number(v).toFixed(1);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const pct = (x) => Math.max(0, Math.min(100, x * 100));

function fig(kind, id, field, value) {
  return `<span data-${kind}="${esc(id)}" data-field="${field}">${fmt(value)}</span>`;
}

function nodeRow(n) {
  // The bar's full width is 125% of budget so overloads stay visible; the red line is the budget.
  const scale = n.budget_kw > 0 ? 1 / (1.25 * n.budget_kw) : 0;
  const measured = n.measured_kw === null ? n.projected_kw : n.measured_kw;
  const gpu = n.gpu_kw * scale, mining = n.mining_kw * scale;
  const other = Math.max(0, measured - n.gpu_kw - n.mining_kw) * scale;
  const eff = n.effective_kw * scale;
  const kind = n.rack_kind ? `${n.rack_kind} rack` : n.kind;
  return `<div class="node d${Math.min(n.depth, 3)} band-${n.band}" data-node-row="${esc(n.id)}">
    <div class="name" style="padding-left:${n.depth * 14}px" title="${esc(n.id)}">${esc(n.id)}<span class="kind">${esc(kind)}${n.frozen ? " · frozen" : ""}</span></div>
    <div class="bar">
      <div class="seg gpu" style="left:0;width:${pct(gpu)}%"></div>
      <div class="seg mining" style="left:${pct(gpu)}%;width:${pct(mining)}%"></div>
      <div class="seg other" style="left:${pct(gpu + mining)}%;width:${pct(other)}%"></div>
      <div class="budget" style="left:80%"></div>
      <div class="eff" style="left:calc(${pct(eff)}% - 1px)"></div>
    </div>
    <div class="fig"><span class="pct">${(n.utilization * 100).toFixed(0)}%</span>
      ${fig("node", n.id, "measured_kw", n.measured_kw)} / ${fig("node", n.id, "budget_kw", n.budget_kw)} kW
      <span class="muted">gpu ${fig("node", n.id, "gpu_kw", n.gpu_kw)} · eff ${fig("node", n.id, "effective_kw", n.effective_kw)}</span></div>
  </div>`;
}

function drawTree(nodes) {
  // Depth-first from the site, each node under its first parent (a dual-corded rack
  // shows once).
  const children = new Map();
  const roots = [];
  for (const n of nodes) {
    if (n.parents.length === 0) roots.push(n);
    else {
      const p = n.parents[0];
      if (!children.has(p)) children.set(p, []);
      children.get(p).push(n);
    }
  }
  const out = [];
  const walk = (n) => { out.push(nodeRow(n)); for (const c of children.get(n.id) || []) walk(c); };
  roots.forEach(walk);
  $("tree").innerHTML = out.join("");
}

function drawZones(zones) {
  if (!zones.length) return;
  $("zones").innerHTML = zones.map((z) => {
    const state = z.redundancy === "none" ? (z.n ? ["ok", "N"] : ["crit", "below N"])
      : z.n_plus_1 ? ["ok", "N+1"] : z.n ? ["warn", "N only"] : ["crit", "below N"];
    const units = z.units.map((u) => `<span class="unit ${u.maintenance_override ? "maintenance" : u.state}" data-unit="${esc(u.id)}">${esc(u.id)} ${fmt(u.capacity_kw)} kW · ${u.maintenance_override ? "maintenance (operator)" : u.state}</span>`).join("");
    return `<div class="zone" data-zone-row="${esc(z.id)}">
      <div class="top"><b>${esc(z.id)}</b> <span class="muted">${esc(z.medium)}</span>
        <span class="badge ${state[0]}" data-zone="${esc(z.id)}" data-field="state">${state[1]}</span></div>
      <div class="fig" style="text-align:left">heat ${fig("zone", z.id, "heat_kw", z.heat_kw)} kW ·
        available ${fig("zone", z.id, "available_kw", z.available_kw)} kW ·
        largest unit ${fig("zone", z.id, "largest_kw", z.largest_kw)} kW</div>
      <div class="units">${units}</div></div>`;
  }).join("");
}

function drawCurtailed(rows) {
  $("curtailed-count").textContent = rows.length;
  if (!rows.length) { $("curtailed").innerHTML = `<p class="muted">none: every miner runs at its own settings</p>`; return; }
  const shown = rows.slice(0, 20);
  $("curtailed").innerHTML = `<table><tr><th>miner</th><th>rack</th><th>state</th><th>why</th></tr>${shown.map((r) =>
    `<tr data-miner="${esc(r.id)}"><td>${esc(r.id)}</td><td>${esc(r.rack)}</td><td>${esc(r.intent)}${r.target_w ? " " + Math.round(r.target_w) + " W" : ""}</td>
     <td>${r.operator ? "operator override" : r.reason ? esc(r.reason) + " @ " + esc(r.constraint || "") : "resumed from state file"}</td></tr>`).join("")}</table>
    ${rows.length > shown.length ? `<p class="muted">and ${rows.length - shown.length} more (see /api/v1/status)</p>` : ""}`;
}

// Grid signals in force (`grid` of /api/v1/status): the limit, its source, the site's
// load against it, what mining cannot shed, the price.
function drawGrid(g) {
  if (!g || (g.limit_kw === null && g.price_usd_per_mwh === null)) {
    $("grid").innerHTML = `<p class="muted">no grid target or price in force</p>`;
    return;
  }
  const rows = [];
  if (g.limit_kw !== null) {
    rows.push(`<tr><th>limit</th><td>${fig("grid", "site", "limit_kw", g.limit_kw)} kW <span class="muted">${esc(g.source || "")}:${esc(g.event || "")}</span></td></tr>`);
    rows.push(`<tr><th>site load</th><td>${fig("grid", "site", "load_kw", g.load_kw)} kW</td></tr>`);
    rows.push(`<tr><th>shortfall</th><td class="${g.shortfall_kw > 0 ? "crit" : ""}">${fig("grid", "site", "shortfall_kw", g.shortfall_kw)} kW</td></tr>`);
  }
  if (g.price_usd_per_mwh !== null) {
    rows.push(`<tr><th>price</th><td>${fig("grid", "site", "price_usd_per_mwh", g.price_usd_per_mwh)} USD/MWh, ${g.miners_price_curtailed} miner(s) asleep for it</td></tr>`);
  }
  $("grid").innerHTML = `<table>${rows.join("")}</table>`;
}

function drawAlerts(alerts) {
  $("alerts").innerHTML = alerts.slice(0, 8).map((a) =>
    `<li><span class="sev ${a.severity}">${esc(a.name)}</span>${esc(a.message)}</li>`).join("") || `<li class="muted">none since start</li>`;
}

// Energy per account for the latest day recorded (`/api/v1/energy`, by day): what each
// tenant and mining drew, its 15-minute peak, and what had to be estimated.
function drawEnergy(rows) {
  if (!rows.length) return;
  const last = rows.reduce((m, r) => Math.max(m, r.period_start_ms), 0);
  const today = rows.filter((r) => r.period_start_ms === last);
  $("energy").innerHTML = `<p class="muted">${esc(today[0].period.slice(0, 10))}</p>
    <table><tr><th>account</th><th>kWh</th><th>peak kW</th><th>notes</th></tr>${today.map((r) => {
      const notes = [];
      if (r.estimated_kwh > 0) notes.push(`${fmt(r.estimated_kwh)} kWh estimated`);
      if (r.resets) notes.push(`${r.resets} counter resets`);
      if (r.missing_h > 0) notes.push(`${fmt(r.missing_h)} h missing`);
      if (r.trough_kwh > 0) notes.push(`trough ${fmt(r.trough_kwh)} kWh`);
      const curtailed = Object.values(r.curtailed_miner_h || {}).reduce((a, b) => a + b, 0);
      if (curtailed > 0) notes.push(`${fmt(curtailed)} miner-h curtailed`);
      return `<tr data-energy-account="${esc(r.account)}"><td>${esc(r.account)}</td>
        <td data-field="kwh">${fmt(r.kwh)}</td><td data-field="peak_kw">${fmt(r.peak_kw)}</td><td>${esc(notes.join(", "))}</td></tr>`;
    }).join("")}</table>`;
}

async function refreshEnergy() {
  try {
    // Since yesterday (UTC) only: the agent's clock may run a little ahead of this one.
    const from = new Date(Date.now() - 86400000).toISOString().slice(0, 10);
    const r = await fetch(`/api/v1/energy?by=day&from=${from}`, { cache: "no-store" });
    if (r.ok) drawEnergy(await r.json());
  } catch (e) { /* the status line already says when the agent does not answer */ }
}

async function refresh() {
  try {
    const r = await fetch("/api/v1/status", { cache: "no-store" });
    if (!r.ok) throw new Error(`status ${r.status}`);
    const s = await r.json();
    $("site").textContent = s.site_name ? `${s.site} · ${s.site_name}` : s.site;
    $("mode").textContent = s.dry_run ? "DRY RUN" : "LIVE";
    $("mode").className = "badge " + (s.dry_run ? "warn" : "ok");
    $("ready").textContent = s.ready ? "ready" : "not ready";
    $("ready").className = "badge " + (s.ready ? "ok" : "crit");
    if (s.frame) {
      // The agent's clock: wall-clock milliseconds in production (virtual under --speed).
      $("now").textContent = s.frame.now_ms > 1e12
        ? new Date(s.frame.now_ms).toISOString().replace("T", " ").slice(0, 19) + " UTC"
        : `t=${(s.frame.now_ms / 1000).toFixed(0)} s`;
      $("now").dataset.nowMs = String(s.frame.now_ms);
      drawTree(s.frame.nodes);
      drawZones(s.frame.zones);
    }
    drawCurtailed(s.curtailed);
    drawGrid(s.grid);
    drawAlerts(s.alerts);
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.loaded = "1";
  } catch (e) {
    $("updated").textContent = "no answer from the agent: " + e.message;
  }
}

// ---- History charts (uPlot) ----

const charts = new Map(); // chart id -> uPlot
let chartKey = "";

// One chart per site, feed and row (measured, projected, budget, ceiling), the site's GPU
// against mining, and the miners curtailed with the sheds and restores marked.
function chartSpecs(h) {
  const specs = [];
  const site = h.nodes.find((n) => n.kind === "site");
  for (const n of h.nodes) {
    if (n.kind === "site") continue;
    specs.push({
      id: `node:${n.id}`, title: `${n.id} (${n.kind}), kW`,
      series: [
        { label: "measured", stroke: "#1f6feb", width: 2, values: n.measured_kw },
        { label: "projected", stroke: "#8957e5", dash: [6, 4], values: n.projected_kw },
        { label: "budget", stroke: "#d29922", values: n.budget_kw },
        { label: "ceiling", stroke: "#cf222e", values: n.ceiling_kw },
      ],
    });
  }
  if (site) {
    specs.push({
      id: "site:gpu-mining", title: `${site.id}: GPU against mining, kW`,
      series: [
        { label: "GPU", stroke: "#2da44e", width: 2, fill: "rgba(45,164,78,0.12)", values: site.gpu_kw },
        { label: "mining", stroke: "#bf8700", width: 2, fill: "rgba(191,135,0,0.12)", values: site.mining_kw },
      ],
    });
  }
  const marks = (v) => v.map((x) => (x > 0 ? x : null));
  specs.push({
    id: "miners:curtailed", title: "miners curtailed; sheds and restores sent (points)",
    series: [
      { label: "curtailed", stroke: "#57606a", width: 2, values: h.miners_curtailed },
      { label: "sheds", stroke: "#cf222e", points: true, values: marks(h.sheds) },
      { label: "restores", stroke: "#2da44e", points: true, values: marks(h.restores) },
    ],
  });
  return specs;
}

function chartOpts(spec, width) {
  return {
    title: spec.title, width, height: 170,
    scales: { x: { time: true } },
    // UTC, as the header's decision time.
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
    legend: { live: false },
    axes: [0, 1].map(() => ({ stroke: "#7d8b99", grid: { stroke: "#26313d" }, ticks: { stroke: "#26313d" } })),
    series: [{}].concat(spec.series.map((s) => ({
      label: s.label, stroke: s.stroke, width: s.width || 1, dash: s.dash, fill: s.fill,
      spanGaps: false,
      ...(s.points ? { paths: () => null, points: { show: true, size: 7, fill: s.stroke } } : { points: { show: false } }),
    }))),
  };
}

function drawHistory(h) {
  const xs = h.t_ms.map((t) => t / 1000);
  const specs = chartSpecs(h);
  const key = specs.map((s) => s.id).join("|");
  const box = $("charts");
  if (key !== chartKey) {
    for (const u of charts.values()) u.destroy();
    charts.clear();
    box.innerHTML = "";
    chartKey = key;
  }
  const width = Math.max(320, Math.min(900, box.clientWidth || 800));
  const drawn = { to_ms: h.t_ms.length ? h.t_ms[h.t_ms.length - 1] : null, points: h.t_ms.length, charts: {} };
  for (const spec of specs) {
    const data = [xs].concat(spec.series.map((s) => s.values));
    let u = charts.get(spec.id);
    if (u) u.setData(data);
    else {
      const div = document.createElement("div");
      div.className = "chart";
      div.dataset.chart = spec.id;
      box.appendChild(div);
      u = new uPlot(chartOpts(spec, width), data, div);
      charts.set(spec.id, u);
    }
    // What the chart holds, series by series (uPlot's own data).
    const held = {};
    u.series.forEach((s, i) => { if (i > 0) held[s.label] = u.data[i]; });
    drawn.charts[spec.id] = held;
  }
  $("chart-data").textContent = JSON.stringify(drawn);
  document.body.dataset.charts = String(specs.length);
}

async function refreshHistory() {
  try {
    const r = await fetch("/api/v1/history?minutes=60", { cache: "no-store" });
    if (r.ok) {
      const h = await r.json();
      if (h.t_ms.length) drawHistory(h);
    }
  } catch (e) { /* the status line already says when the agent does not answer */ }
}

refresh();
setInterval(refresh, 2000);
refreshHistory();
setInterval(refreshHistory, 10000);
refreshEnergy();
setInterval(refreshEnergy, 10000);
