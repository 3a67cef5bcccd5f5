//! JSON documents read into the model's types, with errors that point at the problem: broken
//! syntax with its position, and a well-formed document of the wrong shape naming the field
//! (`[3].event_type`, `event_data`), as every way in reports them.

use serde::de::DeserializeOwned;

use super::FieldError;

/// Why a document was not read.
#[derive(Debug)]
pub enum JsonError {
    /// Not JSON: serde_json's message, with the line and column.
    Malformed(String),
    /// JSON of the wrong shape: the field, and what is wrong with it.
    Invalid(FieldError),
}

/// Parses JSON, telling broken syntax from a valid document of the wrong shape.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, JsonError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let message = strip_position(&inner.to_string());
                let field = named_field(&message)
                    .map(|name| join_path(&path, name))
                    .unwrap_or(path);
                JsonError::Invalid(FieldError::new(field, message))
            }
            _ => JsonError::Malformed(inner.to_string()),
        }
    })?;
    deserializer
        .end()
        .map_err(|e| JsonError::Malformed(e.to_string()))?;
    Ok(value)
}

/// serde_json appends " at line 1 column 9" to data errors; the field name says more.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(index) => message[..index].to_owned(),
        None => message.to_owned(),
    }
}

/// The field a "missing field `x`" / "unknown field `x`" message is about.
fn named_field(message: &str) -> Option<&str> {
    let rest = message
        .strip_prefix("missing field `")
        .or_else(|| message.strip_prefix("unknown field `"))
        .or_else(|| message.strip_prefix("duplicate field `"))?;
    rest.split('`').next()
}

fn join_path(path: &str, name: &str) -> String {
    if path == "." || path.is_empty() {
        name.to_owned()
    } else if path.ends_with(name) {
        path.to_owned()
    } else {
        format!("{path}.{name}")
    }
}
