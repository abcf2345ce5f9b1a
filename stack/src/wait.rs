//! Condition polling with a deadline: the only way the harness and its tests wait for anything.
//! Polls start fast (a component that is ready in 100 ms should not cost a second) and back off
//! to at most one second. Must not be used as a fixed delay: every wait names its condition.

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
    let start = Instant::now();
    let mut pause = FIRST_POLL;
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(StackError::Timeout {
                what: what.to_owned(),
                waited,
            });
        }
        tokio::time::sleep(pause.min(timeout - waited)).await;
        pause = (pause * 2).min(MAX_POLL);
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
