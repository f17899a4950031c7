"use strict";
// The web console of `emollama serve`: live watched sources, a clip to try, the
// service's health. Plain JavaScript, no build step. The page is served with a strict
// CSP, so nothing here is inline, evaluated or fetched from another origin, and every
// piece of network data reaches the page through textContent (never innerHTML).

const TOKEN_KEY = "emollama.token";
const KEEP_S = 600; // the timeline keeps the last 10 minutes
const TICK_MS = 5000; // health refresh / status poll
const STALL_MS = 45000; // keep-alives come every 15 s: three missed means a dead stream
const OUTCOMES = ["ok", "client_error", "server_error", "busy", "draining", "cancelled", "timeout"];
const TASKS_V1 = ["emotion", "reason", "question"];
const TASKS_V2 = [...TASKS_V1, "sentiment", "intent", "multi-label", "think", "audio", "image"];
const LABEL_COLOURS = {
  angry: "#c0392b", disgust: "#5e7d1e", fear: "#7d3c98", happy: "#b7950b", neutral: "#6c7a89",
  sad: "#2e6fba", surprise: "#d35400", worried: "#138d75", contempt: "#8e5b3a", doubt: "#b03a7a",
  positive: "#1d8348", negative: "#922b21",
};
const PART_COLOURS = ["#1f5fae", "#b03a7a", "#138d75", "#8e5b3a", "#7d3c98", "#c0392b", "#5e7d1e", "#d35400", "#2e4053", "#6c7a89"];

const $ = (sel, root = document) => root.querySelector(sel);

// ---------------------------------------------------------------- small helpers

/** An element with a class, attributes and children (strings become text nodes). */
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  e.append(...children.filter((c) => c !== null && c !== undefined).map((c) => (c instanceof Node ? c : String(c))));
  return e;
}

const isNum = (x) => typeof x === "number" && Number.isFinite(x);
const fmtGB = (bytes) => (isNum(bytes) ? (bytes / 1e9).toFixed(2) + " GB" : "–"); // decimal GB
const fmtMs = (ms) => (isNum(ms) ? Math.round(ms) + " ms" : "–");
const fmtPct = (p) => (isNum(p) ? Math.round(p * 100) + "%" : "");
const nowS = () => Date.now() / 1000;

function labelColour(name) {
  if (LABEL_COLOURS[name]) return LABEL_COLOURS[name];
  // An unknown label (a v2 task's own): a stable hue from its name, dark enough on white.
  let h = 0;
  for (const ch of String(name)) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return `hsl(${h % 360}, 55%, 38%)`;
}

/** A dl's content from [term, description, key] rows; descriptions may be nodes. */
function fillDl(dl, rows) {
  dl.replaceChildren();
  for (const [term, desc, key] of rows) {
    dl.append(el("dt", {}, term), el("dd", key ? { "data-key": key } : {}, desc ?? "–"));
  }
}

// ---------------------------------------------------------------- API and login

class AuthError extends Error {}

function storedToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return ""; // storage disabled: the console still works for a service without a token
  }
}

/** fetch() with the bearer token; 401 shows the login, other non-2xx throw the JSON error. */
async function api(path, init = {}) {
  const headers = new Headers(init.headers || {});
  const token = storedToken();
  if (token) headers.set("Authorization", "Bearer " + token);
  const res = await fetch(path, { ...init, headers, cache: "no-store", credentials: "same-origin" });
  if (res.status === 401) {
    requireLogin(token);
    throw new AuthError("unauthorized");
  }
  if (!res.ok) throw await errorFrom(res);
  return res;
}

/** The service's JSON error ({"error": {"message", "code", …}}) as an Error. */
async function errorFrom(res) {
  let message = `${res.status} ${res.statusText}`.trim();
  try {
    const body = await res.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch {
    // not JSON: keep the HTTP status line
  }
  return Object.assign(new Error(message), { status: res.status });
}

/** Errors nobody needs to read: the login is already shown, or we aborted the request. */
const isQuiet = (e) => e instanceof AuthError || (e && e.name === "AbortError");

let locked = false;

function requireLogin(sentToken) {
  // Only a token that was sent and refused is wrong; a request that raced a new login
  // with the old token must not erase the new one.
  if (sentToken) {
    $("#login-error").textContent = "That token was not accepted. Check it and try again.";
    if (storedToken() === sentToken) localStorage.removeItem(TOKEN_KEY);
  }
  if (locked) return;
  locked = true;
  stopEvents();
  document.body.classList.add("locked");
  $("#login").hidden = false;
  $("#signout").hidden = true;
  $("#token").focus();
}

function unlock() {
  locked = false;
  document.body.classList.remove("locked");
  $("#login").hidden = true;
  $("#signout").hidden = !storedToken();
}

$("#login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const token = $("#token").value.trim();
  if (!token) {
    $("#login-error").textContent = "Enter the service's token.";
    return;
  }
  try {
    localStorage.setItem(TOKEN_KEY, token);
  } catch {
    $("#login-error").textContent = "This browser does not allow storing the token.";
    return;
  }
  $("#token").value = "";
  $("#login-error").textContent = "";
  unlock();
  start();
});

