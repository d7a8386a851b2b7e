//! Rows written in `COPY … FROM STDIN` text format (ADR 0022). A batch's
//! events reach their table through COPY: PostgreSQL then inserts them
//! with `heap_multi_insert` (one WAL record per page, not per row) and
//! parses nothing but the text of each field, about half the server CPU
//! of an `INSERT … SELECT FROM unnest(…)` of the same rows.
//!
//! The format (PostgreSQL docs, "COPY", Text Format): one line per row,
//! fields separated by a tab, `\N` for NULL, and a backslash, newline,
//! carriage return or tab inside a value escaped with a backslash.

use crate::columns::Value;
use sqlx::PgConnection;
use std::fmt::Write as _;

/// A buffer of rows in COPY text format, written field by field.
#[derive(Debug, Default)]
pub struct CopyText {
    buf: Vec<u8>,
    /// Whether the next field starts a row (no separator before it).
    at_row_start: bool,
    rows: usize,
}

impl CopyText {
    pub fn new() -> Self {
        Self::with_capacity(64 * 1024)
    }

    /// A buffer for about `bytes` of data (no regrowth copies below that).
    pub fn with_capacity(bytes: usize) -> Self {
        CopyText {
            buf: Vec::with_capacity(bytes),
            at_row_start: true,
            rows: 0,
        }
    }

    /// Text, escaped.
    pub fn text(&mut self, value: &str) -> &mut Self {
        self.separator();
        let bytes = value.as_bytes();
        // Almost every value (ids, hashes, numbers) needs no escape: one
        // branch-free pass finds out.
        let plain = bytes
            .iter()
            .fold(true, |plain, &b| plain & (b != b'\\') & (b >= 0x20));
        if plain {
            self.buf.extend_from_slice(bytes);
            return self;
        }
        let mut from = 0;
        for (at, byte) in bytes.iter().enumerate() {
            let escaped: &[u8] = match byte {
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                _ => continue,
            };
            self.buf.extend_from_slice(&bytes[from..at]);
            self.buf.extend_from_slice(escaped);
            from = at + 1;
        }
        self.buf.extend_from_slice(&bytes[from..]);
        self
    }

    /// Text or NULL.
    pub fn opt_text(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            Some(v) => self.text(v),
            None => self.null(),
        }
    }

    pub fn int(&mut self, value: i64) -> &mut Self {
        self.separator();
        let _ = write!(Bytes(&mut self.buf), "{value}");
        self
    }

    pub fn opt_int(&mut self, value: Option<i64>) -> &mut Self {
        match value {
            Some(v) => self.int(v),
            None => self.null(),
        }
    }

    /// A TIMESTAMPTZ from unix seconds, in UTC (`to_timestamp(seconds)`), or
    /// NULL. The decoder admits timestamps from 1970 to the year 9999 only,
    /// which this writes as ISO 8601.
    pub fn opt_unix_timestamp(&mut self, seconds: Option<i64>) -> &mut Self {
        let Some(seconds) = seconds else {
            return self.null();
        };
        self.separator();
        let (days, secs) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
        let (year, month, day) = civil_from_days(days);
        let _ = write!(
            Bytes(&mut self.buf),
            "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}+00",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        );
        self
    }

    /// BYTEA in hex (`\x…`, its backslash escaped).
    pub fn bytes(&mut self, value: &[u8]) -> &mut Self {
        self.separator();
        self.buf.extend_from_slice(b"\\\\x");
        let start = self.buf.len();
        self.buf.resize(start + value.len() * 2, 0);
        // The buffer was sized for exactly the hex digits.
        let _ = hex::encode_to_slice(value, &mut self.buf[start..]);
        self
    }

    /// A value of a row whose columns are chosen at run time (an event
    /// kind's own fields, [`crate::catalog`]); text is parsed by the
    /// column's type (NUMERIC, JSONB, TEXT).
    pub fn value(&mut self, value: Value<'_>) -> &mut Self {
        match value {
            Value::Text(v) => self.text(v),
            Value::OptText(v) => self.opt_text(v),
            Value::Bytes(v) => self.bytes(v),
            Value::SmallInt(v) => self.int(i64::from(v)),
        }
    }

    pub fn null(&mut self) -> &mut Self {
        self.separator();
        self.buf.extend_from_slice(b"\\N");
        self
    }

    /// Ends the current row.
    pub fn end_row(&mut self) {
        self.buf.push(b'\n');
        self.at_row_start = true;
        self.rows += 1;
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The COPY data.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    fn separator(&mut self) {
        if !self.at_row_start {
            self.buf.push(b'\t');
        }
        self.at_row_start = false;
    }
}

