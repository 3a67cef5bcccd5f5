//! PostgreSQL's logical replication protocol, as the `pgoutput` plugin writes it (protocol
//! version 1, <https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html>):
//! each message of a decoded transaction, parsed from the bytes that
//! `pg_logical_slot_peek_binary_changes` returns one row at a time. Pure: no I/O.

use time::OffsetDateTime;

/// A Log Sequence Number: a byte position in the write-ahead log.
pub type Lsn = u64;

/// A column's value as `pgoutput` sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    Null,
    /// A TOASTed value that the change left as it was, and so did not send.
    Unchanged,
    /// The value in the type's text form.
    Text(String),
}

/// The row before a change: whole (`O`, `REPLICA IDENTITY FULL`), or only its replica
/// identity's columns (`K`), the others sent as nulls that say nothing of their values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldRow {
    pub datums: Vec<Datum>,
    pub key_only: bool,
}

/// A table as a `Relation` message describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    pub schema: String,
    pub table: String,
    /// The table's replica identity setting as the change was decoded: `d` (the primary key),
    /// `n` (none), `f` (the whole row) or `i` (an index).
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// The type's OID (`pg_type.oid`).
    pub type_oid: u32,
    /// Part of the replica identity as the change was decoded (the primary key, by default;
    /// every column under `REPLICA IDENTITY FULL`).
    pub key: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin {
        final_lsn: Lsn,
        committed_at: OffsetDateTime,
        /// The transaction's id (32 bits, without its epoch).
        xid: u32,
    },
    Commit {
        commit_lsn: Lsn,
        end_lsn: Lsn,
        committed_at: OffsetDateTime,
    },
    Relation(Relation),
    Insert {
        relation: u32,
        new: Vec<Datum>,
    },
    Update {
        relation: u32,
        /// The old row (`REPLICA IDENTITY FULL`) or its key (a changed key), when sent.
        old: Option<OldRow>,
        new: Vec<Datum>,
    },
    Delete {
        relation: u32,
        old: OldRow,
    },
    Truncate {
        relations: Vec<u32>,
    },
    /// `pg_logical_emit_message(transactional, prefix, content)`.
    Logical {
        transactional: bool,
        prefix: String,
        content: Vec<u8>,
    },
    /// A message this service has no use for (`Origin`, `Type`).
    Other(u8),
}

