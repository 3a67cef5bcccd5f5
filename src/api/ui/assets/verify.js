// The checks of docs/integrity.md, in the browser, with WebCrypto alone: an event's leaf hash
// recomputed from the event as the API serves it (versions 1 and 2), the RFC 9162 inclusion
// proof folded into a root, and the C2SP signed-note checkpoint's Ed25519 signature checked
// against the log's verifier key. Nothing here trusts a hash the server computed.

const encoder = new TextEncoder();

export function hexToBytes(hex) {
  if (typeof hex !== "string" || !/^([0-9a-f]{2})*$/.test(hex)) {
    throw new Error("not lowercase hex");
  }
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(i * 2, 2), 16);
  return out;
}

export function bytesToHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function base64ToBytes(text) {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) {
    throw new Error("not base64");
  }
  const raw = atob(text);
  return Uint8Array.from(raw, (c) => c.charCodeAt(0));
}

function concat(...parts) {
  const total = parts.reduce((n, p) => n + p.length, 0);
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function equalBytes(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

export async function sha256(...parts) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", concat(...parts)));
}

async function hmacSha256(key, message) {
  const k = await crypto.subtle.importKey("raw", key, { name: "HMAC", hash: "SHA-256" }, false, [
    "sign",
  ]);
  return new Uint8Array(await crypto.subtle.sign("HMAC", k, message));
}

// RFC 8785. JSON.stringify already writes strings and numbers the way the RFC says (it is
// defined by ECMAScript's own serialisation); only the member order needs doing: sorted by
// UTF-16 code units, which is JavaScript's default string order.
export function jcs(value) {
  if (value === null || typeof value !== "object") {
    if (typeof value === "number" && !Number.isFinite(value)) throw new Error("not a JSON number");
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return "[" + value.map(jcs).join(",") + "]";
  const keys = Object.keys(value).sort();
  return "{" + keys.map((k) => JSON.stringify(k) + ":" + jcs(value[k])).join(",") + "}";
}

const V1_FIELDS = [
  "tenant", "seq", "id", "event_type", "user_identity", "action", "entity", "entity_id",
  "property", "source", "ip", "outcome", "occurred_at", "recorded_at", "recorded_by",
  "idempotency_key", "amends", "amends_hash", "event_data_hash",
];
const PERSONAL = ["entity_id", "event_data", "idempotency_key", "ip", "property", "user_identity"];
const DIRECT = [
  "tenant", "seq", "id", "event_type", "action", "entity", "source", "outcome", "occurred_at",
  "recorded_at", "recorded_by", "amends", "amends_hash",
];

function field(event, name) {
  return event[name] === undefined ? null : event[name];
}

async function commitments(event) {
  const erased = event.erased || { commitments: {}, salts: {} };
  const out = {};
  for (const name of PERSONAL) {
    const value = field(event, name);
    if (Object.prototype.hasOwnProperty.call(erased.commitments || {}, name)) {
      if (value !== null) throw new Error(`${name} is erased but still has a value`);
      out[name] = erased.commitments[name];
    } else if (value === null) {
      out[name] = null;
    } else {
      let salt;
      if (event.salt_secret) {
        salt = await hmacSha256(hexToBytes(event.salt_secret), encoder.encode(name));
      } else if (erased.salts && erased.salts[name]) {
        salt = hexToBytes(erased.salts[name]);
      } else {
        throw new Error(`no salt for ${name}`);
      }
      out[name] = bytesToHex(await sha256(salt, encoder.encode(jcs(value))));
    }
  }
  return out;
}

// The event's leaf hash, from its fields as `GET /events/{id}` returns them.
export async function leafHash(event) {
  const version = event.leaf_version === undefined ? 1 : event.leaf_version;
  let leaf;
  if (version === 1) {
    leaf = { v: 1 };
    for (const name of V1_FIELDS) leaf[name] = field(event, name);
    const data = field(event, "event_data");
    if (data !== null) {
      const digest = bytesToHex(await sha256(encoder.encode(jcs(data))));
      if (digest !== event.event_data_hash) {
        throw new Error("event_data does not match its event_data_hash");
      }
    }
  } else if (version === 2) {
    if (field(event, "event_data_hash") !== null) {
      throw new Error("a version 2 event carries an unsalted payload hash");
    }
    leaf = { v: 2 };
    for (const name of DIRECT) leaf[name] = field(event, name);
    Object.assign(leaf, await commitments(event));
  } else {
    throw new Error(`unknown leaf version ${version}`);
  }
  return sha256(new Uint8Array([0]), encoder.encode(jcs(leaf)));
}

async function node(left, right) {
  return sha256(new Uint8Array([1]), left, right);
}

// RFC 9162 2.1.3.2: the root the audit path leads to, or null if the proof is malformed.
export async function rootFromInclusion(index, size, leaf, proof) {
  if (!(index < size)) return null;
  let fn = BigInt(index);
  let sn = BigInt(size) - 1n;
  let r = leaf;
  for (const p of proof) {
    if (sn === 0n) return null;
    if ((fn & 1n) === 1n || fn === sn) {
      r = await node(p, r);
      while ((fn & 1n) === 0n && fn !== 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      r = await node(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  return sn === 0n ? r : null;
}

// RFC 9162 2.1.4.2: whether `proof` shows that the tree of `second` leaves (root `secondRoot`)
// extends the tree of `first` leaves (root `firstRoot`) unchanged.
export async function consistent(first, second, firstRoot, secondRoot, proof) {
  if (first === second) return proof.length === 0 && equalBytes(firstRoot, secondRoot);
  if (!(0 < first && first < second) || proof.length === 0) return false;
  let path = proof;
  if ((BigInt(first) & (BigInt(first) - 1n)) === 0n) path = [firstRoot, ...proof];
  let fn = BigInt(first) - 1n;
  let sn = BigInt(second) - 1n;
  while ((fn & 1n) === 1n) {
    fn >>= 1n;
    sn >>= 1n;
  }
  let fr = path[0];
  let sr = path[0];
  for (const c of path.slice(1)) {
    if (sn === 0n) return false;
    if ((fn & 1n) === 1n || fn === sn) {
      fr = await node(c, fr);
      sr = await node(c, sr);
      while ((fn & 1n) === 0n && fn !== 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      sr = await node(sr, c);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  return sn === 0n && equalBytes(fr, firstRoot) && equalBytes(sr, secondRoot);
}

// A signed-note verifier key `<name>+<key id>+<base64(0x01 ‖ public key)>`, checked.
export async function parseVerifierKey(text) {
  const first = text.indexOf("+");
  const second = text.indexOf("+", first + 1);
  if (first < 0 || second < 0) throw new Error("not a verifier key");
  const name = text.slice(0, first);
  const keyId = text.slice(first + 1, second);
  const raw = base64ToBytes(text.slice(second + 1).trim());
  if (raw.length !== 33 || raw[0] !== 1) throw new Error("not an Ed25519 signed-note key");
  const expected = bytesToHex((await sha256(encoder.encode(name), new Uint8Array([10]), raw)).slice(0, 4));
  if (expected !== keyId) throw new Error("the key id does not match the key");
  return { name, keyId: hexToBytes(keyId), publicKey: raw.slice(1) };
}

// Checks the checkpoint's signature by `key`; returns its tree size and root, or throws.
export async function openCheckpoint(note, key) {
  const split = note.indexOf("\n\n");
  if (split < 0 || !note.endsWith("\n")) throw new Error("not a signed note");
  const text = note.slice(0, split + 1);
  const signatures = note.slice(split + 2).split("\n").filter((l) => l !== "");
  const publicKey = await crypto.subtle.importKey("raw", key.publicKey, { name: "Ed25519" }, false, [
    "verify",
  ]);
  for (const line of signatures) {
    if (!line.startsWith("\u2014 ")) throw new Error("a malformed signature line");
    const [signer, blobText] = line.slice(2).split(" ");
    const blob = base64ToBytes(blobText || "");
    if (signer !== key.name || blob.length !== 68 || !equalBytes(blob.slice(0, 4), key.keyId)) {
      continue;
    }
    const ok = await crypto.subtle.verify("Ed25519", publicKey, blob.slice(4), encoder.encode(text));
    if (!ok) throw new Error("the checkpoint's signature does not verify");
    const [origin, size, root] = text.split("\n");
    if (origin !== key.name) throw new Error("the checkpoint's origin is not the key's name");
    if (!/^[1-9][0-9]*$/.test(size)) throw new Error("the checkpoint's size is malformed");
    const rootBytes = base64ToBytes(root);
    if (rootBytes.length !== 32) throw new Error("the checkpoint's root is malformed");
    return { size: Number(size), root: rootBytes };
  }
  throw new Error(`the checkpoint has no signature by ${key.name}`);
}

// The fingerprint shown next to a key, to compare out of band: SHA-256 of the raw public key.
export async function keyFingerprint(publicKey) {
  return bytesToHex(await sha256(publicKey));
}

// The verdict on one event: `verified`, `failed` (with the reason) or `pending` (no checkpoint
// covers it yet). `proof` is `GET /events/{id}/proof`; `verifierKey` the key text to trust.
export async function verifyEvent(event, proof, verifierKey) {
  let key;
  try {
    key = await parseVerifierKey(verifierKey);
  } catch (e) {
    return { state: "failed", reason: `the log's key is unusable: ${e.message}` };
  }
  let leaf;
  try {
    leaf = await leafHash(event);
  } catch (e) {
    return { state: "failed", reason: `the event's leaf cannot be rebuilt: ${e.message}` };
  }
  const leafHex = bytesToHex(leaf);
  if (leafHex !== event.leaf_hash) {
    return {
      state: "failed",
      reason: "the event's fields do not hash to its leaf_hash: it was changed after it was recorded",
      leaf: leafHex,
    };
  }
  if (proof.event_id !== event.id || proof.leaf_index !== event.seq - 1) {
    return { state: "failed", reason: "the proof is for another event", leaf: leafHex };
  }
  if (!proof.checkpoint) {
    return {
      state: "pending",
      reason: "the log has not been signed since this event was recorded, so nothing vouches for it yet",
      leaf: leafHex,
    };
  }
  let signed;
  try {
    signed = await openCheckpoint(proof.checkpoint, key);
  } catch (e) {
    return { state: "failed", reason: e.message, leaf: leafHex };
  }
  if (signed.size !== proof.tree_size) {
    return { state: "failed", reason: "the proof is for another tree size than the checkpoint's", leaf: leafHex };
  }
  let path;
  try {
    path = proof.proof.map(hexToBytes);
  } catch (e) {
    return { state: "failed", reason: "the proof is malformed", leaf: leafHex };
  }
  const root = await rootFromInclusion(event.seq - 1, signed.size, leaf, path);
  if (root === null) {
    return { state: "failed", reason: "the inclusion proof is malformed", leaf: leafHex };
  }
  if (!equalBytes(root, signed.root)) {
    return {
      state: "failed",
      reason: "the inclusion proof does not lead to the signed root: the event is not in the signed log as shown",
      leaf: leafHex,
    };
  }
  return {
    state: "verified",
    reason: `in the log of ${signed.size} events signed by ${key.name}`,
    leaf: leafHex,
    treeSize: signed.size,
    root: bytesToHex(signed.root),
  };
}

// --- Erasures -------------------------------------------------------------------------------
// An erased event keeps its leaf (the commitments), so its proof verifies whoever blanked it:
// what shows the erasure was the service's is its record, an `audit.erased` (or
// `audit.redacted`) event committed with it, whose `recorded_at` is the event's `redacted_at`
// and which names the event and every field it lost (src/integrity/verify.rs does the same
// over the whole log).

export const ERASURE_RECORD_TYPES = ["audit.erased", "audit.redacted"];

// What the event lost to an erasure, from what it stores: `null` when it lost nothing, else
// `{ at, fields }` (`at` its `redacted_at`, `fields` the personal fields' names). Throws with
// the reason when what it stores cannot be the result of an erasure.
export function erasureOf(event) {
  const version = event.leaf_version === undefined ? 1 : event.leaf_version;
  const at = field(event, "redacted_at");
  if (version === 1) {
    const data = field(event, "event_data");
    const hash = field(event, "event_data_hash");
    if (data !== null) return null;
    if (hash !== null && at === null) throw new Error("its payload is missing but was never redacted");
    if (hash === null && at !== null) throw new Error("it is marked redacted but never had a payload");
    // A version 1 leaf holds every other field as it is: only the payload can go.
    return at === null ? null : { at, fields: ["event_data"] };
  }
  const erased = field(event, "erased");
  if (erased === null) {
    if (at !== null) throw new Error("it is marked erased but nothing was erased");
    return null;
  }
  if (at === null) throw new Error("fields were erased but redacted_at is not set");
  if (field(event, "salt_secret") !== null) throw new Error("an erased event still has its salt secret");
  const fields = PERSONAL.filter((name) =>
    Object.prototype.hasOwnProperty.call(erased.commitments || {}, name),
  );
  return { at, fields };
}

// The `seq` ranges a record's payload names (`[[first, last], …]`), or null when it names
// none in that shape.
function recordRanges(data) {
  if (data === null || typeof data !== "object" || !Array.isArray(data.erased)) return null;
  const ranges = [];
  for (const range of data.erased) {
    if (!Array.isArray(range) || range.length !== 2 || !range.every(Number.isSafeInteger)) return null;
    ranges.push(range);
  }
  return ranges;
}

// The fields a record says it erased; every personal field for a record that does not say
// (the `audit.redacted` records written before records named them).
function recordFields(data) {
  if (!Array.isArray(data.fields)) return [...PERSONAL];
  return PERSONAL.filter((name) => data.fields.includes(name));
}

// Whether `record` accounts for `event`'s `erasure` (`erasureOf`): committed with it, and
// naming its `seq` (or, for a record from before records named ranges, a version 1 event by
// id and chain hash). The fields the record says it erased, or null when it does not name
// the event. The record's own integrity is checked apart (`verifyEvent`).
export function recordCovers(record, event, erasure) {
  if (!ERASURE_RECORD_TYPES.includes(record.event_type)) return null;
  if (!sameInstant(record.recorded_at, erasure.at)) return null;
  const data = field(record, "event_data");
  const ranges = recordRanges(data);
  if (ranges !== null) {
    const named = ranges.some(([first, last]) => first <= event.seq && event.seq <= last);
    return named ? recordFields(data) : null;
  }
  const version = event.leaf_version === undefined ? 1 : event.leaf_version;
  if (
    record.event_type === "audit.redacted" &&
    version === 1 &&
    record.amends === event.id &&
    record.amends_hash === event.hash
  ) {
    return ["event_data"];
  }
  return null;
}

// RFC 3339 timestamps of one instant, to the microsecond (what the databases keep), whatever
// their offset or the digits of their fraction.
export function sameInstant(a, b) {
  const instant = (text) => {
    const m = typeof text === "string" &&
      /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$/i.exec(text);
    if (!m) return null;
    const seconds = Date.parse(`${m[1]}${m[3].toUpperCase()}`);
    if (Number.isNaN(seconds)) return null;
    return `${seconds}.${(m[2] || "").padEnd(9, "0")}`;
  };
  const x = instant(a);
  return x !== null && x === instant(b);
}
