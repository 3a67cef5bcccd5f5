// The web viewer: signs in with a session cookie, lists and filters events, follows the live
// tail, and shows one event with its amendments and its inclusion in the signed log, checked
// here (verify.js), and for an erased event the record of its erasure, checked the same way.
// Event data is attacker-controlled: it is only ever set as textContent.

import {
  verifyEvent,
  parseVerifierKey,
  keyFingerprint,
  consistent,
  hexToBytes,
  erasureOf,
  recordCovers,
  ERASURE_RECORD_TYPES,
} from "./verify.js";

const PAGE_SIZE = 50;
const LIVE_MAX_ROWS = 500;
const COLUMNS = [
  "seq", "occurred_at", "event_type", "user_identity", "action", "entity", "entity_id",
  "outcome", "recorded_by",
];

const $ = (id) => document.getElementById(id);

const state = {
  session: null,
  tenant: null,
  // The cursors of the pages before the current one (the first page has none).
  cursors: [],
  cursor: null,
  nextCursor: null,
  live: null,
  // Filters applied when Search was last pressed: the live tail follows these.
  applied: new URLSearchParams(),
};

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = state.session ? state.session.csrf_token : "";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
  });
  const text = await response.text();
  const json = text ? JSON.parse(text) : null;
  if (!response.ok) {
    if (response.status === 401 && state.session && path !== "/ui/session") signedOut();
    throw new ApiError(response.status, json);
  }
  return json;
}

function withTenant(params) {
  const p = new URLSearchParams(params);
  if (state.tenant) p.set("tenant", state.tenant);
  return p;
}

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function show(message) {
  const box = $("message");
  box.textContent = message || "";
  box.hidden = !message;
}

function view(name) {
  for (const id of ["sign-in-view", "list-view", "event-view"]) $(id).hidden = id !== name;
}

// --- Signing in and out -------------------------------------------------------------------

function signedOut() {
  stopLive();
  state.session = null;
  $("who").hidden = true;
  $("provider-sign-in").hidden = document.body.dataset.provider !== "on";
  if (location.hash === "#/sign-in-failed") {
    show("Signing in through the identity provider failed; try again.");
    history.replaceState(null, "", "/ui/");
  }
  view("sign-in-view");
}

function signedIn(session) {
  state.session = session;
  const select = $("tenant");
  select.replaceChildren(...session.tenants.map((t) => el("option", t, { value: t })));
  if (!session.tenants.includes(state.tenant)) state.tenant = session.tenants[0];
  select.value = state.tenant;
  $("tenant").disabled = session.tenants.length < 2;
  $("user").textContent = session.user;
  $("who").hidden = false;
  buildFilterInputs(session.filters);
  route();
}

$("sign-in").addEventListener("submit", async (e) => {
  e.preventDefault();
  show("");
  try {
    const session = await api("POST", "/ui/session", {
      user: $("sign-in-user").value,
      password: $("sign-in-password").value,
    });
    $("sign-in-password").value = "";
    signedIn(session);
  } catch (err) {
    show(err.status === 401 ? "Wrong user name or password." : err.message);
  }
});

$("sign-out").addEventListener("click", async () => {
  try {
    await api("DELETE", "/ui/session");
  } catch (err) {
    if (err.status !== 401) return show(err.message);
  }
  signedOut();
});

$("tenant").addEventListener("change", () => {
  state.tenant = $("tenant").value;
  resetPaging();
  if (location.hash === "#/" || location.hash === "") loadPage();
  else location.hash = "#/";
});

// --- Filters ------------------------------------------------------------------------------

let filtersBuilt = false;

function buildFilterInputs(fields) {
  if (filtersBuilt) return;
  filtersBuilt = true;
  const grid = $("field-filters");
  for (const name of fields) {
    const label = el("label", name);
    label.append(el("input", null, { id: `filter-${name}`, "data-field": name, autocomplete: "off" }));
    grid.append(label);
  }
  addDataFilter();
}

