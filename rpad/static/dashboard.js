// rpad dashboard: the client list, live over the hub's WebSocket (SPEC §8).
//
// Data flow: a windowed subscription to `servers` (SERVER_WINDOW: the page the filter, search,
// sort and pager ask for, with the fleet's counts, pushed by rpad only when that page changed)
// is the source of truth, so a fleet of 100,000 clients costs the page its 50 rows;
// `notifications` become toasts. (SERVER_LIST and deltas are still understood.) Rendering is
// batched per animation frame and only touches the DOM nodes whose text changed.

import { RpadClient, backoffDelay, clearToken, saveToken, tokenFromPage } from "./rpad-client.js";
import { Silences } from "./silences.js";
import { Consoles, consoleState, mayExec } from "./console.js";
import { TasksView } from "./tasks.js";

const TOPICS = ["servers", "notifications"];
const PAGE_SIZE = 50;
const SEARCH_DELAY_MS = 200;
const CONFIG_URL = "/api/v1/dashboard-config";
const MAX_ATTEMPTS = 10;
const MAX_TOASTS = 5;
const TOAST_SECONDS = 6;
const TICK_MS = 1000;
const STATUS_ORDER = { offline: 0, unknown: 1, online: 2 };
const SORT_DEFAULT_DIR = { status: "asc", name: "asc", version: "desc", heartbeat: "desc", cpu: "desc", memory: "desc" };

const $ = (id) => document.getElementById(id);
const silences = new Silences({ onChange: () => scheduleRender() });

const ui = {
  conn: $("conn"), connText: $("conn-text"), retry: $("retry"), changeToken: $("change-token"),
  rows: $("client-rows"), empty: $("empty"), emptyTitle: $("empty-title"), emptyText: $("empty-text"),
  search: $("search"), toasts: $("toasts"), shown: $("shown-count"), footInfo: $("foot-info"),
  dialog: $("token-dialog"), form: $("token-form"), tokenInput: $("token-input"), tokenError: $("token-error"),
  pager: $("pager"), prev: $("page-prev"), next: $("page-next"), pageInfo: $("page-info"),
};

const state = {
  clients: new Map(),   // clientId → client view (SPEC §4)
  rows: new Map(),      // clientId → row refs (visible rows only)
  flashes: new Set(),   // clientIds to highlight on the next render
  beats: new Set(),     // clientIds whose heartbeat dot should pulse
  filter: "all",
  query: "",
  sort: { key: "status", dir: "asc" },
  client: null,         // RpadClient
  config: null,         // /api/v1/dashboard-config
  loaded: false,        // a SERVER_LIST has arrived
  renderPending: false,
  configTimer: null,
  configAttempt: 0,
  listAt: 0,            // Date.now() of the last SERVER_LIST
  maxClients: null,     // presence.max_clients, from SERVER_LIST (null: not said)
  unknown: 0,
  offset: 0,            // the page's first row (windowed subscription)
  page: null,           // client ids of the page, in order (null: full-list mode)
  counts: null,         // {total, online, offline, unknown, matching} of the page's view
  searchTimer: null,
  role: null,           // the token's role (CONNECTION_ESTABLISHED)
};

// -- the windowed subscription -------------------------------------------------------------------

function viewOf() {
  return { filter: state.filter, q: state.query, tag: null,
           sort: (state.sort.dir === "desc" ? "-" : "") + state.sort.key,
           offset: state.offset, limit: PAGE_SIZE };
}

function sameView(v) {
  const w = viewOf();
  return v && v.filter === w.filter && v.q === w.q && v.sort === w.sort && v.offset === w.offset;
}

function updateView({ keepOffset = false } = {}) {
  if (!keepOffset) state.offset = 0;
  if (state.client) state.client.setOptions("servers", { view: viewOf() });
  scheduleRender();
}

// -- formatting ----------------------------------------------------------------------------------

function serverNow() {
  return state.client ? state.client.serverNow() : Date.now();
}

function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, Math.round((serverNow() - Date.parse(iso)) / 1000));
  if (s < 90) return `${s} s ago`;
  const m = Math.round(s / 60);
  if (m < 90) return `${m} min ago`;
  const h = Math.round(m / 60);
  if (h < 48) return `${h} h ago`;
  return `${Math.round(h / 24)} d ago`;
}

function duration(iso) {
  if (!iso) return "";
  return ago(iso).replace(" ago", "");
}

