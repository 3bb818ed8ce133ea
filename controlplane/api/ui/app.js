// The live web view of controlplane, served by cp-apiserver at /ui/ (controlplane/api/ui.py).
// It reads everything through the REST API: one list and then one watch (?watch=1, newline-delimited
// JSON over a fetch() stream, since EventSource cannot send a bearer header) per resource, re-listed
// with backoff whenever a watch breaks. It never polls. Node-reported text (labels, messages, logs)
// is untrusted: everything is written with textContent / text nodes, never as HTML.

const TOKEN_KEY = "cp.token";
const RESOURCES = ["machines", "units", "instances", "events"];
const MAX_EVENTS = 500;           // kept in memory; the feed shows the newest FEED_EVENTS
const FEED_EVENTS = 100;
const LOG_CHARS = 64 * 1024;      // the log pane keeps this much of the tail
const WATCH_SILENCE_MS = 20000;   // bookmarks come every 5 s; this long without a byte = a dead watch
const BACKOFF_MS = [500, 1000, 2000, 5000, 10000];

const $ = (id) => document.getElementById(id);
const state = {
  token: "", admin: false, abort: null, renderPending: false,
  data: Object.fromEntries(RESOURCES.map((r) => [r, new Map()])),
  conn: Object.fromEntries(RESOURCES.map((r) => [r, "connecting"])),
  details: { name: "", abort: null, opener: null },
};

class ApiError extends Error {
  constructor(code, message) { super(message); this.code = code; }
}

// --- DOM helpers: text only ---------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "onclick") node.addEventListener("click", value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child !== undefined && child !== null && child !== false) node.append(child);  // strings become text nodes
  }
  return node;
}

function replaceKeepingFocus(container, children) {
  // swap in only the children that changed (an equal node stays, with its focus and scroll); if the
  // focused element was in a swapped one, focus its successor (same data-key)
  const focused = document.activeElement && container.contains(document.activeElement) ? document.activeElement : null;
  children.forEach((node, i) => {
    const current = container.children[i];
    if (!current) container.append(node);
    else if (!current.isEqualNode(node)) current.replaceWith(node);
  });
  while (container.children.length > children.length) container.lastElementChild.remove();
  const key = focused?.dataset.key;
  if (focused && !focused.isConnected && key) container.querySelector(`[data-key="${CSS.escape(key)}"]`)?.focus();
}

const nameOf = (obj) => (obj.metadata || {}).name || "";
const sorted = (map) => [...map.values()].sort((a, b) => nameOf(a).localeCompare(nameOf(b), "en", { numeric: true }));
const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
});

// --- the API ----------------------------------------------------------------------------------
async function api(path, { method = "GET", body, signal, contentType = "application/json", quiet401 = false } = {}) {
  const headers = { Accept: "application/json" };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) headers["Content-Type"] = contentType;
  const resp = await fetch(path, {
    method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store", credentials: "omit", redirect: "error",
  });
  if (!resp.ok) {
    let message = `${resp.status} ${resp.statusText}`;
    try { message = (await resp.json()).message || message; } catch { /* not a Status */ }
    if (resp.status === 401 && !quiet401) loggedOut("the server refused the token: " + message);
    throw new ApiError(resp.status, message);
  }
  return resp;
}

async function* lines(resp) {
  // newline-delimited JSON from a streaming body; a watch silent for WATCH_SILENCE_MS is dead
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let timer;
  let fail;
  const silence = new Promise((_, reject) => { fail = reject; });
  silence.catch(() => {});
  try {
    for (;;) {
      clearTimeout(timer);
      timer = setTimeout(() => fail(new Error("the watch went silent")), WATCH_SILENCE_MS);
      const { value, done } = await Promise.race([reader.read(), silence]);
      if (done) return;
      buffer += value;
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline).trim();
        buffer = buffer.slice(newline + 1);
        if (line) yield JSON.parse(line);
      }
    }
  } finally {
    clearTimeout(timer);
    reader.cancel().catch(() => {});
  }
}