function addDataFilter() {
  const rows = $("data-filters");
  const i = rows.children.length;
  const row = el("div", null, { class: "row" });
  const path = el("label", "event_data.");
  path.append(el("input", null, { id: `data-path-${i}`, placeholder: "path, e.g. account.id", autocomplete: "off" }));
  const value = el("label", "value");
  value.append(el("input", null, { id: `data-value-${i}`, placeholder: 'e.g. 42 or "text"', autocomplete: "off" }));
  row.append(path, value);
  rows.append(row);
}

$("add-data-filter").addEventListener("click", addDataFilter);

function localToUtc(value) {
  if (!value) return null;
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? null : d.toISOString();
}

// The query the form describes: filters and time range, without paging.
function formQuery() {
  const p = new URLSearchParams();
  for (const input of $("field-filters").querySelectorAll("input")) {
    if (input.value !== "") p.set(input.dataset.field, input.value);
  }
  for (const row of $("data-filters").children) {
    const [path, value] = row.querySelectorAll("input");
    if (path.value.trim() !== "" && value.value !== "") p.set(`event_data.${path.value.trim()}`, value.value);
  }
  const since = localToUtc($("since").value);
  const until = localToUtc($("until").value);
  if (since) p.set("since", since);
  if (until) p.set("until", until);
  return p;
}

$("filters").addEventListener("submit", (e) => {
  e.preventDefault();
  state.applied = formQuery();
  resetPaging();
  loadPage();
  if (state.live) startLive();
});

$("clear").addEventListener("click", () => {
  for (const input of $("filters").querySelectorAll("input:not([type=checkbox])")) input.value = "";
  state.applied = new URLSearchParams();
  resetPaging();
  loadPage();
  if (state.live) startLive();
});

// --- The table ----------------------------------------------------------------------------

function resetPaging() {
  state.cursors = [];
  state.cursor = null;
  state.nextCursor = null;
}

function cell(event, column) {
  const value = event[column];
  return value === null || value === undefined ? "" : value;
}

function row(event) {
  const tr = el("tr", null, { "data-id": event.id, "data-seq": String(event.seq) });
  for (const column of COLUMNS) {
    const td = el("td", cell(event, column));
    td.title = String(cell(event, column));
    tr.append(td);
  }
  tr.addEventListener("click", () => {
    location.hash = `#/event/${encodeURIComponent(event.id)}`;
  });
  return tr;
}

async function loadPage() {
  show("");
  const params = withTenant(state.applied);
  params.set("order", "desc");
  params.set("limit", String(PAGE_SIZE));
  if (state.cursor) params.set("cursor", state.cursor);
  try {
    const page = await api("GET", `/events?${params}`);
    const body = $("events").tBodies[0];
    body.replaceChildren(...page.events.map(row));
    $("empty").hidden = page.events.length > 0;
    state.nextCursor = page.next_cursor;
    $("next").disabled = !page.next_cursor;
    $("previous").disabled = state.cursors.length === 0;
    $("page-number").textContent = `page ${state.cursors.length + 1}`;
  } catch (err) {
    show(err.message);
  }
}

$("next").addEventListener("click", () => {
  if (!state.nextCursor) return;
  state.cursors.push(state.cursor);
  state.cursor = state.nextCursor;
  loadPage();
});

$("previous").addEventListener("click", () => {
  if (state.cursors.length === 0) return;
  state.cursor = state.cursors.pop();
  loadPage();
});

// --- Live mode ----------------------------------------------------------------------------

function stopLive() {
  if (state.live) state.live.close();
  state.live = null;
  $("live-state").textContent = "";
}

// Follows the tail with the applied filters; new events go on top of the first page.
function startLive() {
  stopLive();
  const params = withTenant(state.applied);
  const source = new EventSource(`/events/stream?${params}`);
  state.live = source;
  $("live-state").textContent = "connecting…";
  source.onopen = () => {
    $("live-state").textContent = "following";
  };
  source.onmessage = (message) => {
    if (!message.data) return;
    const event = JSON.parse(message.data);
    // Only the first page shows the newest events.
    if (state.cursors.length > 0 || state.cursor) return;
    const body = $("events").tBodies[0];
    if (body.querySelector(`tr[data-id="${CSS.escape(event.id)}"]`)) return;
    const tr = row(event);
    tr.classList.add("new");
    body.prepend(tr);
    while (body.rows.length > LIVE_MAX_ROWS) body.deleteRow(-1);
    $("empty").hidden = true;
  };
  for (const kind of ["lagged", "error"]) {
    source.addEventListener(kind, (e) => {
      if (e.data) $("live-state").textContent = `interrupted (${kind}); reconnecting…`;
    });
  }
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) $("live-state").textContent = "stopped";
    else $("live-state").textContent = "reconnecting…";
  };
}

