//! The notify stage: transient webhook failures are retried, permanent and exhausted ones
//! dead-lettered, each attempt audited once; a partition waiting on its webhook does not hold back
//! the others, and one waiting order does not hold back the other orders of its partition.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use orderpipe_orders::notify::{HttpOutcome, NotifyPolicy, RetryPolicy};
use orderpipe_orders::{
    DispatchResult, EventDetails, NotificationDispatched, OrderState, StatusChanged, headers,
};
use tokio_util::sync::CancellationToken;

use super::{TestStage, WAIT, worker_config};
use crate::runtime::memory::{Broker, BrokerState, Produced};
use crate::stage::notify::NotifyStage;
use crate::stage::webhook::Webhook;

/// A webhook answering from per-key scripts (200 once a script runs out), optionally holding one
/// key's requests until a gate opens.
#[derive(Default)]
struct ScriptedWebhook {
    scripts: Mutex<HashMap<String, VecDeque<HttpOutcome>>>,
    calls: Mutex<Vec<String>>,
    gate: Option<(String, CancellationToken)>,
}

impl ScriptedWebhook {
    fn script(self, key: &str, outcomes: impl IntoIterator<Item = HttpOutcome>) -> Self {
        self.scripts
            .lock()
            .expect("scripts")
            .insert(key.to_owned(), outcomes.into_iter().collect());
        self
    }

    fn calls_for(&self, key: &str) -> usize {
        self.calls
            .lock()
            .expect("calls")
            .iter()
            .filter(|k| *k == key)
            .count()
    }
}

