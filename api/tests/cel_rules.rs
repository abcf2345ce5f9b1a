//! The CRD's CEL rules, evaluated client-side with kube's CEL validator: each rule rejects the object
//! it is written for, with a message naming the offending field, and accepts the valid neighbour.
//! The same objects are sent to a real kube-apiserver by the e2e admission tests.

use std::collections::BTreeMap;

use orderpipe_api::OrderPipeline;
use orderpipe_api::v1alpha1::{
    AutoscalingSpec, CanaryPause, CanarySpec, CanaryStep, Duration, NotifySpec, OutputTopic,
    Processor, RolloutSpec, RolloutStrategy, WebhookSpec,
};

/// A valid pipeline with one validate stage; each test breaks one field of it.
fn minimal() -> OrderPipeline {
    OrderPipeline::test("shop").in_namespace("default")
}

fn outputs(pairs: &[(&str, &str)]) -> BTreeMap<String, OutputTopic> {
    pairs
        .iter()
        .map(|&(name, topic)| (name.into(), OutputTopic(topic.into())))
        .collect()
}

/// The messages of all failed rules, or an empty list when the object is valid.
fn violations(pipeline: OrderPipeline) -> Vec<String> {
    match kube::core::cel::validate_cel(&pipeline) {
        Ok(()) => vec![],
        Err(errors) => errors
            .iter()
            .map(|e| format!("{}: {}", e.field_path, e.message))
            .collect(),
    }
}

fn update_violations(old: OrderPipeline, new: OrderPipeline) -> Vec<String> {
    match kube::core::cel::validate_cel_update(&new, &old) {
        Ok(()) => vec![],
        Err(errors) => errors
            .iter()
            .map(|e| format!("{}: {}", e.field_path, e.message))
            .collect(),
    }
}

#[track_caller]
fn assert_rejected_naming(violations: &[String], needle: &str) {
    assert!(
        violations.iter().any(|v| v.contains(needle)),
        "expected a violation naming {needle:?}, got {violations:?}"
    );
}

#[test]
fn minimal_fixture_is_valid() {
    assert_eq!(violations(minimal()), Vec::<String>::new());
}

#[test]
fn stage_input_must_name_a_declared_topic() {
    let mut p = minimal();
    p.spec.stages[0].input = "orders.typo".into();
    let v = violations(p);
    assert_rejected_naming(
        &v,
        "spec.stages[].input must name a topic declared in spec.topics",
    );
}

#[test]
fn dead_letter_must_name_a_declared_topic() {
    let mut p = minimal();
    p.spec.stages[0].dead_letter = "nowhere".into();
    assert_rejected_naming(&violations(p), "spec.stages[].deadLetter");
}

#[test]
fn outputs_must_name_declared_topics() {
    let mut p = minimal();
    p.spec.stages[0]
        .outputs
        .insert("validated".into(), OutputTopic("orders.valid".into()));
    assert_rejected_naming(&violations(p), "spec.stages[].outputs");
}

#[test]
fn topic_named_dot_or_dot_dot_is_rejected() {
    for name in [".", ".."] {
        let mut p = minimal();
        p.spec.topics[3].name = name.into();
        p.spec.stages[0].dead_letter = name.into();
        assert_rejected_naming(&violations(p), "spec.topics[].name");
    }
}

#[test]
fn partitions_may_grow_but_never_shrink() {
    let old = minimal();
    let grown = minimal().partitions("orders", 6);
    assert_eq!(update_violations(old.clone(), grown), Vec::<String>::new());

    let shrunk = minimal().partitions("orders", 2);
    let v = update_violations(old, shrunk);
    assert_rejected_naming(&v, "spec.topics[orders].partitions may only grow");
}

#[test]
fn replication_factor_is_immutable() {
    let old = minimal().replication_factor("orders", 1);
    let new = old.clone().replication_factor("orders", 3);
    assert_rejected_naming(
        &update_violations(old.clone(), new),
        "replicationFactor cannot be changed",
    );

    let mut unset = old.clone();
    unset.spec.topics[0].replication_factor = None;
    assert_rejected_naming(
        &update_violations(old, unset),
        "replicationFactor cannot be changed",
    );
}

