//! A growth of the validate stage's input from 3 to 6 partitions (`docs/partition-growth.md`):
//! new partitions are held, not even restored, until the growth is released; each old partition
//! re-shards its dedup state at the settle barrier in the transaction that commits the barrier with
//! the marker (an aborted one is redone and moves nothing twice); a late record of a moved key on
//! its old partition is forwarded; after release every re-submission meets its order's dedup state
//! wherever it now lands, so every order is validated exactly once.

use orderpipe_growth::{Growth, GrowthView, Partitions, Phase, ReshardMarker, SettleBarrier};

use super::*;
use crate::runtime::growth::FORWARDED_FROM;

fn growth() -> Growth {
    let count = |n| Partitions::new(n).expect("positive");
    Growth::new(1, count(3), count(6)).expect("a multiple")
}

fn announce(view: &watch::Sender<View>, phase: Phase) {
    view.send_replace(Some(GrowthView {
        growth: growth(),
        phase,
    }));
}

fn committed_to_the_end(state: &BrokerState, partitions: std::ops::Range<i32>) -> bool {
    partitions.into_iter().all(|partition| {
        let end = state.input.get(&partition).map_or(0, Vec::len) as i64;
        state.committed.get(&partition).copied().unwrap_or(0) == end
    })
}

#[test]
fn a_growth_holds_new_partitions_reshards_old_ones_and_validates_every_order_once() {
    let orders = load(&valid_orders(300, 22));
    let broker = Broker::with_input(3, std::iter::empty());
    for order in &orders {
        broker.produce(3, order.key.as_deref().expect("keyed"), &order.payload);
    }
    let (view, follows) = watch::channel(None);
    let running = TestStage::validate().growth(follows).start(&broker);
    broker.wait_until("every order validated", WAIT, BrokerState::all_committed);

    // Announced, then grown; producers re-submit every order, half of them still with the old
    // partition count (their metadata is not refreshed yet), half with the new one.
    announce(&view, Phase::Held);
    broker.grow(6);
    for (index, order) in orders.iter().enumerate() {
        let partitions = if index % 2 == 0 { 3 } else { 6 };
        broker.produce(
            partitions,
            order.key.as_deref().expect("keyed"),
            &order.payload,
        );
    }
    broker.wait_until("the old partitions processed", WAIT, |state| {
        committed_to_the_end(state, 0..3)
    });
    {
        let state = broker.state();
        assert!(
            (3..6).all(|p| !state.committed.contains_key(&p)),
            "held partitions commit nothing: {:?}",
            state.committed
        );
        assert!(
            (3..6).all(|p| !state.input[&p].is_empty()),
            "fresh producers wrote there"
        );
        assert!(state.outputs.iter().all(|record| record.from.partition < 3));
    }
    broker.wait_until("the new partitions held", WAIT, |_| {
        running
            .metrics()
            .contains(r#"orderpipe_partitions_held{pipeline="shop",stage="validate"} 3"#)
    });

    // The settle barrier: the old partitions' ends. The first two commits from now fail, so the
    // re-shard transactions abort and are redone by the rewound partitions.
    let barrier: Vec<i64> = {
        let state = broker.state();
        (0..3).map(|p| state.input[&p].len() as i64).collect()
    };
    let attempts = broker.state().commit_attempts;
    broker.fail_commits([attempts + 1, attempts + 2]);
    announce(
        &view,
        Phase::Draining(SettleBarrier::new(growth(), barrier.clone()).expect("valid")),
    );
    let marker = ReshardMarker { generation: 1 };
    broker.wait_until("every old partition re-sharded", WAIT, |state| {
        (0..3).all(|p| state.markers.get(&p) == Some(&marker))
    });
    let moved: Vec<&LoadRecord> = orders
        .iter()
        .filter(|o| {
            growth()
                .placement(o.key.as_deref().unwrap_or_default())
                .moves()
        })
        .collect();
    assert!(
        (100..200).contains(&moved.len()),
        "about half the keys move: {}",
        moved.len()
    );
    {
        let state = broker.state();
        assert!(state.aborts >= 1, "a re-shard transaction aborted");
        for (p, &end) in barrier.iter().enumerate() {
            assert_eq!(
                state.committed[&(p as i32)],
                end,
                "committed at the barrier"
            );
        }
        for order in &moved {
            let key = order.key.as_deref();
            let placement = growth().placement(key.unwrap_or_default());
            let writes: Vec<&Produced> = state
                .outputs_to("state")
                .filter(|r| {
                    r.key.as_deref() == key
                        && r.from.partition == placement.origin
                        && r.from.offset >= barrier[placement.origin as usize]
                })
                .collect();
            assert_eq!(
                writes
                    .iter()
                    .map(|r| (r.partition, r.tombstone))
                    .collect::<Vec<_>>(),
                [
                    (Some(placement.destination), false),
                    (Some(placement.origin), true)
                ],
                "moved once to its new state partition, deleted from its old one"
            );
        }
    }

    // A producer that broke the settle window: a moved key on its old partition is forwarded.
    let late = moved[0];
    let late_key = late.key.as_deref().expect("keyed");
    let origin = broker.produce(3, late_key, &late.payload);
    broker.wait_until("the late record committed", WAIT, |state| {
        committed_to_the_end(state, origin..origin + 1)
    });
    {
        let state = broker.state();
        let forwarded: Vec<&Produced> = state.outputs_to("orders").collect();
        assert_eq!(forwarded.len(), 1, "{forwarded:?}");
        let offset = state.input[&origin].len() - 1;
        assert_eq!(forwarded[0].key.as_deref(), Some(late_key));
        assert_eq!(forwarded[0].payload, late.payload, "unchanged");
        assert_eq!(
            forwarded[0].partition,
            Some(growth().placement(late_key).destination)
        );
        assert_eq!(
            forwarded[0].header(FORWARDED_FROM),
            Some(format!("{origin}/{offset}").as_str())
        );
        assert_eq!(
            forwarded[0].header("traceparent"),
            Some("00-trace"),
            "headers kept"
        );
    }

    // Released: the new partitions restore the moved dedup states and process from their start.
    announce(&view, Phase::Released);
    broker.wait_until(
        "every partition processed",
        WAIT,
        BrokerState::all_committed,
    );
    let metrics = running.metrics();
    running.stop().expect("clean stop");

    let state = broker.state();
    let validated = count_by_key(state.outputs_to("orders.validated"));
    assert_eq!(validated.len(), orders.len());
    assert!(
        validated.values().all(|&count| count == 1),
        "each order validated once, re-submissions on new partitions included"
    );
    assert_eq!(
        state.outputs_to("orders.dlq").count(),
        0,
        "nothing dead-lettered"
    );
    assert_eq!(state.outputs_to("orders.rejected").count(), 0);
    for expected in [
        "orderpipe_partitions_held{pipeline=\"shop\",stage=\"validate\"} 0".to_owned(),
        format!(
            "orderpipe_reshard_keys_moved_total{{pipeline=\"shop\",stage=\"validate\"}} {}",
            moved.len()
        ),
        "orderpipe_growth_forwarded_total{pipeline=\"shop\",stage=\"validate\"} 1".to_owned(),
    ] {
        assert!(
            metrics.contains(&expected),
            "missing {expected} in\n{metrics}"
        );
    }
}
