//! The agent's loopback HTTP parser (local API and consent page) on arbitrary request heads:
//! every head yields a request or an error response, never a panic; what it yields is
//! bounded, and the helpers the handlers use on it (percent-decoding, query parameters, HTML
//! escaping) hold up on whatever came in.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// The agent's module itself (see fuzz/Cargo.toml for why it is compiled from source).
#[path = "../../agent/src/local_api/http1.rs"]
#[allow(dead_code)]
mod http1;

use http1::{
    body_length, escape_html, parse_head, percent_decode, Request, MAX_BODY_BYTES, MAX_HEAD_BYTES,
};

fuzz_target!(|data: &[u8]| {
    // A request as it arrives: head, blank line, maybe a body.
    let head_end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(data.len());
    let Ok(request) = parse_head(&data[..head_end]) else {
        return;
    };
    assert!(request.path.len() + request.query.len() <= MAX_HEAD_BYTES);
    if let Ok(length) = body_length(&request) {
        assert!(length <= MAX_BODY_BYTES);
    }
    let decoded = percent_decode(&request.path);
    assert!(decoded.len() <= request.path.len());
    let escaped = escape_html(&decoded);
    assert!(!escaped.contains('<') && !escaped.contains('>'));
    for name in ["token", "version", "answer"] {
        let _ = Request::param(&request.query, name);
    }
    let _ = request.header("authorization");
});
