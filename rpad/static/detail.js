// rpad dashboard: one client's page, at #/clients/<id> (a deep link).
//
// What an operator opening a failing robot's page at 3 a.m. needs first, in that order: is it
// up, since when, why it went down and when it was last heard from; how available it has been
// (24 h / 7 d / 30 d, rpad's own downtime apart); its status timeline with reasons; then its
// metrics over 1 h / 24 h / 7 d / 30 d (CPU, memory, disk, network, load), and who it is (tags,
// metadata, version, address) with its recent events.
//
// Data: GET /api/v1/clients/<id> (the view and uptime), /uptime (the timeline), /events and
// /metrics (the chart's range, from the history tier that holds it). The page re-reads the
// client every POLL_MS: each new heartbeat's metrics are added to the charts as they come, and
// the figures and timeline are re-read when its status changes. Charts are SVG drawn here: no
// library, no CDN, works offline and under the page's Content-Security-Policy.

import { tokenFromPage } from "./rpad-client.js";

const POLL_MS = 2000;
const RANGES = {
  "1h": { seconds: 3600, step: 30 },
  "24h": { seconds: 86400, step: 60 },
  "7d": { seconds: 7 * 86400, step: 900 },
  "30d": { seconds: 30 * 86400, step: 3600 },
};
const METRICS = ["cpuUsagePercent", "memoryUsageBytes", "memoryTotalBytes", "diskUsageBytes",
  "diskTotalBytes", "networkRxInstantBps", "networkTxInstantBps", "load1", "load5", "load15"];
const CHARTS = [
  { id: "cpu", title: "CPU", unit: "%", max: 100, series: [{ name: "CPU", value: (m) => m.cpuUsagePercent }] },
  { id: "memory", title: "Memory", unit: "%", max: 100,
    series: [{ name: "used", value: (m) => ratio(m.memoryUsageBytes, m.memoryTotalBytes) }] },
  { id: "disk", title: "Disk", unit: "%", max: 100,
    series: [{ name: "used", value: (m) => ratio(m.diskUsageBytes, m.diskTotalBytes) }] },
  { id: "network", title: "Network", unit: "B/s",
    series: [{ name: "rx", value: (m) => m.networkRxInstantBps }, { name: "tx", value: (m) => m.networkTxInstantBps }] },
  { id: "load", title: "Load", unit: "",
    series: [{ name: "1 min", value: (m) => m.load1 }, { name: "5 min", value: (m) => m.load5 }, { name: "15 min", value: (m) => m.load15 }] },
];
const SVG = "http://www.w3.org/2000/svg";

const page = {
  id: null, range: "1h", timer: null, client: null, series: null, lastBeat: null,
  lastStatus: null, seq: 0,
};

function ratio(a, b) {
  return typeof a === "number" && b > 0 ? (100 * a) / b : null;
}

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

function token() {
  return tokenFromPage() || "";
}

async function api(path) {
  const resp = await fetch(path, { headers: { Authorization: `Bearer ${token()}`, Accept: "application/json" }, cache: "no-store" });
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) throw Object.assign(new Error(body.message || `HTTP ${resp.status}`), { status: resp.status });
  return body;
}

function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

