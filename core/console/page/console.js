// The wapphook console (docs/operations.md, "The console"). Plain JavaScript, no library.
// Every value that comes from an event is put in the page with textContent, never as markup.
"use strict";

const $ = (id) => document.getElementById(id);
let csrf = "";
let next = null;          // the next page's "before", or null
let selected = null;      // the id of the event shown in the detail
let stream = null;
const rows = new Map();   // event id -> its <tr>

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

// UTC, as the server's log writes it, so that a time here finds its log lines
function when(t) {
  return new Date(t * 1000).toISOString().replace("T", " ");
}

async function api(method, path, body) {
  const opts = { method, credentials: "same-origin", headers: {} };
  if (method !== "GET") {
    opts.headers["Content-Type"] = "application/json";
    if (csrf) opts.headers["X-CSRF-Token"] = csrf;
    opts.body = JSON.stringify(body || {});
  }
  const r = await fetch(path, opts);
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (r.status === 401) { showSignIn(); throw new Error("unauthorized"); }
  if (!r.ok) throw new Error((data && data.error) || `HTTP ${r.status}`);
  return data;
}

function flash(text, bad) {
  const f = $("flash");
  f.textContent = text;
  f.className = bad ? "flash bad" : "flash";
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => f.classList.add("hidden"), 6000);
}

// --- signing in ---------------------------------------------------------------------------

function showSignIn() {
  $("app").classList.add("hidden");
  $("signout").classList.add("hidden");
  $("signin").classList.remove("hidden");
  if (stream) { stream.close(); stream = null; }
  $("token").focus();
}

async function start() {
  let who;
  try { who = await api("GET", "/api/session"); } catch (e) { return; }
  csrf = who.csrf || "";
  $("signin").classList.add("hidden");
  $("app").classList.remove("hidden");
  $("signout").classList.toggle("hidden", who.auth !== "session");
  $("mode").textContent = who.mode === "durable" ? "durable: events from the spool" : "sync mode";
  if (who.mode !== "durable") {
    const note = $("memory-note");
    note.textContent = `Sync mode: the console keeps the last ${who.history} events in memory ` +
      "(console.history); they are lost when wapphook restarts. Durable mode keeps them in the spool.";
    note.classList.remove("hidden");
  }
  await load(false);
  connect();
  chart();
  if (!start.ticking) start.ticking = setInterval(chart, 10000); // once, whatever the sign-ins
}

$("signin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("signin-error").textContent = "";
  const r = await fetch("/api/session", {
    method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token: $("token").value }) });
  if (!r.ok) { $("signin-error").textContent = "That token is not the right one."; return; }
  $("token").value = "";
  start();
});

$("signout").addEventListener("click", async () => {
  try { await api("POST", "/api/session/end"); } catch (e) { /* signed out anyway */ }
  location.reload();
});

// --- the list -----------------------------------------------------------------------------

function filters() {
  const p = new URLSearchParams();
  const t = $("f-type").value.trim(), s = $("f-state").value, q = $("f-q").value.trim();
  if (t) p.set("type", t);
  if (s) p.set("state", s);
  if (q) p.set("q", q);
  return p;
}

function stateCell(state) { return el("td", state, "state-" + state); }

function handlersText(e) {
  if (!e.handlers.length) return "none";
  return e.handlers.map((h) => `${h.handler}: ${h.state}`).join(", ");
}

function renderRow(e, tr) {
  tr = tr || el("tr");
  tr.replaceChildren(el("td", e.id), el("td", e.type), el("td", when(e.received_at)),
                     stateCell(e.state), el("td", handlersText(e)));
  tr.dataset.id = e.id;
  tr.classList.toggle("selected", e.id === selected);
  return tr;
}

function addRows(events, atTop) {
  const body = $("events").tBodies[0];
  for (const e of events) {
    let tr = rows.get(e.id);
    if (tr) { renderRow(e, tr); continue; }
    tr = renderRow(e);
    rows.set(e.id, tr);
    if (atTop) { body.insertBefore(tr, body.firstChild); tr.classList.add("fresh"); }
    else body.appendChild(tr);
  }
  $("empty").classList.toggle("hidden", rows.size > 0);
  const types = new Set([...rows.values()].map((r) => r.children[1].textContent));
  $("types").replaceChildren(...[...types].sort().map((t) => { const o = el("option"); o.value = t; return o; }));
}

async function load(more) {
  const p = filters();
  if (more && next) p.set("before", next);
  const page = await api("GET", "/api/events?" + p.toString());
  if (!more) { rows.clear(); $("events").tBodies[0].replaceChildren(); }
  addRows(page.events, false);
  next = page.next;
  $("more").classList.toggle("hidden", !next);
}

$("filters").addEventListener("submit", (ev) => { ev.preventDefault(); load(false).catch((e) => flash(e.message, true)); });
$("more").addEventListener("click", () => load(true).catch((e) => flash(e.message, true)));
$("events").addEventListener("click", (ev) => {
  const tr = ev.target.closest("tr");
  if (tr && tr.dataset.id) show(tr.dataset.id);
});
$("replay-dead").addEventListener("click", async () => {
  if (!window.confirm("Queue every dead letter again?")) return;
  try {
    const r = await api("POST", "/api/dead/replay");
    flash(`${r.replayed} dead ${r.replayed === 1 ? "letter" : "letters"} queued again.`);
  } catch (e) { flash(e.message, true); }
});