#[test]
fn custom_processor_requires_an_image() {
    let mut p = minimal();
    p.spec.stages[0].processor = Processor::Custom;
    assert_rejected_naming(&violations(p.clone()), "spec.stages[].image is required");
    p.spec.stages[0].image = Some("registry.example/fraud-check:1.2".into());
    assert_eq!(violations(p), Vec::<String>::new());
}

#[test]
fn replicas_and_autoscaling_are_exclusive() {
    let p = minimal()
        .replicas("validate", 2)
        .autoscaling("validate", AutoscalingSpec::test(3));
    assert_rejected_naming(&violations(p), "either replicas or autoscaling");
}

#[test]
fn min_replicas_must_not_exceed_max_replicas() {
    let p = minimal().autoscaling(
        "validate",
        AutoscalingSpec {
            min_replicas: 4,
            ..AutoscalingSpec::test(2)
        },
    );
    assert_rejected_naming(
        &violations(p),
        "autoscaling.minReplicas must not exceed maxReplicas",
    );
}

#[test]
fn min_replicas_zero_needs_a_lag_target() {
    let parked = AutoscalingSpec {
        min_replicas: 0,
        ..AutoscalingSpec::test(3)
    };
    assert_rejected_naming(
        &violations(minimal().autoscaling("validate", parked.clone())),
        "minReplicas may be 0 only with targetLagPerReplica",
    );
    let with_lag = AutoscalingSpec {
        target_lag_per_replica: Some(100),
        park_after_idle_seconds: Some(60),
        ..parked
    };
    assert_eq!(
        violations(minimal().autoscaling("validate", with_lag)),
        Vec::<String>::new()
    );
}

#[test]
fn park_after_idle_seconds_only_with_min_replicas_zero() {
    let p = minimal().autoscaling(
        "validate",
        AutoscalingSpec {
            target_lag_per_replica: Some(100),
            park_after_idle_seconds: Some(60),
            ..AutoscalingSpec::test(3)
        },
    );
    assert_rejected_naming(
        &violations(p),
        "parkAfterIdleSeconds is only allowed with minReplicas 0",
    );
}

#[test]
fn max_replicas_above_partitions_is_accepted_and_capped_later() {
    // Documented choice: the operator caps maxReplicas at the input partitions and says so in status,
    // because partitions may grow later and the user's intent stays meaningful.
    let p = minimal().autoscaling("validate", AutoscalingSpec::test(50));
    assert_eq!(violations(p), Vec::<String>::new());
}

#[test]
fn notify_processor_requires_webhook_settings_and_only_it_may_have_them() {
    let mut p = minimal();
    p.spec.stages[0].processor = Processor::Notify;
    p.spec.stages[0].outputs = outputs(&[("audit", "orders.validated")]);
    assert_rejected_naming(
        &violations(p.clone()),
        "spec.stages[].notify (webhook settings) is required",
    );

    let mut q = minimal();
    q.spec.stages[0].notify = Some(NotifySpec {
        webhook: WebhookSpec {
            url: "http://127.0.0.1:1/hook".into(),
            auth_secret_ref: None,
            timeout: None,
        },
        channel: None,
        retry: None,
    });
    assert_rejected_naming(
        &violations(q),
        "notify is only allowed when processor is notify",
    );
}

#[test]
fn built_in_processors_require_their_named_outputs() {
    let mut p = minimal();
    p.spec.stages[0].outputs = outputs(&[("validated", "orders.validated")]);
    assert_rejected_naming(&violations(p), "'validated' and 'rejected'");

    let mut s = minimal();
    s.spec.stages[0].processor = Processor::Status;
    assert_rejected_naming(&violations(s), "'changes' topic for processor status");
}

#[test]
fn canary_step_sets_exactly_one_action() {
    let mut p = minimal();
    p.spec.stages[0].rollout = Some(RolloutSpec {
        strategy: RolloutStrategy::Canary,
        canary: Some(CanarySpec {
            steps: vec![CanaryStep {
                set_weight: Some(20),
                pause: Some(CanaryPause {
                    duration: Some(Duration("1m".into())),
                }),
            }],
            analysis: None,
        }),
    });
    assert_rejected_naming(&violations(p), "exactly one of setWeight or pause");
}

