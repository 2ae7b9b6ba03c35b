// rpad-client.js — a small, dependency-free WebSocket client for rpad's hub (SPEC §5).
//
// An ES module for browsers (and any runtime with a WHATWG WebSocket and EventTarget):
//
//   import { RpadClient, tokenFromPage } from "/static/rpad-client.js";
//
//   const client = new RpadClient({
//     url: "ws://rpad.example:8001/ws",
//     token: tokenFromPage(),               // ?token=… or sessionStorage
//     topics: ["client_status", "notifications"],
//   });
//   client.addEventListener("state", (e) => console.log(e.detail.state));
//   client.addEventListener("event", (e) => console.log(e.detail.type, e.detail.data));
//   client.connect();
//
// What it does for you:
//   * authenticates with the first message ({"action": "auth", "token"}), so the token never
//     appears in a URL or a proxy's access log;
//   * subscribes to its topics on every (re)connection and resumes with `since` = the last seq
//     seen per topic, as long as the server's epoch is unchanged; after a restart of rpad (a
//     new epoch) it starts afresh and tells you (`established` event, `epochChanged: true`);
//   * drops duplicates (an envelope whose seq is not newer than the last one of its topic);
//   * reconnects with exponential backoff — 1 s doubling to 30 s, each delay shortened by a
//     random part of at most 20 % (jitter) — and gives up after `maxAttempts` consecutive
//     failures (state "failed"; call retry() to start again);
//   * stops at once when the server refuses the token (close codes 4001, 4003, 4009: state
//     "unauthorized"); set a new token with setToken() and call retry();
//   * pings every 25 s and reconnects if nothing comes back within 10 s (a half-open TCP
//     connection is otherwise invisible to a browser).
//
// States: "idle" → "connecting" → "connected"; after a loss "reconnecting" (waiting or trying
// again); "failed" after maxAttempts; "unauthorized"; "closed" after close().

export const DEFAULT_BACKOFF = Object.freeze({ initialMs: 1000, factor: 2, maxMs: 30000, jitter: 0.2 });
export const REFUSED_CLOSE_CODES = Object.freeze({ 4001: "unauthorized", 4003: "forbidden", 4009: "token expired" });
export const TOKEN_STORAGE_KEY = "rpad.token";
const CONTROL_TYPES = new Set(["CONNECTION_ESTABLISHED", "SUBSCRIBED", "UNSUBSCRIBED", "PONG", "ERROR"]);

/**
 * The delay in milliseconds before retry number `attempt` (0 for the first retry):
 *   min(maxMs, initialMs * factor ** attempt) * (1 - jitter * r),  r uniform in [0, 1).
 * The same formula as rpad.retry.backoff_delay on the Python side.
 */
export function backoffDelay(attempt, options = {}, r = Math.random()) {
  const { initialMs, factor, maxMs, jitter } = { ...DEFAULT_BACKOFF, ...options };
  let base = initialMs;
  for (let i = 0; i < attempt && base < maxMs; i++) base *= factor;
  base = Math.min(base, maxMs);
  return base * (1 - jitter * r);
}

/**
 * The token for this page: `?token=` in the URL (then saved in sessionStorage and removed from
 * the address bar, so it does not end up in bookmarks or screenshots), else the saved one.
 * Returns null when there is none.
 */
export function tokenFromPage({ param = "token", storageKey = TOKEN_STORAGE_KEY, win = globalThis.window } = {}) {
  if (!win) return null;
  const url = new URL(win.location.href);
  const fromUrl = url.searchParams.get(param);
  if (fromUrl) {
    saveToken(fromUrl, { storageKey, win });
    url.searchParams.delete(param);
    try {
      win.history.replaceState(win.history.state, "", url.pathname + url.search + url.hash);
    } catch (_) { /* a sandboxed frame: keep the URL */ }
    return fromUrl.trim();
  }
  try {
    return win.sessionStorage.getItem(storageKey);
  } catch (_) {
    return null;
  }
}

export function saveToken(token, { storageKey = TOKEN_STORAGE_KEY, win = globalThis.window } = {}) {
  try { win.sessionStorage.setItem(storageKey, token.trim()); } catch (_) { /* private mode */ }
}

export function clearToken({ storageKey = TOKEN_STORAGE_KEY, win = globalThis.window } = {}) {
  try { win.sessionStorage.removeItem(storageKey); } catch (_) { /* private mode */ }
}

