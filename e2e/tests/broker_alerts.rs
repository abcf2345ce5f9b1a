//! The broker alerts of `config/monitoring/prometheusrule.yaml` (group `orderpipe-kafka`) fired
//! on a live Prometheus by making their condition real on a three-broker KRaft cluster (every
//! broker also a controller, RF 3 and min ISR 2 by default), and resolved by undoing it. The
//! brokers export their metrics through the JMX exporter agent with the shipped rules
//! (`config/monitoring/kafka/jmx-exporter.yaml`), scraped as job `kafka`.
//!
//! | Alert | made real by | undone by |
//! |---|---|---|
//! | KafkaUnderReplicatedPartitions | SIGKILL of a follower of a replicated topic | the broker restarted |
//! | KafkaOfflinePartitions | SIGKILL of the only replica of a one-replica topic | the broker restarted |
//! | KafkaNoActiveController | SIGSTOP of two of the three controllers (quorum lost) | SIGCONT |
//!
//! Before the faults, no broker alert pends or fires for the healthy cluster. The stack is the
//! test's own (a full control plane, for its Prometheus and exporters, and three brokers).
//! Needs the e2e tools (`make e2e-tools`).

use std::time::{Duration, Instant};

use anyhow::ensure;
use orderpipe_e2e::rules::{AlertWatch, LiveRules};
use orderpipe_stack::prometheus::{self, Target};
use orderpipe_stack::{Stack, create_topics_with, in_sync, partition_leader, unique_name};

/// The jmx exporter's job (one target per broker).
const KAFKA_JOB: &str = "kafka";
const BROKERS: u8 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the e2e tools: make test-e2e"]
async fn every_broker_alert_fires_when_its_condition_is_real_and_resolves_when_it_is_undone()
-> anyhow::Result<()> {
    let mut stack = Stack::builder(&unique_name("broker-alerts"))
        .kafka_brokers(BROKERS)
        .start()
        .await?;
    let proven = prove(&mut stack).await;
    stack.stop().await?;
    proven
}

async fn prove(stack: &mut Stack) -> anyhow::Result<()> {
    let url = stack.prometheus_url()?.to_owned();
    let bootstrap = stack.kafka_bootstrap()?.to_owned();
    let brokers = |targets: &[Target]| {
        targets
            .iter()
            .filter(|t| t.labels.get("job").map(String::as_str) == Some(KAFKA_JOB))
            .filter(|t| t.health == "up")
            .count()
    };
    let targets = prometheus::wait_for_targets(
        &url,
        "every broker scraped",
        Duration::from_secs(60),
        |targets| brokers(targets) == usize::from(BROKERS),
    )
    .await?;
    for target in &targets {
        eprintln!(
            "measured: active target {} {} (job {})",
            target.scrape_url,
            target.health,
            target.labels.get("job").map_or("", String::as_str)
        );
    }
    let rules = LiveRules::install(stack.prometheus_rules_dir()?, &url, "broker-alerts").await?;
    let alerts = AlertWatch::new(&url, None);
    let proven = faults(stack, &alerts, &bootstrap).await;
    rules.remove().await?;
    proven
}

async fn faults(stack: &mut Stack, alerts: &AlertWatch, bootstrap: &str) -> anyhow::Result<()> {
    let (replicated, solo) = ("replicated", "solo");
    let bootstrap_owned = bootstrap.to_owned();
    tokio::task::spawn_blocking(move || {
        create_topics_with(&bootstrap_owned, &[(replicated, 3)], Some(3), &[])?;
        create_topics_with(&bootstrap_owned, &[(solo, 1)], Some(1), &[])
    })
    .await??;
    quiet(alerts, Duration::from_secs(15)).await?;

    // A follower of the replicated topic crashes: its leaders' ISRs shrink once the controller
    // fences it (broker.session.timeout.ms).
    let leader = blocking_leader(bootstrap, replicated, 0).await?;
    let follower = (1..=i32::from(BROKERS))
        .find(|id| *id != leader)
        .unwrap_or(1);
    let mut crash = Crash {
        stack: &mut *stack,
        alerts,
        bootstrap,
        replicated,
    };
    crash
        .proves("KafkaUnderReplicatedPartitions", follower, "a follower")
        .await?;
    // The only replica of a partition crashes: no leader is left for it.
    let only = blocking_leader(bootstrap, solo, 0).await?;
    crash
        .proves("KafkaOfflinePartitions", only, "the only replica")
        .await?;

    // Two of the three controllers stop answering: the third cannot keep or win the quorum.
    let paused: Vec<i32> = (2..=i32::from(BROKERS)).collect();
    for id in &paused {
        stack.pause_broker(*id)?;
    }
    alerts
        .fired_and_resolved(
            &[("KafkaNoActiveController", &[])],
            &format!("SIGSTOP of brokers {paused:?}"),
            async || {
                for id in &paused {
                    stack.resume_broker(*id)?;
                }
                Ok(())
            },
        )
        .await?;
    wait_in_sync(bootstrap, replicated).await
}

/// A broker crash that makes an alert real, undone by restarting the broker.
struct Crash<'a> {
    stack: &'a mut Stack,
    alerts: &'a AlertWatch,
    bootstrap: &'a str,
    /// Back in sync before the next fault.
    replicated: &'static str,
}

impl Crash<'_> {
    /// SIGKILLs broker `id` (`what` it is to the fault); `alert` fires; the broker restarted and
    /// every replica back in sync, it resolves.
    async fn proves(&mut self, alert: &str, id: i32, what: &str) -> anyhow::Result<()> {
        self.stack.kill_broker(id)?;
        let (stack, bootstrap, replicated) = (&mut *self.stack, self.bootstrap, self.replicated);
        self.alerts
            .fired_and_resolved(
                &[(alert, &[])],
                &format!("SIGKILL of broker {id}, {what}"),
                async || {
                    stack.start_broker(id).await?;
                    wait_in_sync(bootstrap, replicated).await
                },
            )
            .await
    }
}

/// For `span`, no broker alert pends or fires on the healthy cluster.
async fn quiet(alerts: &AlertWatch, span: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + span;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let names = [
        "KafkaUnderReplicatedPartitions",
        "KafkaOfflinePartitions",
        "KafkaNoActiveController",
    ];
    while Instant::now() < until {
        tick.tick().await;
        let ours: Vec<_> = alerts
            .current()
            .await?
            .into_iter()
            .filter(|alert| names.iter().any(|name| alerts.matches(alert, name, &[])))
            .collect();
        ensure!(
            ours.is_empty(),
            "broker alerts on a healthy cluster: {ours:?}"
        );
    }
    eprintln!("measured: no broker alert pended or fired in {span:?} of the healthy cluster");
    Ok(())
}

async fn blocking_leader(
    bootstrap: &str,
    topic: &'static str,
    partition: i32,
) -> anyhow::Result<i32> {
    let bootstrap = bootstrap.to_owned();
    Ok(
        tokio::task::spawn_blocking(move || partition_leader(&bootstrap, topic, partition))
            .await??,
    )
}

/// Waits until every replica of `topic` is back in sync.
async fn wait_in_sync(bootstrap: &str, topic: &'static str) -> anyhow::Result<()> {
    orderpipe_stack::wait_until(
        &format!("every replica of {topic} in sync"),
        Duration::from_secs(120),
        || {
            let bootstrap = bootstrap.to_owned();
            async move {
                tokio::task::spawn_blocking(move || in_sync(&bootstrap, &[topic]))
                    .await
                    .ok()?
                    .ok()?
                    .then_some(())
            }
        },
    )
    .await?;
    Ok(())
}