#[derive(Debug, thiserror::Error)]
#[error("malformed pgoutput message: {0}")]
pub struct ParseError(&'static str);

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        if self.bytes.len() < n {
            return Err(ParseError("cut short"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, ParseError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, ParseError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, ParseError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, ParseError> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A null-terminated string.
    fn string(&mut self) -> Result<String, ParseError> {
        let end = self
            .bytes
            .iter()
            .position(|b| *b == 0)
            .ok_or(ParseError("an unterminated string"))?;
        let text = String::from_utf8(self.bytes[..end].to_vec())
            .map_err(|_| ParseError("a string that is not UTF-8"))?;
        self.bytes = &self.bytes[end + 1..];
        Ok(text)
    }

    /// A timestamp: microseconds since 2000-01-01 00:00:00 UTC.
    fn timestamp(&mut self) -> Result<OffsetDateTime, ParseError> {
        const POSTGRES_EPOCH_UNIX_SECS: i64 = 946_684_800;
        let micros = self.u64()? as i64;
        let nanos = (i128::from(POSTGRES_EPOCH_UNIX_SECS) * 1_000_000 + i128::from(micros)) * 1000;
        OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|_| ParseError("a timestamp"))
    }

    fn tuple(&mut self) -> Result<Vec<Datum>, ParseError> {
        let columns = self.u16()?;
        (0..columns)
            .map(|_| match self.u8()? {
                b'n' => Ok(Datum::Null),
                b'u' => Ok(Datum::Unchanged),
                b't' => {
                    let len = self.u32()? as usize;
                    let bytes = self.take(len)?;
                    String::from_utf8(bytes.to_vec())
                        .map(Datum::Text)
                        .map_err(|_| ParseError("a text value that is not UTF-8"))
                }
                _ => Err(ParseError("a column of an unknown kind")),
            })
            .collect()
    }
}

impl Message {
    /// One message, from the bytes of one row of `pg_logical_slot_peek_binary_changes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        let mut r = Reader { bytes };
        Ok(match r.u8()? {
            b'B' => {
                let final_lsn = r.u64()?;
                let committed_at = r.timestamp()?;
                let xid = r.u32()?;
                Self::Begin {
                    final_lsn,
                    committed_at,
                    xid,
                }
            }
            b'C' => {
                let _flags = r.u8()?;
                let commit_lsn = r.u64()?;
                let end_lsn = r.u64()?;
                let committed_at = r.timestamp()?;
                Self::Commit {
                    commit_lsn,
                    end_lsn,
                    committed_at,
                }
            }
            b'R' => {
                let id = r.u32()?;
                let schema = r.string()?;
                let table = r.string()?;
                let replica_identity = r.u8()?;
                let count = r.u16()?;
                let columns = (0..count)
                    .map(|_| {
                        let flags = r.u8()?;
                        let name = r.string()?;
                        let type_oid = r.u32()?;
                        let _modifier = r.u32()?;
                        Ok(Column {
                            name,
                            type_oid,
                            key: flags & 1 == 1,
                        })
                    })
                    .collect::<Result<_, ParseError>>()?;
                Self::Relation(Relation {
                    id,
                    schema,
                    table,
                    replica_identity,
                    columns,
                })
            }
            b'I' => {
                let relation = r.u32()?;
                if r.u8()? != b'N' {
                    return Err(ParseError("an insert without its new row"));
                }
                Self::Insert {
                    relation,
                    new: r.tuple()?,
                }
            }
            b'U' => {
                let relation = r.u32()?;
                let (old, new) = match r.u8()? {
                    kind @ (b'K' | b'O') => {
                        let old = OldRow {
                            datums: r.tuple()?,
                            key_only: kind == b'K',
                        };
                        if r.u8()? != b'N' {
                            return Err(ParseError("an update without its new row"));
                        }
                        (Some(old), r.tuple()?)
                    }
                    b'N' => (None, r.tuple()?),
                    _ => return Err(ParseError("an update of an unknown form")),
                };
                Self::Update { relation, old, new }
            }
            b'D' => {
                let relation = r.u32()?;
                match r.u8()? {
                    kind @ (b'K' | b'O') => Self::Delete {
                        relation,
                        old: OldRow {
                            datums: r.tuple()?,
                            key_only: kind == b'K',
                        },
                    },
                    _ => return Err(ParseError("a delete of an unknown form")),
                }
            }
            b'T' => {
                let count = r.u32()?;
                let _options = r.u8()?;
                let relations = (0..count).map(|_| r.u32()).collect::<Result<_, _>>()?;
                Self::Truncate { relations }
            }
            b'M' => {
                let flags = r.u8()?;
                let _lsn = r.u64()?;
                let prefix = r.string()?;
                let len = r.u32()? as usize;
                Self::Logical {
                    transactional: flags & 1 == 1,
                    prefix,
                    content: r.take(len)?.to_vec(),
                }
            }
            other => Self::Other(other),
        })
    }
}

/// An LSN in PostgreSQL's text form, `16/B374D848`.
pub fn parse_lsn(text: &str) -> Option<Lsn> {
    let (high, low) = text.split_once('/')?;
    Some((u64::from_str_radix(high, 16).ok()? << 32) | u64::from_str_radix(low, 16).ok()?)
}

/// An LSN in PostgreSQL's text form.
pub fn format_lsn(lsn: Lsn) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_read_and_write_as_postgres_shows_them() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("nonsense"), None);
    }

    #[test]
    fn an_insert_and_its_relation_parse() {
        let mut relation = vec![b'R'];
        relation.extend(16_384u32.to_be_bytes());
        relation.extend(b"public\0accounts\0");
        relation.push(b'd');
        relation.extend(2u16.to_be_bytes());
        relation.push(1);
        relation.extend(b"id\0");
        relation.extend(20u32.to_be_bytes());
        relation.extend((-1i32).to_be_bytes());
        relation.push(0);
        relation.extend(b"name\0");
        relation.extend(25u32.to_be_bytes());
        relation.extend((-1i32).to_be_bytes());
        let Message::Relation(parsed) = Message::parse(&relation).unwrap_or(Message::Other(0))
        else {
            panic!("a relation");
        };
        assert_eq!(parsed.table, "accounts");
        assert_eq!(parsed.replica_identity, b'd');
        assert!(parsed.columns[0].key && !parsed.columns[1].key);

        let mut insert = vec![b'I'];
        insert.extend(16_384u32.to_be_bytes());
        insert.push(b'N');
        insert.extend(2u16.to_be_bytes());
        insert.push(b't');
        insert.extend(2u32.to_be_bytes());
        insert.extend(b"42");
        insert.push(b'n');
        assert_eq!(
            Message::parse(&insert).unwrap_or(Message::Other(0)),
            Message::Insert {
                relation: 16_384,
                new: vec![Datum::Text("42".into()), Datum::Null]
            }
        );
        assert!(Message::parse(&insert[..8]).is_err(), "cut short");
    }
}
