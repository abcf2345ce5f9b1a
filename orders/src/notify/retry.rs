//! Pure retry policy for webhook dispatch: classify an HTTP outcome, compute the next delay.
//!
//! Backoff is capped exponential with full jitter (delay uniformly drawn from [0, ceiling]): it
//! spreads retries of many workers hitting one recovering endpoint better than equal jitter. The
//! random draw is an argument so tests are deterministic. A server's `Retry-After` wins over our
//! backoff, capped so one answer cannot stall a partition indefinitely. This module must not sleep,
//! send requests or draw random numbers.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// What happened to one HTTP attempt, as the runtime's HTTP client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpOutcome {
    /// The server answered; `retry_after` is the raw `Retry-After` header, if any.
    Response {
        status: u16,
        retry_after: Option<String>,
    },
    /// No answer within the request timeout.
    Timeout,
    /// No connection (refused, reset, DNS, TLS handshake): the endpoint may be restarting.
    ConnectionFailed,
}

/// How an [`HttpOutcome`] is to be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classification {
    Delivered,
    /// Try again later; `retry_after` is the server's wish, if it stated one.
    Retryable {
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help (the request or the configuration is wrong).
    Permanent,
}

/// Classifies one attempt. `now` resolves an HTTP-date `Retry-After`.
///
/// Retryable statuses: 408 Request Timeout, 409 Conflict (the idempotency-key draft's answer while a
/// request with the same key is still being processed), 425 Too Early, 429 Too Many Requests, and 5xx
/// except 501 Not Implemented and 505 HTTP Version Not Supported, which will not change by waiting.
/// Every other non-2xx status (3xx included: webhooks are not redirected) is permanent.
pub fn classify(outcome: &HttpOutcome, now: DateTime<Utc>) -> Classification {
    match outcome {
        HttpOutcome::Timeout | HttpOutcome::ConnectionFailed => {
            Classification::Retryable { retry_after: None }
        }
        HttpOutcome::Response {
            status,
            retry_after,
        } => match status {
            200..=299 => Classification::Delivered,
            408 | 409 | 425 | 429 | 500 | 502..=504 | 506..=599 => Classification::Retryable {
                retry_after: retry_after
                    .as_deref()
                    .and_then(|value| parse_retry_after(value, now)),
            },
            _ => Classification::Permanent,
        },
    }
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP-date (IMF-fixdate) relative to `now`. A
/// date in the past means "now"; anything unparseable is ignored (the backoff applies).
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // All digits but too many for u64: a wish to wait "forever"; the policy's cap applies.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some(
        at.signed_duration_since(now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// How often and how patiently a notification is retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included; after the last transient failure: dead-letter.
    pub max_attempts: u32,
    /// Backoff ceiling after the first failure; doubles per attempt.
    pub base_delay: Duration,
    /// Cap of the backoff ceiling.
    pub max_delay: Duration,
    /// Cap of a server's `Retry-After`.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    /// 6 attempts, 1 s doubling to at most 30 s, `Retry-After` honoured up to 60 s: a partition blocks
    /// for at most ~5 minutes per notification (see [`RetryPolicy::worst_case_delay`]), which stays
    /// under Kafka's default `max.poll.interval.ms` only if the runtime keeps polling while it waits.
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Full-jitter backoff after `attempt` failed attempts (1-based): `sample` ∈ [0, 1) scales the
    /// ceiling `min(max_delay, base_delay × 2^(attempt−1))`. Out-of-range or NaN samples are clamped,
    /// so no input can panic or exceed the cap.
    pub fn backoff(&self, attempt: u32, sample: f64) -> Duration {
        let fraction = if sample.is_finite() {
            sample.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let ceiling = self.ceiling(attempt);
        // Through f64 for the jitter only; rounding at huge configured caps must not panic.
        Duration::try_from_secs_f64(ceiling.as_secs_f64() * fraction)
            .unwrap_or(ceiling)
            .min(ceiling)
    }

    /// The delay before attempt `attempt + 1`: the server's `Retry-After` (capped) when it gave one,
    /// otherwise [`backoff`](Self::backoff).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>, sample: f64) -> Duration {
        match retry_after {
            Some(wish) => wish.min(self.max_retry_after),
            None => self.backoff(attempt, sample),
        }
    }

    /// The longest a notification can block its partition in waits: every retry delayed by the larger
    /// of the backoff ceiling and the `Retry-After` cap. Useful to size poll and transaction timeouts.
    pub fn worst_case_delay(&self) -> Duration {
        (1..self.max_attempts)
            .map(|attempt| self.ceiling(attempt).max(self.max_retry_after))
            .sum()
    }

    fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1);
        let factor = 2_u32.checked_pow(doublings).unwrap_or(u32::MAX);
        self.base_delay
            .checked_mul(factor)
            .unwrap_or(Duration::MAX)
            .min(self.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        crate::rfc3339::parse(text).expect("valid timestamp")
    }

    fn response(status: u16) -> HttpOutcome {
        HttpOutcome::Response {
            status,
            retry_after: None,
        }
    }

    #[test]
    fn statuses_are_classified_by_whether_waiting_can_help() {
        let now = at("2025-03-01T00:00:00Z");
        for status in [200, 201, 202, 204, 299] {
            assert_eq!(
                classify(&response(status), now),
                Classification::Delivered,
                "{status}"
            );
        }
        for status in [408, 409, 425, 429, 500, 502, 503, 504, 507, 599] {
            let expected = Classification::Retryable { retry_after: None };
            assert_eq!(classify(&response(status), now), expected, "{status}");
        }
        for status in [
            100, 301, 302, 304, 400, 401, 403, 404, 410, 413, 422, 501, 505, 600,
        ] {
            assert_eq!(
                classify(&response(status), now),
                Classification::Permanent,
                "{status}"
            );
        }
    }

    #[test]
    fn timeouts_and_connection_failures_are_retryable() {
        let now = at("2025-03-01T00:00:00Z");
        let expected = Classification::Retryable { retry_after: None };
        assert_eq!(classify(&HttpOutcome::Timeout, now), expected);
        assert_eq!(classify(&HttpOutcome::ConnectionFailed, now), expected);
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_http_date() {
        let now = at("2025-03-01T12:00:00Z");
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        let date = "Sat, 01 Mar 2025 12:00:30 GMT";
        assert_eq!(parse_retry_after(date, now), Some(Duration::from_secs(30)));
        let past = "Sat, 01 Mar 2025 11:00:00 GMT";
        assert_eq!(parse_retry_after(past, now), Some(Duration::ZERO));
        let forever = Some(Duration::from_secs(u64::MAX));
        assert_eq!(parse_retry_after("99999999999999999999999", now), forever);
        for junk in ["", "-5", "1.5", "soon", "Saturday"] {
            assert_eq!(parse_retry_after(junk, now), None, "{junk}");
        }
    }

    #[test]
    fn a_429_with_retry_after_carries_the_servers_wish() {
        let now = at("2025-03-01T12:00:00Z");
        let outcome = HttpOutcome::Response {
            status: 429,
            retry_after: Some("3".to_owned()),
        };
        let expected = Classification::Retryable {
            retry_after: Some(Duration::from_secs(3)),
        };
        assert_eq!(classify(&outcome, now), expected);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_is_scaled_by_the_sample() {
        let policy = RetryPolicy::default();
        let ceilings: Vec<u64> = (1..=7).map(|a| policy.backoff(a, 1.0).as_secs()).collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(policy.backoff(3, 0.5), Duration::from_secs(2));
        assert_eq!(policy.backoff(3, 0.0), Duration::ZERO);
    }

    #[test]
    fn backoff_never_panics_or_exceeds_the_cap_on_extreme_input() {
        let policy = RetryPolicy::default();
        for sample in [f64::NAN, f64::INFINITY, -1.0, 2.0, f64::MIN_POSITIVE] {
            for attempt in [0, 1, 64, u32::MAX] {
                assert!(policy.backoff(attempt, sample) <= policy.max_delay);
            }
        }
        let unbounded = RetryPolicy {
            max_delay: Duration::MAX,
            ..RetryPolicy::default()
        };
        assert!(unbounded.backoff(u32::MAX, 1.0) <= Duration::MAX);
    }

    #[test]
    fn retry_after_wins_over_backoff_but_is_capped() {
        let policy = RetryPolicy::default();
        let wish = Some(Duration::from_secs(5));
        assert_eq!(policy.delay(1, wish, 0.9), Duration::from_secs(5));
        let too_long = Some(Duration::from_secs(3600));
        assert_eq!(policy.delay(1, too_long, 0.9), policy.max_retry_after);
        assert_eq!(policy.delay(2, None, 0.5), Duration::from_secs(1));
    }

    #[test]
    fn worst_case_delay_sums_the_longest_wait_of_every_retry() {
        // 5 retries after 6 attempts, each at most max(ceiling, 60 s) = 60 s.
        assert_eq!(
            RetryPolicy::default().worst_case_delay(),
            Duration::from_secs(300)
        );
    }
}
