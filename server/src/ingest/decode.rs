//! Turning a request body into a [`Batch`]: declared encoding, decompression capped at
//! [`limits::MAX_DECOMPRESSED_BODY_BYTES`], and JSON parsing whose errors name the field.

use std::io::Read;

use backlight_shared::batch::{limits, Batch};

/// How the body is compressed, from `Content-Encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Zstd,
    Gzip,
}

/// A body that could not be turned into a batch.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("unsupported Content-Encoding {0:?}: use zstd, gzip or none")]
    UnsupportedEncoding(String),
    #[error("body is not valid {0} data: {1}")]
    Corrupt(&'static str, String),
    #[error("body is larger than {limit} bytes after decompression")]
    TooLarge { limit: usize },
    #[error("{message}")]
    Json {
        field: Option<String>,
        message: String,
    },
}

impl Encoding {
    pub fn from_header(value: Option<&str>) -> Result<Encoding, DecodeError> {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("identity") => Ok(Encoding::Identity),
            Some("zstd") => Ok(Encoding::Zstd),
            Some("gzip") | Some("x-gzip") => Ok(Encoding::Gzip),
            Some(other) => Err(DecodeError::UnsupportedEncoding(other.to_string())),
        }
    }
}

/// Decompresses `body`, refusing to produce more than `limit` bytes (a compression bomb costs
/// at most `limit` bytes of memory).
pub fn decompress(body: &[u8], encoding: Encoding, limit: usize) -> Result<Vec<u8>, DecodeError> {
    let (name, reader): (&'static str, Box<dyn Read + '_>) = match encoding {
        Encoding::Identity => {
            if body.len() > limit {
                return Err(DecodeError::TooLarge { limit });
            }
            return Ok(body.to_vec());
        }
        Encoding::Zstd => (
            "zstd",
            Box::new(
                zstd::stream::read::Decoder::new(body)
                    .map_err(|e| DecodeError::Corrupt("zstd", e.to_string()))?,
            ),
        ),
        Encoding::Gzip => ("gzip", Box::new(flate2::read::GzDecoder::new(body))),
    };
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::Corrupt(name, e.to_string()))?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge { limit });
    }
    Ok(out)
}

/// Parses a batch; a type error names the JSON path of the field (`events[2].start_ms`).
pub fn parse_batch(json: &[u8]) -> Result<Batch, DecodeError> {
    // Tracking the path costs 10-15% of the server's CPU per event; only a body that fails
    // needs it, so parse plainly first and explain failures with a second, tracked parse.
    match serde_json::from_slice(json) {
        Ok(batch) => Ok(batch),
        Err(_) => parse_batch_explained(json),
    }
}

/// The slow parse that names the offending field. Events are read without buffering (see
/// `backlight_shared::event`), so the path reaches the field itself (`events[2].at_ms`) and an
/// unknown field stops this parse, like the first, at its name.
fn parse_batch_explained(json: &[u8]) -> Result<Batch, DecodeError> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let batch: Batch = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let is_syntax = e.inner().is_syntax() || e.inner().is_eof();
        let path = e.path().to_string();
        DecodeError::Json {
            field: (path != "." && !is_syntax).then(|| path.clone()),
            message: format!("invalid batch JSON at {path}: {}", e.inner()),
        }
    })?;
    deserializer.end().map_err(|e| DecodeError::Json {
        field: None,
        message: format!("trailing data after the batch JSON: {e}"),
    })?;
    Ok(batch)
}

/// The whole decode step: encoding header, decompression, JSON.
pub fn decode_body(content_encoding: Option<&str>, body: &[u8]) -> Result<Batch, DecodeError> {
    let encoding = Encoding::from_header(content_encoding)?;
    let json = decompress(body, encoding, limits::MAX_DECOMPRESSED_BODY_BYTES)?;
    parse_batch(&json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(Encoding::from_header(None), Ok(Encoding::Identity));
        assert_eq!(Encoding::from_header(Some("ZSTD")), Ok(Encoding::Zstd));
        assert_eq!(Encoding::from_header(Some("gzip")), Ok(Encoding::Gzip));
        assert!(matches!(
            Encoding::from_header(Some("br")),
            Err(DecodeError::UnsupportedEncoding(_))
        ));
    }

    #[test]
    fn bomb_is_capped() {
        let zeros = vec![b' '; 10_000_000];
        let small = zstd::encode_all(&zeros[..], 3).unwrap();
        assert!(small.len() < 10_000);
        assert_eq!(
            decompress(&small, Encoding::Zstd, 1_000_000),
            Err(DecodeError::TooLarge { limit: 1_000_000 })
        );
        assert_eq!(
            decompress(&small, Encoding::Zstd, 10_000_000)
                .unwrap()
                .len(),
            10_000_000
        );
    }

    #[test]
    fn declared_zstd_but_plain_is_corrupt() {
        assert!(matches!(
            decompress(b"{\"a\":1}", Encoding::Zstd, 100),
            Err(DecodeError::Corrupt("zstd", _))
        ));
        assert!(matches!(
            decompress(b"{\"a\":1}", Encoding::Gzip, 100),
            Err(DecodeError::Corrupt("gzip", _))
        ));
    }

    #[test]
    fn json_errors_name_the_field() {
        let body = br#"{"protocol":1,"device_id":"6f1d2c3e-0000-4000-8000-000000000001","events":[
            {"seq":1,"id":"6f1d2c3e-0000-4000-8000-000000000002","kind":"work_item","item_id":"A",
             "action":"started","at_ms":"yesterday","source":"app"}]}"#;
        match parse_batch(body) {
            Err(DecodeError::Json { field, message }) => {
                assert_eq!(field.as_deref(), Some("events[0].at_ms"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_batch(b"not json"),
            Err(DecodeError::Json { .. })
        ));
    }

    #[test]
    fn unknown_and_misplaced_fields_are_named() {
        let event = |extra: &str| {
            format!(
                r#"{{"protocol":1,"device_id":"6f1d2c3e-0000-4000-8000-000000000001","events":[
                {{"seq":1,"id":"6f1d2c3e-0000-4000-8000-000000000002","kind":"work_item","item_id":"A",
                 "action":"started","at_ms":1,"source":"app"{extra}}}]}}"#
            )
        };
        for (extra, wanted) in [
            (r#","pad":[0,0,0]"#, "unknown field `pad`"),
            (
                r#","app":"desk""#,
                "unknown field `app` for kind `work_item`",
            ),
        ] {
            match parse_batch(event(extra).as_bytes()) {
                Err(DecodeError::Json { field, message }) => {
                    assert_eq!(field.as_deref(), Some("events[0]"), "{message}");
                    assert!(message.contains(wanted), "{message}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn too_many_events_are_refused_while_parsing() {
        let one = r#"{"seq":1,"id":"6f1d2c3e-0000-4000-8000-000000000002","kind":"consent","granted":true,"policy_version":1,"scope":"","at_ms":1}"#;
        let n = limits::MAX_EVENTS_PER_BATCH + 1;
        let body = format!(
            r#"{{"protocol":1,"device_id":"6f1d2c3e-0000-4000-8000-000000000001","events":[{}]}}"#,
            vec![one; n].join(",")
        );
        match parse_batch(body.as_bytes()) {
            Err(DecodeError::Json { field, message }) => {
                assert_eq!(field.as_deref(), Some("events"), "{message}");
                assert!(message.contains("more than the limit"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