function bytes(n) {
  if (typeof n !== "number" || !Number.isFinite(n)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n >= 100 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}

function localTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

function memPercent(m) {
  if (!m || typeof m.memoryUsageBytes !== "number" || !(m.memoryTotalBytes > 0)) return null;
  return (100 * m.memoryUsageBytes) / m.memoryTotalBytes;
}

function cpuPercent(m) {
  return m && typeof m.cpuUsagePercent === "number" ? m.cpuUsagePercent : null;
}

function reportedKind(s) {
  const v = String(s || "").toLowerCase();
  if (/^(busy|working|running|processing|active)$/.test(v)) return "busy";
  if (/^(error|failed|failure|fault|crashed)$/.test(v)) return "error";
  if (/^(warning|degraded|maintenance|paused|stopping)$/.test(v)) return "warn";
  return "";
}

// -- DOM helpers ---------------------------------------------------------------------------------

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function setAttr(node, name, value) {
  if (value === null || value === undefined || value === "") {
    if (node.hasAttribute(name)) node.removeAttribute(name);
  } else if (node.getAttribute(name) !== value) {
    node.setAttribute(name, value);
  }
}

function meter() {
  const wrap = el("div", "meter");
  const track = el("div", "meter-track");
  const bar = el("div", "meter-bar");
  const value = el("span", "meter-value");
  track.append(bar);
  wrap.append(track, value);
  const detail = el("span", "meter-detail");
  return { wrap, bar, value, detail };
}

function setMeter(m, pct, detailText) {
  if (pct === null) {
    m.bar.style.setProperty("width", "0%");
    setText(m.value, "–");
    setAttr(m.bar, "data-level", null);
  } else {
    const p = Math.max(0, Math.min(100, pct));
    const width = `${p.toFixed(1)}%`;
    if (m.bar.style.width !== width) m.bar.style.setProperty("width", width);
    setText(m.value, `${Math.round(p)}%`);
    setAttr(m.bar, "data-level", p >= 85 ? "high" : p >= 60 ? "mid" : "low");
  }
  setText(m.detail, detailText || "\u00a0");
}

// -- rows ----------------------------------------------------------------------------------------

function cell(className, label) {
  const td = el("td", className);
  if (label) td.dataset.label = label;
  return td;
}

function createRow(id) {
  const tr = el("tr");
  tr.dataset.clientId = id;
  const r = { tr };

  const tdStatus = cell("cell-status");
  r.pill = el("span", "pill");
  r.pillText = el("span");
  r.pill.append(el("span", "dot"), r.pillText);
  tdStatus.append(r.pill);

  const tdClient = cell("cell-client");
  r.name = el("a", "client-name");
  r.name.href = `#/clients/${encodeURIComponent(id)}`;
  r.sub = el("div", "client-sub");
  r.id = el("span", "mono");
  r.tags = el("span", "client-tags");
  r.sub.append(r.id, r.tags);
  // The console (console.js): shown to tokens that may run commands.
  r.console = el("button", "console-open", ">_");
  r.console.type = "button";
  r.console.addEventListener("click", (e) => {
    e.stopPropagation();
    const c = state.clients.get(id);
    if (c) consoles.open(c);
  });
  const line = el("div", "client-line");
  line.append(r.name, r.console);
  tdClient.append(line, r.sub);

  const tdReported = cell("cell-reported", "Reported");
  r.reported = el("span", "reported");
  tdReported.append(r.reported);

  const tdVersion = cell("cell-version", "Version");
  r.version = el("span", "mono");
  tdVersion.append(r.version);

  const tdIp = cell("cell-ip", "IP address");
  r.ip = el("span", "mono");
  tdIp.append(r.ip);

  const tdBeat = cell("cell-beat", "Last heartbeat");
  r.beat = el("span", "beat");
  r.beatDot = el("span", "beat-dot");
  r.ago = el("span", "ago");
  r.beat.append(r.beatDot, r.ago);
  tdBeat.append(r.beat);

  const tdCpu = cell("cell-cpu", "CPU");
  r.cpu = meter();
  tdCpu.append(r.cpu.wrap, r.cpu.detail);

  const tdMem = cell("cell-mem", "Memory");
  r.mem = meter();
  tdMem.append(r.mem.wrap, r.mem.detail);

  tr.append(tdStatus, tdClient, tdReported, tdVersion, tdIp, tdBeat, tdCpu, tdMem);
  r.beatDot.addEventListener("animationend", () => r.beatDot.classList.remove("beating"));
  tr.addEventListener("animationend", (e) => { if (e.target === tr) tr.classList.remove("flash"); });
  return r;
}

function updateRow(r, c) {
  const status = c.status || "unknown";
  setAttr(r.tr, "data-status", status);
  setAttr(r.pill, "class", `pill pill-${status}`);
  setText(r.pillText, status === "online" ? "Online" : status === "offline" ? "Offline" : "Unknown");
  let pillTitle = "";
  if (status === "online" && c.onlineSince) pillTitle = `online for ${duration(c.onlineSince)} (since ${localTime(c.onlineSince)})`;
  if (status === "offline" && c.offlineSince) pillTitle = `offline since ${localTime(c.offlineSince)}${c.reason ? ` (${c.reason})` : ""}`;
  if (status === "unknown") pillTitle = "registered, never heard from";
  setAttr(r.pill, "title", pillTitle);
  silences.decorate(r.pill.parentElement, c);

  setText(r.name, c.name || c.clientId);
  const con = consoleState(c);
  r.console.hidden = !mayExec(state.role);
  setAttr(r.console, "data-state", con.state);
  setAttr(r.console, "title", con.title);
  setAttr(r.console, "aria-label", `Console on ${c.name || c.clientId}: ${con.title}`);
  setText(r.id, c.name ? c.clientId : c.osType || "");
  setAttr(r.id, "title", c.name ? c.clientId : null);
  const tags = (c.tags || []).slice(0, 3).join("\u0000");
  if (r.tags.dataset.tags !== tags) {
    r.tags.dataset.tags = tags;
    r.tags.replaceChildren(...(c.tags || []).slice(0, 3).map((t) => el("span", "tag", t)));
  }

  const rep = c.reportedStatus;
  setText(r.reported, rep || "–");
  setAttr(r.reported, "class", rep ? "reported" : "reported none");
  setAttr(r.reported, "data-kind", reportedKind(rep));
  setText(r.version, c.version || "–");
  setText(r.ip, c.ipAddress || "–");

  const m = c.latestMetrics;
  const cpu = cpuPercent(m);
  setMeter(r.cpu, cpu, m && typeof m.load1 === "number" ? `load ${m.load1.toFixed(2)}` : "");
  const mem = memPercent(m);
  setMeter(r.mem, mem, mem === null ? "" : `${bytes(m.memoryUsageBytes)} / ${bytes(m.memoryTotalBytes)}`);
  updateAgo(r, c);
}

function updateAgo(r, c) {
  setText(r.ago, ago(c.lastHeartbeatAt));
  setAttr(r.beat, "title", c.lastHeartbeatAt ? localTime(c.lastHeartbeatAt) : "no heartbeat yet");
  let late = false;
  if (c.status === "online" && c.lastHeartbeatAt && c.heartbeatTimeoutSeconds) {
    late = serverNow() - Date.parse(c.lastHeartbeatAt) > 750 * c.heartbeatTimeoutSeconds;
  }
  r.beat.classList.toggle("late", late);
}

// -- the list ------------------------------------------------------------------------------------

function matches(c) {
  if (state.filter === "online" && c.status !== "online") return false;
  if (state.filter === "offline" && c.status !== "offline") return false;
  const q = state.query;
  if (!q) return true;
  const hay = [c.clientId, c.name, c.ipAddress, c.version, c.reportedStatus, c.osType, ...(c.tags || [])];
  return hay.some((v) => v && String(v).toLowerCase().includes(q));
}

const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });
const label = (c) => c.name || c.clientId;
const num = (v) => (v === null || v === undefined ? -1 : v);

