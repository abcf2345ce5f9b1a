//! The canary's AnalysisTemplate (argoproj.io/v1alpha1): Prometheus queries that abort a Rollout
//! whose new pods fail more records than its stable pods.
//!
//! Pure. Owns the AnalysisTemplate kind and the PromQL it carries. The metric and label names are
//! the worker contract's (`orderpipe_api::contract::metrics`), so a renamed metric breaks a test
//! here rather than silently passing every canary.
//!
//! Both metrics measure a share of the records consumed over the last [`RATE_WINDOW`]:
//! - `error-share`: outcomes `error` or `dead_lettered`, against `maxErrorPercent`;
//! - `dead-letter-share`: outcome `dead_lettered`, against `maxDeadLetterPercent`.
//!
//! Each is the canary pods' share minus the stable pods' share, told apart by the pod label
//! `rollouts-pod-template-hash` (the target label [`POD_HASH_LABEL`], see the ServiceMonitor's
//! `podTargetLabels`): the canary's pods hold whole partitions of the consumer group, so their own
//! records are the canary's traffic. A stage-wide share would dilute a canary that fails everything
//! on one partition of eight to 12%; a stable baseline keeps input that fails on any version (e.g.
//! garbage producers send) from aborting a sound release. The thresholds bound how much worse
//! than stable, in percentage points, the canary may be. Argo fills in both hashes when it starts
//! the AnalysisRun ([`HASH_ARGS`], `valueFrom.podTemplateHashValue` in the Rollout).

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
/// The pod label Argo Rollouts puts on every pod of a version.
pub(super) const ROLLOUTS_POD_HASH: &str = "rollouts-pod-template-hash";
/// [`ROLLOUTS_POD_HASH`] as Prometheus spells it as a target label.
const POD_HASH_LABEL: &str = "rollouts_pod_template_hash";
/// The AnalysisTemplate's arguments, as `(name, podTemplateHashValue)`: the pod hash of the
/// canary (Argo's `Latest` ReplicaSet) and of the stable version.
pub(super) const HASH_ARGS: [(&str, &str); 2] =
    [("canary-hash", "Latest"), ("stable-hash", "Stable")];

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
        "metadata": ctx.meta.metadata(),
        "spec": {
            "args": HASH_ARGS.map(|(name, _)| json!({ "name": name })),
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

/// The canary's share of consumed records whose outcome matches `outcomes` (a regex alternation)
/// minus the stable pods' share.
fn share_query(ctx: &StageContext<'_>, outcomes: &str) -> String {
    let [(canary, _), (stable, _)] = HASH_ARGS;
    format!(
        "{} - {}",
        version_share(ctx, canary, outcomes),
        version_share(ctx, stable, outcomes)
    )
}

/// The share of records that the pods of the version in argument `hash_arg` consumed and whose
/// outcome matches `outcomes`.
///
/// No traffic is a share of 0, explicitly: a quiet hour must not abort a release. Without consumed
/// records the denominator is filtered out (`> 0`, avoiding 0/0 = NaN, which fails every
/// condition), the division yields an empty vector, and `or vector(0)` turns that into 0; an empty
/// result would otherwise make Argo count a measurement error. The same happens when no record
/// ever had a failing outcome (the labelled series does not exist yet).
///
/// At most 1: records count as processed when their transaction commits and as consumed when they
/// are handed over, so within one window the two can be offset by a batch and the ratio exceed 1
/// (the demo once measured 1.17), which no share can be.
fn version_share(ctx: &StageContext<'_>, hash_arg: &str, outcomes: &str) -> String {
    let pods = format!(
        r#"{NAMESPACE_LABEL}="{}",{}="{}",{}="{}",{POD_HASH_LABEL}="{{{{args.{hash_arg}}}}}""#,
        ctx.pipeline.namespace,
        labels::PIPELINE,
        ctx.pipeline.name,
        labels::STAGE,
        ctx.stage.spec.name,
    );
    format!(
        "(clamp_max(sum(rate({processed}{{{pods},{outcome_label}=~\"{outcomes}\"}}[{RATE_WINDOW}])) \
         / (sum(rate({consumed}{{{pods}}}[{RATE_WINDOW}])) > 0), 1) or vector(0))",
        processed = metrics::RECORDS_PROCESSED,
        consumed = metrics::RECORDS_CONSUMED,
        outcome_label = labels::OUTCOME,
    )
}
