//! Pure readers of what the operator process exposes: its Prometheus text (counters by label,
//! a histogram's quantiles from its cumulative buckets) and its `/proc/<pid>/status` memory lines.
//! No I/O here, so every number in the report comes from a function with tests.

/// One `/metrics` scrape: every sample line as (series with labels, value).
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    samples: Vec<(String, f64)>,
}

impl Scrape {
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect();
        Self { samples }
    }

    /// Sum of the samples of metric `name` whose labels contain every `label="value"` given.
    pub fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.samples
            .iter()
            .filter(|(series, _)| {
                let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
                metric == name && labels.iter().all(|label| rest.contains(label))
            })
            .map(|(_, value)| value)
            .sum()
    }

    /// The cumulative buckets (upper bound, count) of histogram `name`, in bound order.
    pub fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let prefix = format!("{name}_bucket{{le=\"");
        let mut buckets: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter_map(|(series, count)| {
                let bound = series.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                let bound = if bound == "+Inf" {
                    f64::INFINITY
                } else {
                    bound.parse().ok()?
                };
                Some((bound, *count))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
    }

    /// The cumulative buckets of histogram `name` minus those of an earlier scrape: the
    /// observations made between the two.
    pub fn buckets_since(&self, earlier: &Scrape, name: &str) -> Vec<(f64, f64)> {
        let before: Vec<(f64, f64)> = earlier.buckets(name);
        self.buckets(name)
            .into_iter()
            .map(|(bound, count)| {
                let earlier = before
                    .iter()
                    .find(|(b, _)| *b == bound)
                    .map_or(0.0, |(_, c)| *c);
                (bound, count - earlier)
            })
            .collect()
    }

    /// The difference of two scrapes of one counter: what happened between them.
    pub fn delta(&self, earlier: &Scrape, name: &str, labels: &[&str]) -> f64 {
        self.sum(name, labels) - earlier.sum(name, labels)
    }
}

/// Quantile `q` (0..=1) of a histogram from its cumulative buckets, interpolating linearly inside
/// the bucket it falls in (as Prometheus' `histogram_quantile` does). A quantile in the `+Inf`
/// bucket is reported as the largest finite bound; `None` when the histogram is empty.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower.0);
            }
            let in_bucket = count - lower.1;
            let share = if in_bucket > 0.0 {
                (rank - lower.1) / in_bucket
            } else {
                1.0
            };
            return Some(lower.0 + (bound - lower.0) * share);
        }
        lower = (bound, count);
    }
    Some(lower.0)
}

/// A `kB` line of `/proc/<pid>/status` (e.g. `VmRSS`, `VmHWM`), in bytes.
pub fn status_bytes(status: &str, key: &str) -> Option<u64> {
    let value = status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))?;
    let kib: u64 = value.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP x_total x\n\
        x_total{verb=\"read\"} 7\n\
        x_total{verb=\"patch\"} 2\n\
        x_total{verb=\"post\"} 1\n\
        h_bucket{le=\"0.001\"} 0\n\
        h_bucket{le=\"0.002\"} 10\n\
        h_bucket{le=\"+Inf\"} 10\n\
        h_bucket{le=\"0.004\"} 10\n\
        h_count 10\n";

    #[test]
    fn sums_select_by_metric_name_and_labels() {
        let scrape = Scrape::parse(TEXT);
        assert_eq!(scrape.sum("x_total", &[]), 10.0);
        assert_eq!(scrape.sum("x_total", &["verb=\"patch\""]), 2.0);
        assert_eq!(scrape.sum("x", &[]), 0.0);
        assert_eq!(scrape.sum("h_count", &[]), 10.0);
    }

    #[test]
    fn a_delta_is_what_happened_between_two_scrapes() {
        let before = Scrape::parse("x_total{verb=\"read\"} 3\n");
        let after = Scrape::parse("x_total{verb=\"read\"} 10\nx_total{verb=\"put\"} 1\n");
        assert_eq!(after.delta(&before, "x_total", &["verb=\"read\""]), 7.0);
        assert_eq!(after.delta(&before, "x_total", &["verb=\"put\""]), 1.0);
    }

    #[test]
    fn buckets_come_back_in_bound_order_with_inf_last() {
        let buckets = Scrape::parse(TEXT).buckets("h");
        assert_eq!(
            buckets,
            vec![
                (0.001, 0.0),
                (0.002, 10.0),
                (0.004, 10.0),
                (f64::INFINITY, 10.0)
            ]
        );
    }

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        let buckets = [
            (1.0, 50.0),
            (2.0, 90.0),
            (4.0, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(histogram_quantile(0.5, &buckets), Some(1.0));
        assert_eq!(histogram_quantile(0.25, &buckets), Some(0.5));
        assert_eq!(histogram_quantile(0.7, &buckets), Some(1.5));
        assert_eq!(histogram_quantile(0.99, &buckets), Some(3.8));
    }

    #[test]
    fn a_quantile_past_the_last_finite_bound_reports_that_bound() {
        let buckets = [(1.0, 1.0), (2.0, 2.0), (f64::INFINITY, 10.0)];
        assert_eq!(histogram_quantile(0.99, &buckets), Some(2.0));
    }

    #[test]
    fn an_empty_histogram_has_no_quantiles() {
        assert_eq!(histogram_quantile(0.5, &[]), None);
        assert_eq!(
            histogram_quantile(0.5, &[(1.0, 0.0), (f64::INFINITY, 0.0)]),
            None
        );
    }

    #[test]
    fn memory_lines_of_proc_status_are_read_in_bytes() {
        let status = "Name:\torderpipe-operator\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(status_bytes(status, "VmRSS"), Some(10 * 1024 * 1024));
        assert_eq!(status_bytes(status, "VmHWM"), Some(20 * 1024 * 1024));
        assert_eq!(status_bytes(status, "VmSwap"), None);
    }
}
