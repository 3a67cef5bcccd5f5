//! How the client prints events: a table on a terminal, one JSON object per line otherwise
//! (exactly as the server sent it, for `jq` and other programs).

use std::io::Write;

use serde_json::Value;

use super::ClientError;

/// The table's columns: the JSON field and its width (the last column takes what is left).
const COLUMNS: [(&str, usize); 8] = [
    ("seq", 8),
    ("occurred_at", 27),
    ("event_type", 24),
    ("user_identity", 20),
    ("action", 7),
    ("entity", 16),
    ("entity_id", 16),
    ("outcome", 7),
];

pub struct Printer<W: Write> {
    out: W,
    table: bool,
    header_written: bool,
}

impl<W: Write> Printer<W> {
    pub fn new(out: W, table: bool) -> Self {
        Self {
            out,
            table,
            header_written: false,
        }
    }

    /// One event: a row of the table, or a JSON line (flushed, so a pipe sees it at once).
    pub fn event(&mut self, event: &Value) -> Result<(), ClientError> {
        if !self.table {
            serde_json::to_writer(&mut self.out, event).map_err(std::io::Error::from)?;
            writeln!(self.out)?;
            self.out.flush()?;
            return Ok(());
        }
        if !self.header_written {
            self.header_written = true;
            let header: Vec<String> = COLUMNS
                .iter()
                .map(|(name, width)| pad(&name.to_uppercase(), *width))
                .collect();
            writeln!(self.out, "{}", header.join(" ").trim_end())?;
        }
        let row: Vec<String> = COLUMNS
            .iter()
            .map(|(name, width)| pad(&cell(&event[*name]), *width))
            .collect();
        writeln!(self.out, "{}", row.join(" ").trim_end())?;
        self.out.flush()?;
        Ok(())
    }

    /// One event on its own: indented JSON on a terminal, a JSON line otherwise.
    pub fn one(&mut self, event: &Value) -> Result<(), ClientError> {
        if self.table {
            serde_json::to_writer_pretty(&mut self.out, event).map_err(std::io::Error::from)?;
        } else {
            serde_json::to_writer(&mut self.out, event).map_err(std::io::Error::from)?;
        }
        writeln!(self.out)?;
        Ok(())
    }

    /// A remark for the person at the terminal; nothing when piped.
    pub fn note(&mut self, text: &str) -> Result<(), ClientError> {
        if self.table {
            writeln!(self.out, "({text})")?;
        }
        Ok(())
    }

    pub fn finish(&mut self) -> Result<(), ClientError> {
        if self.table && !self.header_written {
            writeln!(self.out, "(no events)")?;
        }
        self.out.flush()?;
        Ok(())
    }
}

fn cell(value: &Value) -> String {
    let text = match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    // A value cannot move the cursor or start a line of its own on the terminal.
    text.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// `text` cut or padded to `width` characters, a cut marked with `…`.
fn pad(text: &str, width: usize) -> String {
    let count = text.chars().count();
    if count > width {
        let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
        cut.push('…');
        cut
    } else {
        format!("{text}{}", " ".repeat(width - count))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_table_on_a_terminal_and_json_lines_otherwise() {
        let event = json!({"seq": 7, "occurred_at": "2024-05-01T12:00:00Z",
            "event_type": "account.deactivated.by.the.billing.service", "user_identity": "u\n1"});
        let mut table = Printer::new(Vec::new(), true);
        table.event(&event).unwrap();
        let text = String::from_utf8(table.out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("SEQ      OCCURRED_AT"), "{text}");
        assert!(
            lines[1].starts_with("7        2024-05-01T12:00:00Z"),
            "{text}"
        );
        assert!(lines[1].contains("account.deactivated.by.…"), "{text}");
        assert!(lines[1].contains("u\u{fffd}1"), "{text}");

        let mut piped = Printer::new(Vec::new(), false);
        piped.event(&event).unwrap();
        piped.note("not shown").unwrap();
        assert_eq!(String::from_utf8(piped.out).unwrap(), format!("{event}\n"));
    }
}