$("#signout").addEventListener("click", () => {
  localStorage.removeItem(TOKEN_KEY);
  stopEvents();
  for (const s of [...sources.values()]) removeSource(s);
  $("#login-error").textContent = "";
  $("#signout").hidden = true;
  start(); // answers 401, which shows the login
});

// ---------------------------------------------------------------- sections

let current = "live";

function showSection(name) {
  if (!["live", "try", "health"].includes(name)) name = "live";
  current = name;
  for (const b of document.querySelectorAll("nav button")) {
    if (b.dataset.section === name) b.setAttribute("aria-current", "page");
    else b.removeAttribute("aria-current");
  }
  for (const id of ["live", "try", "health"]) $("#" + id).hidden = id !== name;
  // The hash lets a reload keep the section; it never carries the token.
  history.replaceState(null, "", name === "live" ? location.pathname : "#" + name);
  if (name === "health" && !locked) refreshHealth();
}

for (const b of document.querySelectorAll("nav button")) {
  b.addEventListener("click", () => showSection(b.dataset.section));
}

// ---------------------------------------------------------------- status

let lastStatus = null;

/** GET /v1/status; updates the header and the task list (they depend on the model). */
async function loadStatus() {
  const st = await (await api("/v1/status")).json();
  lastStatus = st;
  const head = $("#service-status");
  head.dataset.status = st.status || "unknown";
  const r = st.ready;
  head.textContent = r
    ? `${st.status}: ${r.model} (${r.bundle}${r.synthetic ? ", synthetic" : ""}) on ${r.profile}`
    : `${st.status}${st.message ? ": " + st.message : ""}`;
  fillTasks(r ? r.model : null);
  return st;
}

function noteError(e) {
  if (isQuiet(e)) return;
  const head = $("#service-status");
  head.dataset.status = "error";
  head.textContent = "cannot reach the service: " + e.message;
}

// ---------------------------------------------------------------- live: source cards

const sources = new Map(); // name -> source state (below)
const plotSizer = new ResizeObserver((entries) => {
  // Resized a frame later: resizing the canvas inside the callback would re-trigger it
  // ("ResizeObserver loop" errors).
  requestAnimationFrame(() => {
    for (const entry of entries) {
      const s = sources.get(entry.target.closest(".source")?.dataset.source);
      const width = Math.floor(entry.contentRect.width);
      if (s && s.plot && width > 0 && width !== s.plot.width) s.plot.setSize({ width, height: s.plot.height });
    }
  });
});

function ensureSource(name) {
  let s = sources.get(name);
  if (s) return s;
  const node = $("#source-template").content.firstElementChild.cloneNode(true);
  node.dataset.source = name;
  $(".name", node).textContent = name;
  const img = $(".frame", node);
  img.alt = "latest frame of " + name;
  const timeline = $(".timeline", node);
  timeline.setAttribute("aria-label", `probability of each label for ${name} over the last 10 minutes`);
  s = {
    name, node, img, timeline,
    windows: 0, dropped: 0, latency: null, lastIndex: -1,
    points: [], // {index, end, t (wall clock of arrival, s), scores}
    labels: [], plot: null,
    frame: { wanted: -1, shown: -1, busy: false, url: null, missing: false },
  };
  sources.set(name, s);
  $("#sources").append(node);
  plotSizer.observe(timeline);
  return s;
}

function removeSource(s) {
  plotSizer.unobserve(s.timeline);
  if (s.plot) s.plot.destroy();
  if (s.frame.url) URL.revokeObjectURL(s.frame.url);
  s.node.remove();
  sources.delete(s.name);
}

function setState(s, state, detail) {
  const badge = $(".state", s.node);
  badge.textContent = state || "connecting";
  badge.dataset.state = state || "connecting";
  $(".detail", s.node).textContent = detail || "";
}

function renderStats(s) {
  s.node.dataset.windows = String(s.windows);
  $('[data-stat="windows"]', s.node).textContent = String(s.windows);
  $('[data-stat="dropped"]', s.node).textContent = String(s.dropped);
  $('[data-stat="latency"]', s.node).textContent = fmtMs(s.latency);
}

