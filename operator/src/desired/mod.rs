//! The desired state: every child object a pipeline should have, built from the validated model.
//!
//! Pure: no client, no async, no clock. Given the same pipeline, model, capabilities and settings,
//! [`desired_children`] returns the same objects byte for byte, so a no-op reconcile applies nothing
//! new. Each kind has one builder in a submodule; this module walks the stages, decides which kinds a
//! stage gets, and stamps the metadata every child shares (name, namespace, labels, owner).
//!
//! Per stage, all children share the name `<pipeline>-<stage>`:
//! - a Deployment, or an Argo Rollout plus its AnalysisTemplate (`workload`, `analysis`);
//! - a HorizontalPodAutoscaler when the stage autoscales (`hpa`);
//! - a Service for the metrics port and, when served, a ServiceMonitor (`service`);
//! - a PodDisruptionBudget (`pdb`).
//!
//! The intake gateway, when declared, is one more component named `<pipeline>-intake`: a
//! Deployment, a CPU autoscaler, a Service for its API and metrics, a ServiceMonitor and a PDB,
//! built by the same modules from the same [`ComponentMeta`].

mod analysis;
mod hpa;
mod pdb;
mod pod;
mod service;
mod workload;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::Resource;
use orderpipe_api::OrderPipeline;
use serde::Serialize;
use serde_json::Value;

use crate::capabilities::Capabilities;
use crate::children::{self, Child, ChildKind};
use crate::model::{INTAKE, ValidatedPipeline, ValidatedStage, WorkloadKind};
use crate::settings::OperatorSettings;

/// Why the desired children cannot be built. Each is permanent until the pipeline (or the
/// operator's view of the cluster) changes.
#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    /// Children need the pipeline's uid for their owner reference; a pipeline read from the
    /// apiserver always has one.
    #[error("pipeline {name} has no metadata.uid; cannot set owner references")]
    MissingUid { name: String },
    /// The worker environment could not be rendered (e.g. an unparsable duration).
    #[error("stage {stage}: cannot render the worker environment: {reason}")]
    WorkerEnv {
        stage: String,
        reason: orderpipe_api::contract::RenderError,
    },
    /// A duration in the stage's spec could not be parsed.
    #[error("stage {stage}: {field} is invalid: {reason}")]
    InvalidDuration {
        stage: String,
        field: String,
        reason: orderpipe_api::contract::DurationError,
    },
    /// The model asks for a kind the cluster does not serve (validation ran with other capabilities).
    #[error("stage {stage}: {kind} is not served by the cluster")]
    KindNotServed { stage: String, kind: ChildKind },
    #[error("{kind} {name}: cannot serialize: {source}")]
    Serialize {
        kind: ChildKind,
        name: String,
        source: serde_json::Error,
    },
}

/// Every child object the pipeline should have, given what the cluster serves.
pub fn desired_children(
    pipeline: &OrderPipeline,
    validated: &ValidatedPipeline,
    capabilities: Capabilities,
    settings: &OperatorSettings,
) -> Result<Vec<Child>, DesiredError> {
    let owner = owner_reference(pipeline, validated)?;
    let mut children = Vec::new();
    for stage in &validated.stages {
        let ctx = StageContext {
            meta: ComponentMeta {
                pipeline: validated,
                name: &stage.workload_name,
                stage: &stage.spec.name,
                component: stage.spec.processor.as_str(),
                owner: &owner,
            },
            pipeline: validated,
            stage,
            settings,
        };
        let meta = &ctx.meta;
        let template = pod::stage_pod_template(pipeline, &ctx)?;
        match stage.workload {
            WorkloadKind::Deployment => {
                children.push(meta.child(
                    ChildKind::Deployment,
                    workload::desired_deployment(&ctx, template),
                )?);
            }
            WorkloadKind::Rollout => {
                if !ChildKind::Rollout.is_served(capabilities) {
                    return Err(DesiredError::KindNotServed {
                        stage: stage.spec.name.clone(),
                        kind: ChildKind::Rollout,
                    });
                }
                children.push(meta.child(
                    ChildKind::Rollout,
                    workload::desired_rollout(&ctx, template)?,
                )?);
                children.push(meta.child(
                    ChildKind::AnalysisTemplate,
                    analysis::desired_analysis_template(&ctx, settings)?,
                )?);
            }
        }
        // None for a fixed count; a paused stage is Fixed(0), which an HPA would undo.
        if let Some(hpa) = hpa::desired_hpa(&ctx) {
            children.push(meta.child(ChildKind::HorizontalPodAutoscaler, hpa)?);
        }
        children.extend(service_children(
            meta,
            pod::STAGE_PORTS,
            service::Address::Headless,
            capabilities,
        )?);
    }
    if let Some(intake) = &validated.intake {
        let meta = ComponentMeta {
            pipeline: validated,
            name: &intake.workload_name,
            stage: INTAKE,
            component: INTAKE,
            owner: &owner,
        };
        let template = pod::intake_pod_template(pipeline, &meta, intake, settings);
        children.push(meta.child(
            ChildKind::Deployment,
            workload::desired_intake_deployment(&meta, template),
        )?);
        children.push(meta.child(
            ChildKind::HorizontalPodAutoscaler,
            hpa::desired_intake_hpa(&meta, &intake.spec),
        )?);
        children.extend(service_children(
            &meta,
            pod::INTAKE_PORTS,
            service::Address::Virtual,
            capabilities,
        )?);
    }
    Ok(children)
}

