//! The committed JSON Schemas (`docs/schemas/`) accept every record the stages produce and the
//! samples the tests build, and their enums list exactly the codes the code knows.
//!
//! The schemas are written by hand (they are the contract other teams read, with descriptions and
//! patterns), and this test is what keeps them true.

use std::collections::BTreeMap;
use std::path::PathBuf;

use jsonschema::{Registry, Validator};
use orderpipe_orders::generator::{
    EventConfig, EventGenerator, GenConfig, Mutation, OrderGenerator,
};
use orderpipe_orders::notify::{AttemptDecision, HttpOutcome, Notifier, NotifyPlan};
use orderpipe_orders::status::{OrderStatusState, StatusMachine};
use orderpipe_orders::validate::{ValidatePolicy, Validator as OrderValidator};
use orderpipe_orders::{
    DispatchResult, EventType, OrderPlaced, OrderState, Output, Processor, Rule, currency,
};
use serde_json::Value;

use crate::support::{self, input, input_at};

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/schemas")
}

/// Every committed schema by file stem (`order-placed`, ...).
fn schemas() -> BTreeMap<String, Value> {
    std::fs::read_dir(schema_dir())
        .expect("docs/schemas exists")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.to_string_lossy().ends_with(".schema.json"))
        .map(|path| {
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .replace(".schema.json", "");
            let text = std::fs::read_to_string(&path).expect("readable");
            (name, serde_json::from_str(&text).expect("schema is JSON"))
        })
        .collect()
}

struct Schemas {
    validators: BTreeMap<String, Validator>,
}

impl Schemas {
    fn load() -> Self {
        let all = schemas();
        let resources = all.values().map(|schema| {
            let id = schema["$id"]
                .as_str()
                .expect("every schema has an $id")
                .to_owned();
            (id, schema.clone())
        });
        let registry = Registry::new()
            .extend(resources)
            .expect("valid ids")
            .prepare()
            .expect("registry");
        let validators = all
            .iter()
            .filter(|(name, _)| *name != "common")
            .map(|(name, schema)| {
                let validator = jsonschema::options()
                    .with_registry(&registry)
                    .should_validate_formats(true)
                    .build(schema)
                    .unwrap_or_else(|error| panic!("{name}: {error}"));
                (name.clone(), validator)
            })
            .collect();
        Self { validators }
    }

    fn validator(&self, kind: &str) -> &Validator {
        self.validators
            .get(kind)
            .unwrap_or_else(|| panic!("no schema {kind}"))
    }

