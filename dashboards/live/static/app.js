// powerplane live dashboard: one page, no dependencies. State arrives over server-sent events (/events):
// a snapshot, then deltas about once a second; drawing is batched into one animation frame per message.
"use strict";

const KIND_ORDER = ["site", "utility", "ups", "rpp", "pdu", "hall", "row", "zone", "rack"];
const S = {
  cols: {}, tree: new Map(), vals: new Map(), racks: [], rackIdx: new Map(), rows: [],
  openCounts: {}, nOpen: 0, caps: [], pending: [], clock: null, recvWall: 0, mode: "live", replay: null, site: null,
  expanded: new Set(), collapsed: new Set(), selected: null, hist: [], histLevel: null, metric: "load",
  counts: {}, lastCounts: null, lastCountsWall: 0, rate: 0, logSeq: 0, epoch: -1,
  groups: [], feedMode: null, hiddenKinds: new Set(), openGroups: new Set(), logRefs: new Map(),
};
// ?static=1: one snapshot, no event stream (headless `chromium --screenshot` waits for the network to go
// quiet, which a stream never does). See docs/dashboard.md.
const STATIC = new URLSearchParams(location.search).get("static") === "1";
// Exposed for the browser test: draw timings and message counts.
window.__pp = { messages: 0, lastDrawMs: 0, maxDrawMs: 0, draws: 0 };

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const isNum = (x) => typeof x === "number" && isFinite(x);
const kw = (w) => (isNum(w) ? (w / 1e3).toFixed(Math.abs(w) >= 1e6 ? 0 : 1) : "–");
const pct = (f) => (isNum(f) ? (f * 100).toFixed(1) + "%" : "–");
function hms(s) {
  if (!isNum(s)) return "--:--:--";
  const d = new Date(s * 1000);
  return d.toISOString().substring(11, 19);
}
function dur(s) {
  if (!isNum(s)) return "–";
  const a = Math.abs(s);
  const t = a < 60 ? a.toFixed(a < 10 ? 1 : 0) + " s" : a < 3600 ? Math.floor(a / 60) + "m" + String(Math.floor(a % 60)).padStart(2, "0") : (a / 3600).toFixed(1) + " h";
  return (s < 0 ? "-" : "") + t;
}
function kindRank(k) { const i = KIND_ORDER.indexOf(k); return i < 0 ? 99 : i; }
function natCmp(a, b) { return a.localeCompare(b, undefined, { numeric: true }); }

// ---- values and colour ---------------------------------------------------------------------------
function v(level, col) { const r = S.vals.get(level); return r ? r[S.cols[col]] : undefined; }
function headFrac(level) {
  const lim = v(level, "limit_w"), hr = v(level, "headroom_w"), p = v(level, "power_w");
  if (!isNum(lim) || lim <= 0) return null;
  if (isNum(hr)) return hr / lim;
  return isNum(p) ? (lim - p) / lim : null;
}
// Colour is the load as a share of the derated limit (the same scale for every level, so 81% is never
// greener than 73%); the headroom is shown as a number beside it.
function loadFrac(level) {
  const p = v(level, "power_w"), lim = v(level, "limit_w");
  return isNum(p) && isNum(lim) && lim > 0 ? p / lim : null;
}
function loadClass(f) { return f === null ? "none" : f >= 1 ? "bad" : f >= 0.9 ? "hot" : f >= 0.8 ? "warn" : "ok"; }
const CLS_COLOR = { ok: "#3dd68c", warn: "#ffc53d", hot: "#f76b15", bad: "#e5484d", none: "#4a5361" };
// Heat-map ramp: cool blue-green through amber to red; t in [0, 1].
const RAMP = [[0, [20, 60, 90]], [0.35, [24, 120, 110]], [0.6, [61, 214, 140]], [0.78, [255, 197, 61]], [0.9, [247, 107, 21]], [1, [229, 72, 77]]];
function ramp(t) {
  t = Math.max(0, Math.min(1, t));
  for (let i = 1; i < RAMP.length; i++) {
    if (t <= RAMP[i][0]) {
      const [t0, c0] = RAMP[i - 1], [t1, c1] = RAMP[i], u = (t - t0) / (t1 - t0);
      return `rgb(${c0.map((c, j) => Math.round(c + (c1[j] - c) * u)).join(",")})`;
    }
  }
  return "rgb(229,72,77)";
}
// Load: 0..100% of the derated limit (above 100% is red). Inlet: 15..35 C (ASHRAE A1 allows up to 32 C).
function heatT(level) {
  if (S.metric === "inlet") { const c = v(level, "inlet_c"); return isNum(c) ? (c - 15) / 20 : null; }
  const p = v(level, "power_w"), l = v(level, "limit_w");
  return isNum(p) && isNum(l) && l > 0 ? p / l : null;
}

