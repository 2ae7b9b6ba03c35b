// rpad dashboard: who is silenced, and until when (issue 14).
//
// Reads GET /api/v1/silences (silences made by admins and the config's maintenance windows,
// each with its match and end) every REFRESH_MS, and at once when a client_status event says
// a client is silenced; the dashboard asks `until(client)` for each row and shows a badge
// ("Silenced until 14:30", the comment as its title), and a banner above the list names the
// silences in force. Alerts for those clients wait; their events still arrive at once.
//
// Hooks in dashboard.js: `start(token)`, `decorate(cell, client)` in the row update,
// `note(data)` for client_status events and NOTIFICATIONs, and the `onChange` callback.

const URL_ = "/api/v1/silences";
const REFRESH_MS = 30000;

function el(tag, className, text) {
  const n = document.createElement(tag);
  if (className) n.className = className;
  if (text !== undefined) n.textContent = text;
  return n;
}

function clock(iso) {
  const d = new Date(iso);
  const sameDay = d.toDateString() === new Date().toDateString();
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return sameDay ? time : `${d.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
}

export class Silences {
  constructor({ onChange = () => {}, now = () => Date.now() } = {}) {
    this.onChange = onChange;
    this.now = now;
    this.silences = [];   // active ones, as GET /api/v1/silences gives them
    this.token = null;
    this.timer = null;
    this.banner = null;
  }

  start(token) {
    this.token = token;
    clearInterval(this.timer);
    this.timer = setInterval(() => this.refresh(), REFRESH_MS);
    this.refresh();
  }

  async refresh() {
    if (!this.token) return;
    try {
      const r = await fetch(URL_, { headers: { Authorization: `Bearer ${this.token}` } });
      if (!r.ok) return;
      const body = await r.json();
      this.silences = (body.silences || []).filter((s) => s.active);
    } catch {
      return;  // the next round tries again
    }
    this.renderBanner();
    this.onChange();
  }

  // A client_status event naming a silence we do not know yet, or rpad's NOTIFICATION that a
  // silence was made or ended: refresh.
  note(data) {
    if (!data) return;
    if ((data.silenced && !this.until(data)) || String(data.event || "").startsWith("silence.")) {
      this.refresh();
    }
  }

  // The end (ISO) of the latest silence in force that covers the client, or null.
  until(c) {
    const now = this.now();
    let end = null;
    for (const s of this.silences) {
      if (Date.parse(s.endsAt) <= now || Date.parse(s.startsAt) > now) continue;
      const m = s.match || {};
      const hit = (m.clientIds || []).includes(c.clientId) ||
                  (m.tags || []).some((t) => (c.tags || []).includes(t));
      if (hit && (!end || Date.parse(s.endsAt) > Date.parse(end.endsAt))) end = s;
    }
    return end;
  }

  // The row's badge, in the status cell.
  decorate(cell, c) {
    const s = this.until(c);
    let badge = cell.querySelector(".silenced");
    if (!s) {
      if (badge) badge.remove();
      return;
    }
    if (!badge) {
      badge = el("span", "silenced");
      cell.append(badge);
    }
    const text = `Silenced until ${clock(s.endsAt)}`;
    if (badge.textContent !== text) badge.textContent = text;
    const title = `${s.comment} (${s.createdBy}); alerts wait until ${new Date(s.endsAt).toLocaleString()}`;
    if (badge.title !== title) badge.title = title;
  }

  renderBanner() {
    if (!this.banner) {
      this.banner = el("section", "silence-banner");
      this.banner.setAttribute("aria-label", "Silences in force");
      const summary = document.querySelector(".summary");
      if (!summary) return;
      summary.after(this.banner);
    }
    const items = this.silences.map((s) => {
      const li = el("li");
      const who = [...(s.match.clientIds || []), ...(s.match.tags || []).map((t) => `tag ${t}`)];
      li.append(el("strong", "", who.join(", ")), ` until ${clock(s.endsAt)}`,
                el("span", "silence-comment", ` · ${s.comment}`));
      return li;
    });
    this.banner.hidden = items.length === 0;
    const list = el("ul");
    list.append(...items);
    this.banner.replaceChildren(el("span", "silence-title", `Silenced (${items.length}): alerts wait`), list);
  }
}