function compare(a, b) {
  const { key, dir } = state.sort;
  let d = 0;
  switch (key) {
    case "status": d = (STATUS_ORDER[a.status] ?? 1) - (STATUS_ORDER[b.status] ?? 1); break;
    case "version": d = collator.compare(a.version || "", b.version || ""); break;
    case "heartbeat": d = (Date.parse(a.lastHeartbeatAt) || 0) - (Date.parse(b.lastHeartbeatAt) || 0); break;
    case "cpu": d = num(cpuPercent(a.latestMetrics)) - num(cpuPercent(b.latestMetrics)); break;
    case "memory": d = num(memPercent(a.latestMetrics)) - num(memPercent(b.latestMetrics)); break;
    default: d = 0;
  }
  if (dir === "desc") d = -d;
  return d || collator.compare(label(a), label(b)) || collator.compare(a.clientId, b.clientId);
}

function scheduleRender() {
  if (state.renderPending) return;
  state.renderPending = true;
  const run = () => { state.renderPending = false; render(); };
  if (document.hidden) setTimeout(run, 250);
  else requestAnimationFrame(run);
}

// The share of presence.max_clients from which the banner warns (as rpad's log does).
const FLEET_WARNING_SHARE = 0.8;

function renderFleetBanner(n) {
  const banner = $("fleet-banner");
  const max = state.maxClients;
  if (!max || n < max * FLEET_WARNING_SHARE) {
    banner.hidden = true;
    return;
  }
  const full = n >= max;
  banner.dataset.level = full ? "full" : "warn";
  setText(banner, full
    ? `The fleet is full: ${n.toLocaleString()} clients, the cap is ${max.toLocaleString()} ` +
      "(presence.max_clients). New clients are refused until clients are removed or the cap is raised."
    : `The fleet holds ${n.toLocaleString()} of at most ${max.toLocaleString()} clients ` +
      `(${Math.floor(100 * n / max)} % of presence.max_clients). Beyond the cap, new clients are refused.`);
  banner.hidden = false;
}