$("live").addEventListener("change", () => {
  if ($("live").checked) startLive();
  else stopLive();
});

// --- One event ----------------------------------------------------------------------------

function definition(list, term, value) {
  list.append(el("dt", term), el("dd", value));
}

let showing = null;

async function showEvent(id) {
  view("event-view");
  showing = id;
  current = null;
  show("");
  setVerdict("checking", "", []);
  $("event-title").textContent = `Event ${id}`;
  $("event-json").textContent = "";
  $("amendments").replaceChildren();
  $("redaction").replaceChildren();
  let event;
  try {
    event = await api("GET", `/events/${encodeURIComponent(id)}?${withTenant({})}`);
  } catch (err) {
    setVerdict("failed", err.message, [], id);
    return show(err.message);
  }
  if (showing !== id) return;
  $("event-title").textContent = `Event ${event.seq}: ${event.event_type}`;
  $("event-json").textContent = JSON.stringify(event, null, 2);
  showRedaction(event);
  showAmendments(event);
  await checkEvent(event);
}

function showRedaction(event) {
  const box = $("redaction");
  const erased = event.erased ? Object.keys(event.erased.commitments || {}) : [];
  if (event.redacted_at || erased.length) {
    box.append(el("h3", "Erasure"));
    const p = el("p");
    p.append(el("span", "erased", { class: "badge" }));
    p.append(document.createTextNode(
      ` at ${event.redacted_at || "?"}${erased.length ? `: ${erased.join(", ")}` : ""}. The fields' commitments stay in the leaf, so the event still verifies; the record of the erasure shows it was the service's.`,
    ));
    box.append(p);
  }
  if (event.redacted_at || erased.length || (event.event_data === null && event.event_data_hash)) {
    box.append(el("div", "Looking for the record of the erasure…", { id: "erasure-record" }));
  }
  if (event.amends) {
    const p = el("p", "This event amends ");
    const a = el("a", event.amends, { href: `#/event/${encodeURIComponent(event.amends)}` });
    p.append(a);
    box.append(p);
  }
}

async function showAmendments(event) {
  const list = $("amendments");
  try {
    const page = await api("GET", `/events?${withTenant({ amends: event.id, limit: "100" })}`);
    if (page.events.length === 0) list.append(el("li", "none"));
    for (const amendment of page.events) {
      const li = el("li");
      li.append(el("a", `seq ${amendment.seq}: ${amendment.event_type}`, {
        href: `#/event/${encodeURIComponent(amendment.id)}`,
      }));
      li.append(document.createTextNode(` by ${amendment.recorded_by} at ${amendment.recorded_at}`));
      list.append(li);
    }
  } catch (err) {
    list.append(el("li", `cannot list: ${err.message}`));
  }
}

// The verdict on the event shown; `data-event` names the event it is about, so that nothing
// (a person or a test) takes the previous event's verdict for this one's.
function setVerdict(stateName, reason, details, eventId) {
  const status = $("verify-status");
  status.dataset.state = stateName;
  status.dataset.event = eventId || "";
  status.textContent = {
    verified: "✔ Verified",
    failed: "✘ Not verified",
    pending: "… Not yet covered by a checkpoint",
    checking: "Checking…",
  }[stateName];
  $("verify-reason").textContent = reason || "";
  const list = $("verify-details");
  list.replaceChildren();
  for (const [term, value] of details) definition(list, term, value);
  $("verify-again").hidden = stateName === "verified" || stateName === "checking";
}

let current = null;

// Verifier keys the user pinned in this browser, by key name (`<log_origin>/<tenant>`). A key
// fetched from the server at check time proves nothing against whoever controls the server; a
// pinned one, obtained out of band, does.
const PINS = "auditor.pinned-keys";

function pinnedKeys() {
  try {
    return JSON.parse(localStorage.getItem(PINS) || "{}");
  } catch {
    return {};
  }
}

