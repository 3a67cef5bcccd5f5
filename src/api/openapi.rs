//! The API's OpenAPI 3.1 document, served at `/openapi.json` with a reference page at `/docs`.
//!
//! The routes and their operations come from each module's `routes!` (see [`super::routes`]), so
//! the document lists exactly what the router serves. What every route shares is added here, in
//! one place, from the code that defines it: the credential schemes, the `tenant` parameter
//! ([`super::access::tenant_parameter`]), path parameters (from the path templates), the event
//! filters (from [`Field::ALL`]) and the error shape ([`ErrorBody`]) with the statuses a route
//! may answer. So are the rules of what the model validates (an event's text fields,
//! `event_data`), as schemas the bodies share: schemathesis runs the API from this document
//! (`tests/api/openapi.rs`), and takes each rule at its word.

use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, Ref, RefOr, Required, ResponseBuilder, Schema, path::PathItem,
};
use utoipa::{Modify, OpenApi};

use super::error::ErrorBody;
use super::parameters::MAX_WHOLE_NUMBER;
use crate::model::Field;
use crate::model::fields::Kind;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Auditor",
        description = "An append-only, tamper-evident audit log. Every route but `/ping`, \
            `/healthz` and `/readyz` takes a user's name and password (HTTP Basic) or an API \
            token or identity provider's JWT (`Authorization: Bearer`). Errors have one shape, \
            `ErrorBody`; its `code` names the error (README, \"Errors\")."
    ),
    components(schemas(ErrorBody)),
    modifiers(&Shared),
    tags(
        (name = "events", description = "Record, query, export and follow events"),
        (name = "integrity", description = "Signed checkpoints, proofs and the log as C2SP tiles"),
        (name = "erasure", description = "Redaction and erasure of personal data"),
        (name = "tokens", description = "API tokens"),
        (name = "seed routes", description = "The routes of the seed documents, as their curl \
            examples use them"),
        (name = "operations", description = "Health and metrics"),
        (name = "viewer", description = "Signing in to the web viewer at /ui (a session cookie)"),
    )
)]
struct ApiDoc;

/// The whole document: `routes`, the operations the router serves, completed by [`Shared`].
pub fn document(routes: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi();
    document.merge(routes);
    Shared.modify(&mut document);
    document
}

/// Routes that take no credentials.
const PUBLIC: [&str; 3] = ["/ping", "/healthz", "/readyz"];

/// Seed 2's routes, which answer in their own shape (`api::compat`), by prefix.
pub const SEED_ROUTES: [&str; 4] = ["/create_log/", "/update_log/", "/delete_log/", "/get_log/"];

/// Operations whose body may be left out.
const OPTIONAL_BODY: [(&str, &str); 3] = [
    ("put", "/update_log/{event_uuid}"),
    ("delete", "/delete_log/{event_uuid}"),
    ("post", "/events/bulk"),
];

/// Routes that take a query of the event log: the filters and paging of `GET /events`.
pub const QUERIED: [&str; 5] = [
    "/events",
    "/events/query",
    "/events/export",
    "/events/stream",
    "/get_log/customer/{user_id}",
];

/// Completes every operation with what all routes share.
struct Shared;

impl Modify for Shared {
    fn modify(&self, document: &mut utoipa::openapi::OpenApi) {
        let components = document.components.get_or_insert_with(Default::default);
        add_payload_schemas(components);
        refine_event_fields(components);
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "A user's name and password; the user's role (`reader`, `writer` or \
                         `admin`, of one tenant or all) decides what it may do",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("auditor_ token or JWT")
                    .description(Some(
                        "An API token (`auditor_…`, POST /admin/tokens) or, with `[auth.jwt]` \
                         configured, an identity provider's JWT",
                    ))
                    .build(),
            ),
        );
        // OpenAPI path templates have no catch-all: the tile path is one parameter with slashes.
        if let Some(item) = document.paths.paths.remove("/logs/{tenant}/tile/{*path}") {
            document
                .paths
                .paths
                .insert("/logs/{tenant}/tile/{path}".to_owned(), item);
        }
        for (path, item) in &mut document.paths.paths {
            for (method, operation) in operations(item) {
                complete(path, method, operation);
            }
        }
    }
}

