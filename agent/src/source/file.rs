//! A JSON Lines file of event bodies (`{"kind":"work_item",…}` per line, without `seq`/`id`).
//!
//! Each line is recorded exactly once, even across crashes: the byte offset and line number
//! after the last consumed line travel with the events they produced and are committed in the
//! same spool transaction ([`crate::spool::SourceProgress`]). After a restart reading resumes
//! from the committed offset.
//!
//! Rules for the input:
//! - A line ends at `\n` (a trailing `\r` is ignored). A last line without `\n` is taken once
//!   it is complete JSON; until then the writer may still be writing it.
//! - A blank line is ignored. A malformed or invalid line, or one longer than
//!   [`MAX_LINE_BYTES`], is logged with its line number, counted (`lines_skipped`), and skipped.
//! - If the file becomes shorter than the stored offset it was truncated or replaced; reading
//!   starts again from its beginning.
//! - Once at the end, later pulls pick up lines appended since (like `tail -f`).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use backlight_shared::event::EventBody;
use backlight_shared::{now_ms, UnixMillis};
use serde::{Deserialize, Serialize};

use super::{check, Pulled, Source, SourceError};
use crate::spool::{Cursor, SourceProgress, Spool};

/// Longest line accepted. The largest valid event is a few KiB; this leaves room and bounds
/// the memory a runaway line can take.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Most lines consumed per pull, i.e. per spool transaction.
const MAX_LINES_PER_PULL: usize = 1_000;
/// Most bytes consumed per pull, so one pull's memory stays small whatever the lines.
const MAX_BYTES_PER_PULL: u64 = 1024 * 1024;

/// Where reading stands: stored as the cursor, in JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Position {
    /// Byte offset just after the last consumed line.
    offset: u64,
    /// Number of lines consumed, so log messages name the right line after a restart.
    line: u64,
}

/// Reads event bodies from a JSON Lines file.
pub struct FileSource {
    path: PathBuf,
    cursor_key: String,
    position: Position,
    /// The offset of an unfinished last line we already mentioned, to say it once only.
    reported_partial_at: Option<u64>,
}

impl FileSource {
    /// Prepares to read `path`, resuming at the position committed in `spool`.
    pub async fn open(path: PathBuf, spool: &Spool) -> Result<FileSource, SourceError> {
        let io_error = |source| SourceError::Io {
            path: path.clone(),
            source,
        };
        // The cursor is keyed by the absolute path so running from another working directory
        // does not start the file over.
        let absolute = std::path::absolute(&path).map_err(io_error)?;
        // Fail at start, with a clear message, if the file cannot be read at all.
        File::open(&absolute).map_err(io_error)?;
        let cursor_key = format!("file:{}", absolute.display());
        let position = match spool.cursor(cursor_key.clone()).await? {
            None => Position::default(),
            Some(value) => serde_json::from_str(&value).map_err(|_| SourceError::BadCursor {
                path: absolute.clone(),
                value,
            })?,
        };
        if position.offset > 0 {
            tracing::info!(path = %absolute.display(), line = position.line, offset = position.offset, "resuming after the last recorded line");
        }
        Ok(FileSource {
            path: absolute,
            cursor_key,
            position,
            reported_partial_at: None,
        })
    }
}

impl Source for FileSource {
    fn describe(&self) -> String {
        format!("file:{}", self.path.display())
    }

