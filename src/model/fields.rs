//! How an event's stored fields are declared once (`event_fields!`, used in `event.rs`) and what
//! is derived from that declaration: the `Event` struct, the `FIELDS` table the backends build
//! their column lists, binders and decoders from, and the query `Field` whitelist.
//!
//! A field's column kind follows from its Rust type ([`Stored`]); each backend maps a [`Kind`]
//! to one column type and a [`Cell`] to one bound or read value, so a field added to the
//! declaration is selected, inserted and decoded by both backends without another line.

use std::borrow::Cow;

use serde_json::{Map, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use super::digest::Digest;
use super::erasure::{Erased, SaltSecret};
use super::event::{Action, Outcome};
use super::ids::{EventId, Seq, TenantId};
use super::payload;

/// How a field is held in a column. Each backend has one column type per kind (SQLite: TEXT,
/// INTEGER, BLOB, INTEGER microseconds, TEXT, BLOB; PostgreSQL: text, int8, uuid, timestamptz,
/// jsonb, bytea).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Integer,
    Uuid,
    Time,
    Json,
    Bytes,
}

/// A non-null column value, as a backend binds it (borrowed from the event) or read it
/// (borrowed from the row where the driver allows).
#[derive(Debug, Clone, PartialEq)]
pub enum Cell<'a> {
    Text(Cow<'a, str>),
    Integer(i64),
    Uuid(Uuid),
    Time(OffsetDateTime),
    Json(Cow<'a, Map<String, Value>>),
    Bytes(Cow<'a, [u8]>),
}

impl Cell<'_> {
    pub fn kind(&self) -> Kind {
        match self {
            Self::Text(_) => Kind::Text,
            Self::Integer(_) => Kind::Integer,
            Self::Uuid(_) => Kind::Uuid,
            Self::Time(_) => Kind::Time,
            Self::Json(_) => Kind::Json,
            Self::Bytes(_) => Kind::Bytes,
        }
    }
}

/// What a field is for, beyond being stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    /// Sent by the client in the body of `POST /events` (`RawEvent`).
    Client,
    /// Hashed into the event's leaf (`integrity::chain`, `docs/integrity.md`).
    Leaf,
    /// Deliberately not in the leaf. Every field is `Leaf` or `NotInLeaf`: a unit test in
    /// `integrity::chain` holds the declaration to the leaf's keys.
    NotInLeaf,
    /// Changed by an erasure, the one UPDATE the append-only triggers let through (to NULL, or
    /// for `redacted_at` and `erased` to a new value); every other column must be compared
    /// there (tests read the triggers back from both databases).
    Erasable,
    /// Personal data: a version 2 leaf holds a salted commitment to it, not the value
    /// ([`super::erasure::Personal`] names the same fields).
    Personal,
}

/// One declared field: its column name, kind and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredField {
    pub name: &'static str,
    pub kind: Kind,
    pub flags: &'static [Flag],
}

impl StoredField {
    pub fn is(&self, flag: Flag) -> bool {
        self.flags.contains(&flag)
    }
}

/// A field type and its column: `None` is NULL. `Err` from [`Stored::from_column`] says what
/// was wrong with a stored value, for the backend's "stored … is invalid" error.
pub trait Stored: Sized {
    const KIND: Kind;
    fn to_column(&self) -> Option<Cell<'_>>;
    fn from_column(cell: Option<Cell<'_>>) -> Result<Self, String>;
}

/// A non-null value of a kind; `Option<T>` of it is a nullable column.
pub trait Scalar: Sized {
    const KIND: Kind;
    fn to_cell(&self) -> Cell<'_>;
    fn from_cell(cell: Cell<'_>) -> Result<Self, String>;
}

impl<T: Scalar> Stored for Option<T> {
    const KIND: Kind = T::KIND;

    fn to_column(&self) -> Option<Cell<'_>> {
        self.as_ref().map(T::to_cell)
    }

    fn from_column(cell: Option<Cell<'_>>) -> Result<Self, String> {
        cell.map(T::from_cell).transpose()
    }
}

/// `Stored` for types whose column is NOT NULL.
macro_rules! required {
    ($($ty:ty),*) => {$(
        impl Stored for $ty {
            const KIND: Kind = <$ty as Scalar>::KIND;

            fn to_column(&self) -> Option<Cell<'_>> {
                Some(self.to_cell())
            }

            fn from_column(cell: Option<Cell<'_>>) -> Result<Self, String> {
                Self::from_cell(cell.ok_or("missing")?)
            }
        }
    )*};
}