function span(seconds) {
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} d`;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "–";
}

function human(n, unit) {
  if (n === null || n === undefined) return "–";
  if (unit === "B/s") {
    const units = ["B/s", "KiB/s", "MiB/s", "GiB/s"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${n >= 100 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
  }
  if (unit === "%") return `${n.toFixed(n < 10 ? 1 : 0)}%`;
  return n.toFixed(2);
}

// -- routing -------------------------------------------------------------------------------------

function route() {
  const m = /^#\/clients\/(.+)$/.exec(location.hash);
  const id = m ? decodeURIComponent(m[1]) : null;
  document.body.classList.toggle("detail-open", id !== null);
  const section = document.getElementById("detail");
  section.hidden = id === null;
  clearInterval(page.timer);
  page.timer = null;
  if (id === null) {
    page.id = null;
    section.replaceChildren();
    return;
  }
  if (page.id !== id) {
    page.id = id;
    page.client = null;
    page.series = null;
    page.lastBeat = null;
    page.lastStatus = null;
    skeleton(section, id);
  }
  load(true);
  page.timer = setInterval(() => load(false), POLL_MS);
}

function skeleton(section, id) {
  const back = el("a", "detail-back", "← All clients");
  back.href = "#/";
  const head = el("header", "detail-head");
  head.append(back, el("h1", "detail-title", id), el("div", "detail-status"));
  const uptime = el("section", "detail-card detail-uptime");
  uptime.append(el("h2", null, "Availability"), el("div", "uptime-figures"), el("p", "uptime-note"));
  const timeline = el("section", "detail-card detail-timeline");
  timeline.append(el("h2", null, "Status timeline"), el("div", "timeline-bar"), el("div", "timeline-legend"));
  const charts = el("section", "detail-card detail-charts");
  const ranges = el("div", "segmented detail-ranges");
  ranges.setAttribute("role", "group");
  ranges.setAttribute("aria-label", "Range");
  for (const r of Object.keys(RANGES)) {
    const b = el("button", null, r);
    b.type = "button";
    b.dataset.range = r;
    b.setAttribute("aria-pressed", String(r === page.range));
    b.addEventListener("click", () => {
      page.range = r;
      for (const o of ranges.children) o.setAttribute("aria-pressed", String(o === b));
      page.series = null;
      loadMetrics();
      loadTimeline();
    });
    ranges.append(b);
  }
  const chartHead = el("div", "charts-head");
  chartHead.append(el("h2", null, "Metrics"), ranges);
  const grid = el("div", "chart-grid");
  for (const c of CHARTS) {
    const box = el("figure", "chart");
    box.dataset.chart = c.id;
    box.append(el("figcaption", null, c.title), svg("svg", { viewBox: "0 0 600 160", role: "img" }), el("div", "chart-legend"));
    grid.append(box);
  }
  charts.append(chartHead, grid);
  const facts = el("section", "detail-card detail-facts");
  facts.append(el("h2", null, "About"), el("dl", "facts"));
  const events = el("section", "detail-card detail-events");
  events.append(el("h2", null, "Recent events"), el("ol", "event-list"));
  section.replaceChildren(head, uptime, timeline, charts, facts, events);
}

// -- loading -------------------------------------------------------------------------------------

async function load(first) {
  const id = page.id;
  let c;
  try {
    c = await api(`/api/v1/clients/${encodeURIComponent(id)}`);
  } catch (err) {
    if (id !== page.id) return;
    const status = document.querySelector("#detail .detail-status");
    if (status) {
      status.dataset.status = "unknown";
      status.textContent = err.status === 404 ? "No client with this id (removed?)" : `Cannot load: ${err.message}`;
    }
    return;
  }
  if (id !== page.id) return;
  const statusChanged = page.lastStatus !== null && page.lastStatus !== c.status;
  page.client = c;
  renderHead(c);
  renderFacts(c);
  if (c.uptime) renderUptime(c.uptime);
  if (first || statusChanged) {
    loadTimeline();
    loadEvents();
  }
  if (first || !page.series) loadMetrics();
  else if (c.lastHeartbeatAt && c.lastHeartbeatAt !== page.lastBeat && c.latestMetrics) addSample(c);
  page.lastStatus = c.status;
  page.lastBeat = c.lastHeartbeatAt;
}

async function loadMetrics() {
  const id = page.id, range = RANGES[page.range], seq = ++page.seq;
  const to = Date.now() / 1000;
  const q = `from=${(to - range.seconds).toFixed(3)}&to=${(to + range.step).toFixed(3)}&step=${range.step}&names=${METRICS.join(",")}`;
  try {
    const body = await api(`/api/v1/clients/${encodeURIComponent(id)}/metrics?${q}`);
    if (id !== page.id || seq !== page.seq) return;
    page.series = body;
    drawCharts();
  } catch (err) {
    if (id === page.id) for (const fig of document.querySelectorAll("#detail .chart")) fig.dataset.error = err.message;
  }
}

async function loadTimeline() {
  const id = page.id;
  try {
    const body = await api(`/api/v1/clients/${encodeURIComponent(id)}/uptime?timeline=${page.range}`);
    if (id !== page.id) return;
    renderUptime(body.uptime, body.rpadPeriods);
    renderTimeline(body.timeline);
  } catch (_) { /* the figures stay as they were */ }
}

async function loadEvents() {
  const id = page.id;
  try {
    const body = await api(`/api/v1/clients/${encodeURIComponent(id)}/events?limit=20`);
    if (id !== page.id) return;
    const list = document.querySelector("#detail .event-list");
    list.replaceChildren(...body.events.map((e) => {
      const li = el("li", "event");
      li.dataset.status = e.status;
      li.append(el("span", "event-status", e.status === "online" ? "Online" : "Offline"),
        el("span", "event-reason", e.reason || ""), el("time", "event-time", when(e.at)));
      return li;
    }));
    if (!body.events.length) list.replaceChildren(el("li", "event-none", "No status changes recorded yet."));
  } catch (_) { /* keep the list */ }
}

// -- rendering -----------------------------------------------------------------------------------

function renderHead(c) {
  document.querySelector("#detail .detail-title").textContent = c.name || c.clientId;
  const status = document.querySelector("#detail .detail-status");
  status.dataset.status = c.status;
  let text;
  if (c.status === "online") text = `Online since ${when(c.onlineSince)} · last heartbeat ${ago(c.lastHeartbeatAt)}`;
  else if (c.status === "offline") text = `Offline since ${when(c.offlineSince)} (${ago(c.offlineSince)}) · last heartbeat ${ago(c.lastHeartbeatAt)}`;
  else text = "Registered, never heard from";
  if (c.reportedStatus && c.status === "online") text += ` · reports “${c.reportedStatus}”`;
  status.textContent = text;
  document.title = `${c.status === "offline" ? "OFFLINE · " : ""}${c.name || c.clientId} · rpad`;
}

function renderUptime(uptime, periods) {
  const box = document.querySelector("#detail .uptime-figures");
  if (!box) return;
  box.replaceChildren(...Object.entries(uptime).map(([w, a]) => {
    const f = el("div", "uptime");
    f.dataset.window = w;
    f.append(el("span", "uptime-window", w),
      el("span", "uptime-value", a.percent === null ? "–" : `${a.percent.toFixed(a.percent >= 99.95 || a.percent < 10 ? 1 : 2)}%`),
      el("span", "uptime-detail", `offline ${span(a.offlineSeconds)}`));
    f.title = `online ${span(a.onlineSeconds)}, offline ${span(a.offlineSeconds)}, unknown ${span(a.unknownSeconds)}; rpad down ${span(a.rpadDownSeconds)}, start-up grace ${span(a.graceSeconds)} (not counted)`;
    return f;
  }));
  const note = document.querySelector("#detail .uptime-note");
  const month = uptime["30d"];
  if (note && month) {
    note.textContent = month.rpadDownSeconds + month.graceSeconds > 0
      ? `Not counted against this client: rpad itself was down ${span(month.rpadDownSeconds)} and in start-up grace ${span(month.graceSeconds)} over 30 days${periods && periods.length ? ` (${periods.length} periods)` : ""}.`
      : "rpad itself was up the whole time.";
  }
}

function renderTimeline(tl) {
  const bar = document.querySelector("#detail .timeline-bar");
  if (!bar || !tl.segments.length) return;
  const t0 = Date.parse(tl.segments[0].start), t1 = Date.parse(tl.segments[tl.segments.length - 1].end);
  bar.replaceChildren(...tl.segments.map((s) => {
    const a = Date.parse(s.start), b = Date.parse(s.end);
    const seg = el("span", "segment");
    seg.dataset.state = s.state;
    seg.style.setProperty("width", `${(100 * (b - a)) / Math.max(1, t1 - t0)}%`);
    const label = { online: "online", offline: "offline", unknown: "no data", rpad_down: "rpad down", grace: "rpad start-up grace" }[s.state];
    seg.title = `${label}${s.reason ? ` (${s.reason})` : ""}: ${when(s.start)} – ${when(s.end)}, ${span((b - a) / 1000)}`;
    return seg;
  }));
  const legend = document.querySelector("#detail .timeline-legend");
  legend.replaceChildren(el("span", null, when(tl.segments[0].start)), el("span", null, `last ${tl.window}`), el("span", null, "now"));
}

function renderFacts(c) {
  const dl = document.querySelector("#detail .facts");
  const rows = [["Client id", c.clientId], ["Name", c.name], ["Reported status", c.reportedStatus],
    ["Version", c.version], ["IP address", c.ipAddress], ["OS", c.osType],
    ["Tags", (c.tags || []).join(", ")], ["Registered", when(c.registeredAt)],
    ["Heartbeat timeout", `${c.heartbeatTimeoutSeconds} s`],
    ["Clock skew", c.clockSkewSeconds === null ? null : `${c.clockSkewSeconds} s`]];
  for (const [k, v] of Object.entries(c.metadata || {})) rows.push([`metadata.${k}`, typeof v === "string" ? v : JSON.stringify(v)]);
  dl.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", null, k), el("dd", null, v === null || v === undefined || v === "" ? "–" : String(v))]));
}

// -- charts --------------------------------------------------------------------------------------

function bucketValues(body, chart) {
  // Per series: [min[], avg[], max[]] computed from the stored metrics of each bucket.
  const m = body.metrics;
  const n = body.points;
  return chart.series.map((s) => {
    const out = { min: new Array(n).fill(null), avg: new Array(n).fill(null), max: new Array(n).fill(null) };
    for (const stat of ["min", "avg", "max"]) {
      for (let i = 0; i < n; i++) {
        const sample = {};
        for (const name of METRICS) sample[name] = m[name] ? m[name][stat][i] : null;
        if (stat !== "avg") {  // totals: their average is what ratios divide by
          sample.memoryTotalBytes = m.memoryTotalBytes ? m.memoryTotalBytes.avg[i] : null;
          sample.diskTotalBytes = m.diskTotalBytes ? m.diskTotalBytes.avg[i] : null;
        }
        const v = s.value(sample);
        out[stat][i] = typeof v === "number" && Number.isFinite(v) ? v : null;
      }
    }
    return out;
  });
}

function addSample(c) {
  // A heartbeat's metrics into the bucket it falls in (the chart moves with heartbeats).
  const body = page.series;
  const t = Date.parse(c.lastHeartbeatAt) / 1000;
  let i = Math.floor((t - body.start) / body.step);
  if (i < 0) return;
  if (i >= body.points) {  // the range moved on: shift the grid
    const shift = i - body.points + 1;
    body.start += shift * body.step;
    body.count.splice(0, shift);
    body.count.push(...new Array(shift).fill(0));
    for (const name of Object.keys(body.metrics)) {
      for (const stat of ["min", "avg", "max"]) {
        body.metrics[name][stat].splice(0, shift);
        body.metrics[name][stat].push(...new Array(shift).fill(null));
      }
    }
    i = body.points - 1;
  }
  const n = body.count[i];
  for (const [name, v] of Object.entries(c.latestMetrics)) {
    const s = body.metrics[name];
    if (!s || typeof v !== "number") continue;
    s.min[i] = s.min[i] === null ? v : Math.min(s.min[i], v);
    s.max[i] = s.max[i] === null ? v : Math.max(s.max[i], v);
    s.avg[i] = s.avg[i] === null ? v : (s.avg[i] * n + v) / (n + 1);
  }
  body.count[i] = n + 1;
  drawCharts();
}

function drawCharts() {
  const body = page.series;
  if (!body) return;
  const W = 600, H = 160, PAD = 4;
  for (const chart of CHARTS) {
    const fig = document.querySelector(`#detail .chart[data-chart="${chart.id}"]`);
    if (!fig) continue;
    delete fig.dataset.error;
    const root = fig.querySelector("svg");
    const data = bucketValues(body, chart);
    let top = chart.max || 0;
    if (!chart.max) for (const s of data) for (const v of s.max) if (v !== null && v > top) top = v;
    top = top > 0 ? top * (chart.max ? 1 : 1.1) : 1;
    const x = (i) => (W * (i + 0.5)) / body.points;
    const y = (v) => H - PAD - ((H - 2 * PAD) * Math.min(v, top)) / top;
    const parts = [svg("line", { x1: 0, x2: W, y1: H - PAD, y2: H - PAD, class: "axis" })];
    data.forEach((s, k) => {
      let band = "", line = "", pen = false, hasAny = false;
      const lower = [];
      for (let i = 0; i < body.points; i++) {
        if (s.avg[i] === null) { pen = false; continue; }
        hasAny = true;
        line += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(s.avg[i]).toFixed(1)}`;
        pen = true;
        band += `${band ? "L" : "M"}${x(i).toFixed(1)},${y(s.max[i]).toFixed(1)}`;
        lower.push(`L${x(i).toFixed(1)},${y(s.min[i]).toFixed(1)}`);
      }
      if (!hasAny) return;
      if (band) parts.push(svg("path", { d: band + lower.reverse().join("") + "Z", class: `band band-${k}` }));
      parts.push(svg("path", { d: line, class: `line line-${k}` }));
      // A bucket with no neighbour (or the latest) is a dot: a line needs two.
      for (let i = 0; i < body.points; i++) {
        if (s.avg[i] === null) continue;
        const alone = (i === 0 || s.avg[i - 1] === null) && (i === body.points - 1 || s.avg[i + 1] === null);
        const latest = s.avg.slice(i + 1).every((v) => v === null);
        if (alone || latest) parts.push(svg("circle", { cx: x(i).toFixed(1), cy: y(s.avg[i]).toFixed(1), r: 3, class: `dot dot-${k}` }));
      }
    });
    root.replaceChildren(...parts);
    const last = (s) => { for (let i = s.avg.length - 1; i >= 0; i--) if (s.avg[i] !== null) return s.avg[i]; return null; };
    const legend = fig.querySelector(".chart-legend");
    legend.replaceChildren(...chart.series.map((s, k) => {
      const item = el("span", `legend legend-${k}`, `${s.name} ${human(last(data[k]), chart.unit)}`);
      return item;
    }), el("span", "legend-scale", `max ${human(Math.max(0, ...data.flatMap((s) => s.max.filter((v) => v !== null))), chart.unit)} · ${page.range}`));
    fig.dataset.points = String(data[0].avg.filter((v) => v !== null).length);
  }
}

window.addEventListener("hashchange", route);
route();