    async fn pull(&mut self) -> Result<Pulled, SourceError> {
        let path = self.path.clone();
        let start = self.position;
        // File reads block; keep them off the runtime thread that also drives uploads.
        let chunk = tokio::task::spawn_blocking(move || read_chunk(&path, start, now_ms()))
            .await
            .map_err(|e| SourceError::Io {
                path: self.path.clone(),
                source: io::Error::other(e),
            })?
            .map_err(|source| SourceError::Io {
                path: self.path.clone(),
                source,
            })?;
        if let Some(offset) = chunk.partial_line_at {
            if self.reported_partial_at != Some(offset) {
                self.reported_partial_at = Some(offset);
                tracing::info!(path = %self.path.display(), line = chunk.end.line + 1, "the last line has no newline and is not complete JSON yet; waiting for the rest");
            }
        }
        if chunk.end == start {
            return Ok(Pulled::Exhausted);
        }
        // The runner commits this progress with the events; a failed commit stops the agent,
        // so the position kept here never runs ahead of the committed one in a live process.
        self.position = chunk.end;
        let value = serde_json::to_string(&chunk.end).map_err(|e| SourceError::Io {
            path: self.path.clone(),
            source: io::Error::other(e),
        })?;
        Ok(Pulled::Events {
            bodies: chunk.bodies,
            progress: SourceProgress {
                cursor: Some(Cursor {
                    key: self.cursor_key.clone(),
                    value,
                }),
                lines_skipped: chunk.skipped,
            },
        })
    }
}

/// What one pass over the file gave.
#[derive(Debug)]
struct Chunk {
    bodies: Vec<EventBody>,
    end: Position,
    skipped: u64,
    /// Offset of an unterminated, incomplete last line, left for a later pull.
    partial_line_at: Option<u64>,
}

/// Reads complete lines from `start`, within the per-pull limits.
fn read_chunk(path: &Path, start: Position, now: UnixMillis) -> io::Result<Chunk> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut position = start;
    if len < position.offset {
        tracing::warn!(path = %path.display(), len, offset = position.offset, "the file is shorter than the recorded position (truncated or replaced); reading it from the start");
        position = Position::default();
    }
    file.seek(SeekFrom::Start(position.offset))?;
    // Read only up to the length seen now: bytes appended meanwhile wait for the next pull.
    let mut reader = BufReader::with_capacity(64 * 1024, file.take(len - position.offset));
    let mut chunk = Chunk {
        bodies: Vec::new(),
        end: position,
        skipped: 0,
        partial_line_at: None,
    };
    let mut line = Vec::with_capacity(1024);
    let mut lines = 0;
    while lines < MAX_LINES_PER_PULL && chunk.end.offset - position.offset < MAX_BYTES_PER_PULL {
        line.clear();
        let read = read_line_bounded(&mut reader, &mut line, MAX_LINE_BYTES)?;
        if read.consumed == 0 {
            break;
        }
        if !read.terminated && (read.too_long || !is_complete_json(&line)) {
            chunk.partial_line_at = Some(chunk.end.offset);
            break;
        }
        lines += 1;
        chunk.end.offset += read.consumed;
        chunk.end.line += 1;
        let number = chunk.end.line;
        if read.too_long {
            tracing::warn!(path = %path.display(), line = number, "skipping a line longer than {MAX_LINE_BYTES} bytes");
            chunk.skipped += 1;
            continue;
        }
        let text = trim_line_end(&line);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse_line(text, now) {
            Ok(body) => chunk.bodies.push(body),
            Err(reason) => {
                tracing::warn!(path = %path.display(), line = number, %reason, "skipping an invalid line");
                chunk.skipped += 1;
            }
        }
    }
    Ok(chunk)
}

fn parse_line(text: &[u8], now: UnixMillis) -> Result<EventBody, String> {
    let body: EventBody = serde_json::from_slice(text).map_err(|e| e.to_string())?;
    check(body, now).map_err(|e| e.to_string())
}