/// The children every component has around its pods: a Service for its ports, a ServiceMonitor
/// scraping it (where served) and a PodDisruptionBudget.
fn service_children(
    meta: &ComponentMeta<'_>,
    ports: &[(&str, u16)],
    address: service::Address,
    capabilities: Capabilities,
) -> Result<Vec<Child>, DesiredError> {
    let service = service::desired_service(meta, ports, address);
    let mut children = vec![meta.child(ChildKind::Service, service)?];
    if ChildKind::ServiceMonitor.is_served(capabilities) {
        children.push(meta.child(
            ChildKind::ServiceMonitor,
            service::desired_service_monitor(meta),
        )?);
    }
    children.push(meta.child(ChildKind::PodDisruptionBudget, pdb::desired_pdb(meta))?);
    Ok(children)
}

/// The pipeline as controlling owner: garbage collection removes the children with it, and
/// `blockOwnerDeletion` keeps a foreground deletion of the pipeline waiting until they are gone.
fn owner_reference(
    pipeline: &OrderPipeline,
    validated: &ValidatedPipeline,
) -> Result<OwnerReference, DesiredError> {
    let owner = pipeline
        .controller_owner_ref(&())
        .ok_or_else(|| DesiredError::MissingUid {
            name: validated.name.clone(),
        })?;
    Ok(OwnerReference {
        block_owner_deletion: Some(true),
        ..owner
    })
}

/// What every builder of one stage needs.
struct StageContext<'a> {
    meta: ComponentMeta<'a>,
    pipeline: &'a ValidatedPipeline,
    stage: &'a ValidatedStage,
    settings: &'a OperatorSettings,
}

/// The identity every child of one component (a stage, or the intake gateway) shares: its name,
/// labels, pod selector and owner.
struct ComponentMeta<'a> {
    pipeline: &'a ValidatedPipeline,
    /// `<pipeline>-<stage>` or `<pipeline>-intake`.
    name: &'a str,
    /// The `stage` label's value: the stage's name, or `intake`.
    stage: &'a str,
    /// The `app.kubernetes.io/component` label's value: the processor, or `intake`.
    component: &'a str,
    owner: &'a OwnerReference,
}

impl ComponentMeta<'_> {
    fn name(&self) -> &str {
        self.name
    }

    fn labels(&self) -> BTreeMap<String, String> {
        children::stage_labels(&self.pipeline.name, self.stage, self.component)
    }

    fn selector_labels(&self) -> BTreeMap<String, String> {
        children::selector_labels(&self.pipeline.name, self.stage)
    }

    fn selector(&self) -> LabelSelector {
        LabelSelector {
            match_labels: Some(self.selector_labels()),
            match_expressions: None,
        }
    }

    /// The metadata every child of the stage carries.
    fn metadata(&self) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.name().to_owned()),
            namespace: Some(self.pipeline.namespace.clone()),
            labels: Some(self.labels()),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    fn to_json(&self, kind: ChildKind, object: impl Serialize) -> Result<Value, DesiredError> {
        serde_json::to_value(object).map_err(|source| DesiredError::Serialize {
            kind,
            name: self.name().to_owned(),
            source,
        })
    }

    fn child(&self, kind: ChildKind, object: impl Serialize) -> Result<Child, DesiredError> {
        Ok(Child {
            kind,
            name: self.name().to_owned(),
            object: self.to_json(kind, object)?,
        })
    }
}