    fn assert_valid(&self, kind: &str, payload: &[u8]) {
        let instance: Value = serde_json::from_slice(payload).expect("records are JSON");
        let errors: Vec<String> = self
            .validator(kind)
            .iter_errors(&instance)
            .map(|error| error.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{kind} sample fails its schema: {errors:?}\n{instance:#}"
        );
    }
}

/// Samples of every record kind, produced by the real stages from generated input.
fn samples() -> Vec<(&'static str, Vec<u8>)> {
    let mut samples = Vec::new();
    let validator = OrderValidator::default();
    let mut generator = OrderGenerator::new(99, GenConfig::default());
    let mut order_placed: Vec<OrderPlaced> = vec![support::order()];
    order_placed.extend((0..50).map(|_| generator.valid_order()));
    for order in &order_placed {
        let payload = support::json(order);
        samples.push(("order-placed", payload.clone()));
        let decision = validator.process(
            &input(Some(order.order_id.as_bytes()), Some(&payload)),
            None,
        );
        for emit in decision.emits {
            match emit.output {
                Output::Validated => samples.push(("validated-order", emit.payload)),
                Output::Changelog => samples.push(("seen-order", emit.payload)),
                Output::StatusEvent => samples.push(("status-event", emit.payload)),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    for &mutation in Mutation::ALL {
        let mutated = mutation.apply(&support::order(), 1, ValidatePolicy::default().max_items);
        let payload = support::json(&mutated.order);
        let decision = validator.process(&input(mutated.key.as_deref(), Some(&payload)), None);
        samples.extend(
            decision
                .emits
                .into_iter()
                .map(|emit| ("rejected-order", emit.payload)),
        );
    }

    let machine = StatusMachine::default();
    let notifier = Notifier::default();
    let config = EventConfig {
        duplicate_share: 0.2,
        illegal_share: 0.3,
        in_flight_share: 0.1,
    };
    let mut events = EventGenerator::new(97, config);
    for order in 0..60 {
        let mut state: Option<OrderStatusState> = None;
        for (offset, generated) in events
            .lifecycle(&format!("ord-{order}"), support::t0())
            .into_iter()
            .enumerate()
        {
            samples.push(("status-event", generated.payload.clone()));
            let record = input_at(
                Some(&generated.key),
                Some(&generated.payload),
                offset as i64,
                support::t0(),
            );
            let decision = machine.process(&record, state.as_ref());
            for emit in decision.emits {
                match emit.output {
                    Output::StatusChanged => {
                        notification_samples(&notifier, &emit.payload, &mut samples);
                        samples.push(("status-changed", emit.payload));
                    }
                    Output::Changelog => samples.push(("order-status-state", emit.payload)),
                    Output::DeadLetter => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            state = decision.state.or(state);
        }
    }
    samples
}

fn notification_samples(
    notifier: &Notifier,
    status_changed: &[u8],
    samples: &mut Vec<(&'static str, Vec<u8>)>,
) {
    let NotifyPlan::Dispatch(dispatch) = notifier.plan(&input(Some(b"k"), Some(status_changed)))
    else {
        return;
    };
    samples.push(("notification", dispatch.body().to_vec()));
    let outcomes = [
        HttpOutcome::Response {
            status: 200,
            retry_after: None,
        },
        HttpOutcome::Response {
            status: 404,
            retry_after: None,
        },
        HttpOutcome::Timeout,
    ];
    for outcome in outcomes {
        let max = notifier.policy().retry.max_attempts;
        match notifier.after_attempt(&dispatch, max, &outcome, support::t0(), 0.5) {
            AttemptDecision::Delivered { audit } | AttemptDecision::GiveUp { audit, .. } => {
                samples.push(("notification-dispatched", audit.payload));
            }
            AttemptDecision::Retry { .. } => panic!("the last attempt never retries"),
        }
    }
}

#[test]
fn every_record_the_stages_produce_validates_against_its_schema() {
    let schemas = Schemas::load();
    let samples = samples();
    for (kind, payload) in &samples {
        schemas.assert_valid(kind, payload);
    }
    let kinds: std::collections::BTreeSet<_> = samples.iter().map(|(kind, _)| *kind).collect();
    let schema_kinds: std::collections::BTreeSet<_> =
        schemas.validators.keys().map(String::as_str).collect();
    assert_eq!(
        kinds, schema_kinds,
        "every schema has samples and every sample kind has a schema"
    );
}

#[test]
fn the_order_schema_refuses_every_mutation_it_can_express() {
    let schemas = Schemas::load();
    let order_placed = schemas.validator("order-placed");
    // Cross-field, arithmetic and key rules are beyond JSON Schema; the validate stage enforces them.
    let beyond_schema = [
        Mutation::KeyMismatch,
        Mutation::KeyMissing,
        Mutation::DiscountExceedsSubtotal,
        Mutation::TotalMismatch,
        Mutation::LineOverflow,
        Mutation::SubtotalOverflow,
        Mutation::TotalOverflow,
    ];
    for &mutation in Mutation::ALL {
        let mutated = mutation.apply(&support::order(), 0, ValidatePolicy::default().max_items);
        let refused = !order_placed.is_valid(&mutated.order);
        assert_eq!(refused, !beyond_schema.contains(&mutation), "{mutation:?}");
    }
}

fn enum_codes(schema: &Value, pointer: &str) -> Vec<String> {
    schema
        .pointer(pointer)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no enum at {pointer}"))
        .iter()
        .map(|code| code.as_str().expect("string enum").to_owned())
        .collect()
}

fn codes<T: Copy>(all: &[T], code: fn(T) -> &'static str) -> Vec<String> {
    all.iter().map(|item| code(*item).to_owned()).collect()
}

#[test]
fn schema_enums_list_exactly_the_codes_the_code_knows() {
    let all = schemas();
    let common = &all["common"];
    let currencies: Vec<String> = currency::active_codes().map(str::to_owned).collect();
    assert_eq!(enum_codes(common, "/$defs/currency/enum"), currencies);
    assert_eq!(
        enum_codes(common, "/$defs/orderState/enum"),
        codes(OrderState::ALL, OrderState::code)
    );
    assert_eq!(
        enum_codes(&all["status-event"], "/properties/type/enum"),
        codes(EventType::ALL, EventType::code)
    );
    assert_eq!(
        enum_codes(
            &all["rejected-order"],
            "/properties/reasons/items/properties/rule/enum"
        ),
        codes(Rule::ALL, Rule::code)
    );
    assert_eq!(
        enum_codes(&all["notification-dispatched"], "/properties/result/enum"),
        codes(DispatchResult::ALL, DispatchResult::code)
    );
}

#[test]
fn every_schema_is_draft_2020_12_with_an_id_matching_its_file() {
    for (name, schema) in schemas() {
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{name}"
        );
        let id = schema["$id"].as_str().expect("$id");
        assert!(
            id.ends_with(&format!("/{name}.schema.json")),
            "{name}: {id}"
        );
    }
}