impl Webhook for Arc<ScriptedWebhook> {
    async fn post(&self, body: &[u8], headers: &[(&'static str, &str)]) -> HttpOutcome {
        let key = headers
            .iter()
            .find(|(name, _)| *name == headers::IDEMPOTENCY_KEY)
            .map(|(_, value)| (*value).to_owned())
            .unwrap_or_default();
        assert!(
            String::from_utf8_lossy(body).contains(&key),
            "the body names the notification the key identifies"
        );
        if let Some((gated, gate)) = &self.gate
            && *gated == key
        {
            gate.cancelled().await;
        }
        self.calls.lock().expect("calls").push(key.clone());
        self.scripts
            .lock()
            .expect("scripts")
            .get_mut(&key)
            .and_then(VecDeque::pop_front)
            .unwrap_or(HttpOutcome::Response {
                status: 200,
                retry_after: None,
            })
    }
}

fn status(code: u16) -> HttpOutcome {
    HttpOutcome::Response {
        status: code,
        retry_after: None,
    }
}

fn changed(order: &str, to: OrderState, version: u64) -> (Option<Vec<u8>>, Vec<u8>) {
    let record = StatusChanged {
        order_id: order.to_owned(),
        from: OrderState::Placed,
        to,
        version,
        at: DateTime::<Utc>::from_timestamp(1_750_000_000, 0).unwrap_or_default(),
        event_id: format!("{order}-ev{version}"),
        details: EventDetails::default(),
    };
    (
        Some(order.as_bytes().to_vec()),
        serde_json::to_vec(&record).expect("serialises"),
    )
}

/// The notify stage posting to `webhook`, retrying within milliseconds.
fn stage(webhook: &Arc<ScriptedWebhook>) -> TestStage<NotifyStage<Arc<ScriptedWebhook>>> {
    let config = worker_config("notify", "order-status", "audit=notifications.audit", false);
    let webhook = Arc::clone(webhook);
    TestStage::new(config, move |metrics| {
        let policy = NotifyPolicy {
            retry: RetryPolicy {
                max_attempts: 3,
                base_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(2),
                max_retry_after: Duration::from_millis(5),
            },
            ..NotifyPolicy::default()
        };
        NotifyStage::new(policy, webhook, Arc::clone(metrics))
    })
}

#[test]
fn notify_retries_transient_failures_and_dead_letters_permanent_and_exhausted_ones() {
    let webhook = Arc::new(
        ScriptedWebhook::default()
            .script("ord-a:3:webhook", [status(503), status(503)])
            .script("ord-b:4:webhook", [status(500), status(502), status(500)])
            .script("ord-c:2:webhook", [status(400)])
            .script(
                "ord-d:5:webhook",
                [HttpOutcome::Response {
                    status: 429,
                    retry_after: Some("0".to_owned()),
                }],
            ),
    );
    let broker = Broker::with_input(
        2,
        [
            changed("ord-a", OrderState::Shipped, 3),
            changed("ord-b", OrderState::Delivered, 4),
            changed("ord-c", OrderState::Cancelled, 2),
            changed("ord-d", OrderState::Refunded, 5),
            changed("ord-e", OrderState::PaymentAuthorized, 2),
            changed("ord-g", OrderState::Validated, 1),
            (Some(b"ord-f".to_vec()), b"{not json".to_vec()),
        ],
    );
    let running = stage(&webhook).start(&broker);
    broker.wait_until("every change committed", WAIT, BrokerState::all_committed);
    let text = running.metrics();
    running.stop().expect("clean shutdown");

    let state = broker.state();
    let audits: HashMap<String, NotificationDispatched> = state
        .outputs_to("notifications.audit")
        .map(|r| {
            let audit: NotificationDispatched = serde_json::from_slice(&r.payload).expect("audit");
            (audit.order_id.clone(), audit)
        })
        .collect();
    let result = |order: &str| {
        let audit = &audits[order];
        (audit.result, audit.attempts, audit.http_status)
    };
    assert_eq!(result("ord-a"), (DispatchResult::Delivered, 3, Some(200)));
    assert_eq!(
        result("ord-b"),
        (DispatchResult::RetriesExhausted, 3, Some(500))
    );
    assert_eq!(result("ord-c"), (DispatchResult::Rejected, 1, Some(400)));
    assert_eq!(result("ord-d"), (DispatchResult::Delivered, 2, Some(200)));
    assert_eq!(result("ord-g"), (DispatchResult::Delivered, 1, Some(200)));
    assert_eq!(
        audits.len(),
        5,
        "no audit for a skipped transition or garbage"
    );

    let dead: HashMap<Vec<u8>, &Produced> = state
        .outputs_to("orders.dlq")
        .map(|r| (r.key.clone().unwrap_or_default(), r))
        .collect();
    assert_eq!(dead.len(), 3);
    assert_eq!(
        dead[&b"ord-b".to_vec()].header(headers::ERROR_REASON),
        Some("retries_exhausted")
    );
    assert_eq!(
        dead[&b"ord-b".to_vec()].header(headers::NOTIFY_ATTEMPTS),
        Some("3")
    );
    assert_eq!(
        dead[&b"ord-c".to_vec()].header(headers::ERROR_REASON),
        Some("webhook_rejected")
    );
    assert_eq!(
        dead[&b"ord-c".to_vec()].header(headers::NOTIFY_HTTP_STATUS),
        Some("400")
    );
    assert_eq!(
        dead[&b"ord-f".to_vec()].header(headers::ERROR_REASON),
        Some("not_json")
    );

    for (key, calls) in [
        ("ord-a:3:webhook", 3),
        ("ord-b:4:webhook", 3),
        ("ord-c:2:webhook", 1),
        ("ord-d:5:webhook", 2),
        ("ord-e:2:webhook", 0),
        ("ord-g:1:webhook", 1),
    ] {
        assert_eq!(webhook.calls_for(key), calls, "{key}");
    }
    assert!(
        text.contains(r#"orderpipe_retries_total{pipeline="shop",stage="notify"} 5"#),
        "{text}"
    );
}

#[test]
fn a_partition_blocked_by_retries_does_not_hold_back_the_others() {
    let orders: Vec<String> = (0..40).map(|i| format!("ord-{i:03}")).collect();
    let gate = CancellationToken::new();
    let blocked_order = orders[7].clone();
    let webhook = Arc::new(ScriptedWebhook {
        gate: Some((format!("{blocked_order}:1:webhook"), gate.clone())),
        ..ScriptedWebhook::default()
    });
    let broker = Broker::with_input(
        2,
        orders
            .iter()
            .map(|order| changed(order, OrderState::Validated, 1)),
    );
    let (blocked_partition, blocked_offset) = {
        let state = broker.state();
        state
            .input
            .iter()
            .flat_map(|(p, log)| log.iter().map(move |r| (*p, r)))
            .find(|(_, r)| r.key.as_deref() == Some(blocked_order.as_bytes()))
            .map(|(p, r)| (p, r.offset))
            .expect("the blocked order is in the input")
    };
    let running = stage(&webhook).start(&broker);
    broker.wait_until(
        "the other partition committed, the blocked one up to the order",
        WAIT,
        |state| {
            state.input.iter().all(|(partition, log)| {
                let committed = state.committed.get(partition).copied().unwrap_or(0);
                if *partition == blocked_partition {
                    committed == blocked_offset
                } else {
                    committed == log.len() as i64
                }
            })
        },
    );
    gate.cancel();
    broker.wait_until(
        "everything committed once the webhook answers",
        WAIT,
        BrokerState::all_committed,
    );
    running.stop().expect("clean shutdown");
    assert_eq!(
        broker.state().outputs_to("notifications.audit").count(),
        orders.len()
    );
}

#[test]
fn a_partition_posts_for_other_orders_while_one_waits_and_each_orders_notifications_keep_their_order()
 {
    let gate = CancellationToken::new();
    let webhook = Arc::new(ScriptedWebhook {
        gate: Some(("ord-a:1:webhook".to_owned(), gate.clone())),
        ..ScriptedWebhook::default()
    });
    // One partition: offsets 0 to 4.
    let broker = Broker::with_input(
        1,
        [
            changed("ord-a", OrderState::Validated, 1),
            changed("ord-b", OrderState::Validated, 1),
            changed("ord-c", OrderState::Validated, 1),
            changed("ord-a", OrderState::Shipped, 2),
            changed("ord-d", OrderState::Validated, 1),
        ],
    );
    let running = stage(&webhook).start(&broker);
    let deadline = std::time::Instant::now() + WAIT;
    while !(webhook.calls_for("ord-b:1:webhook") == 1 && webhook.calls_for("ord-c:1:webhook") == 1)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for the POSTs of ord-b and ord-c while ord-a's waits: {:?}",
            webhook.calls.lock().expect("calls")
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        webhook.calls_for("ord-a:2:webhook"),
        0,
        "ord-a's second notification went out before its first was answered"
    );
    assert_eq!(
        broker.state().committed.get(&0).copied().unwrap_or(0),
        0,
        "offsets after the unanswered record were committed"
    );

    gate.cancel();
    broker.wait_until(
        "everything committed once the webhook answers",
        WAIT,
        BrokerState::all_committed,
    );
    running.stop().expect("clean shutdown");
    let calls = webhook.calls.lock().expect("calls").clone();
    let position = |key: &str| calls.iter().position(|call| call == key);
    assert!(
        position("ord-a:1:webhook") < position("ord-a:2:webhook"),
        "{calls:?}"
    );
    let audited_offsets: Vec<i64> = broker
        .state()
        .outputs_to("notifications.audit")
        .map(|audit| audit.from.offset)
        .collect();
    assert_eq!(audited_offsets, [0, 1, 2, 3, 4], "audits in offset order");
}