// ---- messages ------------------------------------------------------------------------------------
function addTree(rows) {
  for (const [id, kind, parent, feed] of rows) S.tree.set(id, { id, kind, parent, feed, kids: [] });
  for (const n of S.tree.values()) n.kids = [];
  for (const n of S.tree.values()) {
    const p = n.parent && S.tree.get(n.parent);
    if (p) p.kids.push(n.id);
  }
  for (const n of S.tree.values()) {
    n.kids.sort((a, b) => kindRank(S.tree.get(a).kind) - kindRank(S.tree.get(b).kind) || natCmp(a, b));
  }
}
function addRacks(ids) {
  for (const id of ids) { if (!S.rackIdx.has(id)) { S.rackIdx.set(id, S.racks.length); S.racks.push(id); } }
}
function onMessage(msg) {
  window.__pp.messages++;
  S.recvWall = performance.now();
  if (msg.type === "snapshot") {
    S.cols = {}; msg.cols.forEach((c, i) => { S.cols[c] = i + 1; });
    S.tree = new Map(); S.vals = new Map(); S.racks = []; S.rackIdx = new Map();
    S.rows = msg.rows || []; S.site = msg.site; S.epoch = msg.epoch;
    $("log").textContent = ""; S.logSeq = 0; S.logRefs = new Map();
    addTree(msg.tree); addRacks(msg.racks);
    for (const r of msg.levels) S.vals.set(r[0], r);
    S.hist = []; S.histLevel = null;
  } else {
    addTree(msg.tree); addRacks(msg.racks);
    for (const r of msg.levels) S.vals.set(r[0], r);
    appendHistory(msg.levels);
  }
  S.clock = msg.clock_s; S.openCounts = msg.open_counts || {}; S.nOpen = msg.n_open || 0; S.caps = msg.caps; S.pending = msg.pending;
  S.groups = msg.groups || []; S.feedMode = msg.feed_mode === undefined ? null : msg.feed_mode;
  S.mode = msg.mode; S.replay = msg.replay || null;
  updateRate(msg.counts || {});
  addLog(msg.log);
  if (!S.selected || !S.tree.has(S.selected)) chooseDefaultLevel();
  if (S.histLevel !== S.selected) loadHistory(S.selected);
  schedule();
}
function updateRate(counts) {
  const total = Object.values(counts).reduce((a, b) => a + b, 0), now = performance.now();
  if (S.lastCounts !== null && now > S.lastCountsWall && total >= S.lastCounts) {
    S.rate = (total - S.lastCounts) / ((now - S.lastCountsWall) / 1000);
  }
  S.lastCounts = total; S.lastCountsWall = now;
}

// ---- drawing, batched ----------------------------------------------------------------------------
let pending = false;
function schedule() { if (!pending) { pending = true; requestAnimationFrame(drawAll); } }
function drawAll() {
  pending = false;
  const t0 = performance.now();
  drawHeader(); drawTree(); drawHeat(); drawSide(); drawLevelSelect(); drawChart(); drawReplay();
  const ms = performance.now() - t0;
  window.__pp.lastDrawMs = ms; window.__pp.maxDrawMs = Math.max(window.__pp.maxDrawMs, ms); window.__pp.draws++;
}
function drawHeader() {
  $("site").textContent = "site " + (S.site || "?");
  const m = $("mode"); m.textContent = S.mode === "replay" ? "REPLAY" : "LIVE"; m.className = "chip " + S.mode;
  $("clock").textContent = hms(S.clock);
  $("nlevels").textContent = S.vals.size;
  $("nracks").textContent = S.racks.length;
  $("rate").textContent = Math.round(S.rate);
  $("nopen").textContent = S.nOpen;
  $("ncaps").textContent = S.caps.length;
  // Feed state: the site level's newest mode; without a site level, any level not in normal mode.
  const modes = new Set();
  if (S.feedMode) { if (S.feedMode !== "normal") modes.add(S.feedMode); }
  else for (const r of S.vals.values()) { const md = r[S.cols.mode]; if (md && md !== "normal") modes.add(md); }
  const fs = $("feedstate");
  fs.textContent = modes.size ? [...modes].join(" ") : S.vals.size ? "feeds normal" : "feeds ?";
  fs.className = "chip " + (modes.size ? "alarm" : S.vals.size ? "ok" : "");
}

