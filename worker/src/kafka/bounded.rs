//! Blocking calls that must not block their caller for ever: each runs on a helper thread, and
//! the caller waits for its answer only up to a limit.
//!
//! librdkafka's transactional calls take a timeout, but `rd_kafka_send_offsets_to_transaction`
//! does not always honour it: when the group coordinator goes away mid-call, its request can wait
//! for a broker state change that never comes (confluentinc/librdkafka#5456 and #5511, open in
//! librdkafka 2.12). The worker's loop thread would then hang with every partition it owns, until
//! the consumer is thrown out of the group 5 minutes later. Here the caller gets a
//! [`Unanswered`] instead and can give up on the stuck client; the thread that holds it ends when
//! the call finally returns.
//! The stage consumer's close, which has no deadline of its own, is such a call too.
//! Must not know what the calls do; the callers decide what an unanswered call means.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send>;

/// Why a call gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unanswered {
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    #[error("the call panicked")]
    Panicked,
    #[error("no thread could be started for the call: {0}")]
    NoThread(String),
}

/// A helper thread for blocking calls, replaced whenever one of its calls outlives its limit.
#[derive(Debug, Default)]
pub struct BoundedCalls {
    /// The helper thread's queue; `None` until the first call and after a call was given up on.
    helper: Option<mpsc::Sender<Job>>,
    /// How many helper threads were left behind in a call that never answered.
    abandoned: u64,
}

impl BoundedCalls {
    /// Runs `call` on the helper thread and waits at most `limit` for its result. A call given up
    /// on keeps running on its own thread (nothing can interrupt a C call), so it must own what it
    /// uses; later calls get a new thread.
    pub fn run<T: Send + 'static>(
        &mut self,
        limit: Duration,
        call: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Unanswered> {
        let (answer, answered) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            // The caller may have stopped waiting; then the answer is dropped here.
            let _ = answer.send(call());
        });
        self.helper()?
            .send(job)
            // Only a helper whose thread is gone refuses a job, and a thread ends only after a
            // panic, which the wait below has already reported and reset the helper for.
            .map_err(|_| Unanswered::Panicked)?;
        answered.recv_timeout(limit).map_err(|error| {
            // Either way this helper is done: stuck in the call, or unwound out of it.
            self.helper = None;
            match error {
                RecvTimeoutError::Timeout => {
                    self.abandoned += 1;
                    tracing::warn!(
                        ?limit,
                        abandoned = self.abandoned,
                        "a call gave no answer in time; its thread is left to finish it"
                    );
                    Unanswered::TimedOut(limit)
                }
                RecvTimeoutError::Disconnected => Unanswered::Panicked,
            }
        })
    }

    fn helper(&mut self) -> Result<&mpsc::Sender<Job>, Unanswered> {
        if self.helper.is_none() {
            let (jobs, queue) = mpsc::channel::<Job>();
            thread::Builder::new()
                .name("orderpipe-call".into())
                .spawn(move || {
                    for job in queue {
                        job();
                    }
                })
                .map_err(|error| Unanswered::NoThread(error.to_string()))?;
            self.helper = Some(jobs);
        }
        Ok(self.helper.as_ref().expect("set above"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answered_call_returns_its_result() {
        let mut calls = BoundedCalls::default();
        assert_eq!(calls.run(Duration::from_secs(5), || 7), Ok(7));
        assert_eq!(calls.run(Duration::from_secs(5), || 8), Ok(8));
    }

    #[test]
    fn a_call_that_never_answers_times_out_and_the_next_call_gets_a_new_thread() {
        let mut calls = BoundedCalls::default();
        let (release, stuck) = mpsc::channel::<()>();
        let (finished, finish) = mpsc::channel::<()>();
        let limit = Duration::from_millis(50);
        let given_up = calls.run(limit, move || {
            let _ = stuck.recv();
            let _ = finished.send(());
        });
        assert_eq!(given_up, Err(Unanswered::TimedOut(limit)));
        assert_eq!(calls.abandoned, 1);

        // The stuck call still blocks its thread, yet a new call is answered.
        assert_eq!(calls.run(Duration::from_secs(5), || "next"), Ok("next"));
        assert_eq!(finish.try_recv(), Err(mpsc::TryRecvError::Empty));

        // Released, the abandoned call runs to its end on its own thread.
        release.send(()).expect("the stuck call is waiting");
        finish
            .recv_timeout(Duration::from_secs(5))
            .expect("the abandoned call ends once released");
    }

    #[test]
    fn a_panicking_call_is_reported_and_the_next_call_still_runs() {
        let mut calls = BoundedCalls::default();
        let panicked = calls.run(Duration::from_secs(5), || -> u8 { panic!("in the call") });
        assert_eq!(panicked, Err(Unanswered::Panicked));
        assert_eq!(calls.run(Duration::from_secs(5), || 1), Ok(1));
    }
}