/** The newest window's label, probability and text. */
function showCurrent(s, w) {
  const scores = w.label_scores || null;
  let label = w.label;
  if (!label && scores) label = Object.keys(scores).sort((a, b) => scores[b] - scores[a])[0];
  $(".label", s.node).textContent = label || "—";
  $(".label", s.node).style.color = label ? labelColour(label) : "";
  $(".prob", s.node).textContent = label && scores ? fmtPct(scores[label]) : "";
  // What speech recognition heard in the window (bundles with it); the model's own
  // answer is `w.text`, empty with the fast preset.
  const heard = w.transcript || "";
  const text = $(".transcript", s.node);
  text.textContent = heard ? `“${heard}”` : "";
  text.hidden = !heard;
  s.latency = w.latency_ms;
}

function showFailure(s, d) {
  const p = $(".error", s.node);
  const when = new Date().toLocaleTimeString();
  const span = isNum(d.start) && isNum(d.end) ? `${d.start.toFixed(1)}–${d.end.toFixed(1)} s` : "";
  p.textContent = `${when}: window ${span} failed: ${d.error || "unknown error"}`;
  p.hidden = false;
}

/** A `window` event (not one the last status already held). */
function applyWindow(s, w, arrived) {
  if (isNum(w.index) && w.index < s.lastIndex) s.points = []; // the watch restarted at 0
  if (isNum(w.index)) s.lastIndex = w.index;
  s.windows += 1;
  if (isNum(w.dropped)) s.dropped = w.dropped;
  showCurrent(s, w);
  renderStats(s);
  addPoints(s, [{ index: w.index, end: w.end, t: arrived, scores: w.label_scores || null }]);
  // A window without frames (an audio-only source) has no preview: asking would only
  // earn a 404, which the browser logs as an error.
  const frames = w.media && w.media.frames;
  if (!(isNum(frames) && frames === 0) && !s.frame.missing) requestFrame(s, w.index);
}

// The timeline's x is the wall clock at arrival (Unix seconds), not the window's end on
// the source's clock: a source's clock restarts on reconnect (RTSP, a looping file) and
// differs between sources, while arrival time only grows, is what "the last 10 minutes"
// means, and gives uPlot a real time axis. Windows seeded from /v1/status have no
// arrival time; theirs is estimated from their ends relative to a known window.
function mergeRecent(s, recent) {
  if (!recent.length) return;
  const have = new Map(s.points.map((p) => [p.index, p]));
  const now = nowS();
  let anchor = { t: now, end: recent[recent.length - 1].end };
  for (let i = recent.length - 1; i >= 0; i--) {
    const known = have.get(recent[i].index);
    if (known) {
      anchor = { t: known.t, end: recent[i].end };
      break;
    }
  }
  const added = [];
  for (const w of recent) {
    if (have.has(w.index)) continue;
    const t = isNum(w.end) && isNum(anchor.end) ? anchor.t + (w.end - anchor.end) : now;
    added.push({ index: w.index, end: w.end, t: Math.min(now, t), scores: w.label_scores || null });
  }
  addPoints(s, added);
}

function addPoints(s, points) {
  s.points.push(...points);
  s.points.sort((a, b) => a.t - b.t);
  const cut = nowS() - KEEP_S;
  while (s.points.length && s.points[0].t < cut) s.points.shift();
  drawTimeline(s);
}

function drawTimeline(s) {
  if (typeof window.uPlot !== "function") return; // the vendored script did not load
  // Labels in palette order first, so the colours and legend order stay put.
  const seen = new Set();
  for (const p of s.points) for (const k of Object.keys(p.scores || {})) seen.add(k);
  const known = Object.keys(LABEL_COLOURS).filter((k) => seen.has(k));
  const labels = [...known, ...[...seen].filter((k) => !known.includes(k)).sort()];
  const data = [
    s.points.map((p) => p.t),
    ...labels.map((l) => s.points.map((p) => (p.scores && isNum(p.scores[l]) ? p.scores[l] : null))),
  ];
  // uPlot's series are fixed when it is made: a new label set means a new plot.
  if (!s.plot || labels.join() !== s.labels.join()) {
    if (s.plot) s.plot.destroy();
    s.labels = labels;
    s.plot = new window.uPlot(plotOptions(labels, s.timeline.clientWidth || 300), data, s.timeline);
  } else {
    s.plot.setData(data);
  }
}

function plotOptions(labels, width) {
  const axis = { stroke: "#4d5661", grid: { stroke: "#e4e8ed", width: 1 }, ticks: { stroke: "#d5dae0", width: 1 } };
  return {
    width,
    height: 180,
    scales: { x: { time: true }, y: { auto: false, range: [0, 1] } },
    axes: [axis, { ...axis, size: 54, values: (u, vals) => vals.map((v) => Math.round(v * 100) + "%") }],
    series: [
      { label: "time" },
      ...labels.map((l) => ({ label: l, stroke: labelColour(l), width: 2, value: (u, v) => (v == null ? "–" : fmtPct(v)) })),
    ],
    cursor: { drag: { x: false, y: false } },
  };
}

