// aiot-edge dashboard page: state from one Server-Sent Events stream (/api/events), drawn with the DOM and <canvas>.
//
// Every string that came from MQTT (device, machine, file names...) is written with textContent or
// as a canvas label, never parsed as HTML: a "<script>" in a device name shows as text.
// The stream starts with a snapshot, then sends changes; on a reconnect (EventSource retries by
// itself) the next snapshot replaces the state. Nothing here polls the server.
"use strict";

const state = {
  devices: new Map(),  // "site/device" -> device row
  series: new Map(),   // "site/device" -> [[ts, score, threshold], ...] (oldest first)
  alerts: new Map(),   // event_id -> alert row
  historyS: 3600,
  clockOffset: 0,      // server time - browser time, seconds
  counters: {},
  fresh: new Set(),    // event_ids that arrived live (flash once)
};
const MAX_ALERT_ROWS = 500;
const charts = new Map();  // "site/device" -> {card, canvas, title}
let dirty = {devices: false, alerts: false, charts: new Set()};
let frameRequested = false;

function now() { return Date.now() / 1000 + state.clockOffset; }

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function keyOf(site, device) { return site + "/" + device; }

function fmtNum(x) {
  if (x === null || x === undefined) return "–";
  const a = Math.abs(x);
  return a >= 1000 || (a > 0 && a < 0.01) ? x.toExponential(2) : x.toFixed(a >= 100 ? 1 : 3);
}

function plural(n, word) { return n + " " + word + (n === 1 ? "" : "s"); }

function fmtAge(seconds) {
  if (seconds < 0) seconds = 0;
  if (seconds < 60) return Math.round(seconds) + " s ago";
  if (seconds < 3600) return Math.round(seconds / 60) + " min ago";
  if (seconds < 86400) return (seconds / 3600).toFixed(1) + " h ago";
  return Math.round(seconds / 86400) + " d ago";
}

function fmtTime(ts) {
  const d = new Date(ts * 1000);
  const today = new Date();
  const time = d.toLocaleTimeString([], {hour12: false});
  return d.toDateString() === today.toDateString() ? time : d.toLocaleDateString() + " " + time;
}

// -- rendering (batched: at most once per animation frame) --------------------------------------

function schedule() {
  if (!frameRequested) {
    frameRequested = true;
    requestAnimationFrame(render);
  }
}

function render() {
  frameRequested = false;
  if (dirty.devices) renderDevices();
  if (dirty.alerts) renderAlerts();
  for (const key of dirty.charts) drawChart(key);
  dirty = {devices: false, alerts: false, charts: new Set()};
  renderCounters();
}

function renderDevices() {
  const body = document.querySelector("#devices tbody");
  const rows = [...state.devices.values()].sort((a, b) => keyOf(a.site, a.device).localeCompare(keyOf(b.site, b.device)));
  body.replaceChildren();
  for (const d of rows) {
    const tr = el("tr");
    tr.dataset.device = keyOf(d.site, d.device);
    const name = el("td");
    name.append(el("span", "", d.device), el("span", "muted", " · " + d.site));
    const status = el("td");
    const cls = d.status === "online" ? "pill pill-on" : d.status === "offline" ? "pill pill-off" : "pill pill-unknown";
    status.append(el("span", cls + " device-status", d.status || "unknown"));
    const machine = d.machine ? d.machine + (d.machine_id ? " / " + d.machine_id : "") : "–";
    const score = d.last_score === null || d.last_score === undefined ? "–"
      : fmtNum(d.last_score) + (d.threshold !== null && d.threshold !== undefined ? " / " + fmtNum(d.threshold) : "");
    const age = el("td", "age num", d.last_ts ? fmtAge(now() - d.last_ts) : "–");
    age.dataset.ts = d.last_ts || "";
    tr.append(name, status, el("td", "", machine), el("td", "", d.model || "–"), el("td", "num", score), age);
    body.append(tr);
    ensureChart(d.site, d.device);
  }
  document.getElementById("no-devices").hidden = rows.length > 0;
}

function refreshAges() {
  for (const cell of document.querySelectorAll("#devices td.age")) {
    const ts = parseFloat(cell.dataset.ts);
    if (ts) cell.textContent = fmtAge(now() - ts);
  }
}

function sortedAlerts() {
  return [...state.alerts.values()].sort((a, b) => b.ts - a.ts || b.received - a.received);
}

function renderAlerts() {
  const body = document.querySelector("#alerts tbody");
  const all = sortedAlerts();
  body.replaceChildren();
  for (const a of all.slice(0, MAX_ALERT_ROWS)) body.append(alertRow(a));
  const open = all.filter((a) => !a.ack_ts).length;
  document.getElementById("alert-count").textContent = all.length ? `${all.length} (${open} not acknowledged)` : "";
  document.getElementById("no-alerts").hidden = all.length > 0;
}

