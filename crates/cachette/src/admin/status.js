// The cachette status page: polls /stats every second and draws it. Every
// value from the server goes into the page as text (textContent), never as
// markup: cache names and addresses are not trusted.
"use strict";

const POLL_MS = 1000;
const KEEP = 300; // samples per cache: five minutes at one per second
const history = new Map(); // alias -> [{t, requests, hits}]
// Where the admin routes are mounted ("" at the root, "/admin" nested).
const BASE = (document.querySelector('meta[name="cachette-base"]') || {}).content || "";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null) node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}

function state(text) {
  return el("span", { class: "state state-" + text }, text);
}

function number(n) {
  return n === undefined || n === null ? "—" : Number(n).toLocaleString("en");
}

function bytes(n) {
  if (n === undefined || n === null) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function micros(us) {
  if (!us) return "—";
  return us >= 1000 ? (us / 1000).toFixed(1) + " ms" : us + " µs";
}

// A long error in full is in the cell's tooltip; the table stays narrow.
function short(text) {
  return text.length > 48 ? text.slice(0, 47) + "…" : text;
}

function percent(ratio) {
  return ratio === null || Number.isNaN(ratio) ? "—" : (ratio * 100).toFixed(1) + " %";
}

function figure(label, value, id) {
  return el("li", id ? { "data-figure": id } : {}, el("span", { class: "value" }, value), el("span", { class: "label" }, label));
}

function remember(cache, now) {
  const c = cache.counters;
  const samples = history.get(cache.alias) || [];
  const sample = { t: now, requests: c.hits + c.misses + c.stale_served, hits: c.hits + c.stale_served };
  const last = samples[samples.length - 1];
  // Counters that went down: the process restarted; start the history again.
  if (last && (sample.requests < last.requests || sample.hits < last.hits)) samples.length = 0;
  samples.push(sample);
  while (samples.length > KEEP) samples.shift();
  history.set(cache.alias, samples);
  return samples;
}

// Requests/s and hit ratio between consecutive samples.
function rates(samples) {
  const out = [];
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1], b = samples[i];
    const seconds = (b.t - a.t) / 1000;
    if (!(seconds > 0)) continue;
    const requests = b.requests - a.requests;
    const hits = Math.min(b.hits - a.hits, requests);
    out.push({ rps: requests / seconds, ratio: requests ? hits / requests : null });
  }
  return out;
}

function chart(alias, points) {
  const width = 300, height = 60;
  const box = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "img" });
  const last = points.length ? points[points.length - 1] : null;
  box.setAttribute("aria-label", `${alias}: hit ratio ${percent(last ? last.ratio : null)}, ${last ? last.rps.toFixed(0) : 0} requests/s, last ${points.length} s`);
  box.append(svg("line", { class: "axis", x1: 0, y1: height - 1, x2: width, y2: height - 1 }));
  // The last minute at least, up to five: a young page still draws lines.
  const slots = Math.min(KEEP, Math.max(60, points.length));
  const step = width / Math.max(slots - 1, 1);
  const start = width - step * (points.length - 1);
  const maxRps = Math.max(1, ...points.map((p) => p.rps));
  const ratio = [], rate = [];
  points.forEach((p, i) => {
    const x = (start + i * step).toFixed(1);
    if (p.ratio !== null) ratio.push(`${x},${(height - 2 - p.ratio * (height - 4)).toFixed(1)}`);
    rate.push(`${x},${(height - 2 - (p.rps / maxRps) * (height - 4)).toFixed(1)}`);
  });
  if (rate.length > 1) box.append(svg("polyline", { class: "rate", points: rate.join(" ") }));
  if (ratio.length > 1) box.append(svg("polyline", { class: "ratio", points: ratio.join(" ") }));
  return box;
}

