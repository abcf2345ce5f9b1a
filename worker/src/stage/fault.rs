//! A deliberately bad release, for the canary tests: [`DeadLetterEverything`] wraps a stage and
//! sends every record to the dead-letter topic (reason `fault_injected`, the input copied whole)
//! instead of handling it. Only the test build `orderpipe-worker-faulty` runs it, chosen by the
//! binary's name at compile time (see `main.rs`): the release image ships `orderpipe-worker` only,
//! and no environment variable or setting turns it on. The node agent runs it for an image tag a
//! test maps to it (e.g. `orderpipe/orderpipe-worker:faulty`).

use std::future::Future;

use orderpipe_orders::{DeadLetterReason, Stage, StateDecodeError, dead_letter};
use tokio_util::sync::CancellationToken;

use super::{Handled, Handling, KeyStates, Outcome, StageHandler};
use crate::record::SourceRecord;

/// Which build of the worker this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// `orderpipe-worker`: the stage as designed.
    Sound,
    /// `orderpipe-worker-faulty`: every record dead-lettered.
    DeadLetterEverything,
}

impl Release {
    /// The release a binary named `binary` (its `CARGO_BIN_NAME`) is.
    pub fn of_binary(binary: &str) -> Release {
        if binary == "orderpipe-worker-faulty" {
            Release::DeadLetterEverything
        } else {
            Release::Sound
        }
    }
}

/// `H`, except that every record is dead-lettered. Restores `H`'s state like `H` (a partition
/// taken over from a sound pod loads its changelog), but never changes it.
#[derive(Debug, Clone)]
pub struct DeadLetterEverything<H>(pub H);

impl<H: StageHandler> StageHandler for DeadLetterEverything<H> {
    type State = H::State;

    fn stage(&self) -> Stage {
        self.0.stage()
    }

    fn decode_state(&self, payload: &[u8]) -> Result<Self::State, StateDecodeError> {
        self.0.decode_state(payload)
    }

    fn encode_state(&self, state: &Self::State) -> Vec<u8> {
        self.0.encode_state(state)
    }

    fn handle<'a>(
        &'a self,
        record: &'a SourceRecord,
        topic: &'a str,
        _states: &'a mut KeyStates<Self::State>,
        _stop: &'a CancellationToken,
    ) -> impl Future<Output = Handling> + Send + 'a {
        let emit = dead_letter::fault_injected(&record.as_input(topic), self.0.stage());
        std::future::ready(Handling::Done(Handled::emitting(
            Outcome::dead_lettered(DeadLetterReason::FaultInjected),
            vec![emit],
        )))
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use orderpipe_orders::validate::Validator;
    use orderpipe_orders::{Output, headers};

    use super::*;
    use crate::stage::Stateful;

    #[tokio::test]
    async fn every_record_is_dead_lettered_whole_and_the_state_is_left_alone() {
        let stage = DeadLetterEverything(Stateful(Validator::default()));
        let record = SourceRecord {
            partition: 2,
            offset: 7,
            key: Some(b"order-1".to_vec()),
            payload: Some(br#"{"a valid order": "or not, it does not matter"}"#.to_vec()),
            timestamp: DateTime::UNIX_EPOCH,
            headers: Vec::new(),
        };
        let mut states = KeyStates::default();
        let handling = stage
            .handle(&record, "orders", &mut states, &CancellationToken::new())
            .await;
        let Handling::Done(handled) = handling else {
            panic!("not handled: {handling:?}");
        };
        assert_eq!(
            handled.outcome,
            Outcome::dead_lettered(DeadLetterReason::FaultInjected)
        );
        let [emit] = handled.emits.as_slice() else {
            panic!("one dead letter expected: {:?}", handled.emits);
        };
        assert_eq!(emit.output, Output::DeadLetter);
        assert_eq!(
            (emit.key.as_deref(), emit.payload.as_slice()),
            (
                record.key.as_deref(),
                record.payload.as_deref().unwrap_or_default()
            )
        );
        assert_eq!(emit.header(headers::ERROR_REASON), Some("fault_injected"));
        assert!(states.is_empty());
    }

    #[test]
    fn only_the_faulty_binary_is_the_faulty_release() {
        assert_eq!(
            Release::of_binary("orderpipe-worker-faulty"),
            Release::DeadLetterEverything
        );
        for sound in ["orderpipe-worker", "orderpipe-worker-faulty2", ""] {
            assert_eq!(Release::of_binary(sound), Release::Sound, "{sound}");
        }
    }
}