#[test]
fn canary_settings_need_the_canary_strategy() {
    let mut p = minimal();
    p.spec.stages[0].rollout = Some(RolloutSpec {
        strategy: RolloutStrategy::RollingUpdate,
        canary: Some(CanarySpec {
            steps: vec![CanaryStep {
                set_weight: Some(20),
                pause: None,
            }],
            analysis: None,
        }),
    });
    assert_rejected_naming(
        &violations(p),
        "rollout.canary is only allowed when strategy is Canary",
    );
}

#[test]
fn pipeline_name_must_be_a_dns_label_that_leaves_room_for_stage_names() {
    let mut p = minimal();
    p.metadata.name = Some("shop.eu".into());
    assert_rejected_naming(&violations(p), "metadata.name must be a DNS-1035 label");

    let mut long = minimal();
    long.metadata.name = Some("a".repeat(50));
    long.spec.stages[0].name = "validate-orders-for-the-european-shop".into();
    assert_rejected_naming(&violations(long), "must fit in 63 characters");
}

#[test]
fn a_stage_may_not_feed_its_own_input() {
    let mut p = minimal();
    p.spec.stages[0].dead_letter = "orders".into();
    assert_rejected_naming(
        &violations(p),
        "deadLetter must not be the stage's input topic",
    );
    let mut p = minimal();
    p.spec.stages[0]
        .outputs
        .insert("validated".into(), OutputTopic("orders".into()));
    assert_rejected_naming(
        &violations(p),
        "outputs must not name the stage's input topic",
    );
    let mut p = minimal();
    p.spec.stages[0]
        .outputs
        .insert("rejected".into(), OutputTopic("orders.dlq".into()));
    assert_rejected_naming(&violations(p), "or its deadLetter topic");
}

#[test]
fn an_image_must_be_an_image_reference() {
    let digest = format!("@sha256:{}", "ab".repeat(32));
    for good in [
        "worker".to_owned(),
        "registry.example.com:5000/shop/order-worker:1.4.2".to_owned(),
        "docker.io/orderpipe/orderpipe-worker:abc123def456".to_owned(),
        "localhost:5000/a__b/c.d-e:v1_2".to_owned(),
        format!("ghcr.io/shop/worker{digest}"),
        format!("ghcr.io/shop/worker:1.0{digest}"),
    ] {
        let mut p = minimal();
        p.spec.stages[0].image = Some(good.clone());
        assert_eq!(violations(p), Vec::<String>::new(), "{good}");
    }
    for bad in [
        "Shop/Worker:1.0",
        "worker:",
        "worker:1.0 ",
        "https://registry.example.com/worker",
        "worker@sha256:short",
        "registry.example.com/-worker",
        "worker::1",
    ] {
        let mut p = minimal();
        p.spec.stages[0].image = Some(bad.into());
        assert_rejected_naming(&violations(p), "image must be an image reference");
    }
}

#[test]
fn kafka_internal_topic_names_are_refused() {
    for name in ["__consumer_offsets", "__transaction_state", "__orders"] {
        let p = minimal().topic(name, 1);
        assert_rejected_naming(
            &violations(p),
            "spec.topics[].name must not start with '__'",
        );
    }
    // One underscore is an ordinary name.
    assert_eq!(
        violations(minimal().topic("_orders", 1)),
        Vec::<String>::new()
    );
}

#[test]
fn topic_names_the_operator_derives_are_refused() {
    // Another namespace's state and control topics: a pipeline must not reach them by name.
    for name in [
        "orderpipe.other.checkout.status.state",
        "orderpipe.other.checkout.control",
        "orderpipe.",
    ] {
        assert_rejected_naming(
            &violations(minimal().topic(name, 1)),
            "spec.topics[].name must not start with 'orderpipe.'",
        );
    }
    assert_eq!(
        violations(minimal().topic("orderpipe-orders", 1)),
        Vec::<String>::new()
    );
}