function setPinned(name, key) {
  const pins = pinnedKeys();
  if (key) pins[name] = key;
  else delete pins[name];
  localStorage.setItem(PINS, JSON.stringify(pins));
}

// The largest checkpoint this browser has verified, by key name: each later one must extend it
// (a consistency proof), so a log rewritten between two visits, or shown differently to this
// browser than before, is caught.
const SEEN = "auditor.seen-checkpoints";

function seenCheckpoints() {
  try {
    return JSON.parse(localStorage.getItem(SEEN) || "{}");
  } catch {
    return {};
  }
}

function rememberCheckpoint(name, size, root) {
  const seen = seenCheckpoints();
  seen[name] = { size, root };
  localStorage.setItem(SEEN, JSON.stringify(seen));
}

// Whether the signed tree (`size`, `root` in hex, from a checkpoint just verified) extends the
// one seen before, or is extended by it: `{ ok, text }`.
async function checkHistory(name, size, root) {
  const seen = seenCheckpoints()[name];
  if (!seen) {
    rememberCheckpoint(name, size, root);
    return { ok: true, text: "the first checkpoint of this log this browser has seen" };
  }
  let ok;
  if (seen.size === size) {
    ok = seen.root === root;
  } else {
    const [from, to, fromRoot, toRoot] =
      seen.size < size ? [seen.size, size, seen.root, root] : [size, seen.size, root, seen.root];
    const proof = await api("GET", `/checkpoints/consistency?${withTenant({ from, to })}`);
    ok = await consistent(from, to, hexToBytes(fromRoot), hexToBytes(toRoot), proof.proof.map(hexToBytes));
  }
  if (!ok) {
    return {
      ok,
      text: `the signed log of ${size} events is not consistent with the one of ${seen.size} events this browser verified before: the log was rewritten`,
    };
  }
  if (size > seen.size) rememberCheckpoint(name, size, root);
  return { ok, text: `consistent with the checkpoint of ${seen.size} events this browser verified before` };
}

// How often a page whose event no checkpoint covers yet checks again by itself.
const RECHECK_PENDING_MS = 15000;
let recheck = null;
let serverKey = null;

async function checkEvent(event) {
  current = event;
  clearTimeout(recheck);
  setVerdict("checking", "", [], event.id);
  if (!window.isSecureContext || !crypto.subtle) {
    return setVerdict(
      "failed",
      "this browser offers no WebCrypto on this page: serve the viewer over HTTPS (or open it on localhost)",
      [],
      event.id,
    );
  }
  try {
    const [proof, keys] = await Promise.all([
      api("GET", `/events/${encodeURIComponent(event.id)}/proof?${withTenant({})}`),
      api("GET", `/keys?${withTenant({})}`),
    ]);
    const key = keys.keys.find((k) => k.tenant === event.tenant);
    if (!key) return setVerdict("failed", "the server names no key for this tenant", [], event.id);
    serverKey = key;
    const pinned = pinnedKeys()[key.origin];
    const trusted = pinned || key.verifier_key;
    const parsed = await parseVerifierKey(trusted);
    const fingerprint = await keyFingerprint(parsed.publicKey);
    const verdict = await verifyEvent(event, proof, trusted);
    const details = [
      ["verifier key", trusted],
      ["key fingerprint (SHA-256)", fingerprint],
      ["trusted because", pinned ? "pinned in this browser" : "served by this server (not pinned)"],
      ["leaf hash (recomputed)", verdict.leaf || "—"],
    ];
    if (pinned && pinned !== key.verifier_key) {
      details.push(["warning", `the server now names another key: ${key.verifier_key}`]);
    }
    if (verdict.treeSize) details.push(["signed tree size", String(verdict.treeSize)], ["signed root", verdict.root]);
    let { state: verdictState, reason } = verdict;
    // Signed trees this check relies on, by size: the event's, and its erasure record's.
    const trees = new Map();
    if (verdict.treeSize) trees.set(verdict.treeSize, verdict.root);
    if (verdictState === "failed") {
      showErasureRecords(null, "The record of the erasure was not looked for: the event itself does not verify.");
    } else {
      const erasure = await checkErasure(event, trusted);
      if (current !== event) return;
      showErasureRecords(erasure, "The event lost nothing to an erasure.");
      if (erasure) {
        details.push(...erasure.details);
        for (const { verdict: recordVerdict } of erasure.records) {
          if (recordVerdict.treeSize) trees.set(recordVerdict.treeSize, recordVerdict.root);
        }
        if (erasure.state === "failed" || (erasure.state === "pending" && verdictState === "verified")) {
          verdictState = erasure.state;
          reason = erasure.reason;
        } else if (verdictState === "verified") {
          reason = `${reason}; ${erasure.reason}`;
        }
      }
    }
    if (verdictState === "verified") {
      for (const [size, root] of [...trees].sort(([a], [b]) => a - b)) {
        const history = await checkHistory(parsed.name, size, root);
        details.push(["history", history.text]);
        if (!history.ok) {
          verdictState = "failed";
          reason = history.text;
          break;
        }
      }
    }
    if (current !== event) return;
    setVerdict(verdictState, reason, details, event.id);
    showPinState(key.origin, pinned);
    if (verdictState === "pending") {
      $("verify-reason").textContent += `; checked again every ${RECHECK_PENDING_MS / 1000} s`;
      recheck = setTimeout(() => {
        if (current === event && !$("event-view").hidden) checkEvent(event);
      }, RECHECK_PENDING_MS);
    }
  } catch (err) {
    setVerdict("failed", `cannot check: ${err.message}`, [], event.id);
  }
}