// ---------------------------------------------------------------- live: frames

function requestFrame(s, index) {
  if (!isNum(index)) return;
  s.frame.wanted = index;
  if (!s.frame.busy) loadFrames(s);
}

/** Fetches the newest wanted frame, one request at a time per source. */
async function loadFrames(s) {
  s.frame.busy = true;
  try {
    while (s.frame.wanted !== s.frame.shown && sources.get(s.name) === s && !locked) {
      const index = s.frame.wanted;
      try {
        // index= only defeats caches; the service answers its latest frame.
        const res = await api(`/v1/watch/frame?source=${encodeURIComponent(s.name)}&index=${index}`);
        const url = URL.createObjectURL(await res.blob());
        const old = s.frame.url;
        s.frame.url = url;
        s.img.src = url;
        s.img.classList.remove("empty");
        if (old) URL.revokeObjectURL(old); // the old image is already drawn
      } catch (e) {
        if (e instanceof AuthError) return;
        // 404 (no frame yet) or a network error: keep the last frame, quietly; after a
        // 404 only a status with a frame_index asks again.
        if (e.status === 404) s.frame.missing = true;
      }
      s.frame.shown = index;
    }
  } finally {
    s.frame.busy = false;
  }
}

// ---------------------------------------------------------------- live: syncing

/** Cards from a status: made, updated, removed; windows the status holds are merged in. */
function syncSources(list) {
  const names = new Set(list.map((x) => x.name));
  for (const s of [...sources.values()]) if (!names.has(s.name)) removeSource(s);
  const lastIndexes = new Map();
  for (const info of list) {
    const s = ensureSource(info.name);
    $("#sources").append(s.node); // keep the status's order
    setState(s, info.state, info.detail);
    const recent = Array.isArray(info.recent) ? info.recent : [];
    const last = recent.length ? recent[recent.length - 1] : null;
    if (last && last.index < s.lastIndex) {
      s.points = []; // the watch restarted: its indexes begin at 0 again
      s.lastIndex = -1;
    }
    mergeRecent(s, recent);
    if (last) {
      s.lastIndex = Math.max(s.lastIndex, last.index);
      showCurrent(s, last);
    }
    lastIndexes.set(info.name, last ? last.index : -1);
    if (isNum(info.windows)) s.windows = info.windows;
    if (isNum(info.dropped)) s.dropped = info.dropped;
    renderStats(s);
    if (isNum(info.frame_index)) {
      s.frame.missing = false;
      requestFrame(s, info.frame_index);
    }
  }
  $("#no-sources").hidden = list.length > 0;
  return lastIndexes;
}

/** One event of /v1/watch/events; `skipTo`: windows up to it were in the last status. */
function applyWatchEvent(type, d, arrived, skipTo = new Map()) {
  if (!d || typeof d.source !== "string") return;
  const s = ensureSource(d.source);
  $("#no-sources").hidden = true;
  switch (type) {
    case "connected":
      setState(s, "connected", [d.container, d.video, d.audio].filter(Boolean).join(", "));
      break;
    case "window":
      if (isNum(d.index) && d.index <= (skipTo.get(d.source) ?? -1)) return;
      applyWindow(s, d, arrived);
      break;
    case "window_failed":
      showFailure(s, d);
      break;
    case "reconnecting": {
      const retry = isNum(d.retry_in_s) ? `, retry in ${d.retry_in_s.toFixed(1)} s` : "";
      setState(s, "reconnecting", `${d.error || ""} (attempt ${d.attempt ?? "?"}${retry})`);
      break;
    }
    case "ended":
      setState(s, "ended", d.reason || "");
      if (isNum(d.dropped)) s.dropped = d.dropped;
      renderStats(s);
      break;
    default:
      break; // an event this console does not know yet
  }
}

// ---------------------------------------------------------------- Server-Sent Events

/**
 * Reads an SSE body (EventSource cannot send an Authorization header), calling
 * onEvent(type, data) per event (data parsed as JSON when it is) and onActivity on
 * every chunk, keep-alive comments included. Resolves when the stream ends.
 */
