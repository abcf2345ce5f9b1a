//! Outputs Kafka refuses for good (over a topic's `max.message.bytes`): the input that produced
//! them is dead-lettered once and its partition moves on; a dead letter refused too loses its
//! payload, and one refused even bare stops the worker.

use std::sync::Arc;

use orderpipe_orders::generator::{GenConfig, OrderGenerator};
use orderpipe_orders::headers;

use super::{Running, TestStage, WAIT, count_by_key, original};
use crate::error::WorkerError;
use crate::runtime::memory::{Broker, BrokerState, Produced};

/// Orders for the refusal tests: `count` valid ones, with the rejected-topic refusals at `refused`
/// (invalid orders whose rejection is larger than the rejected topic's limit of 4,000 bytes) and
/// small rejections at every 50th index.
fn orders_with_oversized_rejections(
    count: usize,
    refused: &[usize],
) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    let mut generator = OrderGenerator::new(5, GenConfig::default());
    (0..count)
        .map(|index| {
            let order = generator.valid_order();
            let key = Some(order.order_id.clone().into_bytes());
            let mut value = serde_json::to_value(&order).expect("json");
            if refused.contains(&index) {
                value["totalMinor"] = serde_json::Value::String("x".repeat(5_000));
            } else if index % 50 == 49 {
                value["totalMinor"] = serde_json::Value::String("x".to_owned());
            }
            (key, serde_json::to_vec(&value).expect("json"))
        })
        .collect()
}

fn run_validate_with_limits(
    input: Vec<(Option<Vec<u8>>, Vec<u8>)>,
    limits: &[(&str, usize)],
) -> (Arc<Broker>, Running) {
    let broker = Broker::with_input(2, input);
    broker.state().max_record_bytes = limits
        .iter()
        .map(|(topic, limit)| ((*topic).to_owned(), *limit))
        .collect();
    let running = TestStage::validate().start(&broker);
    (broker, running)
}

#[test]
fn an_input_whose_output_kafka_refuses_is_dead_lettered_once_and_its_partition_moves_on() {
    let input = orders_with_oversized_rejections(400, &[3, 150, 151, 399]);
    let (broker, running) = run_validate_with_limits(input, &[("orders.rejected", 4_000)]);
    broker.wait_until("every order committed", WAIT, BrokerState::all_committed);
    let metrics = running.metrics();
    running.stop().expect("clean shutdown");

    let state = broker.state();
    assert_eq!(
        state.outputs_to("orders.validated").count(),
        389,
        "every valid order validated"
    );
    assert_eq!(
        count_by_key(state.outputs_to("orders.validated")).len(),
        389,
        "each once"
    );
    assert_eq!(
        state.outputs_to("orders.rejected").count(),
        7,
        "the small rejections that shared a refused batch are not blamed"
    );
    let dead: Vec<&Produced> = state.outputs_to("orders.dlq").collect();
    assert_eq!(
        dead.len(),
        4,
        "each refused input dead-lettered exactly once"
    );
    for letter in &dead {
        assert_eq!(letter.header(headers::ERROR_REASON), Some("output_refused"));
        assert!(
            letter
                .header(headers::ERROR_MESSAGE)
                .is_some_and(|m| m.contains("Message size too large")),
            "the broker's error: {:?}",
            letter.header(headers::ERROR_MESSAGE)
        );
        assert_eq!(
            original(&state, letter).payload.as_deref(),
            Some(letter.payload.as_slice()),
            "the input, copied"
        );
    }
    assert!(
        metrics.contains(
            r#"orderpipe_dead_letters_total{pipeline="shop",stage="validate",reason="output_refused"} 4"#
        ),
        "{metrics}"
    );
}

#[test]
fn a_dead_letter_refused_too_is_sent_without_its_payload_and_a_bare_one_refused_stops_the_worker() {
    let input = orders_with_oversized_rejections(50, &[10]);
    let (broker, running) = run_validate_with_limits(
        input.clone(),
        &[("orders.rejected", 4_000), ("orders.dlq", 3_000)],
    );
    broker.wait_until("every order committed", WAIT, BrokerState::all_committed);
    running.stop().expect("clean shutdown");
    {
        let state = broker.state();
        let dead: Vec<&Produced> = state.outputs_to("orders.dlq").collect();
        assert_eq!(dead.len(), 1);
        assert!(dead[0].payload.is_empty(), "the key and headers only");
        assert!(dead[0].header(headers::ORIGINAL_SIZE).is_some());
        assert_eq!(state.outputs_to("orders.validated").count(), 48);
        assert_eq!(state.outputs_to("orders.rejected").count(), 1);
    }

    // A dead-letter topic that refuses even a bare dead letter is a pipeline fault, not a record's.
    let (broker, running) =
        run_validate_with_limits(input, &[("orders.rejected", 4_000), ("orders.dlq", 10)]);
    let error = running
        .stopped_by_itself(WAIT)
        .expect_err("the worker stops");
    assert!(
        matches!(error, WorkerError::OutputRefused { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("max.message.bytes"), "{error}");
    assert!(
        !broker.state().all_committed(),
        "the refused record is not skipped silently"
    );
}
