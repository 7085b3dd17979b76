// Modelium dashboard: polls the gateway's JSON routes every POLL_MS and redraws.
// Polling, not SSE: every source is a cheap in-memory read, a poll is one round of small
// GETs, and it needs no long-lived connection per open tab (docs/dashboard.md).
// Everything is drawn with textContent (never innerHTML): reasons and log lines are text
// from model folders and runtimes.
"use strict";

const POLL_MS = 1500;
const KEY_STORE = "modelium.apiKey";
const MAX_LOG_LINES = 500;
const COLORS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f"];

const ACTION_ERROR_MS = 10000; // a refused button click stays on screen this long
const state = { selected: null, logAfter: 0, needKey: false, busy: false, errorUntil: 0 };
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("data-") || k === "title" || k === "style" || k === "type") node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
}

function bytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

const num = (x, digits) => (x === null || x === undefined ? "-" : Number(x).toFixed(digits));
const clock = (unix) => new Date(unix * 1000).toLocaleTimeString([], { hour12: false });
const colorOf = (name, names) => COLORS[Math.max(0, names.indexOf(name)) % COLORS.length];

class Unauthorized extends Error {}

async function api(path, options) {
  const headers = {};
  const key = localStorage.getItem(KEY_STORE);
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await fetch(path, { ...(options || {}), headers });
  if (response.status === 401) throw new Unauthorized(path);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = (body.error && body.error.message) || response.statusText;
    throw new Error(`${path}: ${response.status} ${message}`);
  }
  return body;
}

function askForKey(wrong) {
  state.needKey = true;
  $("key-form").hidden = false;
  $("key-error").textContent = wrong ? "that key was refused" : "";
  $("summary").textContent = "API key needed";
  $("summary").dataset.ready = "unauthorized";
}

function drawModels(models, live) {
  const body = $("models-body");
  const rows = models.map((m) => {
    const fp = m.footprint || {};
    const lv = live[m.name] || {};
    const act = (action, label, show) => show
      ? el("button", { type: "button", "data-action": action, "data-model": m.name, title: `POST /models/${m.name}/${action}` }, label)
      : "";
    const resident = ["loading", "ready", "draining", "parked"].includes(m.state);
    const row = el("tr", { "data-model": m.name, "data-state": m.state, "data-runtime": m.runtime || "",
                           class: m.name === state.selected ? "selected" : "", title: m.reason || m.placement_reason || "" },
      el("td", { class: "name" }, m.name),
      el("td", {}, el("span", { class: "state", "data-state": m.state }, m.state)),
      el("td", { class: "runtime" }, m.runtime || "-"),
      el("td", { class: "device" }, m.device || "-"),
      el("td", { class: "num" }, `${bytes(fp.estimate_bytes)} / ${bytes(fp.measured_bytes)} / ${bytes(fp.reserved_bytes)}`),
      el("td", { class: "num qps" }, num(lv.qps, 2)),
      el("td", { class: "num idle" }, num(lv.idle_seconds, 0)),
      el("td", { class: "num queue" }, lv.queued === undefined ? "-" : `${lv.queued} (${lv.in_flight})`),
      el("td", { class: "pinned", "data-pinned": String(m.pinned) }, m.pinned ? "yes" : "no"),
      el("td", {}, act("load", "load", !resident), act("unload", "unload", resident),
         act("pin", "pin", !m.pinned), act("unpin", "unpin", m.pinned)));
    return row;
  });
  if (!rows.length) rows.push(el("tr", {}, el("td", { colSpan: 10, class: "muted" }, "no models yet: drop one into incoming/")));
  body.replaceChildren(...rows);
}

function drawDevices(status, models, live) {
  const names = models.map((m) => m.name);
  const nvml = Object.fromEntries((live.gpu_memory || []).map((g) => [g.device, g]));
  const blocks = (status.devices || []).map((d) => {
    const total = d.total_bytes || 1;
    const pct = (b) => `${Math.max(0, Math.min(100, (100 * b) / total)).toFixed(3)}%`;
    const mine = models.filter((m) => m.device === d.id && (m.footprint || {}).reserved_bytes > 0);
    const reserved = mine.reduce((s, m) => s + m.footprint.reserved_bytes, 0);
    const outside = d.used_bytes_outside || 0;
    const free = Math.max(0, total - reserved - outside);
    const bar = el("div", { class: "bar", "data-device": d.id });
    for (const m of mine) {
      bar.append(el("div", { class: "seg", "data-model": m.name, title: `${m.name}: ${bytes(m.footprint.reserved_bytes)} reserved`,
                             style: `width:${pct(m.footprint.reserved_bytes)};background:${colorOf(m.name, names)}` }));
    }
    if (outside > 0) bar.append(el("div", { class: "seg outside", title: `not Modelium's: ${bytes(outside)}`, style: `width:${pct(outside)}` }));
    const used = nvml[d.id];
    if (used) bar.append(el("div", { class: "nvml", title: `NVML used: ${bytes(used.used_bytes)}`, style: `left:${pct(used.used_bytes)}` }));
    const legend = el("div", { class: "legend" },
      ...mine.map((m) => el("span", {}, el("i", { style: `background:${colorOf(m.name, names)}` }), `${m.name} ${bytes(m.footprint.reserved_bytes)}`)),
      el("span", { class: "free", "data-free-bytes": String(free) }, el("i", { style: "background:var(--free)" }), `free ${bytes(free)}`),
      used ? el("span", {}, el("i", { style: "background:var(--nvml)" }), `NVML used ${bytes(used.used_bytes)}`) : "");
    return el("div", { class: "device", "data-device": d.id },
      el("div", { class: "label" }, el("strong", {}, `${d.id}`), el("span", { class: "muted" },
        `${d.name}${d.simulated ? " (simulated)" : ""}: ${bytes(reserved)} reserved of ${bytes(total)}`)),
      bar, legend);
  });
  $("devices").replaceChildren(...blocks);
}

