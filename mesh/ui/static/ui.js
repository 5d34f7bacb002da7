// mesh ui: the page. One event stream per view (table pages and filters); each message
// carries only the rows that changed on this page, so a row is replaced, never the table.
"use strict";

const view = { agents_text: "", agents_page: 0, tasks_filter: "active", tasks_text: "", tasks_page: 0 };
const rows = { agents: new Map(), tasks: new Map() };
const totals = { agents: 0, tasks: 0 };
let config = null;
let stream = null;
let clockSkew = 0; // server time minus this browser's
let detail = null; // {id, root, loading}

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : String(c ?? ""));
  return node;
}

function age(seconds) {
  if (seconds < 0) seconds = 0;
  if (seconds < 60) return `${Math.floor(seconds)}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m`;
  return `${Math.floor(seconds / 3600)}h`;
}
const now = () => Date.now() / 1000 + clockSkew;

// --- the stream ---------------------------------------------------------------------------

function connect() {
  if (stream) stream.close();
  const query = new URLSearchParams(Object.entries(view).map(([k, v]) => [k, String(v)]));
  stream = new EventSource(`/api/stream?${query}`);
  stream.onopen = () => setStatus("live", "live");
  stream.onerror = () => setStatus("down", "reconnecting…");
  stream.onmessage = (e) => apply(JSON.parse(e.data));
}

function setStatus(cls, text) {
  const s = $("#status");
  s.className = `status ${cls}`;
  s.textContent = text;
}

function apply(update) {
  if (update.agents) applyTable("agents", update.agents, agentRow);
  if (update.tasks) applyTable("tasks", update.tasks, taskRow);
  if (update.summary) renderSummary(update.summary);
  if (update.inbox) renderInbox(update.inbox);
  if (update.roots && detail && update.roots.includes(detail.root)) loadDetail(detail.id);
}

function applyTable(name, table, render) {
  const tbody = $(`#${name} tbody`);
  const map = rows[name];
  for (const data of table.rows) {
    const fresh = render(data);
    const old = map.get(data.id);
    if (old) old.replaceWith(fresh);
    map.set(data.id, fresh);
  }
  const keep = new Set(table.order);
  for (const [id, tr] of map) {
    if (!keep.has(id)) {
      tr.remove();
      map.delete(id);
    }
  }
  let next = tbody.firstChild;
  for (const id of table.order) {
    const tr = map.get(id);
    if (tr === next) next = next.nextSibling;
    else tbody.insertBefore(tr, next);
  }
  totals[name] = table.total;
  const pages = Math.max(1, Math.ceil(table.total / config.page_size));
  $(`#${name}-total`).textContent = `(${table.total})`;
  $(`#${name}-page`).textContent = `page ${table.page + 1} of ${pages}`;
}

// --- rows -------------------------------------------------------------------------------------

function taskRow(t) {
  const flags = t.flags.map((f) => el("span", { class: "flag" }, f));
  const spent = t.spent ? [t.spent.tokens ? `${t.spent.tokens} tok` : "", t.spent.cost ? `$${t.spent.cost.toFixed(4)}` : ""]
    .filter(Boolean).join(" ") + (t.budget ? " of budget" : "") : "-";
  const state = t.reason ? `${t.state} (${t.reason})` : t.state;
  const tr = el("tr", { "data-id": t.id, class: t.flags.length ? "flagged" : "" },
    el("td", { class: "id" }, t.id),
    el("td", {}, t.capability),
    el("td", { class: `state state-${t.state}` }, state),
    el("td", { class: "owner" }, t.owner || "-"),
    el("td", {}, t.epoch),
    el("td", {}, t.lapses ? `${t.attempts} (${t.lapses} lapsed)` : t.attempts),
    el("td", { class: "reworks" }, t.reworks),
    el("td", {}, t.hops_left),
    el("td", {}, spent),
    el("td", { class: "age", "data-created": t.created, "data-updated": t.updated, "data-final": ["done", "failed", "cancelled"].includes(t.state) ? "1" : null },
      age((["done", "failed", "cancelled"].includes(t.state) ? t.updated : now()) - t.created)),
    el("td", { class: "progress" }, t.progress),
    el("td", { class: "flags" }, flags));
  tr.addEventListener("click", () => loadDetail(t.id));
  return tr;
}