/// Link-local and cloud-metadata hosts, as a bootstrap server (`host:port`) writes them.
const METADATA_SERVERS: [&str; 9] = [
    "169.254.169.254:80",
    "169.254.0.1:9092",
    "metadata.google.internal:80",
    "METADATA.Google.Internal.:80",
    "[fe80::1]:9092",
    "[FEBF::1]:9092",
    "[fd00:ec2::254]:80",
    "[fd00:0ec2:0:0:0:0:0:254]:80",
    "[::ffff:169.254.169.254]:80",
];

/// Neighbours of the refused hosts that are ordinary addresses.
const ORDINARY_SERVERS: [&str; 6] = [
    "169.255.169.254:9092",
    "kafka.metadata.google.internal.example:9092",
    "[fec0::1]:9092",
    "[fd00:ec2::253]:9092",
    "[fd00:ec2:1::254]:9092",
    "broker-169.254.169.254.example:9092",
];

#[test]
fn bootstrap_servers_must_not_name_link_local_or_metadata_addresses() {
    for server in METADATA_SERVERS {
        let p = minimal().bootstrap(server);
        assert_rejected_naming(
            &violations(p),
            "spec.kafka.bootstrapServers must not name a link-local or cloud-metadata address",
        );
    }
    for server in ORDINARY_SERVERS {
        assert_eq!(
            violations(minimal().bootstrap(server)),
            Vec::<String>::new(),
            "{server}"
        );
    }
}

/// The fixture's stage turned into a notify stage POSTing to `url`.
fn notifying_to(url: &str) -> OrderPipeline {
    let mut p = minimal();
    let stage = &mut p.spec.stages[0];
    stage.processor = Processor::Notify;
    stage.outputs = outputs(&[("audit", "orders.validated")]);
    stage.notify = Some(NotifySpec {
        webhook: WebhookSpec {
            url: url.into(),
            auth_secret_ref: None,
            timeout: None,
        },
        channel: None,
        retry: None,
    });
    p
}

#[test]
fn webhook_urls_must_not_name_link_local_or_metadata_addresses() {
    for server in METADATA_SERVERS {
        for url in [
            format!("http://{server}/latest/meta-data/"),
            format!("https://user@{server}"),
        ] {
            assert_rejected_naming(
                &violations(notifying_to(&url)),
                "notify.webhook.url must not name a link-local or cloud-metadata address",
            );
        }
    }
    for server in ORDINARY_SERVERS {
        let url = format!("https://{server}/hook?next=http://169.254.169.254/");
        assert_eq!(
            violations(notifying_to(&url)),
            Vec::<String>::new(),
            "{url}"
        );
    }
}

#[test]
fn an_intake_in_front_of_a_validate_and_a_status_stage_is_valid() {
    assert_eq!(violations(minimal().with_intake()), Vec::<String>::new());
}

#[test]
fn intake_orders_topic_must_be_a_validate_stages_input() {
    let mut p = minimal().with_intake();
    // Declared, but read by no validate stage: orders posted there would skip validation.
    p.spec.intake.as_mut().expect("intake").orders_topic = "orders.rejected".into();
    assert_rejected_naming(&violations(p), "spec.intake.ordersTopic");
}

#[test]
fn intake_status_topic_must_be_a_status_stages_changes() {
    let mut p = minimal().with_intake();
    p.spec.intake.as_mut().expect("intake").status_topic = "orders.validated".into();
    assert_rejected_naming(&violations(p), "spec.intake.statusTopic");
}

#[test]
fn no_stage_may_be_named_intake_while_the_gateway_is_declared() {
    let mut p = minimal().with_intake();
    p.spec.stages[1].name = "intake".into();
    assert_rejected_naming(&violations(p), "must not be 'intake'");
}

#[test]
fn intake_min_replicas_must_not_exceed_max_replicas() {
    let mut p = minimal().with_intake();
    let intake = p.spec.intake.as_mut().expect("intake");
    intake.min_replicas = 5;
    intake.max_replicas = 3;
    assert_rejected_naming(&violations(p), "spec.intake.minReplicas");
}
