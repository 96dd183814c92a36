//! Parses the human durations of the command line: `500ms`, `5s`, `2m`, `1h`.
//!
//! A unit is mandatory: a bare `5` is ambiguous (seconds? milliseconds?) and a wrong guess would
//! silently make the agent upload 1000× too often or too rarely.

use std::time::Duration;

/// A string that is not a duration this parser understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (examples: 500ms, 5s, 2m, 1h)")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

/// Parses `<integer><unit>` with unit `ms`, `s`, `m` or `h`. Zero is refused: every duration of
/// the agent is an interval or a timeout, and zero would mean a busy loop.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let error = |reason| DurationError {
        input: input.to_string(),
        reason,
    };
    let text = input.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| error("missing unit"))?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(error("missing number"));
    }
    let value: u64 = digits.parse().map_err(|_| error("number too large"))?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(error("unknown unit")),
    };
    let millis = value
        .checked_mul(millis_per_unit)
        .ok_or_else(|| error("number too large"))?;
    if millis == 0 {
        return Err(error("must be more than zero"));
    }
    Ok(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_each_unit() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse(" 1h "), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn refuses_ambiguous_or_broken_input() {
        for bad in [
            "",
            "5",
            "s",
            "-5s",
            "5 s",
            "5sec",
            "0s",
            "1.5s",
            "99999999999999999999s",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