/// `RawEvent` is derived in `model`, which knows nothing of the document: what its fields take
/// ([`crate::model::NewEvent::parse`]) is said here, as the seed routes' bodies say it.
fn refine_event_fields(components: &mut utoipa::openapi::Components) {
    let Some(RefOr::T(Schema::Object(raw))) = components.schemas.get_mut("RawEvent") else {
        return;
    };
    for (name, schema) in &mut raw.properties {
        let refined = match name.as_str() {
            "event_type" => event_type(),
            "user_identity" => event_text(),
            "entity" | "entity_id" | "property" | "source" | "idempotency_key" => {
                optional_event_text()
            }
            "ip" => optional_ip_address(),
            "event_data" => {
                *schema = optional_event_data().into();
                continue;
            }
            _ => continue,
        };
        *schema = RefOr::T(refined);
    }
}

/// `event_data`'s rules ([`crate::model::payload`]) as schemas: `EventData` (an object) and
/// `JsonValue` (a member of it, at any depth): no U+0000 in a string or key, no integer beyond
/// ±(2^53 − 1) (a double is kept as its shortest form, which every generator writes). The
/// nesting limit (64 levels) is said, not checked.
fn add_payload_schemas(components: &mut utoipa::openapi::Components) {
    use utoipa::openapi::schema::{AdditionalProperties, AnyOfBuilder, ArrayBuilder};
    let exact = crate::model::payload::MAX_EXACT_INTEGER;
    let object_of = |members: RefOr<Schema>| {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property_names(Some(pattern("^[^\\u0000]*$")))
            .additional_properties(Some(AdditionalProperties::RefOr(members)))
    };
    let value = |nested: RefOr<Schema>| {
        AnyOfBuilder::new()
            .item(pattern("^[^\\u0000]*$"))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(-exact))
                    .maximum(Some(exact)),
            )
            .item(ObjectBuilder::new().schema_type(Type::Number))
            .item(ObjectBuilder::new().schema_type(Type::Boolean))
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .item(ArrayBuilder::new().items(nested.clone()))
            .item(object_of(nested))
    };
    let json_value = value(Ref::from_schema_name("JsonValue").into()).description(Some(
        "Any JSON value but a string or key holding U+0000 or an integer beyond ±(2^53 − 1) \
         (send it as a string), nested at most 64 levels deep",
    ));
    components.schemas.insert(
        "JsonValue".to_owned(),
        Schema::AnyOf(json_value.build()).into(),
    );
    components.schemas.insert(
        "EventData".to_owned(),
        Schema::Object(
            object_of(Ref::from_schema_name("JsonValue").into())
                .description(Some(
                    "Any JSON object, kept as sent: see `JsonValue` for its members",
                ))
                .build(),
        )
        .into(),
    );
}

/// An optional `EventData`.
pub fn optional_event_data() -> Schema {
    utoipa::openapi::schema::OneOfBuilder::new()
        .item(Ref::from_schema_name("EventData"))
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .into()
}

fn operations(item: &mut PathItem) -> Vec<(&'static str, &mut Operation)> {
    [
        ("get", item.get.as_mut()),
        ("post", item.post.as_mut()),
        ("put", item.put.as_mut()),
        ("delete", item.delete.as_mut()),
        ("patch", item.patch.as_mut()),
    ]
    .into_iter()
    .filter_map(|(method, operation)| Some((method, operation?)))
    .collect()
}

/// What `event_data.<path>` filters are: a parameter whose name is a pattern, which OpenAPI's
/// parameter list cannot hold.
const PAYLOAD_FILTER: &str = "Besides the parameters listed, `event_data.<path>=<value>` matches \
    the value at a path of keys in `event_data` (`event_data.plan.tier=gold`; at most 8 keys; a key \
    with other characters than letters, digits, `_` and `-` written as a JSON string, \
    `event_data.\"a.b\"`). The value is read as JSON (`1346` a number, `\"1346\"` the string), and \
    as a string when it is not JSON. Filters combine with AND; an unknown or repeated parameter \
    is a `400`.";