function tierTable(cache) {
  const head = el("tr", {}, ...["tier", "role", "address", "up", "breaker", "hit ratio", "p50", "p99", "errors", "timeouts", "skipped", "memory"].map((h) => el("th", { scope: "col" }, h)));
  const rows = cache.tiers.map((t) => {
    const lookups = t.hits + t.misses;
    const memory = t.capacity_bytes ? `${bytes(t.bytes)} of ${bytes(t.capacity_bytes)}` : (t.bytes !== undefined && t.bytes !== null ? bytes(t.bytes) : "—");
    return el("tr", { "data-tier": t.name },
      el("th", { scope: "row" }, t.name),
      el("td", {}, t.role || t.kind),
      el("td", {}, t.address || "—"),
      el("td", t.error ? { title: t.error } : {}, t.up === undefined || t.up === null ? "—" : t.up ? "up" : "down" + (t.error ? ": " + short(t.error) : "")),
      el("td", {}, state(t.breaker)),
      el("td", {}, percent(lookups ? t.hits / lookups : null)),
      el("td", {}, micros(t.latency.p50_us)),
      el("td", {}, micros(t.latency.p99_us)),
      el("td", {}, number(t.errors)),
      el("td", {}, number(t.timeouts)),
      el("td", {}, number(t.skipped)),
      el("td", {}, memory));
  });
  return el("div", { class: "table-wrap" }, el("table", {}, el("caption", { class: "muted" }, "Tiers, in read order"), el("thead", {}, head), el("tbody", {}, ...rows)));
}

// Warnings of this reading, announced once (in #alerts) when they change,
// not every second with the re-rendered panel.
let warnings = [];

function warning(cache, text, level) {
  warnings.push(`${cache.alias}: ${text}`);
  return el("p", { class: "warning" + (level ? " " + level : "") }, text);
}

function journal(cache) {
  const j = cache.journal;
  if (!j) return null;
  const waiting = j.depth > 0;
  const parts = [
    el("h3", {}, "Journal"),
    el("ul", { class: "figures" },
      figure("waiting ops", number(j.depth), "journal-depth"),
      figure("oldest", j.oldest_age_secs ? j.oldest_age_secs.toFixed(0) + " s" : "—"),
      figure("replayed", number(j.replayed)),
      figure("dropped", number(j.dropped)),
      figure("writable", j.writable ? "yes" : "NO")),
  ];
  if (waiting) parts.push(warning(cache, `Warning: ${number(j.depth)} writes/invalidations wait for the master (not applied there yet).`));
  if (!j.writable) parts.push(warning(cache, "Warning: the journal cannot record (disk error): master writes that fail now are lost.", "bad"));
  return el("div", {}, ...parts);
}

function redis(cache) {
  const r = cache.redis;
  if (!r) return null;
  const busDown = r.bus_connected === false;
  return el("div", {},
    busDown ? warning(cache, "Warning: the invalidation bus is down: other nodes' invalidations do not reach this node's memory tier (it was cleared, and is cleared again on reconnection).") : null,
    el("h3", {}, "Redis and bus"),
    el("ul", { class: "figures" },
      figure("master", r.master || "unknown"),
      figure("local replica", r.local || "—"),
      figure("failovers", number(r.failovers)),
      figure("bus", r.bus_connected === undefined ? "off" : r.bus_connected ? "connected" : "DOWN", "bus"),
      figure("last bus message", r.bus_last_message_age_secs === undefined ? "none yet" : r.bus_last_message_age_secs.toFixed(0) + " s ago"),
      figure("bus subscriptions", number(r.bus_subscriptions)),
      figure("bus messages", number(r.bus_received)),
      figure("resolve errors", number(r.resolve_errors))));
}

function renderCache(cache, index, now) {
  const points = rates(remember(cache, now));
  const last = points.length ? points[points.length - 1] : { rps: 0, ratio: null };
  const c = cache.counters;
  const lookups = c.hits + c.misses + c.stale_served;
  const fleet = c.fills_led + c.fills_waited + c.fill_waits_timed_out + c.leases_expired > 0;
  return el("article", { class: "cache", "data-cache": cache.alias, "aria-labelledby": "cache-" + index },
    el("div", { class: "cache-head" }, el("h2", { id: "cache-" + index }, cache.alias), state(cache.status)),
    el("ul", { class: "figures" },
      figure("requests/s", last.rps.toFixed(1), "rps"),
      figure("hit ratio (last s)", percent(last.ratio), "ratio-now"),
      figure("hit ratio (since start)", percent(lookups ? (c.hits + c.stale_served) / lookups : null), "ratio"),
      figure("hits", number(c.hits), "hits"),
      figure("misses", number(c.misses), "misses"),
      figure("stale served", number(c.stale_served)),
      figure("coalesced", number(c.coalesced)),
      figure("stored", number(c.stored)),
      figure("not stored", number(c.not_stored)),
      figure("origin errors", number(c.origin_errors)),
      fleet ? figure("fleet fills led / waited", `${number(c.fills_led)} / ${number(c.fills_waited)}`) : null),
    chart(cache.alias, points),
    el("p", { class: "muted" }, "solid: hit ratio (0–100 %); dashed: requests/s (scaled to the peak); up to the last five minutes, newest on the right"),
    tierTable(cache),
    journal(cache),
    redis(cache));
}