function render() {
  consoles.sync(state.clients);
  if (state.page !== null) {
    renderWindow();
    return;
  }
  const all = [...state.clients.values()];
  renderFleetBanner(all.length);
  const counts = { online: 0, offline: 0, unknown: 0 };
  let cpuSum = 0, cpuN = 0, memSum = 0, memN = 0;
  for (const c of all) {
    counts[c.status] = (counts[c.status] || 0) + 1;
    if (c.status === "online") {
      const cpu = cpuPercent(c.latestMetrics);
      if (cpu !== null) { cpuSum += cpu; cpuN++; }
      const mem = memPercent(c.latestMetrics);
      if (mem !== null) { memSum += mem; memN++; }
    }
  }
  const visible = all.filter(matches).sort(compare);

  renderRows(visible);

  // Counts and summary.
  const total = all.length;
  setText($("count-all"), state.loaded ? String(total) : "–");
  setText($("count-online"), state.loaded ? String(counts.online) : "–");
  setText($("count-offline"), state.loaded ? String(counts.offline) : "–");
  updateFreshness(counts.unknown);
  setText($("online-share"), total ? `${Math.round((100 * counts.online) / total)}% of the fleet` : "\u00a0");
  setText($("offline-note"), counts.offline ? "need attention" : state.loaded ? "all clear" : "\u00a0");
  setText($("avg-cpu"), cpuN ? `${Math.round(cpuSum / cpuN)}%` : "–");
  setText($("avg-mem"), memN ? `memory ${Math.round(memSum / memN)}% avg` : "\u00a0");
  setText($("filter-count-all"), String(total));
  setText($("filter-count-online"), String(counts.online));
  setText($("filter-count-offline"), String(counts.offline));
  setText(ui.shown, state.loaded ? `Showing ${visible.length} of ${total} client${total === 1 ? "" : "s"}` : "");
  document.title = counts.offline ? `(${counts.offline} offline) rpad · fleet` : "rpad · fleet";

  renderEmpty(visible.length, total);
}

// The empty state of the list: waiting, no clients at all, or none in this view.
function renderEmpty(shown, total) {
  if (shown) {
    ui.empty.hidden = true;
    return;
  }
  ui.empty.hidden = false;
  if (!state.loaded) {
    setText(ui.emptyTitle, "Waiting for data…");
    ui.emptyText.replaceChildren();
  } else if (!total) {
    setText(ui.emptyTitle, "No clients yet");
    const code = el("code", null, `rpad agent --url ${location.origin} --client-id ${"$(hostname)"} --token-file agent.token`);
    ui.emptyText.replaceChildren("Clients appear here with their first heartbeat. Run an agent on any Linux host: ", code);
  } else {
    setText(ui.emptyTitle, "No clients match");
    ui.emptyText.replaceChildren(state.query ? `Nothing matches “${state.query}” in this view.` : "No clients in this view.");
  }
}