async function readSse(res, onEvent, onActivity = () => {}) {
  if (!res.body) throw new Error("the answer has no body");
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let pending = ""; // text with "\n" line ends, not yet a whole event
  let carry = ""; // a trailing "\r" whose "\n" may come in the next chunk
  let finished = false;
  const dispatch = (block) => {
    let type = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line === "" || line.startsWith(":")) continue; // a comment (keep-alive)
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") type = value;
      else if (field === "data") data.push(value);
    }
    if (!data.length) return;
    const text = data.join("\n");
    let parsed = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // not JSON: handed over as text
    }
    onEvent(type, parsed);
  };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      onActivity();
      let text = carry + decoder.decode(value, { stream: true });
      carry = text.endsWith("\r") ? "\r" : "";
      if (carry) text = text.slice(0, -1);
      pending += text.replace(/\r\n?/g, "\n");
      let i;
      while ((i = pending.indexOf("\n\n")) >= 0) {
        const block = pending.slice(0, i);
        pending = pending.slice(i + 2);
        dispatch(block);
      }
    }
    finished = true; // an unterminated last block is dropped, as EventSource does
  } finally {
    if (!finished) reader.cancel().catch(() => {});
  }
}

// ---------------------------------------------------------------- live: the event stream

// `gen` numbers each run of the loop below: a stop followed by a quick start (sign
// out on a service without a token) must not leave the old loop running beside the new.
const events = { running: false, gen: 0, ctrl: null, retryMs: 1000, wake: null };

function setEventsStatus(state, text) {
  const p = $("#events-status");
  p.dataset.state = state;
  p.textContent = text;
}

function startEvents() {
  if (events.running || locked) return;
  events.running = true;
  events.retryMs = 1000;
  runEvents(++events.gen).catch(() => {}); // runEvents handles its errors; this only guards the promise
}

function stopEvents() {
  events.running = false;
  events.gen += 1;
  if (events.ctrl) events.ctrl.abort();
  events.ctrl = null;
  if (events.wake) events.wake();
  setEventsStatus("disconnected", "event stream: not connected");
}

async function runEvents(gen) {
  const alive = () => events.gen === gen && !locked;
  while (alive()) {
    const ctrl = new AbortController();
    events.ctrl = ctrl;
    const opened = Date.now();
    let stall = null;
    const kick = () => {
      clearTimeout(stall);
      stall = setTimeout(() => ctrl.abort(), STALL_MS);
    };
    let why = "";
    setEventsStatus("connecting", "event stream: connecting…");
    try {
      kick();
      const res = await api("/v1/watch/events", { signal: ctrl.signal, headers: { Accept: "text/event-stream" } });
      setEventsStatus("connected", "event stream: connected");
      // Resync from /v1/status while reading: events read meanwhile wait, then those
      // the status already held are skipped, so nothing is lost or counted twice.
      let buffered = [];
      const resync = loadStatus()
        .then((st) => syncSources(st.sources || []))
        .catch((e) => (noteError(e), new Map()))
        .then((skipTo) => {
          for (const [type, d, at] of buffered) applyWatchEvent(type, d, at, skipTo);
          buffered = null;
        });
      await readSse(res, (type, d) => {
        if (buffered) buffered.push([type, d, nowS()]);
        else applyWatchEvent(type, d, nowS());
      }, kick);
      await resync;
      why = "the stream ended";
    } catch (e) {
      if (e instanceof AuthError || !alive()) return;
      why = e.name === "AbortError" ? "no data for 45 s" : e.message;
    } finally {
      clearTimeout(stall);
    }
    if (!alive()) return;
    // Back off 1, 2, 4 … 30 s; a stream that lived a while starts again at 1 s.
    if (Date.now() - opened > 30000) events.retryMs = 1000;
    const wait = events.retryMs;
    events.retryMs = Math.min(events.retryMs * 2, 30000);
    setEventsStatus("retrying", `event stream: disconnected (${why}); retrying in ${Math.round(wait / 1000)} s`);
    await new Promise((resolve) => {
      events.wake = resolve;
      setTimeout(resolve, wait);
    });
    events.wake = null;
  }
}

// ---------------------------------------------------------------- try a clip

function fillTasks(model) {
  const select = $("#task");
  const list = model === "emotion-llama-v2" ? TASKS_V2 : TASKS_V1;
  const have = [...select.options].map((o) => o.value);
  if (have.join() === list.join()) return;
  const chosen = select.value;
  select.replaceChildren(...list.map((t) => el("option", { value: t }, t)));
  select.value = list.includes(chosen) ? chosen : list[0];
  $("#question-field").hidden = select.value !== "question";
}

$("#task").addEventListener("change", () => {
  $("#question-field").hidden = $("#task").value !== "question";
});

let tryCtrl = null;

function clearResult() {
  $("#answer").textContent = "";
  $("#try-error").textContent = "";
  $("#try-status").textContent = "";
  $("#result-summary").textContent = "";
  $("#result-notes").replaceChildren();
  $("#scores").replaceChildren();
  $("#timings tbody").replaceChildren();
}

