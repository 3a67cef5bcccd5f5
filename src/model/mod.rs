//! The audit event and the query over events: pure types, no I/O.

pub mod access;
pub mod canonical;
pub mod cloudevent;
mod digest;
pub mod erasure;
pub mod event;
pub mod fields;
pub mod idempotency;
pub mod ids;
pub mod json;
pub mod payload;
pub mod query;
pub mod session;
pub mod token;
pub mod user;

pub use access::{Scope, Scopes, TenantScope};
pub use digest::Digest;
pub use erasure::{Erased, Erasure, ErasureTargets, Personal, SaltSecret};
pub use event::{
    Action, Event, FIELDS, Field, FieldError, Limits, NewEvent, Outcome, RawEvent, Sealing,
    Submission,
};
pub use ids::{EventId, Seq, TenantId};
pub use query::{
    Cursor, EventQuery, Filter, JsonPath, JsonScalar, Order, Page, PathError, QueryError,
};
