//! Spec durations (`250ms`, `30s`, `1m30s`, `2h`) as the operator and the worker use them.

use std::time::Duration as StdDuration;

use crate::v1alpha1::Duration;

/// Why a spec duration cannot be used; both variants quote the text as written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("{text:?} is not a duration (units: ms, s, m, h)")]
    NotADuration { text: String },
    #[error("{text:?} is too long")]
    TooLong { text: String },
}

/// Parses a spec duration (`250ms`, `30s`, `1m30s`, `2h`). The CRD pattern already guarantees the
/// shape; this still rejects overflow instead of panicking.
pub fn parse_duration(duration: &Duration) -> Result<StdDuration, DurationError> {
    let text = duration.0.as_str();
    let not_a_duration = || DurationError::NotADuration {
        text: text.to_owned(),
    };
    let too_long = || DurationError::TooLong {
        text: text.to_owned(),
    };
    let mut total = StdDuration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        if number.is_empty() {
            return Err(not_a_duration());
        }
        // Nothing but ASCII digits, so parsing fails only on overflow.
        let value: u64 = number.parse().map_err(|_| too_long())?;
        let (unit_ms, tail) = if let Some(t) = tail.strip_prefix("ms") {
            (1, t)
        } else if let Some(t) = tail.strip_prefix('s') {
            (1_000, t)
        } else if let Some(t) = tail.strip_prefix('m') {
            (60_000, t)
        } else if let Some(t) = tail.strip_prefix('h') {
            (3_600_000, t)
        } else {
            return Err(not_a_duration());
        };
        let millis = value.checked_mul(unit_ms).ok_or_else(too_long)?;
        total = total
            .checked_add(StdDuration::from_millis(millis))
            .ok_or_else(too_long)?;
        rest = tail;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_compound_values_and_reject_garbage() {
        let d = |s: &str| parse_duration(&Duration(s.into()));
        assert_eq!(d("1m30s"), Ok(StdDuration::from_secs(90)));
        assert_eq!(d("250ms"), Ok(StdDuration::from_millis(250)));
        assert_eq!(d("2h"), Ok(StdDuration::from_secs(7200)));
        assert!(d("5x").is_err());
        assert!(d("99999999999999999999h").is_err());
        assert_eq!(
            d("5x").map_err(|e| e.to_string()),
            Err("\"5x\" is not a duration (units: ms, s, m, h)".into())
        );
    }
}