// Rows: create, update, drop, and order with as few DOM moves as possible.
function renderRows(visible) {
  const keep = new Set();
  for (const c of visible) {
    let r = state.rows.get(c.clientId);
    if (!r) {
      r = createRow(c.clientId);
      state.rows.set(c.clientId, r);
    }
    updateRow(r, c);
    keep.add(c.clientId);
  }
  for (const [id, r] of state.rows) {
    if (!keep.has(id)) {
      r.tr.remove();
      state.rows.delete(id);
    }
  }
  const tbody = ui.rows;
  visible.forEach((c, i) => {
    const tr = state.rows.get(c.clientId).tr;
    if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
  });
  for (const id of state.flashes) {
    const r = state.rows.get(id);
    if (r) {
      r.tr.classList.remove("flash");
      void r.tr.offsetWidth; // restart the animation
      r.tr.classList.add("flash");
    }
  }
  state.flashes.clear();
  for (const id of state.beats) {
    const r = state.rows.get(id);
    if (r) {
      r.beatDot.classList.remove("beating");
      void r.beatDot.offsetWidth;
      r.beatDot.classList.add("beating");
    }
  }
  state.beats.clear();
}

// A page of the fleet (windowed subscription): rows in rpad's order, counts of the whole fleet.
function renderWindow() {
  const visible = state.page.map((id) => state.clients.get(id)).filter(Boolean);
  renderRows(visible);
  const n = state.counts || { total: 0, online: 0, offline: 0, unknown: 0, matching: 0 };
  renderFleetBanner(n.total);
  let cpuSum = 0, cpuN = 0, memSum = 0, memN = 0;
  for (const c of visible) {
    if (c.status !== "online") continue;
    const cpu = cpuPercent(c.latestMetrics);
    if (cpu !== null) { cpuSum += cpu; cpuN++; }
    const mem = memPercent(c.latestMetrics);
    if (mem !== null) { memSum += mem; memN++; }
  }
  const total = n.total;
  setText($("count-all"), state.loaded ? String(total) : "–");
  setText($("count-online"), state.loaded ? String(n.online) : "–");
  setText($("count-offline"), state.loaded ? String(n.offline) : "–");
  updateFreshness(n.unknown);
  setText($("online-share"), total ? `${Math.round((100 * n.online) / total)}% of the fleet` : "\u00a0");
  setText($("offline-note"), n.offline ? "need attention" : state.loaded ? "all clear" : "\u00a0");
  setText($("avg-cpu"), cpuN ? `${Math.round(cpuSum / cpuN)}%` : "–");
  setText($("avg-mem"), memN ? `memory ${Math.round(memSum / memN)}% avg (this page)` : "\u00a0");
  setText($("filter-count-all"), String(total));
  setText($("filter-count-online"), String(n.online));
  setText($("filter-count-offline"), String(n.offline));
  const first = visible.length ? state.offset + 1 : 0;
  const last = state.offset + visible.length;
  let shown = "";
  if (state.loaded) {
    shown = n.matching <= visible.length && state.offset === 0
      ? `Showing ${visible.length} of ${total} client${total === 1 ? "" : "s"}`
      : `Showing ${first}–${last} of ${n.matching} matching · ${total} client${total === 1 ? "" : "s"}`;
  }
  setText(ui.shown, shown);
  ui.pager.hidden = !(n.matching > PAGE_SIZE || state.offset > 0);
  ui.prev.disabled = state.offset === 0;
  ui.next.disabled = last >= n.matching;
  setText(ui.pageInfo, n.matching ? `${first}–${last} of ${n.matching}` : "");
  document.title = n.offline ? `(${n.offline} offline) rpad · fleet` : "rpad · fleet";
  renderEmpty(visible.length, total);
}

function applyWindow(d) {
  if (!sameView(d.view)) return;  // a page of a view since replaced
  const servers = Array.isArray(d.servers) ? d.servers : [];
  const next = new Map();
  for (const s of servers) {
    if (!s || !s.clientId) continue;
    const prev = state.clients.get(s.clientId);
    if (state.loaded && prev && changed(prev, s)) state.flashes.add(s.clientId);
    if (state.loaded && prev && prev.lastHeartbeatAt !== s.lastHeartbeatAt) state.beats.add(s.clientId);
    next.set(s.clientId, s);
  }
  state.clients = next;
  state.page = servers.map((s) => s.clientId);
  state.counts = d.counts || null;
  state.maxClients = Number.isInteger(d.maxClients) ? d.maxClients : null;
  state.loaded = true;
  state.listAt = Date.now();
}