fn complete(path: &str, method: &str, operation: &mut Operation) {
    let public = PUBLIC.contains(&path);
    // Unique by construction; the handlers' own names repeat across modules (`create`, `list`).
    operation.operation_id = Some(operation_id(method, path));
    let mut parameters = path_parameters(path);
    if method == "get" && QUERIED.contains(&path) {
        parameters.extend(event_filters(path));
        let description = operation.description.get_or_insert_with(String::new);
        if !description.is_empty() {
            description.push_str("\n\n");
        }
        description.push_str(PAYLOAD_FILTER);
    }
    if !public && !path.contains("{tenant}") {
        parameters.push(query_parameter(
            "tenant",
            tenant(),
            "The tenant to act in, for credentials that admit more than their own (an admin of \
             every tenant, `_system` for the system log); default: the credential's tenant",
        ));
    }
    let declared = operation.parameters.get_or_insert_with(Vec::new);
    // A tree size in the query, as `whole_number` reads it (`api::proofs`).
    for parameter in declared.iter_mut() {
        if matches!(parameter.name.as_str(), "tree_size" | "from" | "to") {
            parameter.schema = Some(RefOr::T(whole_number(1)));
        }
    }
    for parameter in parameters {
        if !declared.iter().any(|p| p.name == parameter.name) {
            declared.push(parameter);
        }
    }
    let takes_parameters = !declared.is_empty();
    // These read an absent body as defaults (seed 2's bodiless PUT and DELETE) or as an upload
    // of no lines.
    if OPTIONAL_BODY.contains(&(method, path))
        && let Some(body) = operation.request_body.as_mut()
    {
        body.required = Some(Required::False);
    }
    operation.security = Some(if public {
        vec![SecurityRequirement::default()]
    } else {
        vec![
            SecurityRequirement::new("basic", Vec::<String>::new()),
            SecurityRequirement::new("bearer", Vec::<String>::new()),
        ]
    });
    let mut errors: Vec<(&str, &str)> = vec![("500", "An internal error (logged, never sent)")];
    if path != "/healthz" && path != "/ping" {
        errors.push((
            "503",
            "The database is unavailable or the service is busy; `Retry-After` says when to retry",
        ));
    }
    if !public {
        errors.extend([
            ("401", "Missing or wrong credentials (`WWW-Authenticate` names both schemes)"),
            ("403", "The credentials lack the scope, or may not act in the tenant named"),
            ("429", "Over the credential's request rate, or too many failed sign-ins; `Retry-After` says when to retry"),
        ]);
    }
    if path != "/events/bulk" {
        errors.push((
            "408",
            "The request took longer than `limits.request_timeout_secs`",
        ));
    }
    if takes_parameters {
        errors.push((
            "400",
            "A bad parameter (`invalid_query`, `field` names it) or a malformed body",
        ));
    }
    if matches!(method, "post" | "put") {
        errors.push(("413", "The body is larger than `limits.max_body_bytes`"));
    }
    if path.contains('{') {
        errors.push(("404", "No such event, checkpoint, token or tile"));
    }
    for (status, description) in errors {
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| error_response(description));
    }
    // An error a handler declares by its status and description has the one shape too.
    for (status, response) in &mut operation.responses.responses {
        if let RefOr::T(response) = response
            && status.parse::<u16>().is_ok_and(|status| status >= 400)
            && response.content.is_empty()
        {
            *response = error_shape(&response.description);
        }
    }
}

/// `get_events_id` for `GET /events/{id}`.
fn operation_id(method: &str, path: &str) -> String {
    let words = path
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|word| !word.is_empty());
    std::iter::once(method)
        .chain(words)
        .collect::<Vec<_>>()
        .join("_")
}

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(error_shape(description))
}

