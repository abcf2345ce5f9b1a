//! `docs/orders.md` names every code, header and transition the code has, so the contract other
//! teams read cannot silently fall behind.

use orderpipe_orders::status::transitions::TRANSITIONS;
use orderpipe_orders::{DeadLetterReason, DispatchResult, EventType, Rule, headers};

fn doc() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/orders.md");
    std::fs::read_to_string(path).expect("docs/orders.md exists")
}

fn assert_mentions(doc: &str, what: &str, names: impl IntoIterator<Item = String>) {
    let missing: Vec<String> = names
        .into_iter()
        .filter(|name| !doc.contains(&format!("`{name}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/orders.md does not mention these {what}: {missing:?}"
    );
}

#[test]
fn every_rule_reason_header_and_event_type_is_documented() {
    let doc = doc();
    assert_mentions(
        &doc,
        "rule codes",
        Rule::ALL.iter().map(|rule| rule.code().to_owned()),
    );
    let reasons = DeadLetterReason::ALL
        .iter()
        .map(|reason| reason.code().to_owned());
    assert_mentions(&doc, "dead-letter reasons", reasons);
    assert_mentions(
        &doc,
        "headers",
        headers::ALL.iter().map(|name| (*name).to_owned()),
    );
    assert_mentions(
        &doc,
        "event types",
        EventType::ALL.iter().map(|kind| kind.code().to_owned()),
    );
    let results = DispatchResult::ALL
        .iter()
        .map(|result| result.code().to_owned());
    assert_mentions(&doc, "dispatch results", results);
}

#[test]
fn the_documented_state_diagram_is_the_transition_table() {
    let doc = doc();
    let diagram: Vec<(String, String)> = doc
        .lines()
        .filter_map(|line| {
            let (from, to) = line.trim().split_once(" --> ")?;
            let to = to.split(':').next()?.trim();
            (from != "[*]" && to != "[*]").then(|| (from.to_owned(), to.to_owned()))
        })
        .collect();
    let mut table: Vec<(String, String)> = TRANSITIONS
        .iter()
        .map(|(from, to)| (from.code().to_owned(), to.code().to_owned()))
        .collect();
    let mut documented = diagram;
    table.sort();
    documented.sort();
    assert_eq!(documented, table);
}