function fillCacheChoice(caches) {
  const select = document.getElementById("purge-cache");
  const names = caches.map((c) => c.alias);
  const current = Array.from(select.options).map((o) => o.value);
  if (names.join("\n") === current.join("\n")) return;
  const chosen = select.value;
  select.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
  if (names.includes(chosen)) select.value = chosen;
}

async function poll() {
  const error = document.getElementById("error");
  try {
    const response = await fetch(BASE + "/stats", { cache: "no-store", headers: { accept: "application/json" } });
    if (!response.ok) throw new Error(`/stats answered ${response.status}`);
    const report = await response.json();
    const now = performance.now(); // monotonic: a clock step makes no spike
    const overall = document.getElementById("overall");
    overall.textContent = "status: " + report.status;
    overall.className = "state state-" + report.status;
    // The panels are drawn anew; tables scrolled sideways stay where they were.
    const caches = document.getElementById("caches");
    const scrolled = new Map();
    caches.querySelectorAll("article").forEach((a) => {
      const wrap = a.querySelector(".table-wrap");
      if (wrap) scrolled.set(a.dataset.cache, wrap.scrollLeft);
    });
    warnings = [];
    caches.replaceChildren(...report.caches.map((c, i) => renderCache(c, i, now)));
    caches.querySelectorAll("article").forEach((a) => {
      const wrap = a.querySelector(".table-wrap");
      if (wrap && scrolled.has(a.dataset.cache)) wrap.scrollLeft = scrolled.get(a.dataset.cache);
    });
    const alerts = document.getElementById("alerts");
    const said = warnings.join("\n");
    if (alerts.textContent !== said) alerts.textContent = said;
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    fillCacheChoice(report.caches);
    error.hidden = true;
  } catch (e) {
    error.textContent = "Cannot read /stats: " + e.message + " (retrying every second)";
    error.hidden = false;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

function setUpPurge() {
  const meta = document.querySelector('meta[name="cachette-purge"]');
  if (!meta || meta.content !== "on") return;
  document.getElementById("purge").hidden = false;
  const form = document.getElementById("purge-form");
  const kind = document.getElementById("purge-kind");
  const value = document.getElementById("purge-value");
  kind.addEventListener("change", () => { value.disabled = kind.value === "all"; });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const result = document.getElementById("purge-result");
    const token = document.getElementById("purge-token").value;
    const body = { cache: document.getElementById("purge-cache").value };
    if (kind.value === "all") body.all = true; else body[kind.value] = value.value;
    if (document.getElementById("purge-soft").checked) body.soft = true;
    result.textContent = "purging…";
    try {
      // The token goes in this one request's header; the page keeps it
      // only in the field, and the server never writes it into the page.
      const response = await fetch(BASE + "/purge", {
        method: "POST",
        headers: { "content-type": "application/json", authorization: "Bearer " + token },
        body: JSON.stringify(body),
      });
      const answer = await response.json().catch(() => ({}));
      if (response.status === 200) result.textContent = `purged ${answer.purged} from ${answer.cache} on every tier`;
      else if (response.status === 202) result.textContent = `accepted: ${answer.purged} journaled for a tier that is down (applied when it is back)`;
      else result.textContent = `refused (${response.status}): ${answer.error || "see the server log"}`;
    } catch (e) {
      result.textContent = "purge failed: " + e.message;
    }
  });
}

setUpPurge();
poll();