/// Runs `statement` (`COPY … FROM STDIN`) with `data`; an error when
/// PostgreSQL stored another number of rows than `data` holds.
pub async fn copy_in(
    conn: &mut PgConnection,
    statement: &str,
    data: CopyText,
) -> Result<(), sqlx::Error> {
    let rows = data.rows() as u64;
    let mut copy = conn.copy_in_raw(statement).await?;
    copy.send(data.into_bytes()).await?;
    let copied = copy.finish().await?;
    if copied != rows {
        return Err(sqlx::Error::Protocol(format!(
            "COPY stored {copied} of {rows} rows: {statement}"
        )));
    }
    Ok(())
}

/// `fmt::Write` onto a byte buffer (numbers and dates are ASCII).
struct Bytes<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(write: impl FnOnce(&mut CopyText)) -> String {
        let mut copy = CopyText::new();
        write(&mut copy);
        copy.end_row();
        String::from_utf8(copy.into_bytes()).expect("utf-8")
    }

    #[test]
    fn fields_are_tab_separated_and_rows_end_with_a_newline() {
        let mut copy = CopyText::new();
        copy.text("a").int(-7).null();
        copy.end_row();
        copy.opt_text(Some("b")).opt_int(None).opt_text(None);
        copy.end_row();
        assert_eq!(copy.rows(), 2);
        assert_eq!(
            String::from_utf8(copy.into_bytes()).expect("utf-8"),
            "a\t-7\t\\N\nb\t\\N\t\\N\n"
        );
    }

    #[test]
    fn special_characters_are_escaped() {
        assert_eq!(
            row(|c| {
                c.text("x\\y\nz\r\tw\\");
            }),
            "x\\\\y\\nz\\r\\tw\\\\\n"
        );
        // A value that looks like the end marker or NULL stays data.
        assert_eq!(
            row(|c| {
                c.text("\\.").text("\\N");
            }),
            "\\\\.\t\\\\N\n"
        );
        assert_eq!(
            row(|c| {
                c.text("héllo ✓");
            }),
            "héllo ✓\n"
        );
        // Other control characters are data in the text format.
        assert_eq!(
            row(|c| {
                c.text("a\u{1}b\tc");
            }),
            "a\u{1}b\\tc\n"
        );
    }

    #[test]
    fn bytes_are_escaped_hex() {
        assert_eq!(
            row(|c| {
                c.bytes(&[0x00, 0xab, 0x10]).bytes(&[]);
            }),
            "\\\\x00ab10\t\\\\x\n"
        );
    }

    #[test]
    fn timestamps_are_utc_iso_dates() {
        let cases = [
            (0, "1970-01-01 00:00:00+00"),
            (951_782_400, "2000-02-29 00:00:00+00"),
            (1_733_356_800 + 3_723, "2024-12-05 01:02:03+00"),
            (4_107_542_400, "2100-03-01 00:00:00+00"),
            (253_402_300_799, "9999-12-31 23:59:59+00"),
        ];
        for (seconds, text) in cases {
            assert_eq!(
                row(|c| {
                    c.opt_unix_timestamp(Some(seconds));
                }),
                format!("{text}\n"),
                "{seconds}"
            );
        }
        assert_eq!(
            row(|c| {
                c.opt_unix_timestamp(None);
            }),
            "\\N\n"
        );
    }

    #[test]
    fn values_are_written_by_type() {
        assert_eq!(
            row(|c| {
                c.value(Value::Text("12"))
                    .value(Value::OptText(None))
                    .value(Value::Bytes(&[1]))
                    .value(Value::SmallInt(-2));
            }),
            "12\t\\N\t\\\\x01\t-2\n"
        );
    }
}
