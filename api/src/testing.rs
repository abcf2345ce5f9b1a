//! Test fixtures: [`OrderPipeline::test`] builds a valid pipeline in one line, and small builder
//! methods change what a test is about, so a test names the one thing it varies and nothing else.
//!
//! Compiled only with the `testing` feature, which the workspace's tests and the benchmark turn on;
//! the operator and worker binaries never build a pipeline from here. The fixtures panic on a name
//! that is not in the pipeline: that is a mistake in the test, not input to handle.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::v1alpha1::{
    AutoscalingSpec, BootstrapServer, DeletionPolicy, IntakeSpec, KafkaSpec, OrderPipeline,
    OrderPipelineSpec, OutputTopic, Processor, SecretKey, SecretKeyRef, SecretName, StageSpec,
    TopicConfigValue, TopicSpec,
};

/// Where the stages of [`OrderPipeline::test`] dead-letter, as in the checkout sample.
const DEAD_LETTER: &str = "orders.dlq";

/// The topics of [`OrderPipeline::test`] with their partitions: its validate stage reads the first,
/// writes the next two and dead-letters to [`DEAD_LETTER`].
const TOPICS: [(&str, i32); 4] = [
    ("orders", 3),
    ("orders.validated", 3),
    ("orders.rejected", 1),
    (DEAD_LETTER, 1),
];

impl OrderPipeline {
    /// A valid pipeline named `name`: one validate stage reading `orders`, writing
    /// `orders.validated` and `orders.rejected`, dead-lettering to `orders.dlq`, on a broker at
    /// `127.0.0.1:9092`. No namespace, no status.
    pub fn test(name: &str) -> Self {
        let spec = OrderPipelineSpec {
            kafka: KafkaSpec {
                bootstrap_servers: vec![BootstrapServer("127.0.0.1:9092".into())],
                tls: None,
                sasl: None,
            },
            topics: vec![],
            stages: vec![],
            paused: false,
            intake: None,
        };
        TOPICS
            .iter()
            .fold(Self::new(name, spec), |pipeline, &(topic, partitions)| {
                pipeline.topic(topic, partitions)
            })
            .stage(
                "validate",
                Processor::Validate,
                "orders",
                &[
                    ("validated", "orders.validated"),
                    ("rejected", "orders.rejected"),
                ],
            )
    }

    /// Not `namespace`: an inherent method would shadow `ResourceExt::namespace` in every crate
    /// that turns the feature on.
    pub fn in_namespace(mut self, namespace: &str) -> Self {
        self.metadata.namespace = Some(namespace.into());
        self
    }

    /// `created` is RFC 3339, e.g. `2026-01-01T00:00:00Z`.
    pub fn created_at(mut self, created: &str) -> Self {
        let time: Time = serde_json::from_value(created.into()).expect("an RFC 3339 timestamp");
        self.metadata.creation_timestamp = Some(time);
        self
    }

    pub fn generation(mut self, generation: i64) -> Self {
        self.metadata.generation = Some(generation);
        self
    }

    pub fn bootstrap(mut self, server: &str) -> Self {
        self.spec.kafka.bootstrap_servers = vec![BootstrapServer(server.into())];
        self
    }

    /// Renames every topic `<prefix>.<last part of its name>` (`orders.dlq` becomes `<prefix>.dlq`,
    /// `orders` becomes `<prefix>.orders`), stage references included, so tests sharing a broker
    /// never share a topic. Call it before the methods that name topics.
    pub fn topic_prefix(mut self, prefix: &str) -> Self {
        let renamed = |topic: &str| {
            let last = topic.rsplit('.').next().unwrap_or(topic);
            format!("{prefix}.{last}")
        };
        for topic in &mut self.spec.topics {
            topic.name = renamed(&topic.name);
        }
        for stage in &mut self.spec.stages {
            stage.input = renamed(&stage.input);
            stage.dead_letter = renamed(&stage.dead_letter);
            for output in stage.outputs.values_mut() {
                output.0 = renamed(&output.0);
            }
        }
        self
    }

    /// Declares one more topic.
    pub fn topic(mut self, name: &str, partitions: i32) -> Self {
        self.spec.topics.push(TopicSpec {
            name: name.into(),
            partitions,
            replication_factor: None,
            config: Default::default(),
            deletion_policy: DeletionPolicy::Retain,
            adopt: false,
            settle_seconds: None,
        });
        self
    }