required!(String, TenantId, i64, Seq, EventId, OffsetDateTime, Digest);

fn wrong_kind(expected: Kind, cell: &Cell<'_>) -> String {
    format!("read as {:?}, declared {expected:?}", cell.kind())
}

impl Scalar for String {
    const KIND: Kind = Kind::Text;

    fn to_cell(&self) -> Cell<'_> {
        Cell::Text(Cow::Borrowed(self))
    }

    fn from_cell(cell: Cell<'_>) -> Result<Self, String> {
        match cell {
            Cell::Text(text) => Ok(text.into_owned()),
            other => Err(wrong_kind(Kind::Text, &other)),
        }
    }
}

impl Scalar for TenantId {
    const KIND: Kind = Kind::Text;

    fn to_cell(&self) -> Cell<'_> {
        Cell::Text(Cow::Borrowed(self.as_str()))
    }

    fn from_cell(cell: Cell<'_>) -> Result<Self, String> {
        String::from_cell(cell).map(TenantId::new)
    }
}

/// Enums stored as their name (`Action::as_str`, read back by `Action::parse`).
macro_rules! by_name {
    ($($ty:ty),*) => {$(
        impl Scalar for $ty {
            const KIND: Kind = Kind::Text;

            fn to_cell(&self) -> Cell<'_> {
                Cell::Text(Cow::Borrowed(self.as_str()))
            }

            fn from_cell(cell: Cell<'_>) -> Result<Self, String> {
                let text = String::from_cell(cell)?;
                <$ty>::parse(&text).ok_or(text)
            }
        }
    )*};
}

by_name!(Action, Outcome);

impl Scalar for i64 {
    const KIND: Kind = Kind::Integer;

    fn to_cell(&self) -> Cell<'_> {
        Cell::Integer(*self)
    }

    fn from_cell(cell: Cell<'_>) -> Result<Self, String> {
        match cell {
            Cell::Integer(i) => Ok(i),
            other => Err(wrong_kind(Kind::Integer, &other)),
        }
    }
}

impl Scalar for Seq {
    const KIND: Kind = Kind::Integer;

    fn to_cell(&self) -> Cell<'_> {
        Cell::Integer(self.0)
    }

    fn from_cell(cell: Cell<'_>) -> Result<Self, String> {
        i64::from_cell(cell).map(Seq)
    }
}

impl Scalar for EventId {
    const KIND: Kind = Kind::Uuid;

    fn to_cell(&self) -> Cell<'_> {
        Cell::Uuid(self.0)
    }

    fn from_cell(cell: Cell<'_>) -> Result<Self, String> {
        match cell {
            Cell::Uuid(id) => Ok(EventId(id)),
            other => Err(wrong_kind(Kind::Uuid, &other)),
        }
    }
}

impl Scalar for OffsetDateTime {
    const KIND: Kind = Kind::Time;

    fn to_cell(&self) -> Cell<'_> {
        Cell::Time(*self)
    }

    fn from_cell(cell: Cell<'_>) -> Result<Self, String> {
        match cell {
            Cell::Time(t) => Ok(t),
            other => Err(wrong_kind(Kind::Time, &other)),
        }
    }
}

/// The payload, brought back to the form it had when it was recorded (`payload::normalized`).
impl Scalar for Map<String, Value> {
    const KIND: Kind = Kind::Json;

    fn to_cell(&self) -> Cell<'_> {
        Cell::Json(Cow::Borrowed(self))
    }

    fn from_cell(cell: Cell<'_>) -> Result<Self, String> {
        match cell {
            Cell::Json(map) => Ok(payload::normalized(map.into_owned())),
            other => Err(wrong_kind(Kind::Json, &other)),
        }
    }
}

impl Scalar for Digest {
    const KIND: Kind = Kind::Bytes;

    fn to_cell(&self) -> Cell<'_> {
        Cell::Bytes(Cow::Borrowed(self.as_bytes()))
    }

    fn from_cell(cell: Cell<'_>) -> Result<Self, String> {
        match cell {
            Cell::Bytes(bytes) => Digest::from_slice(&bytes).ok_or_else(|| "not 32 bytes".into()),
            other => Err(wrong_kind(Kind::Bytes, &other)),
        }
    }
}

impl Scalar for SaltSecret {
    const KIND: Kind = Kind::Bytes;