function drawRuntimes(live, models) {
  const items = Object.entries(live.runtimes || {}).map(([name, r]) => {
    const count = models.filter((m) => m.runtime === name && ["ready", "loading", "draining", "parked"].includes(m.state)).length;
    const health = !r.enabled ? "unavailable" : r.ok ? "healthy" : "unhealthy";
    return el("li", { "data-runtime": name, "data-health": health },
      el("strong", {}, name), " ", el("span", { class: r.ok ? "ok" : "bad" }, health),
      el("span", { class: "muted" }, ` · ${count} resident${r.detail ? ` · ${r.detail}` : ""}`));
  });
  if (!items.length) items.push(el("li", { class: "muted" }, "no runtime enabled"));
  $("runtimes").replaceChildren(...items);
}

function drawDecisions(decisions) {
  const items = decisions.map((d) => el("li", { "data-model": d.model, "data-action": d.action },
    el("span", { class: "when" }, clock(d.time)),
    el("strong", {}, `${d.action} ${d.model}`), ` [${d.reason_code}] `, d.reason || ""));
  $("decisions").replaceChildren(...items);
}

async function pollLogs() {
  const name = state.selected;
  if (!name) return;
  const answer = await api(`/models/${encodeURIComponent(name)}/logs?after=${state.logAfter}&limit=1000`);
  if (name !== state.selected) return; // the user picked another model meanwhile
  const pre = $("log-lines");
  const stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  for (const line of answer.lines) {
    const when = clock(line.time);
    pre.append(el("span", { class: "line", "data-seq": String(line.seq) }, `${when} ${line.level} ${line.logger}: ${line.message}\n`));
  }
  while (pre.childNodes.length > MAX_LOG_LINES) pre.firstChild.remove();
  state.logAfter = answer.next;
  if (stick) pre.scrollTop = pre.scrollHeight;
}

function select(name) {
  state.selected = name;
  state.logAfter = 0;
  $("log-model").textContent = name;
  $("log-lines").dataset.model = name;
  $("log-lines").replaceChildren();
  for (const row of document.querySelectorAll("#models-body tr")) row.classList.toggle("selected", row.dataset.model === name);
  pollLogs().catch(showError);
}

function showError(err) {
  if (err instanceof Unauthorized) { askForKey(Boolean(localStorage.getItem(KEY_STORE))); return; }
  $("error").hidden = false;
  $("error").textContent = String(err.message || err);
}

async function tick() {
  if (state.busy || state.needKey) return;
  state.busy = true;
  try {
    const [status, models, decisions, live] = await Promise.all([
      api("/status"), api("/models"), api("/decisions?limit=100"), api("/dashboard/live")]);
    const list = models.models.slice().sort((a, b) => a.name.localeCompare(b.name));
    drawModels(list, live.models || {});
    drawDevices(status, list, live);
    drawRuntimes(live, list);
    drawDecisions(decisions.decisions || []);
    await pollLogs();
    const ready = status.ready ? "ready" : "starting";
    $("summary").dataset.ready = ready;
    $("summary").textContent = `v${status.version} · ${ready} · ${list.length} models · devices from ${status.inventory_source}`;
    $("updated").textContent = `updated ${clock(Date.now() / 1000)}`;
    $("forget-key").hidden = !localStorage.getItem(KEY_STORE);
    if (Date.now() > state.errorUntil) $("error").hidden = true;
  } catch (err) {
    showError(err);
  } finally {
    state.busy = false;
  }
}

$("models-body").addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-action]");
  if (button) {
    event.stopPropagation();
    button.disabled = true;
    try {
      await api(`/models/${encodeURIComponent(button.dataset.model)}/${button.dataset.action}`, { method: "POST" });
    } catch (err) {
      showError(err);
      state.errorUntil = Date.now() + ACTION_ERROR_MS;
    }
    tick();
    return;
  }
  const row = event.target.closest("tr[data-model]");
  if (row) select(row.dataset.model);
});

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = $("key-input").value.trim();
  if (!key) return;
  localStorage.setItem(KEY_STORE, key);
  $("key-input").value = "";
  $("key-form").hidden = true;
  state.needKey = false;
  tick();
});

$("forget-key").addEventListener("click", () => { localStorage.removeItem(KEY_STORE); location.reload(); });

tick();
setInterval(tick, POLL_MS);
