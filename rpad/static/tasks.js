// rpad dashboard: the Tasks view — batch commands over many clients with live progress.
//
// The list comes from GET /api/v1/tasks (rpad's own tasks, and tasks other systems report by
// publishing TASK_UPDATE to task.<id>); a task's per-client results from
// GET /api/v1/tasks/{id}. Progress is live: TASK_UPDATE arrives as a direct message to the user
// who started the task, and on the topic task.<id>, which this view subscribes to for the
// running tasks it shows (admins may subscribe to any topic). Those allowed to run commands
// (admin and operator tokens) get a form to start a task; rpad checks every target anyway.

const REFRESH_MS = 15_000;
const LIST_LIMIT = 50;
const ENDED = new Set(["completed", "failed", "cancelled", "interrupted"]);

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

function fmtDuration(ms) {
  if (typeof ms !== "number") return "–";
  if (ms < 1000) return `${ms} ms`;
  return `${(ms / 1000).toFixed(1)} s`;
}

export class TasksView {
  // getClient(): the page's RpadClient (its token authorizes the API calls too).
  constructor({ getClient, toast, mayStart }) {
    this.getClient = getClient;
    this.toast = toast;
    this.mayStart = mayStart;
    this.tasks = new Map();     // taskId → task summary
    this.rows = new Map();      // taskId → row refs
    this.open = null;           // taskId whose results are shown
    this.subscribed = new Set();
    this.timer = null;
    this.build();
  }

  build() {
    this.button = el("button", "btn btn-small btn-ghost tasks-toggle", "Tasks");
    this.button.type = "button";
    this.button.setAttribute("aria-pressed", "false");
    this.button.addEventListener("click", () => this.toggle());
    const actions = document.querySelector(".topbar-actions");
    actions.insertBefore(this.button, actions.firstChild);

    this.root = el("section", "tasks-view");
    this.root.id = "tasks-view";
    this.root.hidden = true;
    const head = el("div", "tasks-head");
    head.append(el("h2", "tasks-title", "Tasks"));
    this.note = el("span", "tasks-note");
    head.append(this.note);
    this.form = this.buildForm();
    this.list = el("div", "tasks-list");
    this.empty = el("p", "tasks-empty", "No tasks yet.");
    this.root.append(head, this.form, this.list, this.empty);
    document.querySelector("main.page").append(this.root);
    // A client's page (detail.js, #/clients/<id>) replaces the Tasks view.
    window.addEventListener("hashchange", () => {
      if (this.visible && location.hash.startsWith("#/clients/")) this.toggle(false);
    });
  }

  buildForm() {
    const form = el("form", "tasks-form");
    form.autocomplete = "off";
    form.hidden = true;
    const field = (labelText, input) => {
      const label = el("label", "tasks-field");
      label.append(el("span", null, labelText), input);
      return label;
    };
    this.fCommand = el("input", "mono");
    this.fCommand.name = "command";
    this.fCommand.required = true;
    this.fCommand.placeholder = "uptime";
    this.fTargetKind = el("select");
    for (const [value, text] of [["tag", "clients with tag"], ["clients", "client ids"]]) {
      const o = el("option", null, text);
      o.value = value;
      this.fTargetKind.append(o);
    }
    this.fTarget = el("input", "mono");
    this.fTarget.name = "target";
    this.fTarget.required = true;
    this.fTarget.placeholder = "lab   (or: rpa-1, rpa-2)";
    this.fConcurrency = el("input");
    this.fConcurrency.type = "number";
    this.fConcurrency.min = "1";
    this.fConcurrency.max = "200";
    this.fConcurrency.value = "10";
    this.fTimeout = el("input");
    this.fTimeout.type = "number";
    this.fTimeout.min = "1";
    this.fTimeout.value = "60";
    const start = el("button", "btn btn-primary", "Start task");
    start.type = "submit";
    this.formError = el("p", "tasks-form-error");
    this.formError.hidden = true;
    form.append(field("Command", this.fCommand), field("Run on", this.fTargetKind),
      field("", this.fTarget), field("At once", this.fConcurrency),
      field("Timeout (s)", this.fTimeout), start, this.formError);
    form.addEventListener("submit", (e) => { e.preventDefault(); this.submit(); });
    return form;
  }

  get visible() {
    return !this.root.hidden;
  }

  toggle(on = !this.visible) {
    // The Tasks view replaces the list, and a client's page if one is open.
    if (on && location.hash.startsWith("#/clients/")) location.hash = "";
    this.root.hidden = !on;
    document.body.dataset.view = on ? "tasks" : "clients";
    this.button.setAttribute("aria-pressed", String(on));
    clearInterval(this.timer);
    if (on) {
      this.refresh();
      this.timer = setInterval(() => this.refresh(), REFRESH_MS);
    }
  }