function updateFreshness(unknown = state.unknown) {
  state.unknown = unknown;
  const parts = [];
  if (unknown) parts.push(`${unknown} never heard from`);
  if (state.listAt) {
    const s = Math.max(0, Math.round((Date.now() - state.listAt) / 1000));
    parts.push(s < 2 ? "updated just now" : `updated ${s} s ago`);
  }
  setText($("count-unknown-note"), parts.join(" · ") || "\u00a0");
}

function tick() {
  updateFreshness();
  for (const [id, r] of state.rows) {
    const c = state.clients.get(id);
    if (c) updateAgo(r, c);
  }
  if (state.client && state.client.state === "reconnecting") showState(state.client.state);
}

// -- applying messages ---------------------------------------------------------------------------

function changed(a, b) {
  return a.status !== b.status || a.reportedStatus !== b.reportedStatus || a.version !== b.version ||
    a.ipAddress !== b.ipAddress || a.name !== b.name;
}

function applyList(servers, { replace }) {
  const seen = new Set();
  for (const s of servers) {
    if (!s || !s.clientId) continue;
    seen.add(s.clientId);
    const prev = state.clients.get(s.clientId);
    if (state.loaded && (!prev || changed(prev, s))) state.flashes.add(s.clientId);
    state.clients.set(s.clientId, s);
  }
  if (replace) {
    for (const id of [...state.clients.keys()]) if (!seen.has(id)) state.clients.delete(id);
  }
  state.loaded = true;
  state.listAt = Date.now();
}

function onEvent(msg) {
  if (consoles.onMessage(msg) || tasks.onMessage(msg)) return;
  const d = msg.data || {};
  switch (msg.type) {
    case "SERVER_WINDOW":
      applyWindow(d);
      break;
    case "SERVER_LIST":
      state.page = null;
      applyList(Array.isArray(d.servers) ? d.servers : [], { replace: true });
      state.maxClients = Number.isInteger(d.maxClients) ? d.maxClients : null;
      break;
    case "SERVER_LIST_DELTA":  // push.mode = "delta": only what changed since the last push
      for (const id of Array.isArray(d.removed) ? d.removed : []) state.clients.delete(id);
      applyList(Array.isArray(d.changed) ? d.changed : [], { replace: false });
      if (Number.isInteger(d.maxClients)) state.maxClients = d.maxClients;
      break;
    case "CLIENT_CONNECTED":
    case "CLIENT_DISCONNECTED":
    case "CLIENT_STATUS_UPDATE":
      if (d.clientId) {
        state.clients.set(d.clientId, d);
        state.flashes.add(d.clientId);
        silences.note(d);
      }
      break;
    case "CLIENT_REMOVED":
      state.clients.delete(d.clientId);
      break;
    case "HEARTBEAT_RECEIVED": {
      const c = state.clients.get(d.clientId);
      if (!c) break;
      const next = { ...c, lastHeartbeatAt: d.receivedAt, reportedStatus: d.reportedStatus,
                     latestMetrics: d.latestMetrics ?? c.latestMetrics };
      if (next.reportedStatus !== c.reportedStatus) state.flashes.add(d.clientId);
      state.clients.set(d.clientId, next);
      state.beats.add(d.clientId);
      break;
    }
    case "NOTIFICATION":
      toast(d);
      silences.note(d);
      return;
    case "SYSTEM_MESSAGE":
      toast({ title: d.title || "Message from rpad", message: d.message || JSON.stringify(d), level: d.level || "info" });
      return;
    default:
      return;
  }
  scheduleRender();
}

// -- toasts --------------------------------------------------------------------------------------