function applyEvent(resource, event) {
  const map = state.data[resource];
  const obj = event.object || {};
  if (event.type === "ERROR") throw new ApiError(obj.code || 500, obj.message || "watch error");
  if (event.type === "BOOKMARK") return (obj.metadata || {}).resourceVersion;
  if (event.type === "DELETED") map.delete(nameOf(obj));
  else map.set(nameOf(obj), obj);
  if (resource === "events" && map.size > MAX_EVENTS) {
    for (const old of newestEvents().slice(MAX_EVENTS)) map.delete(nameOf(old));
  }
  scheduleRender();
  return (obj.metadata || {}).resourceVersion;
}

async function informer(resource, signal) {
  // list, then watch from the list's resourceVersion; on any break, re-list after a backoff
  let failures = 0;
  while (!signal.aborted) {
    try {
      const list = await (await api(`/api/v1/${resource}`, { signal })).json();
      state.data[resource] = new Map(list.items.map((obj) => [nameOf(obj), obj]));
      setConn(resource, "live");
      failures = 0;
      scheduleRender();
      const rv = encodeURIComponent(list.metadata.resourceVersion || "");
      const resp = await api(`/api/v1/${resource}?watch=1&resourceVersion=${rv}`, { signal });
      for await (const event of lines(resp)) applyEvent(resource, event);
      if (!signal.aborted) setConn(resource, "reconnecting (the watch ended)");
    } catch (err) {
      if (signal.aborted || err.code === 401) return;
      setConn(resource, `reconnecting (${err.message})`);
    }
    await sleep(BACKOFF_MS[Math.min(failures++, BACKOFF_MS.length - 1)], signal);
  }
}

function setConn(resource, text) {
  state.conn[resource] = text;
  const broken = RESOURCES.filter((r) => state.conn[r] !== "live");
  const conn = $("conn");
  conn.dataset.conn = broken.length ? "reconnecting" : "live";
  conn.textContent = broken.length ? `reconnecting: ${broken.map((r) => `${r} ${state.conn[r]}`).join("; ")}` : "live";
}

// --- login ------------------------------------------------------------------------------------
async function start() {
  $("login-form").addEventListener("submit", onLogin);
  $("logout").addEventListener("click", () => loggedOut(""));
  $("details-close").addEventListener("click", () => $("details").close());
  $("details").addEventListener("close", () => { if (!$("details").open) closeDetails(); });  // not a late one
  state.token = sessionStorage.getItem(TOKEN_KEY) || "";
  try {
    await api("/api/v1/machines?limit=1", { quiet401: true });  // works tokenless under --insecure-no-auth
    connect();
  } catch (err) {
    const saved = Boolean(state.token);
    if (err.code === 401) { state.token = ""; sessionStorage.removeItem(TOKEN_KEY); }
    showLogin(err.code !== 401 ? `Cannot reach the API: ${err.message}` : saved ? "The saved token was refused." : "");
  }
}

async function onLogin(event) {
  event.preventDefault();
  const input = $("token");
  state.token = input.value.trim();
  try {
    await api("/api/v1/machines?limit=1", { quiet401: true });
  } catch (err) {
    state.token = "";
    $("login-error").textContent = err.code === 401 ? "That token was refused." : `Cannot log in: ${err.message}`;
    input.focus();
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, state.token);
  input.value = "";
  connect();
}

function showLogin(message) {
  $("view").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("who").textContent = "";
  $("token").focus();
}

function loggedOut(message) {
  state.abort?.abort();
  said("");
  state.token = "";
  sessionStorage.removeItem(TOKEN_KEY);
  for (const r of RESOURCES) state.data[r] = new Map();
  if ($("details").open) $("details").close();
  $("conn").dataset.conn = "offline";
  $("conn").textContent = "not connected";
  showLogin(message);
}

async function connect() {
  state.abort?.abort();
  state.abort = new AbortController();
  $("login").hidden = true;
  $("view").hidden = false;
  $("logout").hidden = !state.token;
  try {  // only admins may list tokens: the one probe of the role that needs no extra API
    await api("/api/v1/tokens?limit=1", { quiet401: true });
    state.admin = true;
  } catch { state.admin = false; }
  $("who").textContent = state.admin ? "admin: may scale, cordon and drain" : "viewer: read only";
  document.body.dataset.role = state.admin ? "admin" : "viewer";
  for (const resource of RESOURCES) informer(resource, state.abort.signal);
  $("machines-title").focus();
}

