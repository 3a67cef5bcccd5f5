//! Logging set-up: text or JSON lines on stderr, filtered by `RUST_LOG`. In text lines every
//! field value and message is escaped ([`EscapedFields`]), so user input cannot forge a line.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        // lapin logs a returned message whole (an audit payload has no place in the service's
        // own log) and a queue's expected absence as an error; its failures reach the consumer
        // as errors, which it logs.
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn,lapin=off"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A closed stderr (`serve 2>&1 | head`) loses log lines; reporting that with
        // `eprintln!`, as the default does, would panic whichever task logged.
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.fmt_fields(EscapedFields).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Formats the fields of text log lines (events and spans) as `name=value`, the message bare, as
/// tracing-subscriber's default does, but with every control character in a value escaped:
/// `\n`, `\r`, `\t`, other C0 and C1 controls, DEL, and U+2028/U+2029 (line and paragraph
/// separators). The default formatter (0.3.23) writes `%`-recorded values raw and only strips
/// ESC, BEL, BS, FF, DEL and C1 from the message, so a user name containing a newline
/// (authentication failures log it) started a forged line. Escaping here, where every value is
/// written, covers every call site present and future.
///
/// Values recorded with `?` or as `&str` keep their quoted Debug form (Rust already escapes
/// controls there); a backslash in a value is not escaped, so `\n` in a value may be either an
/// escaped newline or the two characters: a line can be ambiguous, but never forged.
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = EscapingVisitor {
            out: Escaping(writer),
            empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'writer> {
    out: Escaping<Writer<'writer>>,
    empty: bool,
    result: fmt::Result,
}

impl Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_debug(field, &format_args!("{}", ErrorChain(value)));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        // Metadata of `log` records, already shown as the line's target.
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let separator = if self.empty { "" } else { " " };
        self.empty = false;
        self.result = match name {
            "message" => {
                write!(self.out.0, "{separator}").and_then(|()| write!(self.out, "{value:?}"))
            }
            name => write!(
                self.out.0,
                "{separator}{}=",
                name.strip_prefix("r#").unwrap_or(name)
            )
            .and_then(|()| write!(self.out, "{value:?}")),
        };
    }
}

/// An error and its sources, `outer: inner: …`.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

/// Passes text through with control characters replaced by escapes.
struct Escaping<W>(W);

impl<W: fmt::Write> fmt::Write for Escaping<W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut rest = text;
        while let Some(index) = rest.find(needs_escape) {
            let (clean, tail) = rest.split_at(index);
            self.0.write_str(clean)?;
            let mut chars = tail.chars();
            if let Some(c) = chars.next() {
                match c {
                    '\n' => self.0.write_str("\\n")?,
                    '\r' => self.0.write_str("\\r")?,
                    '\t' => self.0.write_str("\\t")?,
                    c => write!(self.0, "\\u{{{:x}}}", u32::from(c))?,
                }
            }
            rest = chars.as_str();
        }
        self.0.write_str(rest)
    }
}

/// C0 and C1 controls and DEL (`char::is_control`), and the Unicode line and paragraph
/// separators, which some viewers also break lines on.
fn needs_escape(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// The text lines logged while `f` runs, with ANSI colours off as in a log file.
    fn logged(f: impl FnOnce()) -> String {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buffer);
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || Sink(Arc::clone(&sink)))
            .with_ansi(false)
            .fmt_fields(EscapedFields)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buffer.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8(bytes).unwrap_or_default()
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    const HOSTILE: &str = "x\nFORGED\r\x1b[31m\u{9b}\u{2028}\u{2029}\u{7}\0\ty";
    const ESCAPED: &str = r"x\nFORGED\r\u{1b}[31m\u{9b}\u{2028}\u{2029}\u{7}\u{0}\ty";

    #[test]
    fn display_values_messages_and_span_fields_are_escaped() {
        let log = logged(|| {
            let span = tracing::info_span!("request", route = %HOSTILE);
            let _entered = span.enter();
            tracing::info!(user = %HOSTILE, "failed for {HOSTILE}");
        });
        assert_eq!(log.lines().count(), 1, "{log:?}");
        assert!(!log.trim_end().contains(needs_escape), "{log:?}");
        assert!(
            log.contains(&format!("request{{route={ESCAPED}}}")),
            "{log}"
        );
        assert!(
            log.contains(&format!("failed for {ESCAPED} user={ESCAPED}")),
            "{log}"
        );
    }

    #[test]
    fn debug_and_str_values_keep_their_quoted_form() {
        let log = logged(|| {
            let error = std::io::Error::other("bad\nthing");
            tracing::warn!(name = HOSTILE, value = ?"a\u{2028}b", error = &error as &dyn std::error::Error, "plain");
        });
        assert_eq!(log.lines().count(), 1, "{log:?}");
        assert!(
            log.contains(r#"plain name="x\nFORGED\r\u{1b}[31m"#),
            "{log}"
        );
        assert!(log.contains(r#"value="a\u{2028}b""#), "{log}");
        assert!(log.contains(r"error=bad\nthing"), "{log}");
    }
}

/// An error and its causes, `outer: cause: …`, each cause left out when the text before it
/// already says it: many errors repeat their source in their own message (`io::Error` in
/// sqlx's, a database error's text in its wrapper), which `{:#}` would print twice.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod error_chain_tests {
    use super::error_chain;

    #[test]
    fn causes_already_said_are_not_repeated() {
        let io = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let said = anyhow::Error::new(io).context("cannot write the export");
        assert_eq!(
            error_chain(said.as_ref()),
            "cannot write the export: broken pipe"
        );
        let repeated = anyhow::anyhow!("broken pipe").context("write failed: broken pipe");
        assert_eq!(error_chain(repeated.as_ref()), "write failed: broken pipe");
    }
}