/** The request's options: only fields that were filled in (the service rejects unknown or empty ones). */
function tryOptions() {
  const opts = { task: $("#task").value };
  if (opts.task === "question" && $("#question").value.trim()) opts.question = $("#question").value.trim();
  if ($("#transcript").value.trim()) opts.transcript = $("#transcript").value.trim();
  if ($("#preset").value) opts.preset = $("#preset").value;
  const max = $("#max-new-tokens").value.trim();
  if (max) {
    const n = Number(max);
    if (!Number.isInteger(n) || n < 1) throw new Error("Max new tokens must be a whole number of at least 1.");
    opts.max_new_tokens = n;
  }
  return opts;
}

async function runClip() {
  if (tryCtrl) return;
  clearResult();
  let body;
  const headers = {};
  try {
    const opts = tryOptions();
    const file = $("#clip").files[0];
    const path = $("#device-path").value.trim();
    if (file) {
      body = new FormData(); // the browser sets multipart's boundary itself
      for (const [k, v] of Object.entries(opts)) body.append(k, String(v));
      body.append("media", file, file.name);
    } else if (path) {
      body = JSON.stringify({ path, ...opts });
      headers["Content-Type"] = "application/json";
    } else {
      throw new Error("Choose a file, or give a path on the device.");
    }
  } catch (e) {
    $("#try-error").textContent = e.message;
    return;
  }
  tryCtrl = new AbortController();
  $("#run").disabled = true;
  $("#cancel").disabled = false;
  $("#try-status").textContent = "Running…";
  const started = performance.now();
  try {
    const res = await api("/v1/analyze?stream=true", { method: "POST", body, headers, signal: tryCtrl.signal });
    if ((res.headers.get("content-type") || "").includes("text/event-stream")) {
      let done = false;
      await readSse(res, (type, d) => {
        if (type === "piece" && d && typeof d.text === "string") $("#answer").append(d.text);
        else if (type === "result") {
          done = true;
          showResult(d);
        } else if (type === "error") {
          done = true;
          $("#try-error").textContent = (d && d.error && d.error.message) || "the analysis failed";
        }
      });
      if (!done) throw new Error("the answer ended before its result");
    } else {
      showResult(await res.json()); // a service that answered without streaming
    }
    $("#try-status").textContent = `Done in ${fmtMs(performance.now() - started)}.`;
  } catch (e) {
    $("#try-status").textContent = "";
    if (e.name === "AbortError") $("#try-status").textContent = "Cancelled.";
    else if (e instanceof AuthError) $("#try-error").textContent = "Sign in first.";
    else $("#try-error").textContent = e.message;
  } finally {
    tryCtrl = null;
    $("#run").disabled = false;
    $("#cancel").disabled = true;
  }
}

$("#try-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  runClip();
});
$("#cancel").addEventListener("click", () => {
  if (tryCtrl) tryCtrl.abort();
});

function showResult(r) {
  if (!r || typeof r !== "object") return;
  // The result's text is the whole answer; the streamed pieces should equal it.
  if (typeof r.text === "string" && r.text && $("#answer").textContent !== r.text) $("#answer").textContent = r.text;
  const t = r.tokens || {};
  const parts = [];
  if (r.label) parts.push("label: " + r.label);
  if (isNum(t.generated)) parts.push(`${t.generated} tokens generated after ${t.prompt ?? "?"} of prompt`);
  if (isNum(t.decode_per_s) && t.decode_per_s > 0) parts.push(`${t.decode_per_s.toFixed(1)} tokens/s`);
  $("#result-summary").textContent = parts.join(" · ");
  $("#result-notes").replaceChildren(...(r.notes || []).map((n) => el("li", {}, n)));
  drawScores(r.label_scores || {}, r.label);
  $("#timings tbody").replaceChildren(
    ...Object.entries(r.timings_ms || {}).map(([stage, ms]) =>
      el("tr", { "data-stage": stage }, el("th", { scope: "row" }, stage), el("td", { class: "num" }, fmtMs(ms)))),
  );
}

function drawScores(scores, top) {
  const rows = Object.entries(scores).filter(([, p]) => isNum(p)).sort((a, b) => b[1] - a[1]);
  $("#scores").replaceChildren(...rows.map(([label, p]) => {
    const fill = el("span", { class: "bar-fill" });
    fill.style.width = Math.max(0, Math.min(100, p * 100)).toFixed(1) + "%";
    fill.style.background = labelColour(label);
    return el("div", { class: label === top ? "bar top" : "bar", "data-label": label },
      el("span", { class: "bar-name" }, label),
      el("span", { class: "bar-track", "aria-hidden": "true" }, fill),
      el("span", { class: "bar-pct" }, fmtPct(p)));
  }));
}

// ---------------------------------------------------------------- health

