"use strict";
// The dashboard: a snapshot from /api/snapshot, then live updates over /ws. No dependencies.

const HISTORY = 180; // points kept for the charts (at REFRESH_INTERVAL each)
const history = { t: [], published: [], applied: [], unpublished: [], lag: [] };
let lastDeadCount = null;
// The tenant shown (?tenant=, kept for the tab; "" for everything) and the live socket.
let tenant = new URLSearchParams(location.search).get("tenant") || sessionStorage.getItem("monitor-tenant") || "";
let socket = null;
const knownTenants = new Set(tenant ? [tenant] : []);

// The bearer token for reads too: needed when MONITOR_TENANT_TOKENS is set.
function token() { return $("token").value || sessionStorage.getItem("monitor-token") || ""; }
function authorized() { const t = token(); return t ? { Authorization: `Bearer ${t}` } : {}; }
// ``path`` restricted to the chosen tenant (``extra``: further query parameters).
function scoped(path, extra = "") {
  const query = [tenant ? `tenant=${encodeURIComponent(tenant)}` : "", extra].filter((x) => x).join("&");
  return query ? `${path}?${query}` : path;
}

function renderTenants(snap) {
  for (const t of snap.tenants || []) knownTenants.add(t.tenant);
  const select = $("tenant");
  const wanted = ["", ...[...knownTenants].sort()];
  if ([...select.options].map((o) => o.value).join(",") !== wanted.join(",")) {
    select.replaceChildren(...wanted.map((t) => { const o = el("option", t || "all"); o.value = t; return o; }));
  }
  select.value = tenant;
}

const $ = (id) => document.getElementById(id);
const fmt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString());
const rate = (n) => (n === null || n === undefined ? "–" : Number(n).toFixed(1));
function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}
const percent = (ratio) => (ratio === null || ratio === undefined ? "–" : `${(ratio * 100).toFixed(ratio && ratio < 0.001 ? 2 : 1)} %`);
function bytes(n) {
  if (!n && n !== 0) return "–";
  const units = ["B", "KiB", "MiB", "GiB"]; let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}
function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}
function badge(level) { const b = el("span", level, "badge"); b.dataset.level = level; return b; }
function fill(tableId, rows, emptyText) {
  const body = $(tableId).querySelector("tbody");
  body.replaceChildren();
  if (!rows.length) {
    const tr = el("tr"); const td = el("td", emptyText, "empty");
    td.colSpan = $(tableId).querySelectorAll("th").length; tr.append(td); body.append(tr); return;
  }
  for (const cells of rows) {
    const tr = el("tr");
    for (const cell of cells) {
      if (cell instanceof Node) { const td = el("td"); td.append(cell); tr.append(td); }
      else if (cell && typeof cell === "object") { const td = el("td", cell.text, cell.cls); tr.append(td); }
      else tr.append(el("td", cell));
    }
    body.append(tr);
  }
}
const num = (v) => ({ text: v, cls: "num" });