fn error_shape(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

/// One required string parameter per `{name}` of the template.
fn path_parameters(path: &str) -> Vec<Parameter> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            let (schema, description) = match name {
                "id" | "event_uuid" => (uuid(), "The event's id"),
                // It becomes the recorded event's `user_identity`, with that field's rules.
                "user_id" if path.starts_with("/create_log/") => {
                    (event_text(), "The customer: the event's `user_identity`")
                }
                "user_id" => (string(), "The customer: the events' `user_identity`"),
                "tree_size" => (
                    whole_number(1),
                    "The number of events the checkpoint covers",
                ),
                "name" => (string(), "The token's name"),
                "tenant" => (tenant(), "The tenant whose log this is"),
                "path" => (
                    pattern(TILE_PATH),
                    "The tile's path as C2SP tlog-tiles names it, slashes included \
                     (`0/x001/234`, `1/005.p/17`, `entries/…`)",
                ),
                _ => (string(), ""),
            };
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .schema(Some(schema))
                .description(Some(description))
                .build()
        })
        .collect()
}

/// The filters and paging a query of the log takes on `path`.
fn event_filters(path: &str) -> Vec<Parameter> {
    let mut parameters: Vec<Parameter> = Field::ALL
        .iter()
        .filter(|field| !(path == "/get_log/customer/{user_id}" && field.name() == "user_identity"))
        .map(|field| {
            let schema = match (field.name(), field.kind()) {
                ("action", _) => enumeration(&["create", "read", "update", "delete"]),
                ("ip", _) => ip_address(),
                ("outcome", _) => enumeration(&["success", "failure"]),
                (_, Kind::Uuid) => uuid(),
                (_, Kind::Integer) => integer(),
                _ => string(),
            };
            let description = match field.name() {
                "ip" => "Events from this address (compared in canonical form)".to_owned(),
                name => format!("Events whose `{name}` equals this value"),
            };
            query_parameter(field.name(), schema, &description)
        })
        .collect();
    parameters.extend([
        query_parameter(
            "since",
            date_time(),
            "Events that occurred at or after this instant (RFC 3339)",
        ),
        query_parameter(
            "until",
            date_time(),
            "Events that occurred before this instant (RFC 3339)",
        ),
    ]);
    if path != "/events/stream" {
        parameters.push(query_parameter(
            "cursor",
            string(),
            "The `next_cursor` of the previous page (sent with the same `order`)",
        ));
    }
    match path {
        "/events/export" => parameters.push(query_parameter(
            "format",
            enumeration(&["ndjson", "csv"]),
            "NDJSON (default; without filters, what `auditor verify --export` checks) or CSV",
        )),
        "/events/stream" => parameters.push(
            ParameterBuilder::new()
                .name("Last-Event-ID")
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .schema(Some(integer()))
                .description(Some(
                    "Resume after this `seq` (`0`: from the start); without it, the stream \
                     begins with the events committed from then on",
                ))
                .build(),
        ),
        _ => parameters.extend([
            query_parameter(
                "limit",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1))
                    .maximum(Some(1000))
                    .default(Some(100.into()))
                    .into(),
                "Page size",
            ),
            query_parameter(
                "order",
                enumeration(&["asc", "desc"]),
                "By `seq`; default `asc`",
            ),
        ]),
    }
    parameters
}

fn query_parameter(name: &str, schema: Schema, description: &str) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(Required::False)
        .schema(Some(schema))
        .description(Some(description))
        .build()
}

/// A tenant's name as [`crate::model::TenantId::parse`] takes it: 1 to 64 of `a-z`, `0-9`, `.`,
/// `_` and `-`, other than `.` and `..`. Without a lookahead (`(?!\.\.?$)`), which generators
/// can only meet by discarding what they made.
pub const TENANT_PATTERN: &str =
    r"^([a-z0-9_-][a-z0-9._-]{0,63}|\.[a-z0-9_-][a-z0-9._-]{0,62}|\.\.[a-z0-9._-]{1,62})$";

/// A tile's path in its one canonical spelling ([`crate::integrity::tiles::Tile::parse`]):
/// level 0 to 7 or `entries`; the index in groups of three digits, all but the last prefixed
/// with `x`, the first not `x000`, at most six groups (an index that fits in 64 bits); a
/// partial tile's width from 1 to 255.
const TILE_PATH: &str = r"^(entries|[0-7])/(x(00[1-9]|0[1-9][0-9]|[1-9][0-9]{2})(/x[0-9]{3}){0,4}/)?[0-9]{3}(\.p/([1-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-5]))?$";

fn tenant() -> Schema {
    pattern(TENANT_PATTERN)
}

