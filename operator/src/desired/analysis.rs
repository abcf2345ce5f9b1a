//! The canary's AnalysisTemplate (argoproj.io/v1alpha1): Prometheus queries that abort a Rollout
//! whose stage starts failing records.
//!
//! Pure. Owns the AnalysisTemplate kind and the PromQL it carries. The metric and label names are
//! the worker contract's (`orderpipe_api::contract::metrics`), so a renamed metric breaks a test
//! here rather than silently passing every canary.
//!
//! Both metrics measure a share of the records the stage consumed over the last [`RATE_WINDOW`]:
//! - `error-share`: outcomes `error` or `dead_lettered`, against `maxErrorPercent`;
//! - `dead-letter-share`: outcome `dead_lettered`, against `maxDeadLetterPercent`.
//!
//! The share is the whole stage's (stable and canary pods together): a Kafka consumer group spreads
//! partitions, not requests, so there is no canary-only traffic to compare against a baseline, and
//! the thresholds are what the user declared for the stage.

use orderpipe_api::contract;
use orderpipe_api::contract::metrics::{self, labels, outcome};
use orderpipe_api::v1alpha1::CanaryAnalysis;
use serde_json::{Value, json};

use super::{DesiredError, StageContext};
use crate::settings::OperatorSettings;

/// Eight scrapes at the ServiceMonitor's 15 s interval: `rate()` survives a missed scrape or a
/// restarted pod, and a failing canary still shows within one default pause.
const RATE_WINDOW: &str = "2m";
/// Target label Prometheus adds from the scraped Service's namespace; two namespaces may run
/// pipelines of the same name, and one's canary must not be judged by the other's errors.
const NAMESPACE_LABEL: &str = "namespace";

/// The defaults the CRD documents for an unset `canary.analysis` (guarded by a test).
pub(super) fn default_analysis() -> CanaryAnalysis {
    CanaryAnalysis {
        max_error_percent: 1,
        max_dead_letter_percent: 1,
        interval: None,
        failure_limit: 1,
        prometheus_url: None,
    }
}

pub(super) fn desired_analysis_template(
    ctx: &StageContext<'_>,
    settings: &OperatorSettings,
) -> Result<Value, DesiredError> {
    let analysis = ctx
        .stage
        .spec
        .rollout
        .as_ref()
        .and_then(|r| r.canary.as_ref())
        .and_then(|c| c.analysis.clone())
        .unwrap_or_else(default_analysis);
    let interval = match &analysis.interval {
        Some(interval) => {
            contract::parse_duration(interval).map_err(|reason| DesiredError::InvalidDuration {
                stage: ctx.stage.spec.name.clone(),
                field: "rollout.canary.analysis.interval".into(),
                reason,
            })?;
            interval.0.clone()
        }
        None => "1m".into(),
    };
    let address = analysis
        .prometheus_url
        .as_deref()
        .unwrap_or(&settings.prometheus_url);
    let metric = |name: &str, outcomes: &str, max_percent: i32| {
        json!({
            "name": name,
            "interval": interval,
            "failureLimit": analysis.failure_limit,
            "successCondition": format!("result[0] <= {}", f64::from(max_percent) / 100.0),
            "provider": { "prometheus": { "address": address, "query": share_query(ctx, outcomes) } },
        })
    };
    Ok(json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AnalysisTemplate",
        "metadata": ctx.metadata(),
        "spec": {
            "metrics": [
                metric(
                    "error-share",
                    &format!("{}|{}", outcome::ERROR, outcome::DEAD_LETTERED),
                    analysis.max_error_percent,
                ),
                metric(
                    "dead-letter-share",
                    outcome::DEAD_LETTERED,
                    analysis.max_dead_letter_percent,
                ),
            ],
        },
    }))
}

/// The share of consumed records whose outcome matches `outcomes` (a regex alternation).
///
/// No traffic is a success, explicitly: a quiet hour must not abort a release. Without consumed
/// records the denominator is filtered out (`> 0`, avoiding 0/0 = NaN, which fails every
/// condition), the division yields an empty vector, and `or vector(0)` turns that into a share of
/// 0; an empty result would otherwise make Argo count a measurement error. The same happens when
/// no record ever had a failing outcome (the labelled series does not exist yet).
fn share_query(ctx: &StageContext<'_>, outcomes: &str) -> String {
    let stage = format!(
        r#"{NAMESPACE_LABEL}="{}",{}="{}",{}="{}""#,
        ctx.pipeline.namespace,
        labels::PIPELINE,
        ctx.pipeline.name,
        labels::STAGE,
        ctx.stage.spec.name,
    );
    format!(
        "(sum(rate({processed}{{{stage},{outcome_label}=~\"{outcomes}\"}}[{RATE_WINDOW}])) \
         / (sum(rate({consumed}{{{stage}}}[{RATE_WINDOW}])) > 0)) or vector(0)",
        processed = metrics::RECORDS_PROCESSED,
        consumed = metrics::RECORDS_CONSUMED,
        outcome_label = labels::OUTCOME,
    )
}
