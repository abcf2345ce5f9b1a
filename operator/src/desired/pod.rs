//! The worker pod template, written once and shared by the Deployment and the Rollout of a stage
//! and by the intake gateway's Deployment (the same image in its `intake` mode).
//!
//! Pure. Owns what runs in a component's pod: the worker container speaking `orderpipe_api::contract`,
//! its probes and resources, the restricted security profile, and the TLS Secret mounts. It must not
//! carry a replica count or anything workload-specific.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities as LinuxCapabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    HTTPGetAction, KeyToPath, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use orderpipe_api::OrderPipeline;
use orderpipe_api::contract::{self, INTAKE_PORT, METRICS_PORT};

use super::{ComponentMeta, DesiredError, StageContext};
use crate::model::ValidatedIntake;
use crate::settings::OperatorSettings;

/// Name of the worker container (and of the metrics port, below).
const CONTAINER: &str = "worker";
pub(super) const METRICS_PORT_NAME: &str = "metrics";
pub(super) const METRICS_PATH: &str = "/metrics";
/// The distroless `nonroot` user; the worker image runs as it.
const NONROOT_ID: i64 = 65532;
/// Secret files are readable by the pod's group (fsGroup) and nobody else.
const SECRET_FILE_MODE: i32 = 0o440;
/// The worker's own shutdown grace (finish the batch, commit the transaction) plus 5 s for
/// librdkafka to close the producer and leave the consumer group before the kubelet sends SIGKILL.
const TERMINATION_GRACE_SECONDS: i64 = contract::defaults::SHUTDOWN_GRACE.as_secs() as i64 + 5;

/// The named container ports of a stage's worker.
pub(super) const STAGE_PORTS: &[(&str, u16)] = &[(METRICS_PORT_NAME, METRICS_PORT)];
/// The named container ports of the intake gateway: its API and its metrics.
pub(super) const INTAKE_PORTS: &[(&str, u16)] = &[
    (INTAKE_PORT_NAME, INTAKE_PORT),
    (METRICS_PORT_NAME, METRICS_PORT),
];
const INTAKE_PORT_NAME: &str = "http";

/// The pod template of a stage's workload.
pub(super) fn stage_pod_template(
    pipeline: &OrderPipeline,
    ctx: &StageContext<'_>,
) -> Result<PodTemplateSpec, DesiredError> {
    let stage = ctx.stage;
    let env =
        contract::render_env(pipeline, &stage.spec).map_err(|reason| DesiredError::WorkerEnv {
            stage: stage.spec.name.clone(),
            reason,
        })?;
    let container = WorkerContainer {
        image: &stage.image,
        args: &contract::WORKER_ARGS,
        env,
        ports: STAGE_PORTS,
        resources: stage.spec.resources.as_ref(),
    };
    Ok(pod_template(pipeline, &ctx.meta, ctx.settings, container))
}

/// The pod template of the intake gateway: the worker image's `intake` mode.
pub(super) fn intake_pod_template(
    pipeline: &OrderPipeline,
    meta: &ComponentMeta<'_>,
    intake: &ValidatedIntake,
    settings: &OperatorSettings,
) -> PodTemplateSpec {
    let container = WorkerContainer {
        image: &intake.image,
        args: &contract::INTAKE_ARGS,
        env: contract::render_intake_env(pipeline, &intake.spec),
        ports: INTAKE_PORTS,
        resources: intake.spec.resources.as_ref(),
    };
    pod_template(pipeline, meta, settings, container)
}

/// What differs between the containers of a stage and of the gateway.
struct WorkerContainer<'a> {
    image: &'a str,
    args: &'a [&'a str],
    env: Vec<EnvVar>,
    ports: &'a [(&'a str, u16)],
    resources: Option<&'a ResourceRequirements>,
}