// --- rendering --------------------------------------------------------------------------------
function scheduleRender() {
  if (state.renderPending) return;
  state.renderPending = true;
  setTimeout(() => { state.renderPending = false; render(); }, 30);
}

function render() {
  const byMachine = new Map();
  for (const inst of sorted(state.data.instances)) {
    const machine = (inst.spec || {}).machine || "";
    if (!byMachine.has(machine)) byMachine.set(machine, []);
    byMachine.get(machine).push(inst);
  }
  const machines = sorted(state.data.machines).map((m) => machineCard(m, byMachine.get(nameOf(m)) || []));
  replaceKeepingFocus($("machines"), machines.length ? machines : [el("p", { class: "muted" }, "no machines registered")]);
  const pending = byMachine.get("") || [];
  replaceKeepingFocus($("unscheduled"), pending.length
    ? [el("article", { class: "card pending" }, el("h3", {}, "Not placed"), instanceList(pending, { showMachine: false }))] : []);
  replaceKeepingFocus($("units").tBodies[0], sorted(state.data.units).map(unitRow));
  replaceKeepingFocus($("proxies"), proxyBlocks());
  const feed = newestEvents().slice(0, FEED_EVENTS).map(eventItem);
  replaceKeepingFocus($("events"), feed.length ? feed : [el("li", { class: "muted" }, "no events yet")]);
  if ($("details").open) renderDetails();
  document.body.dataset.rendered = String(Date.now());
}

function resourcesOf(inst) {
  const unit = state.data.units.get((inst.spec || {}).unit || "");
  return ((inst.spec || {}).template || (unit || {}).spec || {}).resources || {};
}

function meter(label, used, total, unit) {
  const ratio = total > 0 ? Math.min(used / total, 1) : 0;
  const fmt = (n) => (Math.round(n * 100) / 100).toString();
  return el("div", { class: "meter" },
    el("span", {}, `${label} ${fmt(used)} / ${fmt(total)}${unit}`),
    el("meter", { min: 0, max: 1, value: ratio, "aria-label": `${label} allocated` }));
}

function machineCard(machine, instances) {
  const name = nameOf(machine);
  const status = machine.status || {};
  const ready = status.state === "Ready";
  const cordoned = Boolean((machine.spec || {}).unschedulable);
  const capacity = status.capacity || {};
  const cpu = instances.reduce((sum, i) => sum + Number(resourcesOf(i).cpu || 0), 0);
  const memory = instances.reduce((sum, i) => sum + Number(resourcesOf(i).memoryMB || 0), 0);
  const labels = Object.entries((machine.metadata || {}).labels || {}).sort();
  return el("article", { class: `card machine ${ready ? "ready" : "notready"}`, "data-machine": name, "data-state": status.state || "Unknown" },
    el("div", { class: "card-head" },
      el("h3", {}, name),
      el("span", { class: `badge ${ready ? "ok" : "bad"}`, "data-role": "state" }, status.state || "Unknown"),
      cordoned && el("span", { class: "badge warn" }, "cordoned")),
    el("p", { class: "muted" }, `address ${status.address || "-"}`, status.agentVersion ? ` · agent ${status.agentVersion}` : ""),
    labels.length ? el("ul", { class: "chips", "aria-label": "labels" }, labels.map(([k, v]) => el("li", {}, `${k}=${v}`))) : null,
    meter("cpu", cpu, Number(capacity.cpu || 0), ""),
    meter("memory", memory, Number(capacity.memoryMB || 0), " MB"),
    instanceList(instances, { showMachine: false }),
    state.admin && el("div", { class: "buttons" },
      el("button", { type: "button", "data-key": `cordon:${name}`, onclick: () => cordon(name, !cordoned) }, cordoned ? "Uncordon" : "Cordon"),
      el("button", { type: "button", class: "danger", "data-key": `drain:${name}`, onclick: () => drain(name) }, "Drain")));
}

function instanceList(instances, { showMachine }) {
  if (!instances.length) return el("p", { class: "muted" }, "no instances");
  return el("ul", { class: "instances" }, instances.map((inst) => el("li", {}, instanceButton(inst, { showMachine }))));
}