function toast({ title, message, level = "info", actionUrl, autoClose, timestamp }) {
  const t = el("div", "toast");
  t.dataset.level = ["info", "success", "warning", "error", "urgent"].includes(level) ? level : "info";
  t.setAttribute("role", level === "error" || level === "urgent" ? "alert" : "status");
  const close = el("button", "toast-close", "×");
  close.type = "button";
  close.setAttribute("aria-label", "Dismiss");
  const meta = el("div", "toast-meta");
  meta.append(el("span", null, timestamp ? new Date(timestamp).toLocaleTimeString() : new Date().toLocaleTimeString()));
  if (actionUrl && /^https?:\/\//i.test(actionUrl)) {
    const a = el("a", null, "Open");
    a.href = actionUrl;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    meta.append(a);
  }
  t.append(el("span", "toast-bar"), el("div", "toast-title", title || "Notification"), close);
  if (message) t.append(el("div", "toast-message", message));
  t.append(meta);

  const dismiss = () => {
    if (t.classList.contains("leaving")) return;
    t.classList.add("leaving");
    setTimeout(() => t.remove(), 200);
  };
  close.addEventListener("click", dismiss);
  ui.toasts.append(t);
  const live = [...ui.toasts.children].filter((n) => !n.classList.contains("leaving"));
  for (const old of live.slice(0, Math.max(0, live.length - MAX_TOASTS))) old.remove();

  let seconds = null;
  if (typeof autoClose === "number") seconds = autoClose > 0 ? autoClose : null;
  else if (autoClose === true) seconds = TOAST_SECONDS;
  else if (autoClose === undefined || autoClose === null) seconds = level === "info" || level === "success" ? TOAST_SECONDS : null;
  if (seconds) {
    let timer = setTimeout(dismiss, seconds * 1000);
    t.addEventListener("mouseenter", () => clearTimeout(timer));
    t.addEventListener("mouseleave", () => { timer = setTimeout(dismiss, 2000); });
  }
}

// -- connection state ----------------------------------------------------------------------------

function setConn(kind, text, title) {
  ui.conn.dataset.state = kind;
  setText(ui.connText, text);
  setAttr(ui.conn, "title", title || null);
  ui.retry.hidden = kind !== "failed";
  document.body.classList.toggle("stale", kind !== "connected" && state.loaded);
}

function showState(s, detail = {}) {
  const c = state.client;
  switch (s) {
    case "connecting":
      setConn("connecting", "Connecting…");
      break;
    case "connected": {
      const info = c.connection || {};
      setConn("connected", "Connected", `${info.userId} (${info.role}) · ${c.url}`);
      break;
    }
    case "reconnecting": {
      const left = c.nextAttemptAt ? Math.max(0, Math.ceil((c.nextAttemptAt - Date.now()) / 1000)) : 0;
      const why = c.lastClose && c.lastClose.reason ? `Connection lost: ${c.lastClose.reason}` : "Connection lost";
      setConn("reconnecting", left ? `Reconnecting in ${left} s` : "Reconnecting…",
               `${why} · attempt ${c.attempt} of ${c.maxAttempts}`);
      break;
    }
    case "failed":
      setConn("failed", "Disconnected", `Gave up after ${c.maxAttempts} attempts; press Retry`);
      break;
    case "unauthorized": {
      const reason = detail.reason || (c.lastClose && c.lastClose.reason) || "unauthorized";
      setConn("failed", "Token refused", reason);
      clearToken();
      showTokenDialog(`The server refused this token: ${reason}.`);
      break;
    }
    case "closed":
      break;
    default:
      setConn("connecting", s);
  }
}

// -- start-up ------------------------------------------------------------------------------------

async function fetchConfig() {
  const resp = await fetch(CONFIG_URL, { cache: "no-store", headers: { Accept: "application/json" } });
  if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
  return resp.json();
}

async function loadConfig() {
  // rpad may be down when the page (re)loads from cache: retry like the socket does.
  clearTimeout(state.configTimer);
  try {
    state.config = await fetchConfig();
    state.configAttempt = 0;
    return true;
  } catch (err) {
    state.configAttempt += 1;
    if (state.configAttempt >= MAX_ATTEMPTS) {
      setConn("failed", "Disconnected", `Cannot reach rpad: ${err.message}`);
      return false;
    }
    const delay = backoffDelay(state.configAttempt - 1);
    setConn("reconnecting", "Reconnecting…", `Cannot reach rpad: ${err.message}`);
    await new Promise((resolve) => { state.configTimer = setTimeout(resolve, delay); });
    return loadConfig();
  }
}