  onEstablished(detail) {
    this.form.hidden = !this.mayStart(detail.role);
    this.role = detail.role;
    this.subscribed.clear();
    if (this.visible) this.refresh();
  }

  async api(method, path, body) {
    const client = this.getClient();
    const headers = { Accept: "application/json", Authorization: `Bearer ${client ? client.token : ""}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch(path, { method, headers, cache: "no-store", body: body === undefined ? undefined : JSON.stringify(body) });
    let data = null;
    try { data = await resp.json(); } catch { data = null; }
    if (!resp.ok) {
      const details = data && Array.isArray(data.details) ? data.details.map((d) => `${d.field}: ${d.message}`).join("; ") : "";
      throw new Error(`${(data && data.message) || `HTTP ${resp.status}`}${details ? ` (${details})` : ""}`);
    }
    return data;
  }

  async refresh() {
    try {
      const data = await this.api("GET", `/api/v1/tasks?limit=${LIST_LIMIT}`);
      const items = Array.isArray(data.items) ? data.items : [];
      this.tasks = new Map(items.map((t) => [t.taskId, t]));
      this.note.textContent = data.total > items.length ? `latest ${items.length} of ${data.total}` : "";
      this.render();
      if (this.open && this.tasks.has(this.open)) this.loadResults(this.open);
    } catch (err) {
      this.note.textContent = `Cannot list tasks: ${err.message}`;
    }
  }

  follow(task) {
    // Admins follow every running task they see; the creator also gets direct messages.
    const client = this.getClient();
    if (!client || this.role !== "admin") return;
    const topic = `task.${task.taskId}`;
    if (!ENDED.has(task.status) && !this.subscribed.has(topic)) {
      this.subscribed.add(topic);
      client.subscribe(topic);
    } else if (ENDED.has(task.status) && this.subscribed.has(topic)) {
      this.subscribed.delete(topic);
      client.unsubscribe(topic);
    }
  }

  render() {
    const keep = new Set();
    const ordered = [...this.tasks.values()].sort((a, b) => String(b.createdAt).localeCompare(String(a.createdAt)));
    ordered.forEach((t, i) => {
      let r = this.rows.get(t.taskId);
      if (!r) {
        r = this.createRow(t.taskId);
        this.rows.set(t.taskId, r);
      }
      this.updateRow(r, t);
      this.follow(t);
      keep.add(t.taskId);
      if (this.list.children[i] !== r.root) this.list.insertBefore(r.root, this.list.children[i] || null);
    });
    for (const [id, r] of this.rows) {
      if (!keep.has(id)) { r.root.remove(); this.rows.delete(id); }
    }
    this.empty.hidden = this.tasks.size > 0;
  }

  createRow(taskId) {
    const r = { root: el("article", "task") };
    r.root.dataset.taskId = taskId;
    const line = el("div", "task-line");
    r.status = el("span", "task-status");
    r.command = el("code", "task-command");
    r.meta = el("span", "task-meta");
    r.cancel = el("button", "btn btn-small task-cancel", "Cancel");
    r.cancel.type = "button";
    r.cancel.addEventListener("click", (e) => { e.stopPropagation(); this.cancel(taskId); });
    line.append(r.status, r.command, r.meta, r.cancel);
    const prog = el("div", "task-progress");
    r.track = el("div", "task-track");
    r.bar = el("div", "task-bar");
    r.barFailed = el("div", "task-bar task-bar-failed");
    r.track.append(r.bar, r.barFailed);
    r.counts = el("span", "task-counts");
    prog.append(r.track, r.counts);
    r.results = el("div", "task-results");
    r.results.hidden = true;
    r.root.append(line, prog, r.results);
    line.addEventListener("click", () => this.toggleResults(taskId));
    line.title = "Show the results per client";
    return r;
  }

  updateRow(r, t) {
    r.root.dataset.status = t.status;
    r.status.textContent = t.status;
    r.command.textContent = t.command || (t.source === "publish" ? `published to task.${t.taskId}` : "");
    const who = t.createdBy ? `by ${t.createdBy}` : t.source === "publish" ? "reported by another system" : "";
    r.meta.textContent = [who, fmtTime(t.createdAt)].filter(Boolean).join(" · ");
    const pct = typeof t.progress === "number" ? Math.max(0, Math.min(100, t.progress)) : 0;
    // The finished share, split into succeeded and failed clients when the counts are known.
    const total = Number(t.totalDevices) || 0;
    const failedPct = total ? Math.min(pct, (100 * (Number(t.failedDevices) || 0)) / total) : 0;
    r.bar.style.setProperty("width", `${(pct - failedPct).toFixed(1)}%`);
    r.barFailed.style.setProperty("width", `${failedPct.toFixed(1)}%`);
    r.track.setAttribute("role", "progressbar");
    r.track.setAttribute("aria-valuenow", String(Math.round(pct)));
    r.track.setAttribute("aria-valuemin", "0");
    r.track.setAttribute("aria-valuemax", "100");
    const parts = [`${Math.round(pct)}%`, `${t.completedDevices ?? 0}/${t.totalDevices ?? "?"} ok`];
    if (t.failedDevices) parts.push(`${t.failedDevices} failed`);
    if (t.currentDevice && !ENDED.has(t.status)) parts.push(`now ${t.currentDevice}`);
    r.counts.textContent = parts.join(" · ");
    r.cancel.hidden = ENDED.has(t.status) || t.source === "publish" || !this.mayStart(this.role);
  }

  async toggleResults(taskId) {
    const r = this.rows.get(taskId);
    if (!r) return;
    if (this.open === taskId) {
      this.open = null;
      r.results.hidden = true;
      return;
    }
    if (this.open && this.rows.get(this.open)) this.rows.get(this.open).results.hidden = true;
    this.open = taskId;
    r.results.hidden = false;
    await this.loadResults(taskId);
  }

  async loadResults(taskId) {
    const r = this.rows.get(taskId);
    if (!r) return;
    try {
      const t = await this.api("GET", `/api/v1/tasks/${encodeURIComponent(taskId)}`);
      this.renderResults(r, t);
    } catch (err) {
      r.results.replaceChildren(el("p", "tasks-form-error", `Cannot load the results: ${err.message}`));
    }
  }

  renderResults(r, t) {
    const results = Array.isArray(t.results) ? t.results : [];
    if (!results.length) {
      r.results.replaceChildren(el("p", "task-meta", t.source === "publish" ? "Reported by another system: no per-client results in rpad." : "No clients."));
      return;
    }
    const table = el("table", "task-table");
    const head = el("tr");
    for (const h of ["Client", "Result", "Exit", "Time", "Output (tail)"]) head.append(el("th", null, h));
    table.append(head);
    for (const res of results) {
      const tr = el("tr");
      tr.dataset.status = res.status;
      const out = el("pre", "task-output", res.outputTail || res.error || "");
      if (res.truncated) out.title = `output cut at the limit (${res.outputBytes} bytes)`;
      tr.append(el("td", "mono", res.clientId), el("td", "task-result", res.status),
        el("td", "mono", res.exitCode ?? "–"), el("td", null, fmtDuration(res.durationMs)));
      const td = el("td");
      td.append(out);
      tr.append(td);
      table.append(tr);
    }
    r.results.replaceChildren(table);
  }

  async cancel(taskId) {
    try {
      await this.api("POST", `/api/v1/tasks/${encodeURIComponent(taskId)}/cancel`, {});
    } catch (err) {
      this.toast({ title: "Cannot cancel the task", message: err.message, level: "warning" });
    }
  }

  async submit() {
    this.formError.hidden = true;
    const body = { command: this.fCommand.value.trim() };
    const target = this.fTarget.value.trim();
    if (this.fTargetKind.value === "tag") body.tag = target;
    else body.clientIds = target.split(/[\s,]+/).filter(Boolean);
    if (this.fConcurrency.value) body.concurrency = Number(this.fConcurrency.value);
    if (this.fTimeout.value) body.timeoutSeconds = Number(this.fTimeout.value);
    try {
      const data = await this.api("POST", "/api/v1/tasks", body);
      this.tasks.set(data.taskId, { taskId: data.taskId, status: "pending", command: body.command, progress: 0, createdAt: new Date().toISOString(), ...data });
      this.render();
      this.refresh();
    } catch (err) {
      this.formError.textContent = err.message;
      this.formError.hidden = false;
    }
  }

  // TASK_UPDATE (direct or on task.<id>); returns true when handled.
  onMessage(msg) {
    if (msg.type !== "TASK_UPDATE") return false;
    const d = msg.data || {};
    const id = d.taskId !== undefined ? String(d.taskId) : msg.topic && msg.topic.startsWith("task.") ? msg.topic.slice(5) : null;
    if (!id) return true;
    const prev = this.tasks.get(id);
    const next = { ...(prev || { taskId: id, createdAt: msg.ts }), ...Object.fromEntries(Object.entries(d).filter(([, v]) => v !== undefined && v !== null)), taskId: id };
    this.tasks.set(id, next);
    if (this.visible) {
      this.render();
      if (this.open === id && (ENDED.has(next.status) || !prev)) this.loadResults(id);
    }
    return true;
  }
}