function instanceButton(inst, { showMachine = true } = {}) {
  const name = nameOf(inst);
  const status = inst.status || {};
  const phase = status.phase || "Pending";
  const ok = phase === "Running" && status.ready;
  return el("button", {
    type: "button", class: `instance ${ok ? "ok" : phase === "Failed" ? "bad" : "warn"}`, "data-instance": name,
    "data-key": `inst:${name}:${showMachine}`, "aria-haspopup": "dialog", onclick: (ev) => openDetails(name, ev.currentTarget),
  },
  el("span", { class: "inst-name" }, name),
  el("span", { class: "inst-phase" }, phase, status.ready ? " · ready" : " · not ready"),
  Number(status.restarts || 0) > 0 ? el("span", { class: "inst-restarts" }, ` · ${status.restarts} restarts`) : null,
  showMachine ? el("span", { class: "muted" }, ` on ${(inst.spec || {}).machine || "-"}`) : null);
}

function instancesOf(unitName) {
  return sorted(state.data.instances).filter((i) => (i.spec || {}).unit === unitName);
}

function sameJson(a, b) {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || !a || !b || Array.isArray(a) !== Array.isArray(b)) return false;
  const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
  return [...keys].every((k) => sameJson(a[k], b[k]));
}

function upToDate(inst, unit) {
  // of the unit's generation, or carrying its current template: a scale alone rolls nothing
  // (the controller's rule: controlplane/controllers/cluster.py, model.template_of)
  const spec = inst.spec || {};
  if (Number(spec.generation || 0) >= Number((unit.metadata || {}).generation || 0)) return true;
  const { replicas: _a, ...want } = unit.spec || {};
  const { replicas: _b, ...have } = spec.template || {};
  return sameJson(want, have);
}

function unitRow(unit) {
  const name = nameOf(unit);
  const spec = unit.spec || {};
  const instances = instancesOf(name);
  const desired = spec.global ? Number((unit.status || {}).replicas ?? instances.length) : Number(spec.replicas ?? 1);
  const ready = instances.filter((i) => (i.status || {}).ready).length;
  const updated = instances.filter((i) => upToDate(i, unit) && (i.status || {}).ready).length;
  const runs = spec.proxy ? `${spec.proxy.kind} proxy${spec.proxy.target ? ` → ${spec.proxy.target}` : ""}` : spec.image || "";
  const failing = ((unit.status || {}).conditions || []).filter((c) => c.status === "False");
  return el("tr", { "data-unit": name },
    el("th", { scope: "row" }, name, spec.global ? el("span", { class: "badge" }, "global") : null),
    el("td", {}, runs),
    el("td", { "data-role": "ready" }, `${ready} / ${desired}`),
    el("td", {}, el("progress", { max: Math.max(desired, 1), value: Math.min(updated, desired), "aria-label": `${name} rollout` }),
      ` ${updated} / ${desired} updated`),
    el("td", {}, failing.length ? failing.map((c) => `${c.type}: ${c.reason || ""} ${c.message || ""}`).join("; ") : "ok"),
    el("td", {}, state.admin && !spec.global
      ? el("button", { type: "button", "data-key": `scale:${name}`, onclick: () => scale(name, desired) }, "Scale") : ""));
}