function visibleTree() {
  const out = [];
  const roots = [...S.tree.values()].filter((n) => n.kind !== "rack" && (!n.parent || !S.tree.has(n.parent)))
    .sort((a, b) => kindRank(a.kind) - kindRank(b.kind) || natCmp(a.id, b.id));
  const walk = (n, depth) => {
    out.push([n, depth]);
    if (!isOpen(n)) return;
    for (const k of n.kids) { const c = S.tree.get(k); if (c.kind !== "rack") walk(c, depth + 1); }
  };
  roots.forEach((r) => walk(r, 0));
  return out;
}
function treeKids(n) { return n.kids.filter((k) => S.tree.get(k).kind !== "rack"); }
// Small subtrees start open; big ones (dozens of PDUs) start closed and show their worst child.
function isOpen(n) { return S.expanded.has(n.id) || (!S.collapsed.has(n.id) && treeKids(n).length <= 12); }
function worstKid(n) {
  let worst = null, id = null;
  for (const k of treeKids(n)) { const f = loadFrac(k); if (f !== null && (worst === null || f > worst)) { worst = f; id = k; } }
  return [id, worst];
}
// "16 row · 8 zone": children counted per kind, never all under the first one's kind.
function kidCounts(kids) {
  const by = new Map();
  for (const k of kids) { const kind = S.tree.get(k).kind; by.set(kind, (by.get(kind) || 0) + 1); }
  return [...by].sort((a, b) => kindRank(a[0]) - kindRank(b[0])).map(([k, c]) => `${c} ${k}`).join(" · ");
}
function drawTree() {
  const rows = visibleTree(), counts = S.openCounts;
  const html = [];
  for (const [n, depth] of rows) {
    const p = v(n.id, "power_w"), lim = v(n.id, "limit_w"), hr = v(n.id, "headroom_w"), md = v(n.id, "mode");
    const th = v(n.id, "thermal_headroom_c"), p99 = v(n.id, "forecast_p99_w");
    const load = loadFrac(n.id), cls = loadClass(load), dead = md && md !== "normal" && isNum(lim) && lim <= 0;
    const kids = treeKids(n), open = isOpen(n);
    let tog = kids.length ? (open ? "▾" : "▸") : "";
    let extra = "";
    if (kids.length && !open) {
      const [wid, wf] = worstKid(n);
      extra = ` <span class="dim kc">${esc(kidCounts(kids))}${wid ? ` · worst <span class="c-${loadClass(wf)}">${esc(wid)}</span> ${pct(wf)}` : ""}</span>`;
    }
    const barW = load === null ? 0 : Math.min(100, load * 100);
    const p99mark = isNum(p99) && isNum(lim) && lim > 0 ? `<u style="left:${Math.min(100, (p99 / lim) * 100).toFixed(1)}%"></u>` : "";
    html.push(`<tr data-id="${esc(n.id)}"${n.id === S.selected ? ' class="sel"' : ""}>` +
      `<td><span style="padding-left:${depth * 14}px"></span><span class="tog">${tog}</span><span class="lvl c-${cls}">${esc(n.id)}</span>${extra}</td>` +
      `<td class="k">${esc(n.kind)}${n.feed ? " " + esc(n.feed) : ""}</td>` +
      `<td class="${md && md !== "normal" ? "mode-bad" : "k"}">${esc(md || "–")}</td>` +
      `<td class="n${dead ? " dim" : ""}">${kw(p)}</td><td class="n">${kw(lim)}</td>` +
      `<td class="bar" title="${pct(load)} of the derated limit"><div class="bar"><i style="width:${barW.toFixed(1)}%;background:${CLS_COLOR[cls]}"></i>${p99mark}</div></td>` +
      `<td class="n hr ${isNum(hr) && hr < 0 ? "c-bad" : ""}">${isNum(hr) ? kw(hr) : isNum(lim) && isNum(p) ? '<span class="dim">' + kw(lim - p) + "</span>" : "–"}</td>` +
      `<td class="n">${isNum(th) ? th.toFixed(1) : "–"}</td>` +
      `<td class="n">${counts[n.id] ? '<span class="c-bad">' + counts[n.id] + "</span>" : ""}</td></tr>`);
  }
  const tb = $("tree").tBodies[0];
  tb.innerHTML = html.length ? html.join("") : '<tr><td colspan="9" class="empty">waiting for pp.aggregates and pp.headroom…</td></tr>';
}

