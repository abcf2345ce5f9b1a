//! Condition polling with a deadline: the only way the stack and its tests wait for anything, in
//! two forms with one schedule: [`wait_until`] for async code, [`wait_until_blocking`] for tests
//! that run without a runtime (whose probes block: processes, the Kafka kit). Polls start fast (a
//! component that is ready in 100 ms should not cost a second) and back off to at most one
//! second. Must not be used as a fixed delay: every wait names its condition.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::error::{Result, StackError};

const FIRST_POLL: Duration = Duration::from_millis(50);
const MAX_POLL: Duration = Duration::from_secs(1);

/// Polls `probe` until it returns `Some`, or fails with [`StackError::Timeout`] naming `what`.
///
/// ```no_run
/// # async fn f(api: kube::Api<k8s_openapi::api::apps::v1::Deployment>) -> orderpipe_stack::Result<()> {
/// use std::time::Duration;
/// let ready = orderpipe_stack::wait_until("deployment web ready", Duration::from_secs(60), || async {
///     let d = api.get_opt("web").await.ok()??;
///     (d.status?.ready_replicas? == 2).then_some(())
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    try_wait_until(what, timeout, || {
        let attempt = probe();
        async move { Ok(attempt.await) }
    })
    .await
}

/// Like [`wait_until`], but a probe error ends the wait at once (e.g. the process exited).
pub async fn try_wait_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let mut schedule = Schedule::new(what, timeout);
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        tokio::time::sleep(schedule.next_pause()?).await;
    }
}

/// [`wait_until`] for code without an async runtime, whose probes block (processes, the Kafka kit):
/// polls `condition` on the same schedule, sleeping the calling thread in between.
pub fn wait_until_blocking(
    what: &str,
    timeout: Duration,
    mut condition: impl FnMut() -> bool,
) -> Result<()> {
    let mut schedule = Schedule::new(what, timeout);
    while !condition() {
        std::thread::sleep(schedule.next_pause()?);
    }
    Ok(())
}

/// When the next poll is due, or the timeout naming the condition.
struct Schedule<'a> {
    what: &'a str,
    timeout: Duration,
    start: Instant,
    pause: Duration,
}

impl<'a> Schedule<'a> {
    fn new(what: &'a str, timeout: Duration) -> Self {
        Schedule {
            what,
            timeout,
            start: Instant::now(),
            pause: FIRST_POLL,
        }
    }

    fn next_pause(&mut self) -> Result<Duration> {
        let waited = self.start.elapsed();
        if waited >= self.timeout {
            return Err(StackError::Timeout {
                what: self.what.to_owned(),
                waited,
            });
        }
        let pause = self.pause.min(self.timeout - waited);
        self.pause = (self.pause * 2).min(MAX_POLL);
        Ok(pause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn returns_the_first_some() {
        let calls = AtomicU32::new(0);
        let value = wait_until("third call", Duration::from_secs(5), || async {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            (n == 3).then_some(n)
        })
        .await
        .expect("ready");
        assert_eq!(value, 3);
    }

    #[tokio::test]
    async fn times_out_naming_the_condition() {
        let err = wait_until("never", Duration::from_millis(120), || async { None::<()> })
            .await
            .expect_err("must time out");
        assert!(
            matches!(err, StackError::Timeout { ref what, .. } if what == "never"),
            "{err}"
        );
    }

    #[test]
    fn the_blocking_form_returns_once_the_condition_holds_and_times_out_naming_it() {
        let mut calls = 0;
        wait_until_blocking("third call", Duration::from_secs(5), || {
            calls += 1;
            calls == 3
        })
        .expect("ready");
        assert_eq!(calls, 3);
        let err = wait_until_blocking("never", Duration::from_millis(120), || false)
            .expect_err("must time out");
        assert!(
            matches!(err, StackError::Timeout { ref what, .. } if what == "never"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn probe_errors_end_the_wait_immediately() {
        let start = Instant::now();
        let err = try_wait_until("x", Duration::from_secs(30), || async {
            Err::<Option<()>, _>(StackError::NotInStack { component: "kafka" })
        })
        .await
        .expect_err("must fail");
        assert!(matches!(err, StackError::NotInStack { .. }));
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