function alertRow(a) {
  const tr = el("tr", a.ack_ts ? "alert acked" : "alert");
  tr.dataset.eventId = a.event_id;
  if (state.fresh.delete(a.event_id)) tr.classList.add("fresh");
  const device = el("td");
  device.append(el("span", "", a.device), el("span", "muted", " · " + a.site));
  const sev = el("td");
  sev.append(el("span", "pill sev-" + (a.severity === "critical" ? "critical" : "warning"), a.severity));
  const src = el("td", "src", a.source || "–");  // the whole path: the same file name recurs in many folders
  const stateCell = el("td", "ack-state");
  if (a.ack_ts) {
    stateCell.textContent = "acknowledged by " + a.ack_by + ", " + fmtTime(a.ack_ts);
  } else {
    const button = el("button", "ack", "Acknowledge");
    button.type = "button";
    button.addEventListener("click", () => acknowledge(a.event_id, button));
    stateCell.append(button);
  }
  tr.append(el("td", "num", fmtTime(a.ts)), device,
    el("td", "", a.machine + (a.machine_id ? " / " + a.machine_id : "")), sev,
    el("td", "num", fmtNum(a.score) + " / " + fmtNum(a.threshold)),
    el("td", "num", a.window_start.toFixed(1) + "–" + a.window_end.toFixed(1)), src, stateCell);
  return tr;
}

function renderCounters() {
  const c = state.counters || {};
  const dropped = Object.values(c.dropped || {}).reduce((s, x) => s + x, 0);
  document.getElementById("counters").textContent =
    `${plural(c.alerts_stored ?? state.alerts.size, "alert")} stored · ${plural(dropped, "bad message")} dropped`;
}

async function acknowledge(eventId, button) {
  button.disabled = true;
  try {
    const response = await fetch("/api/ack", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({event_id: eventId})});
    if (!response.ok) throw new Error((await response.json()).error || response.statusText);
    applyAck(await response.json());
  } catch (err) {
    button.disabled = false;
    button.title = "acknowledge failed: " + err.message;
  }
}

function applyAck(ack) {
  const a = state.alerts.get(ack.event_id);
  if (a && !a.ack_ts) {
    a.ack_ts = ack.ts;
    a.ack_by = ack.by;
    dirty.alerts = true;
    schedule();
  }
}

// -- charts ---------------------------------------------------------------------------------------

function ensureChart(site, device) {
  const key = keyOf(site, device);
  let chart = charts.get(key);
  if (!chart) {
    const card = el("div", "chart");
    card.dataset.device = key;
    const title = el("h3");
    const canvas = document.createElement("canvas");
    card.append(title, canvas);
    chart = {card, canvas, title};
    charts.set(key, chart);
    const container = document.getElementById("charts");
    const after = [...container.children].find((c) => c.dataset.device.localeCompare(key) > 0);
    container.insertBefore(card, after || null);
  }
  const d = state.devices.get(key);
  const machine = d && d.machine ? d.machine + (d.machine_id ? " / " + d.machine_id : "") : "";
  chart.title.replaceChildren(el("span", "", device), el("span", "muted", (machine ? " · " + machine : "") + " · " + site));
  dirty.charts.add(key);
  return chart;
}