function agentRow(a) {
  const full = a.load >= a.capacity;
  return el("tr", { "data-id": a.id },
    el("td", { class: "id" }, a.id),
    el("td", {}, a.role),
    el("td", {}, a.serves.join(", ")),
    el("td", { class: `load ${full ? "load-full" : ""}` }, `${a.load}/${a.capacity}`),
    el("td", { class: a.draining ? "draining" : "" }, a.draining ? "draining" : "ready"),
    el("td", {}, a.version),
    el("td", {}, a.completed),
    el("td", {}, a.failed),
    el("td", {}, a.host),
    el("td", { class: "age", "data-created": a.started }, age(now() - a.started)));
}

function renderSummary(s) {
  const parts = [el("span", {}, `${s.agents} agents`)];
  for (const [state, n] of Object.entries(s.tasks)) parts.push(el("span", {}, `${n} ${state}`));
  if (s.stuck) parts.push(el("span", { class: "alert" }, `${s.stuck} stuck`));
  if (s.looping) parts.push(el("span", { class: "alert" }, `${s.looping} looping`));
  if (s.overloaded.length) parts.push(el("span", { class: "alert" }, `overloaded: ${s.overloaded.join(", ")}`));
  for (const what of s.not_read) parts.push(el("span", { class: "alert" }, `NOT READ: ${what}`));
  if (s.unreadable.length) parts.push(el("span", { class: "alert" }, `unreadable: ${s.unreadable.join(", ")}`));
  for (const what of s.forged || []) parts.push(el("span", { class: "alert forged" }, `FORGED: ${what}`));
  $("#summary").replaceChildren(...parts);
}

// Ages tick on the rows shown only (a page at most).
setInterval(() => {
  for (const td of document.querySelectorAll("td.age:not([data-final])")) {
    td.textContent = age(now() - Number(td.dataset.created));
  }
}, 1000);

// --- the inbox --------------------------------------------------------------------------------

function renderInbox(inbox) {
  const list = $("#inbox");
  const error = $("#inbox-error");
  error.hidden = !inbox.error;
  error.textContent = inbox.error || "";
  $("#inbox-count").textContent = `(${inbox.items.length})`;
  if (!inbox.items.length) {
    list.replaceChildren(el("li", { class: "empty" }, "nothing waits for a person"));
    return;
  }
  // Keep an item whose form is being typed in: replace only items that changed.
  const existing = new Map([...list.children].filter((li) => li.dataset.id).map((li) => [li.dataset.id, li]));
  const items = inbox.items.map((item) => {
    const key = JSON.stringify(item);
    const old = existing.get(item.id);
    return old && old.dataset.key === key ? old : inboxItem(item, key);
  });
  list.replaceChildren(...items);
}

function inboxItem(item, key) {
  const li = el("li", { "data-id": item.id, "data-key": key },
    el("div", { class: "what" }, `${item.kind === "review" ? "REVIEW" : "TASK"} `, el("span", { class: "mono" }, item.id),
      ` [${item.capability}] from ${item.requester}`),
    el("div", {}, item.instruction));
  if (item.criteria) li.append(el("div", { class: "criteria" }, `criteria: ${item.criteria}`));
  if (item.result !== null) li.append(el("div", { class: "result" }, `result by ${item.author}: ${item.result}`));
  for (const v of item.feedback) li.append(el("div", { class: "vetoes" }, `veto by ${v.reviewer}: ${v.reasons.join("; ")}`));
  if (!item.actions.length) return li;
  const form = el("form", {});
  const text = el("input", { type: "text", name: "text", placeholder: item.kind === "review" ? "reason (for a veto)" : "your answer" });
  form.append(text);
  for (const action of item.actions) {
    const button = el("button", { type: "button", "data-action": action }, action);
    button.addEventListener("click", () => act(item.id, action, text.value, li));
    form.append(button);
  }
  form.addEventListener("submit", (e) => e.preventDefault());
  li.append(form);
  return li;
}

async function act(id, action, text, li) {
  // The outcome goes to the log above the list: the item itself leaves the inbox
  // as soon as the stream says so, possibly before this answer arrives.
  const note = (cls, message) => $("#inbox-log").prepend(el("li", { class: cls, "data-id": id }, message));
  for (const b of li.querySelectorAll("button")) b.disabled = true;
  try {
    const response = await fetch(`/api/inbox/${encodeURIComponent(id)}/${action}`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-mesh-ui": "1" },
      body: JSON.stringify({ text }),
    });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    note("done", `${action}: task ${body.id} is ${body.state}${body.reason ? ` (${body.reason})` : ""}`);
  } catch (err) {
    note("error", `${action} on task ${id} failed: ${err.message}`);
    for (const b of li.querySelectorAll("button")) b.disabled = false;
  }
}

