//! The server's ingest decoder on arbitrary bodies: the first byte picks the
//! `Content-Encoding`, the rest is the body. It must answer every body with a batch or an
//! error, never panic, and never produce more than the decompression limit.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// The server's module itself (see fuzz/Cargo.toml for why it is compiled from source).
#[path = "../../server/src/ingest/decode.rs"]
#[allow(dead_code)]
mod decode;

use decode::decode_body;

const ENCODINGS: [Option<&str>; 5] = [
    None,
    Some("zstd"),
    Some("gzip"),
    Some("identity"),
    Some("br"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let encoding = ENCODINGS[usize::from(selector) % ENCODINGS.len()];
    if let Ok(batch) = decode_body(encoding, body) {
        // What decoded must round-trip: the server stores what it parsed.
        let json = serde_json::to_vec(&batch).expect("a decoded batch serializes");
        let again: backlight_shared::batch::Batch =
            serde_json::from_slice(&json).expect("a serialized batch parses");
        assert_eq!(again.events.len(), batch.events.len());
    }
});