function render(snap) {
  const overall = snap.status.overall;
  $("overall").textContent = overall.level; $("overall").dataset.level = overall.level;
  $("overall-reason").textContent = overall.reason;
  $("updated").textContent = `updated ${new Date(snap.at).toLocaleTimeString()} · collected in ${snap.collect_ms} ms`;

  renderTenants(snap);
  const outbox = snap.outbox.streams;
  // A tenant's view has no outbox totals: its own backlog is in its summary.
  const unpublished = tenant || snap.redis === null
    ? (snap.tenants || []).reduce((a, t) => a + t.unpublished, 0)
    : outbox.reduce((a, r) => a + r.unpublished, 0);
  const oldest = Math.max(0, ...outbox.map((r) => r.oldest_unpublished_age_s || 0));
  const publishRate = outbox.reduce((a, r) => a + (r.publish_rate_per_s || 0), 0);
  const groups = snap.streams.flatMap((s) => s.groups.map((g) => ({ stream: s, g })));
  const lag = groups.reduce((a, x) => a + x.g.lag_entries, 0);
  const pending = groups.reduce((a, x) => a + x.g.pending, 0);
  const lagSeconds = Math.max(0, ...groups.map((x) => x.g.lag_seconds));
  const applyRate = snap.projections.reduce((a, p) => a + (p.processing_rate_per_s || 0), 0);

  $("card-unpublished").textContent = fmt(unpublished);
  $("card-oldest").textContent = unpublished ? `oldest ${age(oldest)}` : "caught up";
  $("card-publish-rate").textContent = rate(publishRate);
  $("card-relays").textContent = `${snap.relays.filter((r) => !r.stopped).length} relay(s) running`;
  $("card-lag").textContent = fmt(lag);
  $("card-lag-seconds").textContent = lag ? `oldest ${age(lagSeconds)}` : "caught up";
  $("card-apply-rate").textContent = rate(applyRate);
  $("card-pending").textContent = `${fmt(pending)} pending`;
  // Processing latency (emit → applied) and handler errors over the window, worst projection.
  const latencies = snap.projections.filter((p) => p.processing_latency);
  const slowest = latencies.reduce((a, p) => (!a || p.processing_latency.p95_s > a.processing_latency.p95_s ? p : a), null);
  $("card-latency").textContent = slowest ? age(slowest.processing_latency.p95_s) : "–";
  $("card-latency-sub").textContent = slowest
    ? `${slowest.name} · max ${age(slowest.processing_latency.max_s)} · ${fmt(slowest.processing_latency.events)} events`
    : "no event applied in the window";
  const windows = snap.projections.map((p) => p.window).filter((w) => w);
  const applied = windows.reduce((a, w) => a + w.applied, 0);
  const failed = windows.reduce((a, w) => a + w.failures, 0);
  const retried = windows.reduce((a, w) => a + w.retries, 0);
  $("card-errors").textContent = windows.length ? percent(applied + failed ? failed / (applied + failed) : null) : "–";
  $("card-errors-sub").textContent = windows.length
    ? `${fmt(failed)} failed · ${fmt(retried)} retried in ${age(Math.max(...windows.map((w) => w.span_s)))}`
    : "collecting history";
  $("card-dead").textContent = fmt(snap.dead_letters.count);
  // A tenant's view has no server figures (the server is shared).
  const redis = snap.redis || { nodes: [] };
  $("card-memory").textContent = snap.redis ? bytes(redis.used_memory_bytes) : "–";
  $("card-redis").textContent = snap.redis ? `${fmt(redis.connected_clients)} clients · ${fmt(redis.instantaneous_ops_per_sec)} ops/s · up ${age(redis.uptime_seconds)}` : "";
  $("card-hit-ratio").textContent = snap.redis ? `hit ratio ${percent(redis.hit_ratio)} (${fmt(redis.keyspace_hits)} hits, ${fmt(redis.keyspace_misses)} misses)` : "";
  // On a Redis Cluster, each primary's memory: one full node refuses its own streams' writes.
  const nodes = redis.nodes || [];
  $("card-nodes").textContent = nodes
    .map((n) => (n.error ? `${n.node}: DOWN` : `${n.node}: ${bytes(n.used_memory_bytes)}`))
    .join(" · ");

  push(snap.at, publishRate, applyRate, unpublished, lag + pending);
  drawChart($("chart-throughput"), [history.published, history.applied]);
  drawChart($("chart-lag"), [history.unpublished, history.lag]);

  const blocker = snap.outbox.oldest_write_transaction;
  const holdback = $("holdback");
  if (blocker && blocker.age_s > 5) {
    holdback.hidden = false;
    const who = blocker.pid === null ? `prepared transaction '${blocker.gid}'` : `pid ${blocker.pid}`;
    holdback.textContent = `Oldest write transaction of this database: ${who}, open ${age(blocker.age_s)} (${blocker.state}). Events committed after it started wait until it ends.`;
  } else holdback.hidden = true;

  fill("table-status", snap.status.components.map((c) => [c.component, badge(c.level), c.reason]), "no components yet");
  // Services a live relay is publishing again because Redis lost events (decision 0011).
  const republishing = {};
  for (const r of snap.relays) if (!r.stopped) Object.assign(republishing, r.republishing || {});
  fill("table-outbox", outbox.map((r) => [r.stream, num(fmt(r.unpublished) + (r.unpublished_capped ? "+" : "")),
    num(age(r.oldest_unpublished_age_s)), num(fmt(r.published)), num(rate(r.publish_rate_per_s)),
    republishing[r.stream] ? { text: `publishing again from ${republishing[r.stream]}: Redis lost events`, cls: "error-text" }
      : r.cursor ? `${r.cursor.txid}:${r.cursor.position}` : "not started"]), "no events in the outbox yet");
  fill("table-relays", snap.relays.map((r) => [r.instance, `${r.host} / ${r.pid}`, r.streams.join(", ") || "–",
    num(r.stopped ? "stopped" : age(r.heartbeat_age_s)), num(fmt(r.published)),
    r.redis_losses ? { text: fmt(r.redis_losses), cls: "num error-text" } : num("0"),
    r.last_error ? { text: r.last_error, cls: "error-text" } : "–"]), "no relay running");
  const streamRows = [];
  for (const s of snap.streams) {
    if (s.error) { streamRows.push([s.key, num("–"), { text: s.error, cls: "error-text" }, "", "", "", "", ""]); continue; }
    if (!s.groups.length) streamRows.push([s.key, num(fmt(s.length)), "–", "", "", "", "", ""]);
    for (const g of s.groups) {
      streamRows.push([s.key, num(fmt(s.length)), g.name, num(fmt(g.lag_entries) + (g.lag_exact ? "" : "≈")),
        num(age(g.lag_seconds)), num(fmt(g.pending)), num(g.pending ? age(g.oldest_pending_age_s) : "–"),
        g.consumers.map((c) => `${c.name} (${age(c.idle_ms / 1000)})`).join(", ") || "–"]);
    }
  }
  fill("table-streams", streamRows, "no streams yet");
  fill("table-projections", snap.projections.map((p) => [p.name, p.state, num(fmt(p.processed)),
    num(rate(p.processing_rate_per_s)),
    ...(p.processing_latency
      ? [p.processing_latency.p50_s, p.processing_latency.p95_s, p.processing_latency.max_s].map((s) => num(age(s)))
      : [num("–"), num("–"), num("–")]),
    p.window && p.window.failures ? { text: percent(p.window.error_ratio), cls: "num error-text" } : num(p.window ? percent(p.window.error_ratio) : "–"),
    num(`${p.window ? fmt(p.window.retries) : "–"} (${fmt(p.retries)})`),
    p.dead_lettered ? { text: fmt(p.dead_lettered), cls: "num error-text" } : num("0"),
    p.consumers.map((c) => `${c.consumer} (${c.stopped ? "stopped" : age(c.heartbeat_age_s)})`).join(", ") || "–"]),
    "no projection running");

  // Consumers of the document's client (RedisStreamsClient.consume_messages), from their
  // heartbeats in Redis.
  fill("table-consumers", (snap.consumers || []).map((c) => [c.group, `${c.consumer} (${c.host} / ${c.pid})`,
    c.streams.join(", "), num(fmt(c.processed)), num(rate(c.processing_rate_per_s)), num(fmt(c.reclaimed)),
    c.dead_lettered ? { text: fmt(c.dead_lettered), cls: "num error-text" } : num("0"),
    c.stopped ? "stopped" : (c.heartbeat_age_s === null ? "–" : age(c.heartbeat_age_s)),
    c.last_error ? { text: c.last_error, cls: "error-text" } : "–"]), "no client consumer");

  // Partitioned services (decision 0014): who owns each partition, and how far behind it is.
  fill("table-partitions", (snap.partitions || []).map((p) => [p.projection,
    `${p.service} ${p.epoch}.${p.partition}`, p.drained ? "drained" : (p.owner || "–"),
    num(fmt(p.fence)), num(fmt(p.lag_entries)),
    num(p.lease_left_s === null ? "–" : `${Math.max(0, p.lease_left_s).toFixed(1)} s`)]),
    "no partitioned service");

  if (snap.dead_letters.count !== lastDeadCount) { lastDeadCount = snap.dead_letters.count; loadDeadLetters(); loadAudit(); }
}

