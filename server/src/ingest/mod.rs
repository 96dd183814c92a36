//! The ingest path: from an HTTP body to rows acknowledged by ClickHouse.
//!
//! - [`decode`]: Content-Encoding, bounded decompression, JSON with field paths in errors.
//! - [`writer`]: group commit — many requests' rows go into one INSERT, and each request is
//!   answered only after that INSERT succeeded.
//!
//! **Architecture invariant:** a 200 from `/v1/ingest` means ClickHouse accepted every row of
//! the batch. Rows wait in this process's memory only while their request is still open, so a
//! crash loses nothing the agent has not kept.

pub mod decode;
pub mod writer;
