// Run in the browser by tests/api/ui.rs: the viewer's verify.js against the worked examples of
// docs/integrity.md (values from a running service), and against the same data altered.
const done = arguments[arguments.length - 1];
(async () => {
  const v = await import("/ui/verify.js");
  const hex = v.bytesToHex;
  const event = {
    tenant: "default", seq: 1, id: "01a2303f-93b8-7766-9cd1-f5c5bf663a3f",
    event_type: "customer.billed", user_identity: "jane.doe@example.com", action: "update",
    entity: "invoice", entity_id: "INV-7", property: null, source: "billing", ip: "2001:db8::1",
    outcome: "success", occurred_at: "2024-05-01T12:00:00.123456Z",
    recorded_at: "2026-12-01T06:16:42.680059Z", recorded_by: "admin",
    idempotency_key: "inv-7-billed", amends: null, amends_hash: null,
    event_data: { amount: 1250, currency: "EUR", note: "Zahlung für März" },
    event_data_hash: null,
    salt_secret: "27c6edd559cb1195e098e2db28276e07f24aa3efb3575320e127b35df3aee2c9",
    erased: null, leaf_version: 2,
  };
  const erased = {
    ...event, user_identity: null, entity_id: null, ip: null, idempotency_key: null,
    event_data: null, salt_secret: null,
    erased: {
      commitments: {
        entity_id: "0f909b9fd9101016769354a1b692c432c8febe0563b103338f87c3981d1e6652",
        event_data: "e4154327c0f4bb054b0c1b0827b5c990bf869fcca92e0c349568734fefac8437",
        idempotency_key: "ac258a0baf691d785f4b52a31bbd201c92ce9c245c15efdd9b089ac3834e0bb3",
        ip: "2bc248af9652359b68a7f303ab2dd5741bb4ee6cf9c6283a757cc8122b29aba6",
        user_identity: "4f93a8f9a600e21fc9518d630bfedec2a0d07f5072eaa2e824b45d35b4e592af",
      },
      salts: {},
    },
  };
  const altered = { ...event, event_data: { ...event.event_data, amount: 1251 } };
  const path = [
    "a82236b3ad6b179c5f5394c6cf3488f024a967f8cbf62f9e9706eec8d350fa20",
    "91a9172dd3be99ad13f20ecca9a6bbab6039b7b608ba5004541956db344b029b",
    "0c12022ee4948becb9fd3fff8bc12a00cfb75c7a5d6a19a97d0ea963c28ba5a1",
  ].map(v.hexToBytes);
  const leaf = v.hexToBytes("2cfb43f6d8d2912ed86a28191767f82f2e720ec3678bfff4ba397ed38acff41f");
  const key = await v.parseVerifierKey(
    "auditor.local/log/default+d6b66555+AVRoDlmAAyTXKiKdaacHUR6yDiWUvE9A8c91PhbKn4H7",
  );
  const note =
    "auditor.local/log/default\n7\nCU/CfYEs38AbsLoOcH1OLxIIldbAGUoj51SS/J+z9N4=\n\n" +
    "\u2014 auditor.local/log/default 1rZlVT09NGkFMvhVyr92jOP9y/i/8gbifa/C8gCtHuSQbc8Cw+1B63syXy3GTuovzoGH3jh3ENDjMhndEovVzr6h0wE=\n";
  const refused = async (promise) => {
    try {
      await promise;
      return "accepted";
    } catch (e) {
      return e.message;
    }
  };
  // "HTTP endpoints": the consistency proof from 2 to 7.
  const documentedRoot = "094fc27d812cdfc01bb0ba0e707d4e2f120895d6c0194a23e75492fc9fb3f4de";
  const fromRoot = v.hexToBytes("385f1215f2fedad9eb7aa2a5ab750e95e7be225ec5de1ca92c0fd58dc083183f");
  const consistency = [
    "91a9172dd3be99ad13f20ecca9a6bbab6039b7b608ba5004541956db344b029b",
    "0c12022ee4948becb9fd3fff8bc12a00cfb75c7a5d6a19a97d0ea963c28ba5a1",
  ].map(v.hexToBytes);
  const checkpoint = await v.openCheckpoint(note, key);
  const wrongLeaf = v.hexToBytes("00".repeat(32));
  // The record of an erasure: committed with it (its recorded_at is the event's redacted_at,
  // to the microsecond), naming it by seq range or, for a version 1 event, by id and hash.
  const at = "2026-12-01T07:00:00.5Z";
  const v1 = {
    seq: 3, id: "01a2303f-93b8-7766-9cd1-f5c5bf663a40", hash: "ab".repeat(32), leaf_version: 1,
    event_data: null, event_data_hash: "cd".repeat(32), redacted_at: at,
  };
  const amending = {
    event_type: "audit.redacted", recorded_at: "2026-12-01T07:00:00.500000Z", amends: v1.id,
    amends_hash: v1.hash, event_data: { reason: "r" },
  };
  const ranged = {
    event_type: "audit.erased", recorded_at: at,
    event_data: { erased: [[1, 2], [4, 9]], fields: ["user_identity"], reason: "r" },
  };
  const covers = (record, event) => {
    try {
      return v.recordCovers(record, event, v.erasureOf(event));
    } catch (e) {
      return e.message;
    }
  };
  return {
    leaf: hex(await v.leafHash(event)),
    erased_leaf: hex(await v.leafHash(erased)),
    altered_leaf: hex(await v.leafHash(altered)),
    root: hex(await v.rootFromInclusion(0, 7, leaf, path)),
    wrong_leaf_root: hex(await v.rootFromInclusion(0, 7, wrongLeaf, path)),
    checkpoint: [checkpoint.size, hex(checkpoint.root)],
    consistent: await v.consistent(2, 7, fromRoot, v.hexToBytes(documentedRoot), consistency),
    rewritten: await v.consistent(2, 7, v.hexToBytes(documentedRoot), v.hexToBytes(documentedRoot), consistency),
    resized: await refused(v.openCheckpoint(note.replace("\n7\n", "\n8\n"), key)),
    record_rules: [
      covers(amending, v1),
      covers({ ...amending, amends_hash: "00".repeat(32) }, v1),
      covers({ ...amending, recorded_at: "2026-12-01T07:00:00.500001Z" }, v1),
      covers({ ...amending, event_type: "audit.erased" }, v1),
      covers(ranged, { ...v1, seq: 4 }),
      covers(ranged, v1),
      covers({ ...ranged, event_data: { erased: [[3, 3]], reason: "r" } }, v1),
      covers(amending, { ...v1, redacted_at: null }),
      covers(ranged, { ...event, redacted_at: at }),
    ],
    other_key: await refused(
      v.openCheckpoint(note, { ...key, publicKey: new Uint8Array(32).fill(7) }),
    ),
  };
})().then(done, (e) => done({ error: String(e) }));
