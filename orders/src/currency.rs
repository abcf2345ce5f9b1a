//! The compiled-in ISO 4217 table: which currency codes an order may use and their minor-unit exponent.
//!
//! Compiled in rather than loaded so that validation is deterministic and needs no I/O; a change of the
//! ISO list is a code change with a test. Only circulating currencies are listed: fund codes (BOV, CLF,
//! USN...), precious metals (XAU...), SDR and test codes (XTS, XXX) are not prices a shop charges.
//! It must not format or convert amounts: money stays in integer minor units everywhere.

/// `(code, minor-unit exponent)`, sorted by code so lookups can binary-search. ISO 4217 list one
/// (circulating currencies) as of 2025, including currencies in an announced transition (ANG → XCG).
#[rustfmt::skip]
const ACTIVE: &[(&str, u8)] = &[
    ("AED", 2), ("AFN", 2), ("ALL", 2), ("AMD", 2), ("ANG", 2), ("AOA", 2), ("ARS", 2), ("AUD", 2),
    ("AWG", 2), ("AZN", 2), ("BAM", 2), ("BBD", 2), ("BDT", 2), ("BGN", 2), ("BHD", 3), ("BIF", 0),
    ("BMD", 2), ("BND", 2), ("BOB", 2), ("BRL", 2), ("BSD", 2), ("BTN", 2), ("BWP", 2), ("BYN", 2),
    ("BZD", 2), ("CAD", 2), ("CDF", 2), ("CHF", 2), ("CLP", 0), ("CNY", 2), ("COP", 2), ("CRC", 2),
    ("CUP", 2), ("CVE", 2), ("CZK", 2), ("DJF", 0), ("DKK", 2), ("DOP", 2), ("DZD", 2), ("EGP", 2),
    ("ERN", 2), ("ETB", 2), ("EUR", 2), ("FJD", 2), ("FKP", 2), ("GBP", 2), ("GEL", 2), ("GHS", 2),
    ("GIP", 2), ("GMD", 2), ("GNF", 0), ("GTQ", 2), ("GYD", 2), ("HKD", 2), ("HNL", 2), ("HTG", 2),
    ("HUF", 2), ("IDR", 2), ("ILS", 2), ("INR", 2), ("IQD", 3), ("IRR", 2), ("ISK", 0), ("JMD", 2),
    ("JOD", 3), ("JPY", 0), ("KES", 2), ("KGS", 2), ("KHR", 2), ("KMF", 0), ("KPW", 2), ("KRW", 0),
    ("KWD", 3), ("KYD", 2), ("KZT", 2), ("LAK", 2), ("LBP", 2), ("LKR", 2), ("LRD", 2), ("LSL", 2),
    ("LYD", 3), ("MAD", 2), ("MDL", 2), ("MGA", 2), ("MKD", 2), ("MMK", 2), ("MNT", 2), ("MOP", 2),
    ("MRU", 2), ("MUR", 2), ("MVR", 2), ("MWK", 2), ("MXN", 2), ("MYR", 2), ("MZN", 2), ("NAD", 2),
    ("NGN", 2), ("NIO", 2), ("NOK", 2), ("NPR", 2), ("NZD", 2), ("OMR", 3), ("PAB", 2), ("PEN", 2),
    ("PGK", 2), ("PHP", 2), ("PKR", 2), ("PLN", 2), ("PYG", 0), ("QAR", 2), ("RON", 2), ("RSD", 2),
    ("RUB", 2), ("RWF", 0), ("SAR", 2), ("SBD", 2), ("SCR", 2), ("SDG", 2), ("SEK", 2), ("SGD", 2),
    ("SHP", 2), ("SLE", 2), ("SOS", 2), ("SRD", 2), ("SSP", 2), ("STN", 2), ("SVC", 2), ("SYP", 2),
    ("SZL", 2), ("THB", 2), ("TJS", 2), ("TMT", 2), ("TND", 3), ("TOP", 2), ("TRY", 2), ("TTD", 2),
    ("TWD", 2), ("TZS", 2), ("UAH", 2), ("UGX", 0), ("USD", 2), ("UYU", 2), ("UZS", 2), ("VED", 2),
    ("VES", 2), ("VND", 0), ("VUV", 0), ("WST", 2), ("XAF", 0), ("XCD", 2), ("XCG", 2), ("XOF", 0),
    ("XPF", 0), ("YER", 2), ("ZAR", 2), ("ZMW", 2), ("ZWG", 2),
];

/// The minor-unit exponent of an active currency (`EUR` → 2, `JPY` → 0, `KWD` → 3), or `None` when the
/// code is not an active ISO 4217 alpha-3 code. Codes are case-sensitive: ISO codes are upper case.
pub fn minor_unit_exponent(code: &str) -> Option<u8> {
    ACTIVE
        .binary_search_by(|(candidate, _)| (*candidate).cmp(code))
        .ok()
        .and_then(|index| ACTIVE.get(index))
        .map(|(_, exponent)| *exponent)
}

/// Whether `code` is an active ISO 4217 alpha-3 code.
pub fn is_active(code: &str) -> bool {
    minor_unit_exponent(code).is_some()
}

/// Every active code, sorted; the JSON Schema's `currency` enum must list exactly these.
pub fn active_codes() -> impl Iterator<Item = &'static str> {
    ACTIVE.iter().map(|(code, _)| *code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_unique_upper_case_alpha3_so_binary_search_is_correct() {
        for pair in ACTIVE.windows(2) {
            assert!(
                pair[0].0 < pair[1].0,
                "{} must sort before {}",
                pair[0].0,
                pair[1].0
            );
        }
        for (code, exponent) in ACTIVE {
            assert!(
                code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()),
                "{code}"
            );
            assert!(*exponent <= 3, "{code} exponent {exponent}");
        }
    }

    #[test]
    fn exponents_match_iso_for_well_known_codes() {
        for (code, exponent) in [("EUR", 2), ("USD", 2), ("JPY", 0), ("KRW", 0), ("KWD", 3)] {
            assert_eq!(minor_unit_exponent(code), Some(exponent), "{code}");
        }
    }

    #[test]
    fn unknown_withdrawn_and_lower_case_codes_are_not_active() {
        for code in ["XYZ", "HRK", "usd", "US", "USDX", "", "XAU", "XTS"] {
            assert!(!is_active(code), "{code}");
        }
    }
}