fn is_complete_json(line: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(trim_line_end(line)).is_ok()
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// How a bounded line read ended.
#[derive(Debug, PartialEq, Eq)]
struct LineRead {
    /// Bytes consumed from the input, including the newline.
    consumed: u64,
    /// Whether the line ended with `\n` (otherwise the input ended).
    terminated: bool,
    /// Whether the line was longer than the limit; `buf` is then empty.
    too_long: bool,
}

/// Reads one line into `buf` (newline included), keeping at most `max` bytes in memory: the
/// rest of an overlong line is consumed and discarded.
fn read_line_bounded(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<LineRead> {
    let mut read = LineRead {
        consumed: 0,
        terminated: false,
        too_long: false,
    };
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok(read);
        }
        let (piece, terminated) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..=i], true),
            None => (available, false),
        };
        let taken = piece.len();
        if !read.too_long {
            // `max` counts the line's content; its newline comes on top.
            if buf.len() + taken > max + 1 {
                read.too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(piece);
            }
        }
        reader.consume(taken);
        read.consumed += taken as u64;
        if terminated {
            read.terminated = true;
            return Ok(read);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const NOW: u64 = 1_800_000_000_000;

    fn item_line(id: &str) -> String {
        format!(
            r#"{{"kind":"work_item","item_id":"{id}","action":"started","at_ms":{NOW},"source":"app"}}"#
        )
    }

    fn write(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn bounded_reader_discards_the_rest_of_a_long_line() {
        let input = format!("{}\nshort\n", "x".repeat(100));
        let mut reader = BufReader::with_capacity(8, input.as_bytes());
        let mut buf = Vec::new();
        let first = read_line_bounded(&mut reader, &mut buf, 10).unwrap();
        assert_eq!(
            first,
            LineRead {
                consumed: 101,
                terminated: true,
                too_long: true
            }
        );
        assert!(buf.is_empty());
        let second = read_line_bounded(&mut reader, &mut buf, 10).unwrap();
        assert_eq!(second.consumed, 6);
        assert_eq!(buf, b"short\n");
    }

    #[test]
    fn skips_bad_lines_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        let text = [
            item_line("CLM-1"),
            "not json".into(),
            String::new(),
            item_line(""), // parses, but an empty item id is invalid
            r#"{"kind":"work_item","item_id":"A","action":"started","at_ms":1,"source":"app","x":1}"#.into(),
            format!("{}\r", item_line("CLM-2")),
        ]
        .join("\n")
            + "\n";
        write(&path, &text);
        let chunk = read_chunk(&path, Position::default(), NOW).unwrap();
        assert_eq!(chunk.bodies.len(), 2);
        assert_eq!(chunk.skipped, 3);
        assert_eq!(chunk.end.line, 6);
        assert_eq!(chunk.end.offset, text.len() as u64);
    }

    #[test]
    fn waits_for_an_unfinished_last_line_and_takes_a_finished_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        let full = item_line("CLM-3");
        write(&path, &format!("{}\n{}", item_line("CLM-1"), &full[..10]));
        let first = read_chunk(&path, Position::default(), NOW).unwrap();
        assert_eq!(first.bodies.len(), 1);
        assert!(first.partial_line_at.is_some());
        write(&path, &full[10..]);
        let second = read_chunk(&path, first.end, NOW).unwrap();
        assert_eq!(
            second.bodies.len(),
            1,
            "complete JSON without a newline is a line"
        );
        assert_eq!(second.end.line, 2);
        assert!(second.partial_line_at.is_none());
    }

    #[test]
    fn restarts_a_truncated_file_from_the_beginning() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        write(&path, &format!("{}\n", item_line("CLM-9")));
        let beyond = Position {
            offset: 10_000,
            line: 50,
        };
        let chunk = read_chunk(&path, beyond, NOW).unwrap();
        assert_eq!(chunk.bodies.len(), 1);
        assert_eq!(chunk.end.line, 1);
    }

    #[test]
    fn pulls_are_bounded_in_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        let text: String = (0..MAX_LINES_PER_PULL + 5)
            .map(|i| item_line(&format!("CLM-{i}")) + "\n")
            .collect();
        write(&path, &text);
        let first = read_chunk(&path, Position::default(), NOW).unwrap();
        assert_eq!(first.bodies.len(), MAX_LINES_PER_PULL);
        let second = read_chunk(&path, first.end, NOW).unwrap();
        assert_eq!(second.bodies.len(), 5);
        assert_eq!(second.end.offset, text.len() as u64);
    }
}
