//! The shipped alert rules (`config/monitoring/prometheusrule.yaml`) on a stack's live Prometheus,
//! and the waits a test proves an alert with: it fires once its condition is real, and resolves
//! once the condition is undone.
//!
//! The rules are loaded as shipped except for time: every `for` becomes [`FOR`] and every range
//! window [`WINDOW`], so an alert fires within seconds and resolves within a window instead of
//! after minutes. The expressions, thresholds and labels are the shipped ones.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use orderpipe_stack::prometheus::{self, Alert};
use orderpipe_stack::wait_until;
use serde_json::{Value, json};

/// Every rule's `for` while a test runs (one evaluation of the stack's 5 s interval).
pub const FOR: &str = "5s";
/// Every range window (`[5m]` as shipped): six scrapes.
pub const WINDOW: &str = "30s";
/// From a condition made real to its alert firing, or from undoing it to the alert's end.
pub const ALERT_WAIT: Duration = Duration::from_secs(120);
/// How long Prometheus gets to load a rule file.
const LOAD_WAIT: Duration = Duration::from_secs(90);

/// The shipped rules with [`FOR`] and [`WINDOW`], in a rule file of a test's own; removed by
/// [`LiveRules::remove`].
#[derive(Debug)]
pub struct LiveRules {
    file: PathBuf,
    prometheus_url: String,
}

impl LiveRules {
    /// Writes the rules as `<name>.yml` into the Prometheus rules dir `dir`, reloads, and waits
    /// until every group is loaded.
    pub async fn install(dir: &Path, prometheus_url: &str, name: &str) -> anyhow::Result<Self> {
        let shipped: Value = serde_norway::from_str(&std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/monitoring/prometheusrule.yaml"),
        )?)?;
        let mut spec = shipped["spec"].clone();
        let mut names = BTreeSet::new();
        for group in spec["groups"].as_array_mut().context("no rule groups")? {
            names.insert(group["name"].as_str().unwrap_or_default().to_owned());
            for rule in group["rules"].as_array_mut().context("no rules")? {
                rule["for"] = json!(FOR);
                let expr = rule["expr"].as_str().context("a rule without expr")?;
                rule["expr"] = json!(with_window(expr, WINDOW));
            }
        }
        let file = dir.join(format!("{name}.yml"));
        std::fs::write(&file, serde_norway::to_string(&spec)?)?;
        prometheus::reload(prometheus_url).await?;
        wait_until("Prometheus loads the rules", LOAD_WAIT, || async {
            let loaded: BTreeSet<String> = prometheus::rule_groups(prometheus_url)
                .await
                .ok()?
                .into_iter()
                .collect();
            names.is_subset(&loaded).then_some(())
        })
        .await?;
        Ok(LiveRules {
            file,
            prometheus_url: prometheus_url.to_owned(),
        })
    }

    pub async fn remove(self) -> anyhow::Result<()> {
        std::fs::remove_file(&self.file)?;
        prometheus::reload(&self.prometheus_url).await?;
        Ok(())
    }
}

/// `expr` with every range window (`[5m]`, `[10m]`...) replaced by `window`.
pub fn with_window(expr: &str, window: &str) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find(']').map(|i| open + i) else {
            break;
        };
        out.push_str(&rest[..=open]);
        out.push_str(window);
        out.push(']');
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// The alerts of one test: those of its namespace, or carrying none (the operator's, the
/// brokers'), on the Prometheus at `url`.
#[derive(Debug, Clone)]
pub struct AlertWatch {
    url: String,
    namespace: Option<String>,
}

impl AlertWatch {
    /// `namespace`: the test's; alerts of other namespaces are never its. `None` for a stack of
    /// the test's own.
    pub fn new(url: &str, namespace: Option<&str>) -> Self {
        AlertWatch {
            url: url.to_owned(),
            namespace: namespace.map(str::to_owned),
        }
    }

    /// Every alert Prometheus holds now (pending or firing), of any test.
    pub async fn current(&self) -> anyhow::Result<Vec<Alert>> {
        Ok(prometheus::alerts(&self.url).await?)
    }

    /// Every shipped alert (`OrderPipeline...`) of this test that pends or fires now.
    pub async fn ours(&self) -> anyhow::Result<Vec<Alert>> {
        Ok(self
            .current()
            .await?
            .into_iter()
            .filter(|alert| {
                let label = |key: &str| alert.labels.get(key).map(String::as_str);
                label("alertname").is_some_and(|name| name.starts_with("OrderPipeline"))
                    && self.is_ours(alert)
            })
            .collect())
    }

    /// Whether `alert` is of this test: of its namespace, or of none (the operator's).
    fn is_ours(&self, alert: &Alert) -> bool {
        alert
            .labels
            .get("namespace")
            .is_none_or(|ns| Some(ns.as_str()) == self.namespace.as_deref())
    }

    /// Whether `alert` is `name`, of this test, with every one of `labels`.
    pub fn matches(&self, alert: &Alert, name: &str, labels: &[(&str, &str)]) -> bool {
        let label = |key: &str| alert.labels.get(key).map(String::as_str);
        label("alertname") == Some(name)
            && self.is_ours(alert)
            && labels.iter().all(|&(key, value)| label(key) == Some(value))
    }

    /// Waits until `alert` fires (`labels` narrow it).
    pub async fn fires(&self, alert: &str, labels: &[(&str, &str)]) -> anyhow::Result<()> {
        wait_until(&format!("{alert} {labels:?} fires"), ALERT_WAIT, || async {
            let alerts = prometheus::alerts(&self.url).await.ok()?;
            alerts
                .iter()
                .any(|a| a.state == "firing" && self.matches(a, alert, labels))
                .then_some(())
        })
        .await?;
        Ok(())
    }

    /// Waits until `alert` neither pends nor fires any more.
    pub async fn resolves(&self, alert: &str, labels: &[(&str, &str)]) -> anyhow::Result<()> {
        wait_until(
            &format!("{alert} {labels:?} resolves"),
            ALERT_WAIT,
            || async {
                let alerts = prometheus::alerts(&self.url).await.ok()?;
                (!alerts.iter().any(|a| self.matches(a, alert, labels))).then_some(())
            },
        )
        .await?;
        Ok(())
    }

    /// Called right after `condition` was made real: waits until each of `alerts` fires, runs
    /// `undo`, waits until each resolves, and reports both times (from the condition, from the
    /// undo).
    pub async fn fired_and_resolved(
        &self,
        alerts: &[(&str, &[(&str, &str)])],
        condition: &str,
        undo: impl AsyncFnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let made_real = Instant::now();
        let mut fired = Vec::new();
        for (alert, labels) in alerts {
            self.fires(alert, labels).await?;
            fired.push(made_real.elapsed());
        }
        undo().await?;
        let undone = Instant::now();
        for ((alert, labels), fired) in alerts.iter().zip(fired) {
            self.resolves(alert, labels).await?;
            eprintln!(
                "measured: {alert} fired {fired:.1?} after {condition}, resolved {:.1?} after \
                 that was undone",
                undone.elapsed()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_range_window_is_replaced() {
        assert_eq!(
            with_window("rate(a[5m]) / rate(b{x=\"y\"}[10m]) > 0", "30s"),
            "rate(a[30s]) / rate(b{x=\"y\"}[30s]) > 0"
        );
    }
}
