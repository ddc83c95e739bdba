// The dashboard page. Every value from the database is shown with textContent, never parsed as HTML:
// event types and errors come from other services.
"use strict";

const ACTION_HEADER = "X-Outbox-Dashboard";
const REFRESH_MS = 60000;
let allowActions = false;
const charts = new Map();

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]]) {
    if (seconds >= size) return (seconds / size).toFixed(1) + unit;
  }
  return seconds.toFixed(1) + "s";
}

async function getJSON(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function card(label, value, testid, bad) {
  return el("div", { class: "card" + (bad ? " bad" : ""), "data-testid": testid },
    el("div", { class: "label" }, label), el("div", { class: "value" }, value));
}

function chart(key, title, series, data, target) {
  const width = Math.max(320, Math.min(560, (window.innerWidth - 120) / 2));
  const options = {
    title, width, height: 180,
    scales: { x: { time: true } },
    series: [{}].concat(series),
  };
  const old = charts.get(key);
  if (old) old.destroy();
  const plot = new uPlot(options, data, target);
  charts.set(key, plot);
}

async function act(schema, table, action, eventId) {
  const verb = action === "retry" ? "retry" : "discard";
  if (action === "discard" && !window.confirm("Discard dead event " + eventId + "?")) return;
  const response = await fetch("api/dead/" + verb, {
    method: "POST",
    headers: { "Content-Type": "application/json", [ACTION_HEADER]: "1" },
    body: JSON.stringify({ schema, table, event_ids: [eventId] }),
  });
  const body = await response.json();
  const message = document.getElementById("message");
  message.textContent = response.ok
    ? body.count + " " + table + " event(s) " + (action === "retry" ? "made pending again" : "discarded")
    : "error: " + body.error;
  await load();
}

function deadTable(data) {
  if (data.dead.length === 0) return el("p", { class: "empty", "data-testid": "no-dead" }, "No dead events.");
  const head = ["table", "consumer", "event id", "event type", "attempts", "last error"];
  if (allowActions) head.push("");
  const rows = data.dead.map((row) => {
    const cells = [row.table, row.consumer || "-", row.event_id, row.event_type,
      row.delivery_attempts].map((value) => el("td", {}, value));
    cells.push(el("td", { class: "error" }, row.last_error || ""));
    if (allowActions) {
      const retry = el("button", { type: "button", "data-testid": "retry" }, "Retry");
      retry.addEventListener("click", () => act(data.schema, row.table, "retry", row.event_id));
      const discard = el("button", { type: "button", "data-testid": "discard" }, "Discard");
      discard.addEventListener("click", () => act(data.schema, row.table, "discard", row.event_id));
      cells.push(el("td", {}, retry, discard));
    }
    return el("tr", { "data-testid": "dead-row", "data-event-id": row.event_id }, ...cells);
  });
  return el("table", {}, el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows));
}

function render(data) {
  const t = data.totals;
  const section = el("section", { class: "schema", "data-schema": data.schema },
    el("h2", {}, "schema " + data.schema),
    el("div", { class: "cards" },
      card("outbox pending", t.outbox.pending, "outbox-pending"),
      card("oldest pending", age(data.oldest_pending_age_s), "oldest-pending"),
      card("outbox dead", t.outbox.dead, "outbox-dead", t.outbox.dead > 0),
      card("inbox pending", t.inbox.pending, "inbox-pending"),
      card("inbox dead", t.inbox.dead, "inbox-dead", t.inbox.dead > 0),
      card("published, last hour", data.series.published.reduce((a, b) => a + b, 0), "published-hour")));
  const rate = el("div", { "data-testid": "rate-chart" });
  const lag = el("div", { "data-testid": "lag-chart" });
  section.append(el("div", { class: "charts" }, rate, lag), el("h3", {}, "Dead events"), deadTable(data));
  const s = data.series;
  chart(data.schema + "/rate", "Published per minute", [
    { label: "published", stroke: "#2e90fa", fill: "#2e90fa22" },
  ], [s.minutes, s.published], rate);
  chart(data.schema + "/lag", "Lag enqueue \u2192 published (s)", [
    { label: "average", stroke: "#12b76a", spanGaps: true, points: { show: true } },
    { label: "max", stroke: "#f79009", spanGaps: true, points: { show: true } },
  ], [s.minutes, s.lag_avg_s, s.lag_max_s], lag);
  return section;
}

async function load() {
  const main = document.getElementById("schemas");
  try {
    const found = await getJSON("api/schemas");
    allowActions = found.allow_actions;
    const mode = document.getElementById("mode");
    mode.textContent = allowActions ? "actions allowed" : "read-only";
    mode.className = allowActions ? "actions" : "";
    const sections = [];
    for (const name of found.schemas) sections.push(render(await getJSON("api/overview?schema=" + encodeURIComponent(name))));
    if (sections.length === 0) sections.push(el("p", { class: "empty" }, "No outbox_di schema found."));
    main.replaceChildren(...sections);
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.loaded = "true";
  } catch (error) {
    document.getElementById("message").textContent = "error: " + error.message;
  }
}

window.addEventListener("DOMContentLoaded", () => {
  load();
  setInterval(load, REFRESH_MS);
});