function drawChart(key) {
  const chart = charts.get(key);
  if (!chart) return;
  const canvas = chart.canvas;
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  if (!width || !height) return;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);

  const t1 = now(), t0 = t1 - state.historyS;
  const points = (state.series.get(key) || []).filter((p) => p[0] >= t0);
  const alerts = [...state.alerts.values()].filter((a) => keyOf(a.site, a.device) === key && a.ts >= t0);
  const values = [];
  for (const p of points) { values.push(p[1]); if (p[2] !== null) values.push(p[2]); }
  for (const a of alerts) values.push(a.score, a.threshold);
  const pad = {l: 52, r: 8, t: 8, b: 22};
  const w = width - pad.l - pad.r, h = height - pad.t - pad.b;
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#6b7280";
  if (!values.length) {
    ctx.fillText("no scores in the last hour", pad.l + 8, pad.t + h / 2);
    return;
  }
  let lo = Math.min(...values), hi = Math.max(...values);
  if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
  const margin = (hi - lo) * 0.1;
  lo -= margin; hi += margin;
  const x = (t) => pad.l + ((t - t0) / (t1 - t0)) * w;
  const y = (v) => pad.t + (1 - (v - lo) / (hi - lo)) * h;

  // grid and axes labels
  ctx.strokeStyle = "#eef0f3";
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4;
    ctx.beginPath(); ctx.moveTo(pad.l, y(v)); ctx.lineTo(pad.l + w, y(v)); ctx.stroke();
    ctx.fillText(fmtNum(v), pad.l - 6, y(v));
  }
  ctx.textBaseline = "top";
  for (let m = 60; m >= 0; m -= 15) {
    ctx.textAlign = m === 60 ? "left" : m === 0 ? "right" : "center";  // the ends stay inside the plot
    ctx.fillText(m ? "-" + m + " min" : "now", x(t1 - m * 60), pad.t + h + 5);
  }

  // threshold: a step line (it changes only when a new bundle is deployed)
  const thresholdPoints = points.filter((p) => p[2] !== null).map((p) => [p[0], p[2]])
    .concat(alerts.map((a) => [a.ts, a.threshold])).sort((a, b) => a[0] - b[0]);
  if (thresholdPoints.length) {
    ctx.strokeStyle = "#ea580c";
    ctx.setLineDash([5, 4]);
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let prevY = y(thresholdPoints[0][1]);
    ctx.moveTo(pad.l, prevY);
    for (const [t, v] of thresholdPoints) { ctx.lineTo(x(t), prevY); prevY = y(v); ctx.lineTo(x(t), prevY); }
    ctx.lineTo(pad.l + w, prevY);
    ctx.stroke();
    ctx.setLineDash([]);
  }

  // scores
  ctx.strokeStyle = "#2563eb";
  ctx.fillStyle = "#2563eb";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  points.forEach((p, i) => (i ? ctx.lineTo(x(p[0]), y(p[1])) : ctx.moveTo(x(p[0]), y(p[1]))));
  ctx.stroke();
  if (points.length < 120) for (const p of points) { ctx.beginPath(); ctx.arc(x(p[0]), y(p[1]), 2, 0, 2 * Math.PI); ctx.fill(); }

  // alerts: acknowledged ones first, so an open alert is never hidden behind one
  alerts.sort((a, b) => (b.ack_ts ? 1 : 0) - (a.ack_ts ? 1 : 0));
  for (const a of alerts) {
    ctx.fillStyle = a.ack_ts ? "#9ca3af" : a.severity === "critical" ? "#991b1b" : "#dc2626";
    ctx.beginPath(); ctx.arc(x(a.ts), y(a.score), 4.5, 0, 2 * Math.PI); ctx.fill();
  }
}

function redrawAllCharts() { for (const key of charts.keys()) dirty.charts.add(key); schedule(); }

// -- the stream -----------------------------------------------------------------------------------

function applySnapshot(s) {
  state.clockOffset = s.now - Date.now() / 1000;
  state.historyS = s.history_s;
  state.counters = s.counters;
  state.devices = new Map(s.devices.map((d) => [keyOf(d.site, d.device), d]));
  state.series = new Map(Object.entries(s.series));
  state.alerts = new Map(s.alerts.map((a) => [a.event_id, a]));
  setPill("broker", s.counters.broker_connected, "broker connected", "broker unreachable");
  dirty.devices = dirty.alerts = true;
  redrawAllCharts();
}

function setPill(id, on, onText, offText) {
  const node = document.getElementById(id);
  node.textContent = on ? onText : offText;
  node.className = "pill " + (on ? "pill-on" : "pill-off");
}

function connect() {
  const source = new EventSource("/api/events");
  const on = (kind, handler) => source.addEventListener(kind, (e) => { handler(JSON.parse(e.data)); schedule(); });
  source.onopen = () => setPill("live", true, "live", "reconnecting…");
  source.onerror = () => setPill("live", false, "live", "reconnecting…");
  on("snapshot", applySnapshot);
  on("device", (d) => {
    state.devices.set(keyOf(d.site, d.device), d);
    dirty.devices = true;
  });
  on("score", (p) => {
    const list = state.series.get(p.key) || [];
    if (!list.length || p.ts > list[list.length - 1][0]) list.push([p.ts, p.score, p.threshold]);
    const cutoff = now() - state.historyS;
    while (list.length && list[0][0] < cutoff) list.shift();
    state.series.set(p.key, list);
    const d = state.devices.get(p.key);
    if (d && (!d.last_ts || p.ts >= d.last_ts)) { d.last_score = p.score; d.last_ts = p.ts; d.threshold = p.threshold ?? d.threshold; }
    dirty.devices = true;
    dirty.charts.add(p.key);
  });
  on("alert", (a) => {
    if (state.alerts.has(a.event_id)) return;
    state.alerts.set(a.event_id, a);
    state.fresh.add(a.event_id);
    state.counters.alerts_stored = (state.counters.alerts_stored || 0) + 1;
    dirty.alerts = true;
    dirty.charts.add(keyOf(a.site, a.device));
  });
  on("ack", applyAck);
  on("broker", (b) => setPill("broker", b.connected, "broker connected", "broker unreachable"));
}

document.addEventListener("DOMContentLoaded", () => {
  connect();
  setInterval(refreshAges, 1000);          // local clock only: "12 s ago" keeps counting
  setInterval(redrawAllCharts, 10000);      // the time axis moves on even without new scores
  window.addEventListener("resize", redrawAllCharts);
});