export class RpadClient extends EventTarget {
  /**
   * @param {object} options
   * @param {string} options.url             the hub, e.g. "ws://host:8001/ws"
   * @param {string} options.token           a JWT (viewer or better)
   * @param {string[]} [options.topics]      topics to subscribe to on every connection
   * @param {number} [options.maxAttempts]   consecutive failed connections before "failed" (10)
   * @param {object} [options.backoff]       {initialMs, factor, maxMs, jitter}
   * @param {number} [options.pingIntervalMs]  25000
   * @param {number} [options.pongTimeoutMs]   10000
   * @param {boolean} [options.batch]        ask for frame batching at auth (true): several
   *                                         messages to a frame, newline-delimited
   * @param {Function} [options.WebSocket]   the WebSocket class (for other runtimes and tests)
   * @param {Function} [options.random]      the jitter's random source
   */
  constructor({ url, token, topics = [], maxAttempts = 10, backoff = {}, pingIntervalMs = 25000,
                pongTimeoutMs = 10000, batch = true, WebSocket = globalThis.WebSocket,
                random = Math.random } = {}) {
    super();
    if (!url) throw new TypeError("RpadClient: url is required");
    this.url = url;
    this.token = token || "";
    this.topics = new Set(topics);
    this.topicOptions = new Map();  // topic → extra subscribe fields (e.g. {view} on servers)
    this.maxAttempts = maxAttempts;
    this.backoff = { ...DEFAULT_BACKOFF, ...backoff };
    this.pingIntervalMs = pingIntervalMs;
    this.pongTimeoutMs = pongTimeoutMs;
    this.batch = Boolean(batch);
    this.WebSocket = WebSocket;
    this.random = random;

    this.state = "idle";
    this.attempt = 0;            // consecutive failed connections
    this.epoch = null;           // the server's epoch, from CONNECTION_ESTABLISHED
    this.connection = null;      // CONNECTION_ESTABLISHED data of the current connection
    this.lastSeq = new Map();    // topic → last seq seen (within this epoch)
    this.serverOffsetMs = 0;     // server clock − local clock, from serverTime
    this.nextAttemptAt = null;   // Date.now() of the next try while "reconnecting"
    this.lastClose = null;       // {code, reason} of the last close
    this._ws = null;
    this._established = false;
    this._retryTimer = null;
    this._pingTimer = null;
    this._pongTimer = null;
  }

  /** The server's current time in ms (the local clock corrected by serverTime). */
  serverNow() {
    return Date.now() + this.serverOffsetMs;
  }

  connect() {
    if (this._ws || this.state === "connecting") return;
    this._clearRetry();
    this._open();
  }

  /** After "failed" or "unauthorized" (or any time): start again with a fresh attempt count. */
  retry() {
    this._clearRetry();
    this.attempt = 0;
    if (this._ws) this._drop(null);
    this._open();
  }

  /** Close for good (no reconnection). */
  close() {
    this._clearRetry();
    this._setState("closed");
    if (this._ws) this._drop(null);
  }

  /** Use a new token: on the next connection, or now with {"action": "refresh"}. */
  setToken(token) {
    this.token = token;
    if (this.state === "connected") this.send({ action: "refresh", token });
  }

  subscribe(topic) {
    if (this.topics.has(topic)) return;
    this.topics.add(topic);
    if (this.state === "connected") this._subscribe(topic);
  }

  /**
   * Extra fields of a topic's subscribe (for `servers`: `{view: {filter, q, tag, sort, offset,
   * limit}}`, a windowed subscription: SERVER_WINDOW pages instead of SERVER_LIST). Sent again
   * at once when connected, and on every reconnection.
   */
  setOptions(topic, options) {
    this.topicOptions.set(topic, options || {});
    this.topics.add(topic);
    if (this.state === "connected") this._subscribe(topic);
  }

  unsubscribe(topic) {
    if (!this.topics.delete(topic)) return;
    this.lastSeq.delete(topic);
    if (this.state === "connected") this.send({ action: "unsubscribe", topic });
  }

  /** Send one action object; false when not connected. */
  send(message) {
    if (!this._ws || this._ws.readyState !== 1) return false;
    this._ws.send(JSON.stringify(message));
    return true;
  }

  // -- internals -------------------------------------------------------------------------------

  _emit(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }

  _setState(state, extra = {}) {
    this.state = state;
    this._emit("state", { state, attempt: this.attempt, maxAttempts: this.maxAttempts,
                          nextAttemptAt: this.nextAttemptAt, lastClose: this.lastClose, ...extra });
  }