fn pattern(pattern: &str) -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .into()
}

/// A whole number from `min` to [`MAX_WHOLE_NUMBER`], as [`super::parameters::whole_number`]
/// reads it.
fn whole_number(min: u64) -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(min))
        .maximum(Some(MAX_WHOLE_NUMBER))
        .into()
}

fn string() -> Schema {
    ObjectBuilder::new().schema_type(Type::String).into()
}

fn integer() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .into()
}

fn uuid() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
        .into()
}

fn date_time() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
        .into()
}

fn enumeration(values: &[&str]) -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.iter().copied()))
        .into()
}

/// The characters Rust's `str::trim` takes for white space (Unicode's White_Space), as a
/// character class's body: regular expressions' `\s` differs between dialects (U+001C–U+001F in
/// Python's, U+FEFF in ECMAScript's).
pub const WHITE_SPACE: &str =
    r"\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";

/// Control characters (`char::is_control`), as a character class's body.
pub const CONTROL: &str = r"\u0000-\u001f\u007f-\u009f";

/// Text an event's field holds ([`crate::model::NewEvent::parse`]), after `^`: not blank, no
/// control characters.
fn event_text_pattern() -> String {
    format!("[^{CONTROL}]*[^{WHITE_SPACE}{CONTROL}][^{CONTROL}]*$")
}

/// The default `limits.max_field_len`, in bytes of UTF-8; the document gives it as a length in
/// characters, which the server counts in bytes.
const MAX_FIELD_LEN: usize = 1024;

fn text_types(nullable: bool) -> utoipa::openapi::schema::SchemaType {
    if nullable {
        utoipa::openapi::schema::SchemaType::from_iter([Type::String, Type::Null])
    } else {
        utoipa::openapi::schema::SchemaType::new(Type::String)
    }
}

fn event_text_of(pattern: String, nullable: bool) -> Schema {
    ObjectBuilder::new()
        .schema_type(text_types(nullable))
        .pattern(Some(pattern))
        .max_length(Some(MAX_FIELD_LEN))
        .description(Some(
            "Not blank, no control characters, at most `limits.max_field_len` bytes (default \
             1024)",
        ))
        .into()
}

/// A required text field of an event.
pub fn event_text() -> Schema {
    event_text_of(format!("^{}", event_text_pattern()), false)
}

/// An optional text field of an event (`null` is as good as leaving it out).
pub fn optional_event_text() -> Schema {
    event_text_of(format!("^{}", event_text_pattern()), true)
}

/// An event type a client may record: event text, not of the service's own `audit.*` records.
pub fn event_type() -> Schema {
    event_text_of(format!("^(?!audit\\.){}", event_text_pattern()), false)
}

fn ip_addresses() -> utoipa::openapi::schema::OneOfBuilder {
    utoipa::openapi::schema::OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Ipv4))),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Ipv6))),
        )
}

/// An IP address, v4 or v6.
pub fn ip_address() -> Schema {
    ip_addresses().into()
}

/// An optional IP address, v4 or v6.
pub fn optional_ip_address() -> Schema {
    ip_addresses()
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .into()
}

/// Seed 2's optional `datetime`: an RFC 3339 timestamp, or a date meaning midnight UTC.
pub fn optional_seed_datetime() -> Schema {
    utoipa::openapi::schema::AnyOfBuilder::new()
        .item(date_time())
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Date))),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .into()
}

/// A reason for an erasure ([`super::erasure::check_reason`]): not blank, no U+0000.
pub fn reason() -> Schema {
    pattern(&format!("^[^\\u0000]*[^\\u0000{WHITE_SPACE}][^\\u0000]*$"))
}

/// An optional [`reason`].
pub fn optional_reason() -> Schema {
    ObjectBuilder::new()
        .schema_type(text_types(true))
        .pattern(Some(format!(
            "^[^\\u0000]*[^\\u0000{WHITE_SPACE}][^\\u0000]*$"
        )))
        .into()
}

/// An optional [`event_type`].
pub fn optional_event_type() -> Schema {
    event_text_of(format!("^(?!audit\\.){}", event_text_pattern()), true)
}