// Heat map: racks grouped by row, rows stacked; with many rows, rows are laid out in several blocks
// side by side so that cells stay legible (1,024 racks in 64 rows of 16 fit a quarter screen).
let layout = null;
function heatLayout(W, H) {
  let rows = S.rows.length ? S.rows.map(([id, start, n]) => ({ id, start, n })) : [];
  const covered = rows.reduce((a, r) => a + r.n, 0);
  if (covered < S.racks.length) {  // racks seen in records but not in the site file: square-ish blocks
    const rest = S.racks.length - covered, per = Math.max(8, Math.ceil(Math.sqrt(rest)));
    for (let s = covered; s < S.racks.length; s += per) rows.push({ id: "", start: s, n: Math.min(per, S.racks.length - s) });
  }
  if (!rows.length) return null;
  const cols = Math.max(...rows.map((r) => r.n)), labelW = S.rows.length ? 62 : 0, gap = 10;
  let best = null;
  for (let k = 1; k <= 12; k++) {
    const perBlock = Math.ceil(rows.length / k), bw = (W - gap * (k - 1)) / k;
    const cell = Math.min(36, Math.floor(Math.min((bw - labelW) / cols, (H - 4) / perBlock)));
    if (cell >= 2 && (!best || cell > best.cell)) best = { k, perBlock, bw, cell };
  }
  if (!best) return null;
  return { rows, cols, labelW, gap, ...best };
}
function drawHeat() {
  const cv = $("heat"), wrap = $("heatwrap"), dpr = window.devicePixelRatio || 1;
  const W = wrap.clientWidth, H = wrap.clientHeight;
  if (W < 10 || H < 10) return;
  if (cv.width !== Math.round(W * dpr) || cv.height !== Math.round(H * dpr)) { cv.width = Math.round(W * dpr); cv.height = Math.round(H * dpr); }
  const g = cv.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.fillStyle = "#141a22"; g.fillRect(0, 0, W, H);
  layout = heatLayout(W, H);
  $("heatinfo").textContent = S.racks.length ? `${S.racks.length} racks · ${S.metric === "load" ? "load / derated limit" : "hottest inlet"}` : "";
  if (!layout) { g.fillStyle = "#7d8896"; g.font = "12px sans-serif"; g.fillText("waiting for rack aggregates…", 10, 20); return; }
  const { rows, labelW, gap, perBlock, bw, cell } = layout, pad = cell >= 8 ? 1 : 0;
  g.font = `${Math.min(11, Math.max(8, cell - 2))}px ${getComputedStyle(document.body).getPropertyValue("--mono")}`;
  g.textBaseline = "middle";
  rows.forEach((r, i) => {
    const b = Math.floor(i / perBlock), y = (i % perBlock) * cell + 2, x0 = b * (bw + gap);
    if (labelW && cell >= 7) { g.fillStyle = "#7d8896"; g.fillText(r.id.slice(-10), x0, y + cell / 2); }
    for (let j = 0; j < r.n; j++) {
      const id = S.racks[r.start + j], t = heatT(id);
      g.fillStyle = t === null ? "#2a323d" : ramp(t);
      g.fillRect(x0 + labelW + j * cell, y, cell - pad, cell - pad);
      if (id === S.selected) { g.strokeStyle = "#fff"; g.lineWidth = 1.5; g.strokeRect(x0 + labelW + j * cell + 0.75, y + 0.75, cell - pad - 1.5, cell - pad - 1.5); }
    }
  });
}
function rackAt(x, y) {
  if (!layout) return null;
  const { rows, labelW, gap, perBlock, bw, cell } = layout;
  const b = Math.floor(x / (bw + gap)), xi = x - b * (bw + gap) - labelW, ri = b * perBlock + Math.floor((y - 2) / cell);
  if (xi < 0 || ri < 0 || ri >= rows.length || Math.floor((y - 2) / cell) >= perBlock) return null;
  const j = Math.floor(xi / cell), r = rows[ri];
  return j >= 0 && j < r.n ? S.racks[r.start + j] : null;
}
function drawLegend() {
  const c = document.createElement("canvas"); c.width = 180; c.height = 10;
  const g = c.getContext("2d");
  for (let x = 0; x < 180; x++) { g.fillStyle = ramp(x / 179); g.fillRect(x, 0, 1, 10); }
  const lg = $("legend"); lg.textContent = "";
  const lo = document.createElement("span"), hi = document.createElement("span");
  lo.textContent = S.metric === "load" ? "0%" : "15 °C"; hi.textContent = S.metric === "load" ? "≥100%" : "≥35 °C";
  lg.append(lo, c, hi);
  const n = document.createElement("span"); n.className = "dim"; n.style.marginLeft = "auto"; n.textContent = "grey = no data · click a rack for its chart";
  lg.append(n);
}

