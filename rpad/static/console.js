// rpad dashboard: the console panel — line-mode command sessions to agents over the hub.
//
// A session is opened from a client's row (`terminal.open`) and bound by rpad to this user and
// that client. Commands go out with `terminal.command`; their output comes back as
// COMMAND_OUTPUT chunks (stdout/stderr), acknowledged with `terminal.ack` once shown (the
// command's total so far, at most every ACK_INTERVAL_MS: acks count against the connection's
// message rate) — rpad forwards them to the agent as credit, so a command printing gigabytes is
// paced by this page instead of flooding it. Several sessions to several clients may be open
// at once (one tab each). Messages about sessions arrive as direct messages to the user (every
// tab of the same user sees them; a tab shows only the sessions it has open or attached).
//
// The output area is plain text (textContent), never HTML: a command's output cannot inject
// markup into the page. It keeps the last MAX_OUTPUT_CHARS characters of each session.

const MAX_OUTPUT_CHARS = 400_000;
const ACK_INTERVAL_MS = 50;
const MAX_HISTORY_SHOWN = 50;
const ERROR_TEXT = {
  commands_disabled: "Commands are disabled on this host: its owner did not start the agent with --allow-commands.",
  agent_not_connected: "The agent on this host keeps no control channel to rpad (it is not running, is offline, or was not started with --allow-commands or --control-channel).",
  agent_disconnected: "The agent's control channel was lost while the command ran; the agent kills it.",
  not_allowed: "This host's allowlist does not allow this command.",
  forbidden: "Your token may not run commands on this client.",
  too_many_sessions: "You have too many console sessions open; close one first.",
  session_not_found: "This session no longer exists (closed, or rpad restarted).",
  busy: "A command is already running in this session.",
  console_disabled: "The console is switched off on this rpad (console.enabled = false).",
  storage_unavailable: "rpad cannot write its audit log right now, so it runs no commands.",
};

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmtDuration(ms) {
  if (typeof ms !== "number") return "";
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`;
}

function fmtBytes(n) {
  if (typeof n !== "number") return "";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

export function mayExec(role) {
  return role === "admin" || role === "operator";
}

// Whether a console to this client (a client view) can work, and why not.
export function consoleState(c) {
  if (!c || c.status !== "online") return { state: "offline", title: "The client is offline" };
  const caps = c.capabilities;
  if (!caps) return { state: "none", title: "Its agent keeps no control channel (not started with --allow-commands)" };
  if (!caps.commands) return { state: "disabled", title: "Commands are disabled on this host by its owner" };
  return { state: "ready", title: `Open a console${caps.runAs ? ` (commands run as ${caps.runAs})` : ""}` };
}

class Session {
  constructor(consoles, clientId, label, ref) {
    this.consoles = consoles;
    this.clientId = clientId;
    this.label = label;
    this.ref = ref;
    this.id = null;           // sessionId once rpad confirmed it
    this.state = "opening";   // opening | ready | running | error | closed
    this.running = null;      // commandId of the running command
    this.shown = 0;           // bytes of its output shown so far
    this.acked = 0;           // ... of which acknowledged
    this.history = [];        // commands typed here (for ↑/↓)
    this.recall = -1;
    this.outputChars = 0;
    this.build();
  }

  build() {
    this.tab = el("button", "console-tab");
    this.tab.type = "button";
    this.tab.setAttribute("role", "tab");
    this.tabDot = el("span", "console-tab-dot");
    this.tabLabel = el("span", "console-tab-label", this.label);
    this.tabClose = el("span", "console-tab-close", "×");
    this.tabClose.setAttribute("aria-label", `Close the session to ${this.label}`);
    this.tab.append(this.tabDot, this.tabLabel, this.tabClose);
    this.tab.addEventListener("click", (e) => {
      if (e.target === this.tabClose) this.close();
      else this.consoles.select(this);
    });

    this.body = el("section", "console-session");
    this.body.setAttribute("role", "tabpanel");
    this.status = el("div", "console-status");
    this.statusText = el("span", "console-status-text", "Opening a session…");
    this.statusInfo = el("span", "console-status-info");
    this.status.append(this.statusText, this.statusInfo);
    this.output = el("pre", "console-output");
    this.output.setAttribute("tabindex", "0");
    this.output.setAttribute("aria-label", `Output of commands on ${this.label}`);
    // Follow new output while the reader is at the bottom (a layout change does not unpin).
    this.pinned = true;
    this.autoTop = 0;
    this.output.addEventListener("scroll", () => {
      const o = this.output;
      // Our own scrolling (its event may come after more output) never unpins; the reader
      // scrolling up does, and scrolling back to the bottom pins again.
      this.pinned = o.scrollTop >= this.autoTop - 1 || o.scrollTop + o.clientHeight >= o.scrollHeight - 8;
    });
    this.form = el("form", "console-form");
    this.form.autocomplete = "off";
    const prompt = el("span", "console-prompt", "$");
    this.input = el("input", "console-input");
    this.input.type = "text";
    this.input.spellcheck = false;
    this.input.placeholder = "command";
    this.input.setAttribute("aria-label", `Command to run on ${this.label}`);
    this.input.disabled = true;
    this.run = el("button", "btn btn-small btn-primary console-run", "Run");
    this.run.type = "submit";
    this.run.disabled = true;
    this.cancel = el("button", "btn btn-small console-cancel", "Cancel");
    this.cancel.type = "button";
    this.cancel.disabled = true;
    this.form.append(prompt, this.input, this.run, this.cancel);
    this.historyBox = el("details", "console-history");
    this.historyBox.append(el("summary", null, "History"));
    this.historyList = el("ol", "console-history-list");
    this.historyBox.append(this.historyList);
    this.body.append(this.status, this.output, this.form, this.historyBox);

    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.submit();
    });
    this.cancel.addEventListener("click", () => this.send({ action: "terminal.cancel", sessionId: this.id }));
    this.input.addEventListener("keydown", (e) => this.recallKey(e));
  }

  send(message) {
    return this.consoles.send(message);
  }

  setState(state, text, info) {
    this.state = state;
    this.body.dataset.state = state;
    this.tab.dataset.state = state;
    if (text !== undefined) this.statusText.textContent = text;
    if (info !== undefined) this.statusInfo.textContent = info;
    const ready = state === "ready";
    this.input.disabled = !(ready || state === "running");
    this.run.disabled = !ready;
    this.cancel.disabled = state !== "running";
  }

  connected(d) {
    this.id = d.sessionId;
    const caps = d.capabilities || {};
    const parts = [];
    if (caps.runAs) parts.push(`runs as ${caps.runAs}`);
    if (Array.isArray(caps.allowlist) && caps.allowlist.length) parts.push(`allowlist: ${caps.allowlist.join(" · ")}`);
    else if (caps.shell) parts.push("/bin/sh");
    this.setState(d.running ? "running" : "ready", `Connected to ${this.label}`, parts.join(" — "));
    if (d.running) this.running = d.running;
    this.input.focus();
  }

  submit() {
    const command = this.input.value.trim();
    if (!command || this.state !== "ready") return;
    if (!this.send({ action: "terminal.command", sessionId: this.id, command })) {
      this.line("rpad is not connected; the command was not sent.", "meta");
      return;
    }
    if (this.history[this.history.length - 1] !== command) this.history.push(command);
    this.recall = -1;
    this.input.value = "";
    this.setState("running", `Running on ${this.label}`);
  }

  recallKey(e) {
    if (e.key !== "ArrowUp" && e.key !== "ArrowDown") return;
    if (!this.history.length) return;
    e.preventDefault();
    if (this.recall === -1) this.recall = this.history.length;
    this.recall += e.key === "ArrowUp" ? -1 : 1;
    this.recall = Math.max(0, Math.min(this.history.length, this.recall));
    this.input.value = this.history[this.recall] ?? "";
  }

  append(text, kind) {
    const span = el("span", `out-${kind}`, text);
    this.output.append(span);
    this.outputChars += text.length;
    while (this.outputChars > MAX_OUTPUT_CHARS && this.output.firstChild) {
      this.outputChars -= this.output.firstChild.textContent.length;
      this.output.firstChild.remove();
    }
    this.follow();
  }

  // Keep the newest output in view (after output, and after the history list grew).
  follow() {
    if (this.pinned) {
      this.output.scrollTop = this.output.scrollHeight;
      this.autoTop = this.output.scrollTop;
    }
  }

  line(text, kind = "meta") {
    const last = this.output.lastChild;
    const needBreak = last && !last.textContent.endsWith("\n");
    this.append(`${needBreak ? "\n" : ""}${text}\n`, kind);
  }

  start(d) {
    this.running = d.commandId;
    this.shown = 0;
    this.acked = 0;
    this.line(`$ ${d.command}`, "cmd");
    this.setState("running", `Running on ${this.label}`, `timeout ${d.timeoutSeconds} s · output limit ${fmtBytes(d.maxOutputBytes)}`);
  }

  chunk(d) {
    this.append(String(d.chunk ?? ""), d.stream === "stderr" ? "stderr" : "stdout");
    if (d.commandId === this.running) {
      this.shown += Number(d.bytes) || 0;
      this.consoles.scheduleAck(this);
    }
  }

  ack() {
    if (this.shown > this.acked && this.id && this.running) {
      this.send({ action: "terminal.ack", sessionId: this.id, commandId: this.running, shownBytes: this.shown });
      this.acked = this.shown;
    }
  }

  done(d) {
    this.running = null;
    const bits = [d.status];
    if (d.exitCode !== null && d.exitCode !== undefined) bits.push(`exit ${d.exitCode}`);
    if (d.signal) bits.push(`signal ${d.signal}`);
    bits.push(fmtDuration(d.durationMs));
    if (d.truncated) bits.push(`output cut at ${fmtBytes(d.outputBytes)}`);
    this.line(`[${bits.join(" · ")}]`, d.status === "success" ? "ok" : "bad");
    this.addHistory({ ...d, command: d.command || this.history[this.history.length - 1] });
    this.follow();
    this.setState("ready", `Connected to ${this.label}`);
    this.input.focus();
  }

  addHistory(d) {
    const li = el("li", `console-history-item st-${d.status}`);
    li.append(el("code", null, d.command || ""), el("span", "console-history-meta",
      `${d.status}${d.exitCode !== null && d.exitCode !== undefined ? ` (${d.exitCode})` : ""} · ${fmtDuration(d.durationMs)}`));
    li.title = "Put this command in the input";
    li.addEventListener("click", () => { this.input.value = d.command || ""; this.input.focus(); });
    this.historyList.prepend(li);
    while (this.historyList.children.length > MAX_HISTORY_SHOWN) this.historyList.lastChild.remove();
  }

  history_(d) {
    this.historyList.replaceChildren();
    for (const c of d.commands || []) {
      if (c.status && c.status !== "running") this.addHistory(c);
      if (c.command && !this.history.includes(c.command)) this.history.push(c.command);
    }
  }

  error(d) {
    const text = ERROR_TEXT[d.code] || d.message || d.code;
    if (!this.id || d.code === "session_not_found") {
      this.setState("error", text, d.code);
      return;
    }
    this.line(`rpad: ${text}${d.message && ERROR_TEXT[d.code] ? ` (${d.message})` : ""}`, "bad");
    if (d.code === "agent_disconnected" || d.code === "agent_not_connected" || d.code === "commands_disabled") {
      this.running = null;
      this.setState("ready", `${this.label}: ${text}`);
    } else if (this.state === "running" && !this.running) {
      this.setState("ready", `Connected to ${this.label}`);
    }
  }

  // The client's state changed (from the page's client list).
  clientChanged(st) {
    if (this.clientState === st.state) return;
    this.clientState = st.state;
    this.body.dataset.client = st.state;
    if (this.state === "closed" || this.state === "error" || !this.id) return;
    if (st.state === "ready") {
      this.statusText.textContent = this.state === "running" ? `Running on ${this.label}` : `Connected to ${this.label}`;
    } else {
      this.statusText.textContent = `${this.label}: ${st.title}`;
    }
  }

  closed(reason) {
    this.setState("closed", `Session closed${reason ? ` (${reason})` : ""}`);
  }

  close() {
    if (this.id && this.state !== "closed" && this.state !== "error") {
      this.send({ action: "terminal.close", sessionId: this.id });
    }
    this.consoles.remove(this);
  }
}

export class Consoles {
  // getClient(): the page's RpadClient; toast(options): the page's notifications.
  constructor({ getClient, toast }) {
    this.getClient = getClient;
    this.toast = toast;
    this.sessions = [];
    this.byId = new Map();
    this.byRef = new Map();
    this.refs = 0;
    this.ackPending = new Set();
    this.ackScheduled = false;
    this.build();
  }

  build() {
    this.root = el("aside", "console");
    this.root.id = "console";
    this.root.hidden = true;
    this.root.setAttribute("aria-label", "Console");
    const head = el("header", "console-head");
    head.append(el("span", "console-title", "Console"));
    this.tabs = el("div", "console-tabs");
    this.tabs.setAttribute("role", "tablist");
    const hide = el("button", "btn btn-small btn-ghost console-hide", "Hide");
    hide.type = "button";
    hide.addEventListener("click", () => { this.root.hidden = true; });
    head.append(this.tabs, hide);
    this.bodies = el("div", "console-bodies");
    this.root.append(head, this.bodies);
    document.body.append(this.root);
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && !this.root.hidden && this.root.contains(document.activeElement)) this.root.hidden = true;
    });
  }

  send(message) {
    const c = this.getClient();
    return Boolean(c && c.send(message));
  }

  // Open (or show again) a session to this client.
  open(client) {
    const existing = this.sessions.find((s) => s.clientId === client.clientId && s.state !== "closed" && s.state !== "error");
    if (existing) {
      this.select(existing);
      return existing;
    }
    const ref = `r${++this.refs}-${Date.now().toString(36)}`;
    // Labelled by client id: the name may be shared or missing, the id is what commands reach.
    const s = new Session(this, client.clientId, client.clientId, ref);
    if (client.name && client.name !== client.clientId) s.tab.title = client.name;
    this.sessions.push(s);
    this.byRef.set(ref, s);
    this.tabs.append(s.tab);
    this.bodies.append(s.body);
    this.select(s);
    if (!this.send({ action: "terminal.open", clientId: client.clientId, ref })) {
      s.setState("error", "Not connected to rpad");
    }
    return s;
  }

  select(s) {
    this.root.hidden = false;
    for (const o of this.sessions) {
      const on = o === s;
      o.body.hidden = !on;
      o.tab.setAttribute("aria-selected", String(on));
    }
    if (s.state === "ready" || s.state === "running") s.input.focus();
  }

  remove(s) {
    this.sessions = this.sessions.filter((o) => o !== s);
    if (s.id) this.byId.delete(s.id);
    this.byRef.delete(s.ref);
    s.tab.remove();
    s.body.remove();
    if (this.sessions.length) this.select(this.sessions[this.sessions.length - 1]);
    else this.root.hidden = true;
  }

  scheduleAck(s) {
    this.ackPending.add(s);
    if (this.ackScheduled) return;
    this.ackScheduled = true;
    // Once the output has been painted, and at most every ACK_INTERVAL_MS.
    setTimeout(() => requestAnimationFrame(() => {
      this.ackScheduled = false;
      for (const o of this.ackPending) o.ack();
      this.ackPending.clear();
    }), ACK_INTERVAL_MS);
  }

  // The page's client list changed: tell the open sessions about their clients (those the
  // page shows; the list may be one page of the fleet).
  sync(clients) {
    for (const s of this.sessions) {
      const c = clients.get(s.clientId);
      if (c) s.clientChanged(consoleState(c));
    }
  }

  // After every (re)connection: find this tab's sessions again.
  onEstablished() {
    for (const s of this.sessions) {
      if (s.id && s.state !== "closed" && s.state !== "error") this.send({ action: "terminal.attach", sessionId: s.id });
    }
  }

  // Direct messages from the hub; returns true when it was a console message.
  onMessage(msg) {
    const d = msg.data || {};
    let s = d.sessionId ? this.byId.get(d.sessionId) : undefined;
    switch (msg.type) {
      case "TERMINAL_CONNECTED":
        s = s || (d.ref ? this.byRef.get(d.ref) : undefined);
        if (!s) return true;  // another tab's session
        this.byId.set(d.sessionId, s);
        s.connected(d);
        this.send({ action: "terminal.history", sessionId: d.sessionId });
        return true;
      case "TERMINAL_ERROR":
        s = s || (d.ref ? this.byRef.get(d.ref) : undefined);
        if (s) s.error(d);
        return true;
      case "COMMAND_START":
        if (s) s.start(d);
        return true;
      case "COMMAND_OUTPUT":
        if (s) s.chunk(d);
        return true;
      case "COMMAND_DONE":
        if (s) s.done(d);
        return true;
      case "COMMAND_HISTORY":
        if (s) s.history_(d);
        return true;
      case "TERMINAL_CLOSED":
        if (s) s.closed(d.reason);
        return true;
      default:
        return false;
    }
  }
}