function push(at, published, applied, unpublished, lag) {
  const t = Date.parse(at);
  if (history.t.length && history.t[history.t.length - 1] === t) return;
  history.t.push(t); history.published.push(published); history.applied.push(applied);
  history.unpublished.push(unpublished); history.lag.push(lag);
  for (const key of Object.keys(history)) if (history[key].length > HISTORY) history[key].shift();
}

function drawChart(canvas, series) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 640, height = canvas.clientHeight || 180;
  canvas.width = width * ratio; canvas.height = height * ratio;
  const ctx = canvas.getContext("2d"); ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, width, height);
  const pad = { l: 48, r: 8, t: 8, b: 18 };
  const max = Math.max(1, ...series.flat());
  const n = Math.max(2, history.t.length);
  ctx.strokeStyle = "#263241"; ctx.fillStyle = "#8193a8"; ctx.font = "11px system-ui"; ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = pad.t + (height - pad.t - pad.b) * (i / 4);
    ctx.beginPath(); ctx.moveTo(pad.l, y); ctx.lineTo(width - pad.r, y); ctx.stroke();
    const tick = max * (1 - i / 4);
    ctx.fillText(max < 10 ? tick.toFixed(1) : fmt(Math.round(tick)), 4, y + 4);
  }
  if (history.t.length > 1) {
    const span = (history.t[history.t.length - 1] - history.t[0]) / 1000;
    ctx.fillText(`last ${age(span)}`, pad.l, height - 4);
  }
  const colors = ["#58a6ff", "#bc8cff"];
  series.forEach((values, k) => {
    ctx.strokeStyle = colors[k]; ctx.lineWidth = 2; ctx.beginPath();
    values.forEach((v, i) => {
      const x = pad.l + (width - pad.l - pad.r) * (i / (n - 1));
      const y = pad.t + (height - pad.t - pad.b) * (1 - v / max);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  });
}

async function loadDeadLetters() {
  try {
    const response = await fetch(scoped("/api/dead-letters", "limit=50"), { headers: authorized() });
    if (!response.ok) throw new Error(`${response.status}`);
    const body = await response.json();
    fill("table-dead", body.dead_letters.map((d) => {
      const button = el("button", "Replay");
      button.dataset.id = d.id;
      button.addEventListener("click", () => replay(d.id, button));
      return [d.id, d.source_stream, d.group, d.event_type, num(d.attempts), { text: d.error, cls: "error-text" }, num(age(d.age_s)), button];
    }), "no dead letters");
    if (body.total > body.dead_letters.length) $("dlq-message").textContent = `showing the newest ${body.dead_letters.length} of ${body.total}`;
  } catch (error) { $("dlq-message").textContent = `could not load dead letters (${error.message})`; }
}

async function replay(id, button) {
  if (token()) sessionStorage.setItem("monitor-token", token());
  button.disabled = true;
  const response = await fetch(scoped(`/api/dead-letters/${encodeURIComponent(id)}/replay`), {
    method: "POST", headers: { Authorization: `Bearer ${token()}` },
  });
  const body = await response.json().catch(() => ({}));
  if (response.ok) { $("dlq-message").textContent = `replayed ${id} → ${body.new_entry_ids.join(", ")}`; lastDeadCount = null; loadDeadLetters(); loadAudit(); }
  else { $("dlq-message").textContent = `replay refused: ${body.detail || response.status}`; button.disabled = false; }
}

async function loadAudit() {
  try {
    const response = await fetch("/api/audit?limit=20", { headers: authorized() });
    if (!response.ok) throw new Error(`${response.status}`);
    const body = await response.json();
    fill("table-audit", body.entries.map((a) => {
      const stage = a.details && a.details.stage ? ` (${a.details.stage})` : "";
      const counts = Object.entries(a.counts).map(([k, v]) => `${k}=${v}`).join(" ");
      return [new Date(a.at).toLocaleString(), a.actor, a.via, a.action + stage, a.target || "", counts, a.host || ""];
    }), "no administrative action recorded");
  } catch (error) { $("audit-message").textContent = `could not load the audit log (${error.message})`; }
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  // A browser cannot set headers on a WebSocket: the token travels as the subprotocols
  // "bearer, <token>" (the monitor answers "bearer").
  const url = `${scheme}://${location.host}${scoped("/ws")}`;
  const current = token() ? new WebSocket(url, ["bearer", token()]) : new WebSocket(url);
  socket = current;
  current.onopen = () => { $("connection").textContent = tenant ? `live · tenant ${tenant}` : "live"; };
  current.onmessage = (message) => { const data = JSON.parse(message.data); if (data.type === "snapshot") render(data.snapshot); };
  current.onclose = () => {
    if (socket !== current) return; // replaced on purpose (another tenant or token)
    $("connection").textContent = "reconnecting…"; setTimeout(connect, 2000);
  };
}

// A new socket for another tenant or token (the old one closes without reconnecting).
function reconnect() {
  const previous = socket;
  socket = null;
  if (previous) previous.close();
  connect();
}

$("tenant").addEventListener("change", () => {
  tenant = $("tenant").value;
  sessionStorage.setItem("monitor-tenant", tenant);
  lastDeadCount = null; // the next snapshot reloads the dead letters of this tenant
  reconnect();
});
$("token").addEventListener("change", () => { sessionStorage.setItem("monitor-token", token()); reconnect(); loadAudit(); });

$("token").value = sessionStorage.getItem("monitor-token") || "";
fetch(scoped("/api/snapshot"), { headers: authorized() }).then((r) => r.json()).then(render).catch(() => {}).finally(connect);
loadAudit();
setInterval(loadAudit, 15000);