// Emergencies, grouped by kind and cause (the server sorts the groups: feed/UPS/power loss, breaker
// overload and cooling failure always above telemetry noise); a chip per kind hides or shows it.
function deadlineSpan(deadline, shed) {
  return `<span class="dl" data-deadline="${isNum(deadline) ? deadline : ""}" data-shed="${isNum(shed) ? shed : ""}"></span>`;
}
function drawEmergencies() {
  const byKind = new Map();
  for (const g of S.groups) byKind.set(g.kind, (byKind.get(g.kind) || 0) + g.count);
  $("evfilter").innerHTML = [...byKind].map(([k, n]) => `<button type="button" data-kind="${esc(k)}" class="${S.hiddenKinds.has(k) ? "off" : "on"}">` +
    `${esc(k.replace(/_/g, " "))} <b>${n}</b></button>`).join("");
  const em = $("emerg"), shown = S.groups.filter((g) => !S.hiddenKinds.has(g.kind));
  if (!S.groups.length) { em.innerHTML = '<div class="empty">none open</div>'; return; }
  if (!shown.length) { em.innerHTML = '<div class="empty">every open kind is filtered out</div>'; return; }
  em.innerHTML = shown.map((g) => {
    // Small groups show their events; a click on "show/hide events" flips the default.
    const key = g.kind + "|" + g.cause, open = (g.count <= 3) !== S.openGroups.has(key), e0 = g.events[0];
    const members = open && g.count > 1 ? '<div class="members">' + g.events.map((e) => `<div><span class="lv">${esc(e.levels[0] || "")}</span> ${esc(e.summary)}` +
      (isNum(e.deadline_s) ? " " + deadlineSpan(e.deadline_s, e.shed_acked_s) : "") + "</div>").join("") +
      (g.count > g.events.length ? `<div class="dim">… and ${g.count - g.events.length} more</div>` : "") + "</div>" : "";
    return `<div class="ev ${esc(g.severity)}" data-kind="${esc(g.kind)}" data-group="${esc(key)}"><div class="top">` +
      `<span class="kind ${g.severity === "critical" ? "c-bad" : "c-warn"}">${esc(g.kind.replace(/_/g, " "))}</span>` +
      (g.count > 1 ? `<span class="count">×${g.count}</span>` : "") +
      `<span class="lv">${esc(g.levels.slice(0, 4).join(", "))}${g.count > 4 ? " …" : ""}</span>` +
      deadlineSpan(g.deadline_s, g.shed_acked_s) + "</div>" +
      `<div>${g.count === 1 ? esc(e0.summary) : esc(g.cause || e0.summary)}</div>` +
      `<div class="dim">opened ${hms(g.opened_s)} · ${esc(g.severity)}${g.count > 1 ? ` · <a href="#" class="more">${open ? "hide" : "show"} events</a>` : ""}</div>${members}</div>`;
  }).join("");
}
function drawSide() {
  drawEmergencies();
  tickDeadlines();
  const caps = $("caps").tBodies[0];
  caps.innerHTML = S.caps.length ? S.caps.map((c) => `<tr><td class="lvl">${esc(c.target)}</td><td class="k">${esc(c.action.replace("_", " "))}</td>` +
    `<td class="n">${c.n_gpus}</td><td class="n">${rangeTxt(c.applied_min, c.applied_max, c.action)}</td>` +
    `<td class="n">${dur(c.expires_at_s - S.clock)}</td></tr>` +
    // The reason on a line of its own, full width: "shedding: ups-b-h1-01 at 104% of its limit" is read whole.
    `<tr class="why"><td colspan="5" class="dim reason">${esc(c.reason)}</td></tr>`).join("")
    : '<tr><td colspan="5" class="empty">no cap in force</td></tr>';
  const pd = $("pending").tBodies[0];
  pd.innerHTML = S.pending.length ? S.pending.slice().reverse().map((c) => `<tr><td class="lvl">${esc(c.target)}</td><td class="k">${esc(c.action.replace("_", " "))}</td>` +
    `<td class="n">${c.n_gpus}</td><td class="n">${rangeTxt(c.value_min, c.value_max, c.action)}</td>` +
    `<td class="n ${S.clock - c.issued_at_s > 5 ? "c-warn" : ""}">${dur(S.clock - c.issued_at_s)}</td><td class="dim">${esc(c.reason)}</td></tr>`).join("")
    : '<tr><td colspan="6" class="empty">none</td></tr>';
}
// Shadow vs live (/api/shadow): fetched every 15 s in live mode; shown only while a shadow controller has
// decided something in the window (`powerplane controller --shadow`), or while the dashboard has the twin's
// estimate of the shadow policy to show (`--shadow-estimate FILE`, written by `powerplane shadow estimate`).
function loadShadow() {
  if (S.mode !== "live" || STATIC || document.hidden) return;
  fetch("/api/shadow?seconds=600").then((r) => (r.ok ? r.json() : null)).then(drawShadow).catch(() => {});
}
function drawShadow(doc) {
  const box = $("shadowbox");
  box.hidden = !doc || (!doc.shadow_decisions && !doc.estimate);
  if (box.hidden) return;
  drawEstimate(doc.estimate);
  const held = doc.held_capped_w || {};
  $("shadowinfo").textContent = `last 10 min · ${doc.live_decisions} live, ${doc.shadow_decisions} shadow decisions · ` +
    `capped now: live ${kw(held.live)} kW, shadow ${kw(held.shadow)} kW`;
  $("shadow").tBodies[0].innerHTML = doc.actions.map((a) => `<tr><td class="k">${esc(a.action.replace("_", " "))}</td>` +
    `<td class="n">${a.agree}</td><td class="n ${a.differ ? "c-warn" : ""}">${a.differ}</td>` +
    `<td class="n">${a["shadow-only"]}</td><td class="n">${a["live-only"]}</td>` +
    `<td class="n">${kw(a.live_capped_w)}</td><td class="n">${kw(a.shadow_capped_w)}</td></tr>`).join("");
}
const EST_ROWS = [["energy_kwh", "site energy kWh", 2], ["critical_within_slo_pct", "critical within SLO %", 1],
  ["seconds_over_rating", "s over a rating", 0], ["grid_ramp_seconds_over", "grid ramp s over limit", 0],
  ["training_iterations_per_min", "training iter/min", 1], ["commands_per_min", "commands/min", 1]];
function drawEstimate(est) {
  const el = $("shadowest");
  el.hidden = !est;
  if (!est) return;
  if (est.error) { el.innerHTML = `<div class="dim">${esc(est.error)}</div>`; return; }
  const f = (x, d) => (isNum(x) ? x.toFixed(d) : "–");
  el.innerHTML = `<div class="dim">the twin's estimate, not a measurement: ${esc(est.duration_s)} s of ` +
    `${esc(est.scenario)} on site ${esc(est.site)} · live ${esc(est.live.policy)} · shadow ${esc(est.shadow.policy)}</div>` +
    `<table><thead><tr><th></th><th class="n">live</th><th class="n">shadow</th><th class="n">change</th></tr></thead><tbody>` +
    EST_ROWS.map(([k, label, d]) => `<tr><td class="k">${label}</td><td class="n">${f(est.live[k], d)}</td>` +
      `<td class="n">${f(est.shadow[k], d)}</td><td class="n">${isNum(est.change[k]) && est.change[k] > 0 ? "+" : ""}` +
      `${f(est.change[k], d)}</td></tr>`).join("") + "</tbody></table>";
}
function rangeTxt(lo, hi, action) {
  if (!isNum(lo)) return "–";
  const u = action === "power_cap" ? " W" : action === "sm_clock_lock" ? " MHz" : "";
  return (lo === hi ? lo.toFixed(0) : lo.toFixed(0) + "–" + hi.toFixed(0)) + u;
}
// Countdowns run between messages: event time advances with wall time while live or playing.
function nowEvent() {
  if (!isNum(S.clock)) return null;
  const playing = S.mode === "live" || (S.replay && S.replay.playing);
  const speed = S.mode === "live" ? 1 : S.replay ? S.replay.speed : 1;
  return S.clock + (playing ? Math.min(2, (performance.now() - S.recvWall) / 1000) * speed : 0);
}
function tickDeadlines() {
  const now = nowEvent();
  for (const el of document.querySelectorAll("#emerg .dl")) {
    const d = parseFloat(el.dataset.deadline), shed = parseFloat(el.dataset.shed);
    // Its shedding is acknowledged: the deadline was met, whatever the clock says now.
    if (isFinite(shed)) { el.textContent = "shed acked " + hms(shed); el.className = "dl c-ok"; continue; }
    if (!isFinite(d) || now === null) { el.textContent = "no deadline"; el.className = "dl dim"; continue; }
    const left = d - now;
    el.textContent = left >= 0 ? "T-" + dur(left) : "OVERDUE " + dur(-left);
    el.className = "dl " + (left < 0 ? "over" : left < 10 ? "c-bad" : left < 60 ? "c-warn" : "");
  }
}