/** Prometheus text → [{name, labels, value}] (the lines this console reads). */
function parseMetrics(text) {
  const out = [];
  for (const line of text.split("\n")) {
    const m = /^([A-Za-z_:][\w:]*)(?:\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!m) continue; // blank, # HELP, # TYPE
    const labels = {};
    for (const l of (m[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2].replace(/\\(.)/g, "$1");
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

let healthBusy = false;

async function refreshHealth() {
  if (healthBusy || locked) return;
  healthBusy = true;
  try {
    const [st, text] = await Promise.all([loadStatus(), api("/metrics").then((r) => r.text())]);
    renderHealth(st);
    renderMetrics(parseMetrics(text));
    $("#health-updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    if (!isQuiet(e)) $("#health-updated").textContent = "could not refresh: " + e.message;
  } finally {
    healthBusy = false;
  }
}

function keyValueTable(obj, head) {
  return el("table", {},
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, head[0]), el("th", { scope: "col" }, head[1]))),
    el("tbody", {}, ...Object.entries(obj || {}).map(([k, v]) =>
      el("tr", {}, el("th", { scope: "row" }, k), el("td", {}, v === null ? "–" : String(v))))));
}

function renderHealth(st) {
  const r = st.ready;
  const rows = [["Status", st.status + (st.message ? ": " + st.message : ""), "status"]];
  if (r) {
    rows.push(
      ["Bundle", r.bundle + (r.synthetic ? " (synthetic)" : ""), "bundle"],
      ["Model family", r.model, "model"],
      ["Profile", r.profile, "profile"],
      ["Power mode", r.power_mode || "not set", "power_mode"],
      ["Warm-up", fmtMs(r.warm_up_ms), "warm_up"],
      ["Providers", keyValueTable(r.providers, ["Engine", "Provider"]), "providers"],
      ["Fallbacks", r.fallbacks && r.fallbacks.length ? el("ul", {}, ...r.fallbacks.map((f) => el("li", {}, f))) : "none", "fallbacks"],
    );
  }
  fillDl($("#health-info"), rows);
  renderPlan(r ? r.plan : null);
  const errors = (st.recent_errors || []).slice().reverse(); // newest first
  $("#errors").replaceChildren(...(errors.length ? errors.map((e) => el("li", {},
    el("span", { class: "when" }, isNum(e.time) ? new Date(e.time * 1000).toLocaleTimeString() : "?"),
    ` ${e.status ?? ""} ${e.code ?? ""}: ${e.message ?? ""}`)) : [el("li", {}, "none")]));
}

/** The plan's parts as [name, bytes]: numbers, [[name, bytes]] lists or {name: bytes}. */
function planParts(parts) {
  const out = [];
  for (const [k, v] of Object.entries(parts || {})) {
    if (isNum(v)) out.push([k, v]);
    else if (Array.isArray(v)) for (const it of v) { if (Array.isArray(it) && isNum(it[1])) out.push([`${k}: ${it[0]}`, it[1]]); }
    else if (v && typeof v === "object") for (const [n, b] of Object.entries(v)) { if (isNum(b)) out.push([`${k}: ${n}`, b]); }
  }
  return out;
}

// Parts the planner (devices/src/plan.rs) does not count in the usable memory: the OS's
// reserve and host-side speech recognition lie outside it, and an encoder's loading peak
// is a moment, not an addition. They are listed, not stacked in the bar.
const NOT_STACKED = { os_reserve: "outside usable", asr_host: "host, outside usable", encoder_load_peak: "loading peak" };

function renderPlan(plan) {
  const bar = $("#memory-bar");
  const rows = plan ? [
    ["Outcome", plan.outcome, "outcome"],
    ["Usable memory", fmtGB(plan.usable_bytes), "usable"],
    ["Resident total", fmtGB(plan.resident_total), "resident"],
    ["Settings", keyValueTable(plan.settings, ["Setting", "Value"]), "settings"],
  ] : [["Plan", lastStatus && lastStatus.ready ? "none reported" : "known once the service is ready"]];
  if (plan && plan.message) rows.push(["Message", plan.message, "message"]);
  if (plan && plan.changes && plan.changes.length) rows.push(["Changes", plan.changes.join("; "), "changes"]);
  fillDl($("#plan-info"), rows);
  const parts = plan ? planParts(plan.parts) : [];
  const usable = plan && isNum(plan.usable_bytes) ? plan.usable_bytes : 0;
  const stacked = parts.filter(([name]) => !(name in NOT_STACKED));
  const sum = stacked.reduce((a, [, b]) => a + b, 0);
  // Widths are % of usable memory; a plan over it is drawn against its own total.
  const whole = Math.max(usable, sum) || 1;
  const segs = [];
  const legend = [];
  stacked.forEach(([name, bytes], i) => {
    const colour = PART_COLOURS[i % PART_COLOURS.length];
    const text = `${name} ${fmtGB(bytes)}`;
    if (bytes > 0) {
      const seg = el("div", { class: "part", "data-part": name, title: text }, text);
      seg.style.width = ((bytes / whole) * 100).toFixed(2) + "%";
      seg.style.backgroundColor = colour;
      segs.push(seg);
    }
    const sw = el("span", { class: "swatch", "aria-hidden": "true" });
    sw.style.backgroundColor = colour;
    legend.push(el("li", {}, sw, text));
  });
  if (plan && whole > sum) {
    const text = `free ${fmtGB(whole - sum)}`;
    const seg = el("div", { class: "part free", "data-part": "free", title: text }, text);
    seg.style.width = (((whole - sum) / whole) * 100).toFixed(2) + "%";
    segs.push(seg);
    legend.push(el("li", {}, el("span", { class: "swatch free", "aria-hidden": "true" }), text));
  }
  bar.replaceChildren(...segs);
  bar.setAttribute("aria-label", "memory by part: " + stacked.map(([n, b]) => `${n} ${fmtGB(b)}`).join(", "));
  $("#memory-legend").replaceChildren(...legend);
  $("#parts tbody").replaceChildren(...parts.map(([name, bytes]) => el("tr", { "data-part": name },
    el("th", { scope: "row" }, name), el("td", { class: "num" }, fmtGB(bytes)),
    name in NOT_STACKED ? el("td", { class: "note" }, NOT_STACKED[name])
      : el("td", { class: "num" }, usable > 0 ? ((bytes / usable) * 100).toFixed(1) + "%" : "–"))));
}

function renderMetrics(samples) {
  const one = (name) => samples.find((m) => m.name === name)?.value;
  const requests = new Map(OUTCOMES.map((o) => [o, 0]));
  for (const m of samples) if (m.name === "emollama_requests_total" && m.labels.outcome) requests.set(m.labels.outcome, m.value);
  $("#requests tbody").replaceChildren(...[...requests].map(([outcome, n]) =>
    el("tr", { "data-outcome": outcome }, el("th", { scope: "row" }, outcome), el("td", { class: "num" }, String(n)))));
  fillDl($("#load"), [
    ["In flight", String(one("emollama_in_flight") ?? "–"), "in_flight"],
    ["Queue", String(one("emollama_queue_depth") ?? "–"), "queue"],
    ["Model files", fmtGB(one("emollama_model_bytes")), "model_bytes"],
    ["Event streams", String(one("emollama_event_streams") ?? "–"), "event_streams"],
  ]);
  const watch = new Map();
  for (const m of samples) {
    const src = m.labels.source;
    if (!src) continue;
    const row = watch.get(src) || { windows: 0, dropped: 0 };
    if (m.name === "emollama_watch_windows_total") row.windows = m.value;
    else if (m.name === "emollama_watch_dropped_total") row.dropped = m.value;
    else continue;
    watch.set(src, row);
  }
  $("#watch-metrics").hidden = watch.size === 0;
  $("#watch-metrics tbody").replaceChildren(...[...watch].map(([src, r]) => el("tr", { "data-source": src },
    el("th", { scope: "row" }, src), el("td", { class: "num" }, String(r.windows)), el("td", { class: "num" }, String(r.dropped)))));
}

// ---------------------------------------------------------------- start and the clock

let starting = false;

/** Loads the status, makes the cards and opens the event stream (when there are sources). */
async function start() {
  if (starting) return;
  starting = true;
  try {
    if (!locked) $("#signout").hidden = !storedToken();
    const st = await loadStatus();
    unlock();
    const list = st.sources || [];
    syncSources(list);
    // No sources, no stream: opening one that can never carry an event would only
    // add a reconnecting request to the network log.
    if (list.length) startEvents();
    else setEventsStatus("idle", "event stream: not opened (no watched sources)");
    if (current === "health") refreshHealth();
  } catch (e) {
    noteError(e);
  } finally {
    starting = false;
  }
}

setInterval(() => {
  if (locked || document.hidden) return;
  if (current === "health") refreshHealth();
  if (!events.running) start();
  else if (current !== "health" && (!lastStatus || lastStatus.status !== "ready")) loadStatus().catch(noteError);
}, TICK_MS);

// Leaving the page: close the stream ourselves so its abort is ours (and quiet).
window.addEventListener("pagehide", () => {
  stopEvents();
  if (tryCtrl) tryCtrl.abort();
});
window.addEventListener("pageshow", (ev) => {
  if (ev.persisted) start(); // back from the back/forward cache
});

fillTasks(null);
showSection(location.hash.slice(1));
start();
