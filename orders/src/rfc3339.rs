//! RFC 3339 timestamps: the one strict parser and the one canonical format used by every record.
//!
//! chrono's own serde impl parses with its lenient `FromStr`, so records use these functions via
//! `#[serde(with = "crate::rfc3339")]`: decoding a record and validating a field use one parser. Output is
//! always UTC with a `Z` suffix, so two equal instants serialise to equal bytes (dedup fingerprints
//! rely on it). It must not read the clock.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serializer};

/// Parses an RFC 3339 date-time with any offset and converts it to UTC; `None` when it is not one.
pub fn parse(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|at| at.with_timezone(&Utc))
}

/// The canonical text of an instant: UTC, `Z` suffix, fractional seconds only when non-zero.
pub fn format(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// serde `with` hook: writes [`format`].
pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format(at))
}

/// serde `with` hook: reads with [`parse`].
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
    let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
    parse(&text).ok_or_else(|| serde::de::Error::custom("not an RFC 3339 date-time"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_normalised_to_utc_with_z() {
        let at = parse("2025-03-01T14:30:00+02:00");
        assert_eq!(
            at.map(|at| format(&at)).as_deref(),
            Some("2025-03-01T12:30:00Z")
        );
    }

    #[test]
    fn fractional_seconds_survive_a_round_trip() {
        let at = parse("2025-03-01T12:30:00.125Z");
        assert_eq!(
            at.map(|at| format(&at)).as_deref(),
            Some("2025-03-01T12:30:00.125Z")
        );
    }

    #[test]
    fn non_rfc3339_text_is_refused() {
        for text in [
            "2025-03-01",
            "2025-13-01T00:00:00Z",
            "yesterday",
            "2025-03-01T12:30Z",
            "",
        ] {
            assert_eq!(parse(text), None, "{text}");
        }
    }
}