// The records that account for an erased event's erasure (verify.js, `recordCovers`): every
// `audit.erased` and `audit.redacted` event committed at its `redacted_at` (a record's
// `occurred_at` is its commit time, and `since` is inclusive) that names it, with the fields
// each says it erased.
async function erasureRecords(event, erasure) {
  const found = [];
  const at = Date.parse(erasure.at);
  for (const type of ERASURE_RECORD_TYPES) {
    let cursor = null;
    for (;;) {
      const params = withTenant({ event_type: type, since: erasure.at, order: "asc", limit: "100" });
      if (cursor) params.set("cursor", cursor);
      const page = await api("GET", `/events?${params}`);
      for (const record of page.events) {
        const fields = recordCovers(record, event, erasure);
        if (fields) found.push({ record, fields });
      }
      const last = page.events[page.events.length - 1];
      // Records come in commit order: past the erasure's time, none can be of it.
      if (!page.next_cursor || !last || Date.parse(last.occurred_at) > at) break;
      cursor = page.next_cursor;
    }
  }
  return found;
}

// The verdict on an erased event's erasure, `null` for an event that lost nothing: `verified`
// when records committed with it name it and every field it lost, and each is in the signed
// log (its proof checked with the key `trusted`, as the event's); `failed` with the reason
// otherwise (the row was blanked and marked erased by someone other than the service), or
// `pending` while no checkpoint covers a record yet.
async function checkErasure(event, trusted) {
  let erasure;
  try {
    erasure = erasureOf(event);
  } catch (e) {
    return {
      state: "failed",
      reason: `its erasure is not one the service makes: ${e.message}`,
      details: [],
      records: [],
    };
  }
  if (erasure === null) return null;
  const lost = erasure.fields.length ? erasure.fields.join(", ") : "nothing";
  const found = await erasureRecords(event, erasure);
  if (found.length === 0) {
    return {
      state: "failed",
      reason: `erased without a record of the erasure: no audit.erased or audit.redacted event recorded at ${erasure.at} (its redacted_at) names seq ${event.seq}, which lost ${lost}`,
      details: [["erasure record", "none found"]],
      records: [],
    };
  }
  const records = [];
  for (const { record, fields } of found) {
    const proof = await api("GET", `/events/${encodeURIComponent(record.id)}/proof?${withTenant({})}`);
    records.push({ record, fields, verdict: await verifyEvent(record, proof, trusted) });
  }
  const details = records.map(({ record, verdict }) => [
    "erasure record",
    `seq ${record.seq} (${record.event_type}): ${verdict.state === "verified" ? verdict.reason : `${verdict.state}, ${verdict.reason}`}`,
  ]);
  const result = (state, reason) => ({ state, reason, details, records });
  const failed = records.find(({ verdict }) => verdict.state === "failed");
  if (failed) {
    return result(
      "failed",
      `the record of its erasure (seq ${failed.record.seq}) does not verify: ${failed.verdict.reason}`,
    );
  }
  const granted = new Set(records.flatMap(({ fields }) => fields));
  const missing = erasure.fields.filter((name) => !granted.has(name));
  if (missing.length) {
    const named = [...granted].join(", ") || "no field";
    return result(
      "failed",
      `erased without a record of the erasure: it lost ${missing.join(", ")}, but the record of its erasure (seq ${records.map(({ record }) => record.seq).join(", ")}) names only ${named}`,
    );
  }
  const seqs = records.map(({ record }) => `seq ${record.seq}`).join(", ");
  if (records.some(({ verdict }) => verdict.state === "pending")) {
    return result(
      "pending",
      `the record of its erasure (${seqs}) has not been signed yet, so nothing vouches for the erasure yet`,
    );
  }
  return result("verified", `its erasure of ${lost} is recorded by ${seqs}, in the signed log`);
}

