//! Pure arithmetic of the worker benchmarks: percentiles, rates, ratios, and how they are printed.
//! No I/O and no clocks here, so every number in the report can be checked by a unit test.

use std::time::Duration;

/// The `q`-quantile (0.0..=1.0) of `samples` by the nearest-rank method; `None` when empty.
pub fn percentile(samples: &[Duration], q: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    // Nearest rank: the smallest sample with at least q of all samples at or below it.
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.saturating_sub(1)).copied()
}

/// Records per second for `count` records in `elapsed`; `None` for an empty interval.
pub fn rate(count: u64, elapsed: Duration) -> Option<f64> {
    let seconds = elapsed.as_secs_f64();
    (seconds > 0.0).then(|| count as f64 / seconds)
}

/// `numerator / denominator`; `None` when either is missing or the denominator is zero.
pub fn ratio(numerator: Option<f64>, denominator: Option<f64>) -> Option<f64> {
    match (numerator, denominator) {
        (Some(n), Some(d)) if d > 0.0 => Some(n / d),
        _ => None,
    }
}

/// A ratio against its target, e.g. `0.91 (target >= 0.85: met)`.
pub fn against_target(value: Option<f64>, target: f64, higher_is_better: bool) -> String {
    match value {
        None => "n/a (a run failed)".to_owned(),
        Some(value) => {
            let met = if higher_is_better {
                value >= target
            } else {
                value <= target
            };
            let relation = if higher_is_better { ">=" } else { "<=" };
            let verdict = if met { "met" } else { "NOT met" };
            format!("{value:.2} (target {relation} {target}: {verdict})")
        }
    }
}

/// Milliseconds with one decimal, or `-` when absent.
pub fn millis(value: Option<Duration>) -> String {
    value.map_or_else(
        || "-".to_owned(),
        |d| format!("{:.1}", d.as_secs_f64() * 1e3),
    )
}

/// A whole number, or `-` when absent.
pub fn whole(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&v| Duration::from_millis(v)).collect()
    }

    #[test]
    fn percentiles_use_the_nearest_rank_of_the_sorted_samples() {
        let samples = ms(&[50, 10, 40, 20, 30, 60, 70, 80, 90, 100]);
        assert_eq!(percentile(&samples, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&samples, 0.99), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&samples, 0.0), Some(Duration::from_millis(10)));
        assert_eq!(percentile(&ms(&[7]), 0.99), Some(Duration::from_millis(7)));
    }

    #[test]
    fn no_samples_have_no_percentile() {
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn rates_and_ratios_refuse_empty_denominators() {
        assert_eq!(rate(1_000, Duration::from_millis(500)), Some(2_000.0));
        assert_eq!(rate(1_000, Duration::ZERO), None);
        assert_eq!(ratio(Some(3.0), Some(4.0)), Some(0.75));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(4.0)), None);
    }

    #[test]
    fn a_ratio_is_judged_against_its_target_in_the_right_direction() {
        assert_eq!(
            against_target(Some(0.9), 0.85, true),
            "0.90 (target >= 0.85: met)"
        );
        assert_eq!(
            against_target(Some(0.3), 0.2, false),
            "0.30 (target <= 0.2: NOT met)"
        );
        assert_eq!(against_target(None, 1.5, true), "n/a (a run failed)");
    }

    #[test]
    fn absent_numbers_print_as_a_dash() {
        assert_eq!(millis(None), "-");
        assert_eq!(millis(Some(Duration::from_micros(12_345))), "12.3");
        assert_eq!(whole(Some(1_234.6)), "1235");
    }
}