// --- a task's tree and timeline ---------------------------------------------------------------

async function loadDetail(id) {
  if (detail && detail.loading) {
    detail.again = id;
    return;
  }
  detail = { id, root: detail && detail.id === id ? detail.root : null, loading: true };
  $("#detail-section").hidden = false;
  $("#detail-id").textContent = id;
  const error = $("#detail-error");
  try {
    const response = await fetch(`/api/task/${encodeURIComponent(id)}`);
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    error.hidden = true;
    detail.root = body.root;
    renderDetail(body);
  } catch (err) {
    error.hidden = false;
    error.textContent = `could not read task ${id}: ${err.message}`;
  } finally {
    const again = detail.again;
    detail.loading = false;
    detail.again = null;
    if (again) loadDetail(again);
  }
}

function renderDetail(trace) {
  const tree = trace.tree.map((r) => {
    const li = el("li", { "data-id": r.id, style: `padding-left:${r.depth * 1.5}em` },
      `${r.id} [${r.capability}] `, el("span", { class: `state-${r.state}` }, r.reason ? `${r.state} (${r.reason})` : r.state),
      r.owner ? ` by ${r.owner} epoch ${r.epoch}` : "", ` attempts ${r.attempts}`,
      r.lapses ? ` lapses ${r.lapses}` : "", r.reworks ? ` reworks ${r.reworks}` : "",
      r.review ? ` review ${r.votes.filter((v) => v.verdict === "approve").length}/${r.review.quorum} (${r.review.capability})` : "",
      ` ${r.took_ms} ms`);
    if (r.capability.startsWith("agent.")) li.append(el("span", { class: "badge" }, "clarification"));
    if (r.result !== null && r.state === "done") li.append(el("span", { class: "sub" }, `result: ${r.result}`));
    if (r.error) li.append(el("span", { class: "sub error" }, r.error));
    for (const v of r.feedback) li.append(el("span", { class: "sub" }, el("span", { class: "badge veto" }, "veto"), ` by ${v.reviewer}: ${v.reasons.join("; ")}`));
    return li;
  });
  $("#detail-tree").replaceChildren(...tree);
  const t0 = trace.events.length ? trace.events[0].at : 0;
  const events = trace.events.map((e) => {
    let cls = `ev-${e.kind}`;
    let label = e.kind;
    if (e.kind === "claim" && /lapsed/.test(e.note)) { cls += " ev-lapse"; label = "claim (re-opened after a lapse)"; }
    if (e.kind === "release") label = "release (handed back)";
    if (e.kind === "add_child") label = "delegate";
    return el("tr", { class: cls, "data-kind": e.kind },
      el("td", {}, ((e.at - t0) * 1000).toFixed(1)),
      el("td", { class: "id" }, e.task),
      el("td", { class: "kind" }, label),
      el("td", {}, e.reason ? `${e.state} (${e.reason})` : e.state),
      el("td", {}, e.actor),
      el("td", {}, e.epoch),
      el("td", { class: "note" }, e.note));
  });
  $("#detail-events tbody").replaceChildren(...events);
}

// --- controls ---------------------------------------------------------------------------------

function debounce(fn, ms) {
  let timer = null;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

function wire() {
  $("#tasks-filter").addEventListener("change", (e) => { view.tasks_filter = e.target.value; view.tasks_page = 0; connect(); });
  $("#tasks-text").addEventListener("input", debounce((e) => { view.tasks_text = e.target.value; view.tasks_page = 0; connect(); }, 300));
  $("#agents-text").addEventListener("input", debounce((e) => { view.agents_text = e.target.value; view.agents_page = 0; connect(); }, 300));
  for (const b of document.querySelectorAll("[data-pager]")) {
    b.addEventListener("click", () => {
      const table = b.dataset.pager;
      const pages = Math.max(1, Math.ceil(totals[table] / config.page_size));
      const page = Math.min(Math.max(view[`${table}_page`] + Number(b.dataset.step), 0), pages - 1);
      if (page !== view[`${table}_page`]) { view[`${table}_page`] = page; connect(); }
    });
  }
  $("#detail-close").addEventListener("click", () => { detail = null; $("#detail-section").hidden = true; });
}

async function start() {
  config = await (await fetch("/api/config")).json();
  clockSkew = config.now - Date.now() / 1000;
  $("#server").textContent = config.server;
  const identity = $("#identity");
  if (config.actor) identity.textContent = `acting as ${config.actor}`;
  else { identity.textContent = config.read_only_reason; identity.classList.add("read-only"); }
  wire();
  connect();
}

start();