// A live event: shown when the filters would list it (a text search waits for a reload).
function matches(e) {
  const t = $("f-type").value.trim(), s = $("f-state").value, q = $("f-q").value.trim();
  return (!t || e.type === t) && (!s || e.state === s) && !q;
}

function connect() {
  if (stream) stream.close();
  stream = new EventSource("/api/stream");
  stream.onopen = () => { $("live").className = "badge on"; };
  stream.onerror = () => { $("live").className = "badge off"; };
  const seen = (ev) => {
    const e = JSON.parse(ev.data);
    if (rows.has(e.id) || matches(e)) addRows([e], true);
    if (e.id === selected) show(e.id);
    if (!chart.soon) chart.soon = setTimeout(() => { chart.soon = null; chart(); }, 1000);
  };
  stream.addEventListener("received", seen);
  stream.addEventListener("outcome", seen);
}

// --- one event ----------------------------------------------------------------------------

async function show(id) {
  let e;
  selected = id; // a click that comes later wins over a refresh still on its way
  try { e = await api("GET", "/api/events/" + encodeURIComponent(id)); }
  catch (err) { flash(err.message, true); return; }
  if (selected !== e.id) return;
  for (const tr of rows.values()) tr.classList.toggle("selected", tr.dataset.id === e.id);
  $("detail").classList.remove("hidden");
  $("d-id").textContent = e.id;
  $("d-type").textContent = e.type;
  $("d-at").textContent = when(e.received_at);
  $("d-state").replaceChildren(el("span", e.state, "state-" + e.state));

  const hb = $("d-handlers").tBodies[0];
  hb.replaceChildren(...e.handlers.map((h) => {
    const b = el("button", "Replay", "small");
    b.type = "button";
    b.addEventListener("click", () => replay(e.id, h.handler));
    const tr = el("tr");
    tr.append(el("td", h.handler), stateCell(h.state), el("td", h.attempts),
              el("td", h.duration_ms === null ? "" : h.duration_ms.toFixed(2)),
              el("td", (h.error || "").split("\n")[0], "error"), el("td"));
    tr.lastChild.appendChild(b);
    return tr;
  }));

  $("d-attempts").replaceChildren(...e.attempts.slice().reverse().map((a) => {
    const li = el("li", null, a.outcome);
    const head = el("div");
    head.append(el("strong", a.handler), el("span", ` attempt ${a.attempt} · `),
                el("span", a.outcome, "state-" + a.outcome),
                el("span", ` · ${when(a.at)} · ${a.duration_ms === null ? "?" : a.duration_ms.toFixed(2)} ms`, "dim"));
    li.appendChild(head);
    if (a.error) li.appendChild(el("pre", a.error, "error trace"));
    if (a.log.length) li.appendChild(el("pre", a.log.join("\n"), "code log"));
    else li.appendChild(el("div", "logged nothing", "dim"));
    return li;
  }));
  if (!e.attempts.length) $("d-attempts").appendChild(el("li", "No attempt yet.", "dim"));

  $("d-cut").classList.toggle("hidden", !e.body_cut);
  $("d-payload").textContent = typeof e.payload === "string" ? e.payload : JSON.stringify(e.payload, null, 2);
  $("d-headers").tBodies[0].replaceChildren(...Object.entries(e.headers).map(([k, v]) => {
    const tr = el("tr");
    tr.append(el("td", k), el("td", v));
    return tr;
  }));
  $("d-replay").onclick = () => replay(e.id, null);
}

async function replay(id, handler) {
  try {
    const r = await api("POST", `/api/events/${encodeURIComponent(id)}/replay`, handler ? { handler } : {});
    flash(`Replayed ${r.replayed} ${r.replayed === 1 ? "delivery" : "deliveries"} of event ${id}.`);
    setTimeout(() => { if (selected === id) show(id); }, 400); // durable: after the delivery
  } catch (e) { flash(e.message, true); }
}

// --- the chart ----------------------------------------------------------------------------

async function chart() {
  let s;
  try { s = await api("GET", "/api/stats?window_s=900"); } catch (e) { return; }
  const c = $("chart"), g = c.getContext("2d");
  const W = c.width = c.clientWidth * (window.devicePixelRatio || 1);
  const H = c.height = 140 * (window.devicePixelRatio || 1);
  const k = window.devicePixelRatio || 1;
  // events and failed attempts side by side, on one scale (retries can make failures the larger)
  const n = s.buckets.length, max = Math.max(1, ...s.buckets.map((b) => Math.max(b.events, b.failures)));
  const left = 34 * k, bottom = 16 * k, w = (W - left) / n, h = H - bottom - 6 * k;
  g.clearRect(0, 0, W, H);
  g.fillStyle = "#6b7385";
  g.font = `${11 * k}px system-ui, sans-serif`;
  g.fillText(String(max), 2 * k, 12 * k);
  g.fillText("0", 2 * k, H - bottom);
  const half = Math.max(1, (w - 2) / 2);
  s.buckets.forEach((b, i) => {
    const x = left + i * w;
    const eh = (b.events / max) * h, fh = (b.failures / max) * h;
    g.fillStyle = "#8fb3f5";
    g.fillRect(x + 1, H - bottom - eh, half, eh);
    g.fillStyle = "#c5221f";
    g.fillRect(x + 1 + half, H - bottom - fh, half, fh);
  });
  g.fillStyle = "#6b7385";
  g.fillText("-15 min", left, H - 3 * k);
  g.fillText("now", W - 24 * k, H - 3 * k);
}

start();