// ---- forecast vs actual --------------------------------------------------------------------------
function chooseDefaultLevel() {
  const order = ["site", "utility", "ups", "hall", "rpp", "row", "pdu", "zone", "rack"];
  for (const k of order) {
    const cands = [...S.vals.keys()].filter((id) => S.tree.has(id) && S.tree.get(id).kind === k).sort(natCmp);
    if (cands.length) {
      // Among PDUs and racks, the one with the least headroom is the interesting one.
      cands.sort((a, b) => (headFrac(a) ?? 9) - (headFrac(b) ?? 9));
      S.selected = cands[0]; return;
    }
  }
  S.selected = null;
}
let histReq = 0;
function loadHistory(level) {
  S.histLevel = level; S.hist = [];
  if (!level) return;
  const req = ++histReq;
  fetch("/api/history?level=" + encodeURIComponent(level)).then((r) => (r.ok ? r.json() : { points: [] }))
    .then((d) => { if (req === histReq && S.histLevel === level) { S.hist = d.points || []; schedule(); } })
    .catch(() => { /* the next message retries nothing; the chart fills from deltas */ });
}
function appendHistory(rows) {
  if (!S.histLevel) return;
  for (const r of rows) {
    if (r[0] !== S.histLevel) continue;
    const c = S.cols, pt = [r[c.ts_s], r[c.power_w], r[c.forecast_p50_w], r[c.forecast_p99_w], r[c.limit_w]];
    const last = S.hist[S.hist.length - 1];
    if (last && Math.abs(last[0] - pt[0]) < 1e-3) S.hist[S.hist.length - 1] = pt;
    else if (!last || pt[0] > last[0]) S.hist.push(pt);
    if (S.hist.length > 600) S.hist.shift();
  }
}
function drawLevelSelect() {
  const sel = $("fclevel");
  const key = S.vals.size + "#" + S.tree.size + "#" + S.selected;
  if (sel.dataset.key === key) return;
  sel.dataset.key = key;
  const ids = [...S.vals.keys()].filter((id) => S.tree.has(id) && (S.tree.get(id).kind !== "rack" || id === S.selected))
    .sort((a, b) => kindRank(S.tree.get(a).kind) - kindRank(S.tree.get(b).kind) || natCmp(a, b));
  sel.innerHTML = ids.map((id) => `<option value="${esc(id)}"${id === S.selected ? " selected" : ""}>${esc(id)} (${esc(S.tree.get(id).kind)})</option>`).join("");
}
function drawChart() {
  const svg = $("fc"), W = svg.clientWidth, H = svg.clientHeight;
  if (W < 20 || H < 20) return;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const lvl = S.selected, hz = lvl ? v(lvl, "horizon_s") : null, shift = isNum(hz) ? hz : 0;
  const pts = S.hist.filter((p) => isNum(p[0]));
  $("fcinfo").textContent = lvl ? (isNum(hz) ? `forecast made ${dur(hz)} ahead, drawn at its target time · p50–p99 band` : "no forecast on pp.headroom for this level yet: actual and limit only") : "";
  if (!pts.length) { svg.innerHTML = `<text x="10" y="20">${lvl ? "no history for " + esc(lvl) + " yet" : "waiting for data…"}</text>`; return; }
  const tEnd = Math.max(pts[pts.length - 1][0] + shift, isNum(S.clock) ? S.clock : -Infinity);
  const tStart = Math.max(tEnd - 300 - shift, Math.min(pts[0][0], tEnd - 60));
  let lo = Infinity, hi = -Infinity;
  for (const p of pts) for (const x of [p[1], p[2], p[3], p[4]]) if (isNum(x)) { lo = Math.min(lo, x); hi = Math.max(hi, x); }
  if (!isFinite(lo)) { svg.innerHTML = '<text x="10" y="20">no values yet</text>'; return; }
  const span = Math.max(hi - lo, hi * 0.05, 1); lo = Math.max(0, lo - span * 0.15); hi = hi + span * 0.1;
  const L = 56, R = 10, T = 8, B = 18;
  const X = (t) => L + ((t - tStart) / (tEnd - tStart)) * (W - L - R), Y = (w) => T + (1 - (w - lo) / (hi - lo)) * (H - T - B);
  const path = (idx, dt) => {
    let d = "", pen = false;
    for (const p of pts) {
      const x = p[idx];
      if (!isNum(x) || p[0] + dt < tStart) { pen = false; continue; }
      d += (pen ? "L" : "M") + X(p[0] + dt).toFixed(1) + "," + Y(x).toFixed(1); pen = true;
    }
    return d;
  };
  let band = "";
  const bp = pts.filter((p) => isNum(p[2]) && isNum(p[3]) && p[0] + shift >= tStart);
  if (bp.length > 1) {
    band = "M" + bp.map((p) => X(p[0] + shift).toFixed(1) + "," + Y(p[3]).toFixed(1)).join("L") +
      "L" + bp.slice().reverse().map((p) => X(p[0] + shift).toFixed(1) + "," + Y(p[2]).toFixed(1)).join("L") + "Z";
  }
  const grid = [];
  for (let i = 0; i <= 4; i++) {
    const w = lo + ((hi - lo) * i) / 4, y = Y(w);
    grid.push(`<line x1="${L}" x2="${W - R}" y1="${y.toFixed(1)}" y2="${y.toFixed(1)}" stroke="#243040"/><text x="${L - 4}" y="${(y + 3).toFixed(1)}" text-anchor="end">${hi >= 1e7 ? (w / 1e6).toFixed(2) + " MW" : kw(w) + " kW"}</text>`);
  }
  for (let i = 0; i <= 5; i++) {
    const t = tStart + ((tEnd - tStart) * i) / 5;
    grid.push(`<text x="${X(t).toFixed(1)}" y="${H - 4}" text-anchor="${i === 0 ? "start" : i === 5 ? "end" : "middle"}">${hms(t)}</text>`);
  }
  const nowX = isNum(S.clock) ? X(S.clock) : null;
  svg.innerHTML = grid.join("") +
    (nowX !== null ? `<line x1="${nowX.toFixed(1)}" x2="${nowX.toFixed(1)}" y1="${T}" y2="${H - B}" stroke="#7d8896" stroke-dasharray="2,3"/>` : "") +
    (band ? `<path d="${band}" fill="#5eb1ef" fill-opacity="0.18" stroke="none"/>` : "") +
    `<path d="${path(4, 0)}" fill="none" stroke="#e5484d" stroke-width="1.5" stroke-dasharray="6,4"/>` +
    `<path d="${path(2, shift)}" fill="none" stroke="#5eb1ef" stroke-width="1.2" stroke-dasharray="3,3"/>` +
    `<path d="${path(3, shift)}" fill="none" stroke="#5eb1ef" stroke-width="1"/>` +
    `<path d="${path(1, 0)}" fill="none" stroke="#f0f4f8" stroke-width="1.6"/>` +
    `<g transform="translate(${L + 8},${T + 10})"><text fill="#f0f4f8">━ actual</text><text x="70" style="fill:#5eb1ef">┅ p50 ─ p99 forecast</text><text x="200" style="fill:#e5484d">╍ limit</text></g>`;
}