  _open() {
    this.nextAttemptAt = null;
    this._established = false;
    this._setState(this.attempt > 0 ? "reconnecting" : "connecting");
    let ws;
    try {
      ws = new this.WebSocket(this.url);
    } catch (err) {
      this.lastClose = { code: 0, reason: String(err.message || err) };
      this._scheduleReconnect();
      return;
    }
    this._ws = ws;
    ws.onopen = () => ws.send(JSON.stringify({ action: "auth", token: this.token, batch: this.batch }));
    ws.onmessage = (e) => this._onMessage(e.data);
    ws.onclose = (e) => {
      if (ws !== this._ws) return;
      this._closed(e.code, e.reason);
    };
    ws.onerror = () => { /* always followed by close */ };
  }

  _onMessage(text) {
    // Frame batching: several messages to a frame, one per line (JSON never holds a raw newline).
    if (typeof text === "string" && text.includes("\n")) {
      for (const line of text.split("\n")) this._onMessage(line);
      return;
    }
    let msg;
    try {
      msg = JSON.parse(text);
    } catch (_) {
      return;
    }
    if (!msg || typeof msg !== "object") return;
    this._alive();
    const data = msg.data || {};
    switch (msg.type) {
      case "CONNECTION_ESTABLISHED": {
        const epochChanged = this.epoch !== null && data.epoch !== this.epoch;
        if (this.epoch !== data.epoch) this.lastSeq.clear();
        this.epoch = data.epoch;
        this.connection = data;
        this._clock(data.serverTime);
        this._established = true;
        this.attempt = 0;
        this.lastClose = null;
        this._setState("connected");
        this._emit("established", { ...data, epochChanged });
        for (const topic of this.topics) this._subscribe(topic);
        this._startPing();
        break;
      }
      case "PONG":
        this._clock(data.serverTime);
        break;
      case "ERROR":
        this._emit("error", data);
        break;
      default:
        break;
    }
    this._emit("message", msg);
    if (CONTROL_TYPES.has(msg.type)) {
      if (msg.type === "SUBSCRIBED") this._emit("subscribed", data);
      return;
    }
    if (typeof msg.topic === "string" && Number.isInteger(msg.seq)) {
      const last = this.lastSeq.get(msg.topic);
      if (last !== undefined && msg.seq <= last) return;   // seen before a reconnection
      this.lastSeq.set(msg.topic, msg.seq);
    }
    this._emit("event", msg);
  }

  _subscribe(topic) {
    const message = { ...(this.topicOptions.get(topic) || {}), action: "subscribe", topic };
    if (this.lastSeq.has(topic)) message.since = this.lastSeq.get(topic);
    this.send(message);
  }

  _clock(serverTime) {
    const t = Date.parse(serverTime);
    if (!Number.isNaN(t)) this.serverOffsetMs = t - Date.now();
  }

  _startPing() {
    this._stopPing();
    this._pingTimer = setInterval(() => {
      if (!this.send({ action: "ping" })) return;
      if (!this._pongTimer) {
        this._pongTimer = setTimeout(() => {
          this._pongTimer = null;
          this._drop({ code: 4000, reason: "no answer to ping" });
        }, this.pongTimeoutMs);
      }
    }, this.pingIntervalMs);
  }

  _alive() {
    if (this._pongTimer) {
      clearTimeout(this._pongTimer);
      this._pongTimer = null;
    }
  }

  _stopPing() {
    clearInterval(this._pingTimer);
    this._pingTimer = null;
    this._alive();
  }

  // Forget the current socket now (without waiting for a close handshake that may never come).
  _drop(close) {
    const ws = this._ws;
    this._ws = null;
    this._stopPing();
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try { ws.close(1000); } catch (_) { /* already closed */ }
    }
    if (close) this._closed(close.code, close.reason, true);
  }

  _closed(code, reason, alreadyDropped = false) {
    if (!alreadyDropped) {
      this._ws = null;
      this._stopPing();
    }
    this.lastClose = { code, reason: reason || "" };
    this.connection = null;
    if (this.state === "closed") return;
    if (code in REFUSED_CLOSE_CODES) {
      this._setState("unauthorized", { reason: reason || REFUSED_CLOSE_CODES[code], code });
      return;
    }
    if (this._established) this.attempt = 0;
    this._scheduleReconnect();
  }

  _scheduleReconnect() {
    this.attempt += 1;
    if (this.maxAttempts && this.attempt >= this.maxAttempts) {
      this.nextAttemptAt = null;
      this._setState("failed");
      return;
    }
    const delay = backoffDelay(this.attempt - 1, this.backoff, this.random());
    this.nextAttemptAt = Date.now() + delay;
    this._setState("reconnecting", { delayMs: delay });
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      this._open();
    }, delay);
  }

  _clearRetry() {
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
  }
}
