// The nswarm dashboard: polls status.json every second and shows it.
// A master's document shows the whole cluster, a node's its own services.
// With #token=TOKEN in the page's address, every request carries
// "Authorization: Bearer TOKEN". Data reaches the page as text only
// (textContent, never HTML).
"use strict";

const POLL_MS = 1000;
// Rates are taken over the last few polls: steadier than from one to the next.
const WINDOW = 5;
const token = new URLSearchParams(location.hash.slice(1)).get("token");
// The counters of the last polls, oldest first: {at: seconds, methods: {name: calls}, events: {...}}.
// A master's document is timed by its uptime (the master's clock), a node's by the page's.
let history = [];
let lastSuccess = null;

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function count(n) {
  return n === undefined || n === null ? "–" : Number(n).toLocaleString("en-US");
}

function ms(value) {
  if (value === undefined || value === null) return "–";
  return value < 10 ? value.toFixed(2) : value < 100 ? value.toFixed(1) : Math.round(value).toLocaleString("en-US");
}

function rate(value) {
  if (value === undefined || value === null) return "–";
  return value < 10 ? value.toFixed(1) : Math.round(value).toLocaleString("en-US");
}

function duration(seconds) {
  if (seconds === undefined || seconds === null) return "–";
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

function ago(seconds) {
  if (seconds === undefined || seconds === null) return "–";
  return seconds < 10 ? `${seconds.toFixed(1)}s ago` : `${duration(seconds)} ago`;
}

function total(errors) {
  return Object.values(errors || {}).reduce((sum, n) => sum + n, 0);
}

function errorsCell(errors) {
  const n = total(errors);
  const codes = Object.entries(errors || {}).map(([code, k]) => `${code} ${count(k)}`).join(", ");
  return el("span", { class: n ? "bad" : "quiet", title: codes || "no errors" }, count(n));
}

function names(list) {
  if (!list || !list.length) return el("span", { class: "quiet" }, "none");
  return el("span", { class: "names" }, ...list.map((name) => el("code", {}, name)));
}

// columns: [title, value(row), className]; rows: objects; empty: text when there are none.
function fill(table, columns, rows, empty, key) {
  const head = el("tr", {}, ...columns.map(([title, , cls]) => el("th", { class: cls }, title)));
  const body = rows.length
    ? rows.map((row) =>
        el(
          "tr",
          key ? { "data-name": key(row) } : {},
          ...columns.map(([title, value, cls]) => el("td", { class: cls, "data-col": title }, value(row))),
        ),
      )
    : [el("tr", {}, el("td", { class: "empty", colspan: columns.length }, empty))];
  table.replaceChildren(el("thead", {}, head), el("tbody", {}, ...body));
}

function card(label, value, detail) {
  return el("div", { class: "card" }, el("div", { class: "label" }, label), el("div", { class: "value" }, value),
    detail ? el("div", { class: "detail" }, detail) : null);
}

// The rate of a counter from the oldest poll kept to now: pick(snapshot) gives its value then.
function perSecond(now, pick) {
  const oldest = history[0];
  if (!oldest || now.at <= oldest.at) return null;
  const then = pick(oldest);
  const value = pick(now);
  return then === undefined || value === undefined ? null : Math.max(0, value - then) / (now.at - oldest.at);
}

function counters(doc) {
  if (doc.master) {
    const methods = {};
    for (const m of doc.methods) methods[m.name] = m.calls;
    const e = doc.events;
    return {
      at: doc.master.uptime_s,
      methods,
      events: { published: e.published, delivered: e.nodes.delivered, dropped: e.dropped },
    };
  }
  const e = doc.events || {};
  return { at: performance.now() / 1000, methods: {}, events: { delivered: e.delivered, dropped: e.dropped } };
}

function showServices(services, cluster) {
  fill(document.getElementById("services"), [
    ["Service", (s) => el("strong", {}, s.name || "(unnamed)")],
    ...(cluster ? [["Node", (s) => s.node]] : []),
    ["PID / UID", (s) => `${s.pid ?? "–"} / ${s.uid ?? "–"}`, "num"],
    ["Connected", (s) => duration(s.connected_s), "num"],
    ["Methods", (s) => names(s.methods)],
    ["Subscriptions", (s) => names(s.subscriptions)],
    ["In flight", (s) => count(s.calls_in_flight), "num"],
    ["Handled", (s) => count(s.calls_handled), "num"],
    ["Errors", (s) => errorsCell(s.errors), "num"],
    ["Dropped", (s) => count(s.events_dropped), "num"],
  ], services, "No service is connected.", (s) => s.name);
}

function showCluster(doc, now) {
  const master = doc.master;
  const connections = master.connections || {};
  document.getElementById("title").textContent = "cluster";
  const listening = Object.entries(master.listeners || {}).map(([k, v]) => `${k} ${v}`).join(" · ");
  document.getElementById("subtitle").textContent = listening ? `master listening: ${listening}` : "";
  document.getElementById("overview").replaceChildren(
    card("Master", `v${master.version}`, `pid ${master.pid}`),
    card("Uptime", duration(master.uptime_s)),
    card("Nodes", count(connections.node || 0)),
    card("API users", count(connections["api user"] || 0)),
    card("Services", count(doc.services.length)),
  );
  fill(document.getElementById("nodes"), [
    ["Node", (n) => el("strong", {}, n.name)],
    ["Address", (n) => n.address || "–"],
    ["Connected", (n) => (n.connected_s === undefined ? el("span", { class: "bad" }, "no") : duration(n.connected_s)),
      "num"],
    ["Last heard", (n) => ago(n.last_heard_s), "num"],
    ["Services", (n) => (n.error ? el("span", { class: "bad" }, n.error) : names(n.services))],
    ["In flight", (n) => count(n.calls_in_flight), "num"],
  ], doc.nodes, "No node is connected.", (n) => n.name);
  showServices(doc.services, true);

  fill(document.getElementById("methods"), [
    ["Method", (m) => el("code", {}, m.name)],
    ["Implementers", (m) => names(m.implementers)],
    ["In flight", (m) => count(m.calls_in_flight), "num"],
    ["Queued", (m) => count(m.calls_queued), "num"],
    ["Calls", (m) => count(m.calls), "num"],
    ["Calls/s", (m) => rate(perSecond(now, (c) => c.methods[m.name])), "num"],
    ["Errors", (m) => errorsCell(m.errors), "num"],
    ["p50 ms", (m) => ms(m.p50_ms), "num"],
    ["p99 ms", (m) => ms(m.p99_ms), "num"],
  ], doc.methods, "No method is implemented or called yet.", (m) => m.name);

  const events = doc.events;
  document.getElementById("event-counts").replaceChildren(
    card("Published", count(events.published), `${rate(perSecond(now, (c) => c.events.published))}/s`),
    card("Delivered by nodes", count(events.nodes.delivered), `${rate(perSecond(now, (c) => c.events.delivered))}/s`),
    card("Dropped", count(events.dropped), `${rate(perSecond(now, (c) => c.events.dropped))}/s`),
  );
  fill(document.getElementById("patterns"), [
    ["Pattern", (p) => el("code", {}, p.pattern)],
    ["Subscribers (nodes)", (p) => count(p.subscribers), "num"],
  ], events.patterns, "No subscriptions.", (p) => p.pattern);

  fill(document.getElementById("api-users"), [
    ["API user", (u) => el("strong", {}, u.name || "(unnamed)")],
    ["Address", (u) => u.address],
    ["Connected", (u) => duration(u.connected_s), "num"],
    ["Last heard", (u) => ago(u.last_heard_s), "num"],
    ["In flight", (u) => count(u.calls_in_flight), "num"],
  ], doc.api_users || [], "No API user is connected.", (u) => u.name);
}

function showNode(doc, now) {
  document.getElementById("title").textContent = `node ${doc.name}`;
  document.getElementById("subtitle").textContent = `pid ${doc.pid}`;
  const events = doc.events || {};
  document.getElementById("overview").replaceChildren(
    card("Node", doc.name, `pid ${doc.pid}`),
    card("Services", count(doc.services.length)),
    card("Calls in flight", count(doc.calls_in_flight)),
  );
  document.getElementById("event-counts").replaceChildren(
    card("Delivered", count(events.delivered), `${rate(perSecond(now, (c) => c.events.delivered))}/s`),
    card("Dropped", count(events.dropped), `${rate(perSecond(now, (c) => c.events.dropped))}/s`),
  );
  showServices(doc.services, false);
  for (const id of ["nodes-section", "methods-section", "api-section", "patterns"]) {
    document.getElementById(id).hidden = true;
  }
}

function problem(text) {
  const p = document.getElementById("problem");
  p.textContent = text || "";
  p.hidden = !text;
}

function state(text, cls) {
  const s = document.getElementById("state");
  s.textContent = text;
  s.className = `state ${cls}`;
}

async function poll() {
  const started = performance.now();
  try {
    const response = await fetch("status.json", {
      headers: token ? { Authorization: `Bearer ${token}` } : {},
      cache: "no-store",
    });
    if (response.status === 401) {
      let why = "this listener needs its bearer token";
      try { why = (await response.json()).error || why; } catch (e) { /* not JSON */ }
      throw new Error(`${why}. Open this page as ${location.origin}${location.pathname}#token=TOKEN.`);
    }
    if (!response.ok) throw new Error(`status.json answered ${response.status} ${response.statusText}`);
    const doc = await response.json();
    const now = counters(doc);
    if (history.length && now.at < history[history.length - 1].at) history = []; // restarted
    if (doc.master) showCluster(doc, now);
    else showNode(doc, now);
    history = [...history, now].slice(-WINDOW);
    lastSuccess = performance.now();
    document.title = doc.master ? "nswarm cluster" : `nswarm node ${doc.name}`;
    problem("");
    state("live", "live");
  } catch (error) {
    problem(error.message);
    const since = lastSuccess === null ? "" : `, last update ${ago((performance.now() - lastSuccess) / 1000)}`;
    state(`offline${since}`, "offline");
  }
  setTimeout(poll, Math.max(0, POLL_MS - (performance.now() - started)));
}

poll();