// ---- log -----------------------------------------------------------------------------------------
function addLog(entries) {
  if (!entries || !entries.length) return;
  const box = $("log"), frag = document.createDocumentFragment(), showRenew = $("showrenew").checked;
  for (const e of entries) {
    if (e.seq <= S.logSeq) continue;  // a snapshot and a delta can overlap by a few lines
    S.logSeq = e.seq;
    const d = document.createElement("div");
    // A decision's line is sent again as its acks arrive: the newer replaces the older.
    if (e.ref && (e.kind === "command" || e.kind === "renewal" || e.ref.includes("@"))) {
      const old = S.logRefs.get(e.ref);
      if (old) old.remove();
      S.logRefs.set(e.ref, d);
      if (S.logRefs.size > 800) S.logRefs.delete(S.logRefs.keys().next().value);
    }
    d.className = `${e.severity} ${e.kind}`;
    d.hidden = e.kind === "renewal" && !showRenew;
    d.innerHTML = `<span class="t">${hms(e.ts_s)}</span><span class="b">${esc(e.kind)}</span>${esc(e.text)}`;
    frag.prepend(d);
  }
  box.prepend(frag);
  while (box.childElementCount > 400) box.lastElementChild.remove();
}

// ---- replay controls -----------------------------------------------------------------------------
let dragging = false;
function drawReplay() {
  const bar = $("replaybar"), r = S.replay;
  bar.hidden = !r;
  if (!r) return;
  const sl = $("slider");
  sl.min = r.start_ms; sl.max = r.end_ms;
  if (!dragging) sl.value = r.t_ms;
  $("rstart").textContent = hms(r.start_ms / 1000); $("rend").textContent = hms(r.end_ms / 1000);
  $("rnow").textContent = hms((dragging ? +sl.value : r.t_ms) / 1000) + (r.done ? " end" : "");
  $("playbtn").textContent = r.playing ? "pause" : "play";
  if (document.activeElement !== $("speed")) $("speed").value = String(r.speed);
}
function control(body) {
  fetch("/api/replay", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) })
    .then((r) => r.json()).then((st) => { if (S.replay && st && isNum(st.t_ms)) { S.replay = st; schedule(); } })
    .catch(() => { /* the next message shows the state the server has */ });
}

