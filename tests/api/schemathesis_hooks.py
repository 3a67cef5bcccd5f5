"""schemathesis hooks for `openapi::the_api_keeps_to_its_document` (tests/api/openapi.rs),
loaded with SCHEMATHESIS_HOOKS=schemathesis_hooks.

A batch of `POST /events` must not hold one event twice: two events with the same
`idempotency_key` (or, in CloudEvents, the same `source` and `id`) are refused 422, naming the
second. JSON Schema cannot state uniqueness by a key (`uniqueItems` compares whole items), so
the document says it in words; these hooks keep the generator from offering such a batch as
valid data, and leave every other check as it is.
"""

import schemathesis


def _key(event):
    if not isinstance(event, dict):
        return None
    if "specversion" in event:
        source, id_ = event.get("source"), event.get("id")
        if isinstance(source, str) and isinstance(id_, str):
            return ("cloudevent", source, id_)
        return None
    key = event.get("idempotency_key")
    return ("event", key) if isinstance(key, str) else None


@schemathesis.hook
def filter_case(context, case):
    operation = context.operation
    if operation is None or (operation.method.upper(), operation.path) != ("POST", "/events"):
        return True
    body = case.body
    if not isinstance(body, list):
        return True
    seen = set()
    for event in body:
        key = _key(event)
        if key is None:
            continue
        if key in seen:
            return False
        seen.add(key)
    return True


# NDJSON, whose lines `POST /events/bulk` reads one by one (no body is invalid as a whole, so the
# document's schema for it is any value), is sent as text is: schemathesis has no serializer of
# its own for it, and would drop every case that picks it.
schemathesis.serializer.alias(
    ["application/x-ndjson", "application/ndjson", "application/jsonl"], "text/plain"
)