// The records of the erasure shown next to it: a link to each, who erased, when and why.
function showErasureRecords(erasure, otherwise) {
  const box = $("erasure-record");
  if (!box) return;
  box.replaceChildren();
  if (erasure === null) {
    box.append(el("p", otherwise));
    return;
  }
  if (erasure.records.length === 0) {
    box.append(el("p", `No record of this erasure: ${erasure.reason}.`, { class: "erasure-missing" }));
    return;
  }
  for (const { record, verdict } of erasure.records) {
    const data = record.event_data || {};
    const p = el("p", "Recorded by ");
    p.append(el("a", `seq ${record.seq}: ${record.event_type}`, {
      href: `#/event/${encodeURIComponent(record.id)}`,
      "data-seq": String(record.seq),
    }));
    const who = record.user_identity || record.recorded_by;
    const fields = Array.isArray(data.fields) ? data.fields.join(", ") : "every personal field";
    p.append(document.createTextNode(
      ` (${verdict.state === "verified" ? "verified" : verdict.state === "pending" ? "not yet signed" : "not verified"}): ${fields} erased by ${who} at ${record.recorded_at}, reason: ${typeof data.reason === "string" ? data.reason : "none given"}`,
    ));
    box.append(p);
  }
}

function showPinState(name, pinned) {
  $("pin-state").textContent = pinned
    ? `This browser trusts only the pinned key for ${name}.`
    : `No key is pinned for ${name}: the server's own key is used, which proves the event is in the log this server signs, not that the server is honest. Pin the key you obtained independently.`;
  $("pin-key").value = pinned || "";
}

$("pin-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  if (!serverKey) return;
  const text = $("pin-key").value.trim();
  try {
    const parsed = await parseVerifierKey(text);
    if (parsed.name !== serverKey.origin) {
      return show(`that key is for ${parsed.name}, not for this log (${serverKey.origin})`);
    }
  } catch (err) {
    return show(`not a verifier key: ${err.message}`);
  }
  show("");
  setPinned(serverKey.origin, text);
  if (current) checkEvent(current);
});

$("pin-server").addEventListener("click", () => {
  if (!serverKey) return;
  setPinned(serverKey.origin, serverKey.verifier_key);
  if (current) checkEvent(current);
});

$("pin-forget").addEventListener("click", () => {
  if (!serverKey) return;
  setPinned(serverKey.origin, null);
  if (current) checkEvent(current);
});

$("verify-again").addEventListener("click", () => {
  if (current) checkEvent(current);
});

// --- Routing ------------------------------------------------------------------------------

function route() {
  if (!state.session) return;
  if (location.hash === "#/sign-in-failed") history.replaceState(null, "", "/ui/#/");
  const match = location.hash.match(/^#\/event\/(.+)$/);
  if (match) {
    showEvent(decodeURIComponent(match[1]));
  } else {
    view("list-view");
    loadPage();
  }
}

window.addEventListener("hashchange", route);

(async function start() {
  try {
    signedIn(await api("GET", "/ui/session"));
  } catch (err) {
    if (err.status !== 401) show(err.message);
    signedOut();
  }
})();