    /// Opts in to adopting `topic` when it already exists in Kafka.
    pub fn adopt(mut self, topic: &str) -> Self {
        self.topic_mut(topic).adopt = true;
        self
    }

    pub fn partitions(mut self, topic: &str, partitions: i32) -> Self {
        self.topic_mut(topic).partitions = partitions;
        self
    }

    pub fn replication_factor(mut self, topic: &str, replication_factor: i32) -> Self {
        self.topic_mut(topic).replication_factor = Some(replication_factor);
        self
    }

    pub fn topic_config(mut self, topic: &str, key: &str, value: &str) -> Self {
        self.topic_mut(topic)
            .config
            .insert(key.into(), TopicConfigValue(value.into()));
        self
    }

    pub fn deletion_policy(mut self, topic: &str, policy: DeletionPolicy) -> Self {
        self.topic_mut(topic).deletion_policy = policy;
        self
    }

    /// Adds a stage of a built-in processor; it dead-letters where the first stage does.
    pub fn stage(
        mut self,
        name: &str,
        processor: Processor,
        input: &str,
        outputs: &[(&str, &str)],
    ) -> Self {
        let dead_letter = self
            .spec
            .stages
            .first()
            .map_or_else(|| DEAD_LETTER.to_owned(), |first| first.dead_letter.clone());
        self.spec.stages.push(StageSpec {
            name: name.into(),
            processor,
            image: None,
            input: input.into(),
            outputs: outputs
                .iter()
                .map(|&(output, topic)| (output.into(), OutputTopic(topic.into())))
                .collect(),
            dead_letter,
            replicas: None,
            autoscaling: None,
            rollout: None,
            resources: None,
            notify: None,
        });
        self
    }

    /// Adds a status stage reading the validate stage's `validated` output and writing
    /// `<orders>.status`, and an intake gateway in front of both (tokens in the Secret
    /// `intake-tokens`, key `tokens`). Call it after [`topic_prefix`](Self::topic_prefix).
    pub fn with_intake(self) -> Self {
        let validate = self.stage_ref("validate");
        let orders = validate.input.clone();
        let validated = validate.outputs["validated"].0.clone();
        let status = format!("{orders}.status");
        let mut pipeline = self.topic(&status, 3).stage(
            "status",
            Processor::Status,
            &validated,
            &[("changes", &status)],
        );
        pipeline.spec.intake = Some(IntakeSpec::test(&orders, &status));
        pipeline
    }

    pub fn output(mut self, stage: &str, output: &str, topic: &str) -> Self {
        self.stage_mut(stage)
            .outputs
            .insert(output.into(), OutputTopic(topic.into()));
        self
    }

    pub fn replicas(mut self, stage: &str, replicas: i32) -> Self {
        self.stage_mut(stage).replicas = Some(replicas);
        self
    }

    pub fn autoscaling(mut self, stage: &str, autoscaling: AutoscalingSpec) -> Self {
        self.stage_mut(stage).autoscaling = Some(autoscaling);
        self
    }

    fn topic_mut(&mut self, name: &str) -> &mut TopicSpec {
        self.spec
            .topics
            .iter_mut()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("the fixture declares no topic {name:?}"))
    }

    fn stage_ref(&self, name: &str) -> &StageSpec {
        self.spec
            .stages
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("the fixture has no stage {name:?}"))
    }

    fn stage_mut(&mut self, name: &str) -> &mut StageSpec {
        self.spec
            .stages
            .iter_mut()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("the fixture has no stage {name:?}"))
    }
}

impl IntakeSpec {
    /// A gateway writing `orders_topic` and reading `status_topic`, with the defaults.
    pub fn test(orders_topic: &str, status_topic: &str) -> Self {
        Self {
            orders_topic: orders_topic.into(),
            status_topic: status_topic.into(),
            tokens_secret_ref: SecretKeyRef {
                name: SecretName("intake-tokens".into()),
                key: SecretKey("tokens".into()),
            },
            min_replicas: 2,
            max_replicas: 4,
            target_cpu_utilization: 70,
            image: None,
            resources: None,
        }
    }
}

impl AutoscalingSpec {
    /// Between one and `max_replicas` replicas, on the default CPU target.
    pub fn test(max_replicas: i32) -> Self {
        Self {
            min_replicas: 1,
            max_replicas,
            target_cpu_utilization: None,
            target_lag_per_replica: None,
            behavior: None,
            park_after_idle_seconds: None,
        }
    }
}