// ---- wiring --------------------------------------------------------------------------------------
let es = null;
function connect() {
  if (STATIC) {  // one snapshot, then nothing on the network: a screenshot can be taken
    fetch("/api/snapshot").then((r) => r.json()).then((msg) => {
      onMessage(msg); const c = $("conn"); c.textContent = "snapshot"; c.className = "chip";
      window.__pp.static = true;
    }).catch(() => { const c = $("conn"); c.textContent = "no snapshot"; c.className = "chip bad"; });
    return;
  }
  es = new EventSource("/events");
  es.onopen = () => { const c = $("conn"); c.textContent = "connected"; c.className = "chip ok"; };
  es.onerror = () => { const c = $("conn"); c.textContent = "reconnecting"; c.className = "chip bad"; };
  es.onmessage = (ev) => {
    let msg;
    try { msg = JSON.parse(ev.data); } catch (e) { return; }
    onMessage(msg);
  };
}
// A hidden page holds no stream (and a shown one takes a fresh snapshot on reconnecting).
document.addEventListener("visibilitychange", () => {
  if (STATIC) return;
  if (document.hidden && es) { es.close(); es = null; const c = $("conn"); c.textContent = "paused (hidden)"; c.className = "chip"; }
  else if (!document.hidden && !es) connect();
});
function select(level) { if (level && level !== S.selected) { S.selected = level; loadHistory(level); schedule(); } }
function init() {
  $("tree").tBodies[0].addEventListener("click", (ev) => {
    const tr = ev.target.closest("tr[data-id]");
    if (!tr) return;
    const id = tr.dataset.id, n = S.tree.get(id);
    if (ev.target.closest(".tog") && n) {
      if (isOpen(n)) { S.expanded.delete(id); S.collapsed.add(id); } else { S.collapsed.delete(id); S.expanded.add(id); }
      schedule();
    } else select(id);
  });
  const cv = $("heat"), tip = $("tip");
  cv.addEventListener("mousemove", (ev) => {
    const r = cv.getBoundingClientRect(), id = rackAt(ev.clientX - r.left, ev.clientY - r.top);
    if (!id) { tip.hidden = true; return; }
    const p = v(id, "power_w"), l = v(id, "limit_w"), c = v(id, "inlet_c"), t = v(id, "gpu_temp_max_c");
    tip.textContent = `${id}\nload  ${kw(p)} / ${kw(l)} kW  ${pct(isNum(p) && isNum(l) && l > 0 ? p / l : null)}\ninlet ${isNum(c) ? c.toFixed(1) + " °C" : "–"}   GPU max ${isNum(t) ? t.toFixed(0) + " °C" : "–"}`;
    tip.hidden = false;
    tip.style.left = Math.min(ev.clientX - r.left + 12, r.width - 220) + "px"; tip.style.top = (ev.clientY - r.top + 12) + "px";
  });
  cv.addEventListener("mouseleave", () => { tip.hidden = true; });
  cv.addEventListener("click", (ev) => { const r = cv.getBoundingClientRect(); select(rackAt(ev.clientX - r.left, ev.clientY - r.top)); });
  for (const b of document.querySelectorAll(".tabs button")) {
    b.addEventListener("click", () => {
      S.metric = b.dataset.metric;
      for (const o of document.querySelectorAll(".tabs button")) o.classList.toggle("on", o === b);
      drawLegend(); schedule();
    });
  }
  $("fclevel").addEventListener("change", (ev) => select(ev.target.value));
  $("evfilter").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-kind]");
    if (!b) return;
    const k = b.dataset.kind;
    if (S.hiddenKinds.has(k)) S.hiddenKinds.delete(k); else S.hiddenKinds.add(k);
    schedule();
  });
  $("emerg").addEventListener("click", (ev) => {
    const a = ev.target.closest("a.more"), card = ev.target.closest("[data-group]");
    if (!a || !card) return;
    ev.preventDefault();
    const key = card.dataset.group;
    if (S.openGroups.has(key)) S.openGroups.delete(key); else S.openGroups.add(key);
    schedule();
  });
  $("showrenew").addEventListener("change", () => {
    const on = $("showrenew").checked;
    for (const d of document.querySelectorAll("#log .renewal")) d.hidden = !on;
  });
  const sl = $("slider");
  sl.addEventListener("input", () => { dragging = true; $("rnow").textContent = hms(+sl.value / 1000); });
  sl.addEventListener("change", () => { dragging = false; control({ action: "seek", t_ms: +sl.value }); });
  $("playbtn").addEventListener("click", () => control({ action: S.replay && S.replay.playing ? "pause" : "play" }));
  $("speed").addEventListener("change", (ev) => control({ action: "speed", speed: +ev.target.value }));
  window.addEventListener("resize", schedule);
  setInterval(tickDeadlines, 250);
  setInterval(loadShadow, 15000);
  setTimeout(loadShadow, 2000);
  drawLegend();
  connect();
}
init();