async function start(token) {
  if (state.client) {
    state.client.close();
    state.client = null;
  }
  setConn("connecting", "Connecting…");
  if (!state.config && !(await loadConfig())) return;
  const { wsUrl, version } = state.config;
  if (!wsUrl) {
    setConn("failed", "No hub", "rpad is running without its WebSocket hub");
    return;
  }
  const client = new RpadClient({ url: wsUrl, token, topics: TOPICS, maxAttempts: MAX_ATTEMPTS });
  client.setOptions("servers", { view: viewOf() });
  silences.start(token);
  state.client = client;
  client.addEventListener("state", (e) => { if (client === state.client) showState(e.detail.state, e.detail); });
  client.addEventListener("established", (e) => {
    if (client !== state.client) return;
    const d = e.detail;
    setText(ui.footInfo, `rpad ${version} · signed in as ${d.userId} (${d.role})`);
    state.role = d.role;
    consoles.onEstablished();
    tasks.onEstablished(d);
    scheduleRender();
    if (d.epochChanged) toast({ title: "rpad restarted", message: "The list has been refreshed from the new process.", level: "info" });
  });
  client.addEventListener("event", (e) => { if (client === state.client) onEvent(e.detail); });
  client.addEventListener("error", (e) => {
    const d = e.detail || {};
    if (d.code === "forbidden") toast({ title: "Not allowed", message: d.message, level: "warning" });
  });
  client.connect();
}

function showTokenDialog(error) {
  ui.tokenError.hidden = !error;
  setText(ui.tokenError, error || "");
  ui.dialog.hidden = false;
  ui.tokenInput.value = "";
  setTimeout(() => ui.tokenInput.focus(), 0);
}

function wireUi() {
  for (const b of document.querySelectorAll("[data-filter]")) {
    b.addEventListener("click", () => {
      state.filter = b.dataset.filter;
      for (const o of document.querySelectorAll("[data-filter]")) o.setAttribute("aria-pressed", String(o === b));
      updateView();
    });
  }
  ui.search.addEventListener("input", () => {
    clearTimeout(state.searchTimer);
    state.searchTimer = setTimeout(() => {
      state.query = ui.search.value.trim().toLowerCase();
      updateView();
    }, SEARCH_DELAY_MS);
  });
  ui.search.addEventListener("keydown", (e) => {
    if (e.key === "Escape") { ui.search.value = ""; state.query = ""; ui.search.blur(); updateView(); }
  });
  ui.prev.addEventListener("click", () => {
    state.offset = Math.max(0, state.offset - PAGE_SIZE);
    updateView({ keepOffset: true });
  });
  ui.next.addEventListener("click", () => {
    state.offset += PAGE_SIZE;
    updateView({ keepOffset: true });
  });
  ui.rows.addEventListener("click", (e) => {
    const tr = e.target.closest("tr[data-client-id]");
    if (tr && !e.target.closest("a")) location.hash = `#/clients/${encodeURIComponent(tr.dataset.clientId)}`;
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "/" && document.activeElement !== ui.search && ui.dialog.hidden) {
      e.preventDefault();
      ui.search.focus();
    }
  });
  for (const b of document.querySelectorAll("th [data-sort]")) {
    b.addEventListener("click", () => {
      const key = b.dataset.sort;
      state.sort = state.sort.key === key
        ? { key, dir: state.sort.dir === "asc" ? "desc" : "asc" }
        : { key, dir: SORT_DEFAULT_DIR[key] || "asc" };
      for (const o of document.querySelectorAll("th [data-sort]")) {
        if (o === b) o.dataset.dir = state.sort.dir; else delete o.dataset.dir;
      }
      updateView();
    });
  }
  document.querySelector(`th [data-sort="${state.sort.key}"]`).dataset.dir = state.sort.dir;
  ui.retry.addEventListener("click", () => {
    if (state.client) state.client.retry();
    else start(tokenFromPage() || "");
  });
  ui.changeToken.addEventListener("click", () => showTokenDialog());
  ui.dialog.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && state.client && state.client.state === "connected") ui.dialog.hidden = true;
  });
  ui.form.addEventListener("submit", (e) => {
    e.preventDefault();
    const token = ui.tokenInput.value.trim();
    if (!token) return;
    saveToken(token);
    ui.dialog.hidden = true;
    start(token);
  });
  window.addEventListener("online", () => {
    if (state.client && state.client.state === "reconnecting") state.client.retry();
  });
  setInterval(tick, TICK_MS);
}

const consoles = new Consoles({ getClient: () => state.client, toast });
const tasks = new TasksView({ getClient: () => state.client, toast, mayStart: mayExec });
wireUi();
render();
const initialToken = tokenFromPage();
if (initialToken) start(initialToken);
else {
  setConn("connecting", "Waiting for a token");
  showTokenDialog();
}
