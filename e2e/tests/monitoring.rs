//! `config/monitoring`: the alert rules pass `promtool check rules` and their unit tests
//! (`rules_test.yaml`), and the rules and the Grafana dashboard name only metrics the binaries export
//! (the operator's registry, and the worker contract's names, which the worker's own tests prove it
//! exports).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use orderpipe_api::contract::metrics as worker;
use orderpipe_operator::metrics::Metrics;
use prometheus_client::registry::Registry;
use serde_json::Value;

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/monitoring")
}

/// The `spec` of the PrometheusRule: a plain Prometheus rule file.
fn rule_file() -> anyhow::Result<String> {
    let rule: Value = serde_norway::from_str(&std::fs::read_to_string(
        monitoring_dir().join("prometheusrule.yaml"),
    )?)?;
    Ok(serde_norway::to_string(&rule["spec"])?)
}

/// Metric names (`orderpipe_...`) in a text, with histogram suffixes folded to the family name.
/// A name starts a word: `label_orderpipe_dev_stage` (kube-state-metrics' label for
/// `orderpipe.dev/stage`) is no metric of ours.
fn referenced_metrics(text: &str) -> BTreeSet<String> {
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("orderpipe_") {
        let starts_word = !rest[..start].ends_with(is_name_char);
        let tail = &rest[start..];
        let end = tail.find(|c: char| !is_name_char(c)).unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .fold(name, |n, suffix| n.strip_suffix(suffix).unwrap_or(n));
        if starts_word {
            names.insert(family.to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// Every metric family the operator exports once it has done some work (a labelled family has no
/// series, and so no exposition, before its first use), as exposed (counters with `_total`).
fn operator_exports() -> BTreeSet<String> {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    metrics.reconciled();
    metrics.failed("kafka");
    metrics.admin_operation("describe", true);
    metrics.api_write("Deployment", "apply");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .flat_map(|line| {
            let mut parts = line.split(' ');
            let (name, kind) = (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            );
            if kind == "counter" {
                vec![format!("{name}_total")]
            } else {
                vec![name.to_string()]
            }
        })
        .collect()
}

fn worker_exports() -> BTreeSet<String> {
    [
        worker::RECORDS_CONSUMED,
        worker::RECORDS_PROCESSED,
        worker::CONSUMER_LAG,
        worker::DEAD_LETTERS,
        worker::TRANSACTIONS,
        worker::RETRIES,
        worker::WEBHOOK_REQUESTS,
        worker::REBALANCES,
        worker::ASSIGNED_PARTITIONS,
        worker::PROCESSING_DURATION,
        worker::PIPELINE_LATENCY,
        worker::PARTITIONS_HELD,
        worker::RESHARD_KEYS_MOVED,
        worker::GROWTH_FORWARDED,
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

#[test]
fn rules_and_dashboards_name_only_exported_metrics() -> anyhow::Result<()> {
    let exported: BTreeSet<String> = operator_exports()
        .union(&worker_exports())
        .cloned()
        .collect();
    let dashboard = std::fs::read_to_string(monitoring_dir().join("grafana/orderpipe.json"))?;
    serde_json::from_str::<Value>(&dashboard)?;
    for (what, text) in [
        ("prometheusrule.yaml", rule_file()?),
        ("grafana/orderpipe.json", dashboard),
    ] {
        let referenced = referenced_metrics(&text);
        assert!(!referenced.is_empty(), "{what} names no metric");
        let unknown: Vec<_> = referenced.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{what} names metrics nothing exports: {unknown:?}\nexported: {exported:?}"
        );
    }
    Ok(())
}

#[test]
#[ignore = "needs promtool (Debian prometheus): make test-e2e"]
fn alert_rules_pass_promtool_check_and_their_unit_tests() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("rules.yaml"), rule_file()?)?;
    std::fs::copy(
        monitoring_dir().join("rules_test.yaml"),
        dir.path().join("rules_test.yaml"),
    )?;
    for args in [
        ["check", "rules", "rules.yaml"],
        ["test", "rules", "rules_test.yaml"],
    ] {
        let output = Command::new("promtool")
            .args(args)
            .current_dir(dir.path())
            .output()?;
        assert!(
            output.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

#[test]
fn every_alert_rule_has_a_unit_test_that_fires_it() -> anyhow::Result<()> {
    let rules: Value = serde_norway::from_str(&rule_file()?)?;
    let alerts: BTreeSet<&str> = rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|group| group["rules"].as_array().into_iter().flatten())
        .filter_map(|rule| rule["alert"].as_str())
        .collect();
    let tests: Value = serde_norway::from_str(&std::fs::read_to_string(
        monitoring_dir().join("rules_test.yaml"),
    )?)?;
    let fired: BTreeSet<&str> = tests["tests"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|test| test["alert_rule_test"].as_array().into_iter().flatten())
        .filter(|case| {
            case["exp_alerts"]
                .as_array()
                .is_some_and(|alerts| !alerts.is_empty())
        })
        .filter_map(|case| case["alertname"].as_str())
        .collect();
    let untested: Vec<_> = alerts.difference(&fired).collect();
    assert!(
        untested.is_empty(),
        "alerts no promtool unit test fires: {untested:?}"
    );
    Ok(())
}

#[test]
fn a_label_that_contains_our_prefix_names_no_metric() {
    let names = referenced_metrics(
        r#"kube_horizontalpodautoscaler_labels{label_orderpipe_dev_stage="notify"} * orderpipe_consumer_lag"#,
    );
    assert_eq!(names, BTreeSet::from(["orderpipe_consumer_lag".to_owned()]));
}