function proxyBlocks() {
  const units = sorted(state.data.units);
  const edges = units.filter((u) => ((u.spec || {}).proxy || {}).kind === "edge");
  const lbs = units.filter((u) => ((u.spec || {}).proxy || {}).kind === "loadbalancer");
  const exposed = units.filter((u) => ((u.spec || {}).expose || {}).host);
  const shown = new Set();
  const backend = (unit) => {
    shown.add(nameOf(unit));
    const proxy = (unit.spec || {}).proxy || {};
    const target = proxy.kind === "loadbalancer" ? state.data.units.get(proxy.target) : undefined;
    return el("li", { "data-proxy-unit": nameOf(unit) },
      el("strong", {}, nameOf(unit)), proxy.kind ? ` (${proxy.kind})` : "",
      el("div", { class: "inline-instances" }, instancesOf(nameOf(unit)).map((i) => instanceButton(i))),
      target && el("ul", {}, el("li", {}, "→ ", el("strong", {}, nameOf(target)),
        el("div", { class: "inline-instances" }, instancesOf(nameOf(target)).map((i) => instanceButton(i))))));
  };
  const blocks = edges.map((edge) => {
    const proxy = edge.spec.proxy;
    return el("article", { class: "card proxy", "data-edge": nameOf(edge) },
      el("h3", {}, `${nameOf(edge)}: edge for ${proxy.domain || "?"} on port ${proxy.port || 80}`),
      el("div", { class: "inline-instances" }, instancesOf(nameOf(edge)).map((i) => instanceButton(i))),
      el("ul", { class: "hosts" }, exposed.map((u) => el("li", { "data-host": `${u.spec.expose.host}.${proxy.domain}` },
        el("span", { class: "host" }, `${u.spec.expose.host}.${proxy.domain}`), el("ul", {}, backend(u))))));
  });
  const loose = lbs.filter((u) => !shown.has(nameOf(u)));
  if (loose.length) blocks.push(el("article", { class: "card proxy" }, el("h3", {}, "Load balancers without an edge host"), el("ul", {}, loose.map(backend))));
  return blocks.length ? blocks : [el("p", { class: "muted" }, "no proxy units")];
}

function eventTime(ev) { return ev.timestamp || (ev.metadata || {}).creationTimestamp || ""; }
function newestEvents() { return [...state.data.events.values()].sort((a, b) => eventTime(b).localeCompare(eventTime(a))); }

function eventItem(ev) {
  const about = ev.involvedObject || {};
  const time = eventTime(ev);
  return el("li", { class: ev.type === "Warning" ? "warning" : "" },
    el("time", { datetime: time }, time.slice(11, 19) || time),
    el("span", { class: `badge ${ev.type === "Warning" ? "bad" : ""}`, title: ev.reason || "" }, ev.reason || ""),
    el("span", { class: "about" }, `${about.kind || ""} ${about.name || ""}`),
    el("span", { class: "message" }, ev.message || ""),
    Number(ev.count || 1) > 1 ? el("span", { class: "muted" }, ` ×${ev.count}`) : null);
}

// --- instance details and its log ------------------------------------------------------------
function openDetails(name, opener) {
  closeDetails();
  state.details = { name, abort: new AbortController(), opener };
  $("details-log").textContent = "";
  renderDetails();
  $("details").showModal();
  followLog(name, state.details.abort.signal);
}

function closeDetails() {
  state.details.abort?.abort();
  const opener = state.details.opener;
  const key = opener?.dataset.key;
  state.details = { name: "", abort: null, opener: null };
  if ($("details").open) return;  // the "close" event calls us again
  const target = opener?.isConnected ? opener : key && document.querySelector(`[data-key="${CSS.escape(key)}"]`);
  target?.focus();
}

function renderDetails() {
  const name = state.details.name;
  const inst = state.data.instances.get(name);
  $("details-title").textContent = `Instance ${name}`;
  const spec = (inst || {}).spec || {};
  const status = (inst || {}).status || {};
  const ports = (status.hostPorts || []).map((p) => `${status.address || "?"}:${p.hostPort} → ${p.containerPort}/${p.protocol}`).join(", ");
  const fields = inst ? [["unit", spec.unit], ["machine", spec.machine || "(not placed)"], ["phase", status.phase || "Pending"],
    ["ready", status.ready ? "yes" : "no"], ["restarts", status.restarts ?? 0], ["reason", status.reason], ["message", status.message],
    ["ports", ports], ["container", (status.containerID || "").slice(0, 12)], ["started", status.startedAt], ["exit code", status.exitCode]]
    : [["state", "deleted"]];
  $("details-fields").replaceChildren(...fields.filter(([, v]) => v !== undefined && v !== null && v !== "")
    .flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]));
  const events = newestEvents().filter((ev) => (ev.involvedObject || {}).name === name);
  $("details-events").replaceChildren(...(events.length ? events.slice(0, 30).map(eventItem) : [el("li", { class: "muted" }, "no events")]));
}