    fn to_cell(&self) -> Cell<'_> {
        Cell::Bytes(Cow::Borrowed(self.as_bytes()))
    }

    fn from_cell(cell: Cell<'_>) -> Result<Self, String> {
        match cell {
            Cell::Bytes(bytes) => {
                SaltSecret::from_slice(&bytes).ok_or_else(|| "not 32 bytes".into())
            }
            other => Err(wrong_kind(Kind::Bytes, &other)),
        }
    }
}

/// Stored as the JSON object it is served as.
impl Scalar for Erased {
    const KIND: Kind = Kind::Json;

    fn to_cell(&self) -> Cell<'_> {
        let map = match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            _ => unreachable!("a struct of maps of hex strings serialises to an object"),
        };
        Cell::Json(Cow::Owned(map))
    }

    fn from_cell(cell: Cell<'_>) -> Result<Self, String> {
        match cell {
            Cell::Json(map) => {
                serde_json::from_value(Value::Object(map.into_owned())).map_err(|e| e.to_string())
            }
            other => Err(wrong_kind(Kind::Json, &other)),
        }
    }
}

impl Scalar for Vec<u8> {
    const KIND: Kind = Kind::Bytes;

    fn to_cell(&self) -> Cell<'_> {
        Cell::Bytes(Cow::Borrowed(self))
    }

    fn from_cell(cell: Cell<'_>) -> Result<Self, String> {
        match cell {
            Cell::Bytes(bytes) => Ok(bytes.into_owned()),
            other => Err(wrong_kind(Kind::Bytes, &other)),
        }
    }
}

/// Declares the stored event: one line per field, `name: Type [flags] => FilterVariant`, the
/// `=> …` only for the fields a query may filter on by equality. Generates the struct, `FIELDS`
/// (in the declared order, which is the order of the struct, of the selected columns and of
/// the JSON the API returns), `Event::columns` and `Event::from_columns`, and the `Field` enum
/// of the filterable fields.
macro_rules! event_fields {
    (
        $(#[$struct_attr:meta])*
        pub struct $event:ident {
            $(
                $(#[$attr:meta])*
                $name:ident: $ty:ty [$($flag:ident),*] $(=> $variant:ident)?
            ),* $(,)?
        }
    ) => {
        $(#[$struct_attr])*
        pub struct $event {
            $( $(#[$attr])* pub $name: $ty, )*
        }

        /// The stored fields, in declared order.
        pub const FIELDS: [$crate::model::fields::StoredField; $event::COUNT] = [$(
            $crate::model::fields::StoredField {
                name: stringify!($name),
                kind: <$ty as $crate::model::fields::Stored>::KIND,
                flags: &[$($crate::model::fields::Flag::$flag),*],
            }
        ),*];

        impl $event {
            pub const COUNT: usize = [$(stringify!($name)),*].len();

            /// The event's columns in the order of [`FIELDS`], as a backend binds them.
            pub fn columns(&self) -> [Option<$crate::model::fields::Cell<'_>>; Self::COUNT] {
                [$( $crate::model::fields::Stored::to_column(&self.$name) ),*]
            }

            /// An event from its columns: `column(name, kind)` reads one, and `invalid(name,
            /// detail)` makes the error for a value that does not decode into the field's type.
            pub fn from_columns<'r, E>(
                mut column: impl FnMut(
                    &'static str,
                    $crate::model::fields::Kind,
                ) -> Result<Option<$crate::model::fields::Cell<'r>>, E>,
                invalid: impl Fn(&'static str, String) -> E,
            ) -> Result<Self, E> {
                Ok(Self {$(
                    $name: {
                        let name = stringify!($name);
                        let cell = column(name, <$ty as $crate::model::fields::Stored>::KIND)?;
                        $crate::model::fields::Stored::from_column(cell)
                            .map_err(|detail| invalid(name, detail))?
                    },
                )*})
            }
        }

        /// A recorded field that can be filtered on by equality: the fields declared with
        /// `=> Variant` in `event_fields!`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Field {
            $($( $variant, )?)*
        }

        impl Field {
            pub const ALL: &[Field] = &[$($( Self::$variant, )?)*];

            /// The query-string name, which is also the column name in both backends.
            pub fn name(self) -> &'static str {
                match self {
                    $($( Self::$variant => stringify!($name), )?)*
                }
            }

            /// How the field is stored.
            pub fn kind(self) -> $crate::model::fields::Kind {
                match self {
                    $($( Self::$variant => <$ty as $crate::model::fields::Stored>::KIND, )?)*
                }
            }
        }
    };
}

pub(crate) use event_fields;