fn pod_template(
    pipeline: &OrderPipeline,
    meta: &ComponentMeta<'_>,
    settings: &OperatorSettings,
    worker: WorkerContainer<'_>,
) -> PodTemplateSpec {
    let (volumes, mounts) = volumes(pipeline);
    let container = Container {
        name: CONTAINER.into(),
        image: Some(worker.image.to_owned()),
        args: Some(worker.args.iter().map(|&arg| arg.to_owned()).collect()),
        env: Some(worker.env),
        ports: Some(
            worker
                .ports
                .iter()
                .map(|&(name, port)| ContainerPort {
                    name: Some(name.into()),
                    container_port: port.into(),
                    // Part of the list's merge key: server-side apply rejects a port without it.
                    protocol: Some("TCP".into()),
                    ..ContainerPort::default()
                })
                .collect(),
        ),
        liveness_probe: Some(Probe {
            // /healthz fails only when the processing loop is wedged; a restart is the cure.
            failure_threshold: Some(3),
            ..probe("/healthz")
        }),
        // A worker that stops on an error (e.g. a dead-letter topic that refuses even a bare
        // dead letter) logs why as its last line: `kubectl describe pod` then shows it as the
        // container's termination message.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        readiness_probe: Some(Probe {
            // /readyz may dip while the consumer group rebalances. Kafka's default session timeout
            // is 45 s; tolerating 60 s keeps a rebalance from marking pods unready (which would
            // stall a rollout and page someone) while a worker that truly lost Kafka still drops out.
            failure_threshold: Some(6),
            ..probe("/readyz")
        }),
        resources: Some(worker.resources.cloned().unwrap_or_else(default_resources)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(LinuxCapabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(meta.labels()),
            annotations: Some(scrape_annotations()),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(volumes),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(NONROOT_ID),
                run_as_group: Some(NONROOT_ID),
                // Makes the Secret files (mode 0440) readable by the worker's group.
                fs_group: Some(NONROOT_ID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                ..PodSecurityContext::default()
            }),
            // The worker never talks to the Kubernetes API; no token means nothing to steal.
            automount_service_account_token: Some(false),
            // Service env vars of every Service in the namespace are noise for the worker.
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
            node_selector: non_empty(settings.worker_placement.node_selector.clone()),
            tolerations: non_empty(settings.worker_placement.tolerations.clone()),
            ..PodSpec::default()
        }),
    }
}

/// `None` for an empty collection, so an unset placement leaves the field out of the applied object.
fn non_empty<C: IntoIterator + Default + PartialEq>(items: C) -> Option<C> {
    (items != C::default()).then_some(items)
}

fn probe(path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(METRICS_PORT_NAME.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(10),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

/// Without declared resources: a small request so the scheduler and the CPU autoscaler have a
/// baseline, and a memory limit so a leak kills one pod rather than the node.
fn default_resources() -> ResourceRequirements {
    let quantities = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), Quantity((*value).to_owned())))
            .collect::<BTreeMap<_, _>>()
    };
    ResourceRequirements {
        requests: Some(quantities(&[("cpu", "50m"), ("memory", "64Mi")])),
        limits: Some(quantities(&[("memory", "256Mi")])),
        claims: None,
    }
}

/// For Prometheus setups that discover pods by annotation instead of ServiceMonitors.
fn scrape_annotations() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("prometheus.io/scrape".to_owned(), "true".to_owned()),
        ("prometheus.io/port".to_owned(), METRICS_PORT.to_string()),
        ("prometheus.io/path".to_owned(), METRICS_PATH.to_owned()),
    ])
}

/// A writable /tmp (the root filesystem is read-only) and the TLS Secrets where the contract says
/// the worker finds them. Secrets are mounted by reference; their values never pass the operator.
fn volumes(pipeline: &OrderPipeline) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = vec![Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: None,
            size_limit: Some(Quantity("64Mi".into())),
        }),
        ..Volume::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..VolumeMount::default()
    }];
    let tls = pipeline.spec.kafka.tls.as_ref();
    if let Some(ca) = tls.and_then(|t| t.ca_secret_ref.as_ref()) {
        volumes.push(secret_volume(
            "kafka-ca",
            &ca.name.0,
            &[(&ca.key.0, contract::TLS_CA_FILE)],
        ));
        mounts.push(read_only_mount("kafka-ca", contract::TLS_MOUNT_DIR));
    }
    if let Some(secret) = tls.and_then(|t| t.client_cert_secret_name.as_ref()) {
        // A kubernetes.io/tls Secret; naming the keys makes a wrong Secret fail at pod start.
        volumes.push(secret_volume(
            "kafka-client-tls",
            &secret.0,
            &[("tls.crt", "tls.crt"), ("tls.key", "tls.key")],
        ));
        mounts.push(read_only_mount(
            "kafka-client-tls",
            contract::TLS_CLIENT_MOUNT_DIR,
        ));
    }
    (volumes, mounts)
}

fn secret_volume(name: &str, secret: &str, items: &[(&str, &str)]) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            items: Some(
                items
                    .iter()
                    .map(|(key, path)| KeyToPath {
                        key: (*key).into(),
                        path: (*path).into(),
                        mode: None,
                    })
                    .collect(),
            ),
            default_mode: Some(SECRET_FILE_MODE),
            optional: Some(false),
        }),
        ..Volume::default()
    }
}

fn read_only_mount(volume: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}