async function followLog(name, signal) {
  const pane = $("details-log");
  const said = $("details-log-state");
  said.textContent = "(following)";
  try {
    const resp = await api(`/api/v1/instances/${encodeURIComponent(name)}/log?follow=1&tail=200`, { signal, contentType: "text/plain" });
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const stick = pane.scrollTop + pane.clientHeight >= pane.scrollHeight - 4;
      pane.textContent = (pane.textContent + value).slice(-LOG_CHARS);
      if (stick) pane.scrollTop = pane.scrollHeight;
    }
    said.textContent = "(ended)";
  } catch (err) {
    if (!signal.aborted) said.textContent = `(unavailable: ${err.message})`;
  }
}

// --- admin actions, each after a confirmation ---------------------------------------------------
function confirmAction({ title, message, number }) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-message").textContent = message;
  $("confirm-field").hidden = number === undefined;
  const input = $("confirm-input");
  if (number !== undefined) input.value = String(number);
  const opener = document.activeElement;
  return new Promise((resolve) => {
    const finish = (value) => {
      dialog.removeEventListener("close", onClose);
      $("confirm-ok").onclick = $("confirm-cancel").onclick = input.onkeydown = null;
      if (dialog.open) dialog.close();
      if (opener?.isConnected) opener.focus();
      resolve(value);
    };
    const ok = () => finish(number === undefined ? true : input.value);
    const onClose = () => { if (!dialog.open) finish(null); };  // a late "close" of the last one: not ours
    dialog.addEventListener("close", onClose);
    $("confirm-ok").onclick = ok;
    $("confirm-cancel").onclick = () => finish(null);
    input.onkeydown = (ev) => { if (ev.key === "Enter") { ev.preventDefault(); ok(); } };
    dialog.showModal();
    (number === undefined ? $("confirm-cancel") : input).focus();
  });
}

function said(text) { $("action-status").textContent = text; }

async function act(what, run) {
  try { said(await run()); } catch (err) { said(`${what} failed: ${err.message}`); }
}

async function scale(name, current) {
  const value = await confirmAction({ title: `Scale ${name}`, message: `How many replicas should ${name} run?`, number: current });
  if (value === null) return;
  const replicas = Number(value);
  if (!Number.isInteger(replicas) || replicas < 0) { said(`scale ${name}: ${value} is not a whole number`); return; }
  await act(`scale ${name}`, async () => {
    await api(`/api/v1/units/${encodeURIComponent(name)}/scale`, { method: "PUT",
      body: { apiVersion: "v1", kind: "Scale", metadata: { name }, spec: { replicas } } });
    return `${name} scaled to ${replicas}`;
  });
}

const setUnschedulable = (name, value) => api(`/api/v1/machines/${encodeURIComponent(name)}`, {
  method: "PATCH", contentType: "application/merge-patch+json", body: { spec: { unschedulable: value } } });

async function cordon(name, value) {
  const verb = value ? "cordon" : "uncordon";
  const message = value ? `Keep new instances off ${name}? What runs there stays.` : `Let the scheduler place instances on ${name} again?`;
  if (!await confirmAction({ title: `${verb} ${name}`, message })) return;
  await act(`${verb} ${name}`, async () => { await setUnschedulable(name, value); return `${name} ${verb}ed`; });
}

async function drain(name) {
  // as `cpctl drain` (controlplane/cli/machines.py): cordon, then delete every instance bound to it
  if (!await confirmAction({ title: `drain ${name}`, message: `Cordon ${name} and move every instance off it? They are deleted and recreated elsewhere.` })) return;
  await act(`drain ${name}`, async () => {
    await setUnschedulable(name, true);
    const list = await (await api(`/api/v1/instances?fieldSelector=${encodeURIComponent(`spec.machine=${name}`)}`)).json();
    let evicted = 0;
    for (const inst of list.items) {
      try { await api(`/api/v1/instances/${encodeURIComponent(nameOf(inst))}`, { method: "DELETE" }); evicted++; } catch (err) {
        if (err.code !== 404) throw err;
      }
    }
    return `${name} drained: ${evicted} instance${evicted === 1 ? "" : "s"} evicted`;
  });
}

start();
