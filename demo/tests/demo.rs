//! The demo path, headless, on the shared stack: the checkout sample run by the real operator with
//! its workers as local processes (node agent), a load with invalid, garbage and duplicate orders,
//! and the books checked after the backlog drains; then the status stage scaled 1 -> 3 -> 1
//! through the OrderPipeline's spec while orders keep flowing, with the process count following
//! and nothing lost or duplicated. Needs `make test-e2e` (and the operator and worker binaries,
//! which `cargo test --workspace` builds).

use std::time::Duration;

use orderpipe_demo::{Binaries, Demo, DemoConfig, LoadOptions};
use orderpipe_stack::{SharedStack, unique_name, wait_until};

const READY: Duration = Duration::from_secs(120);
const DRAIN: Duration = Duration::from_secs(180);
const SCALE: Duration = Duration::from_secs(120);

fn load(count: Option<u64>, seed: u64) -> LoadOptions {
    LoadOptions {
        rate: 300,
        count,
        invalid_share: 0.03,
        garbage_share: 0.01,
        duplicate_share: 0.01,
        seed,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local stack: make test-e2e"]
async fn the_demo_balances_its_books_and_scaling_a_stage_loses_and_duplicates_nothing()
-> anyhow::Result<()> {
    let stack = SharedStack::get()?;
    let ns = stack.namespace("demo").await?;
    // Operator and worker logs; kept when the test fails.
    let work_dir = std::env::temp_dir().join(ns.name());
    eprintln!("demo: operator and worker logs in {}", work_dir.display());
    let config = DemoConfig {
        namespace: ns.name().to_owned(),
        topic_prefix: format!("{}.", ns.name()),
        node_name: unique_name("demo-node"),
        work_dir: work_dir.clone(),
        kubeconfig: stack.kubeconfig()?.to_path_buf(),
        bootstrap: stack.kafka_bootstrap()?.to_owned(),
        binaries: Binaries::next_to_current_exe()?,
    };
    let mut demo = Demo::start(ns.client().clone(), config, |step| {
        eprintln!("demo: starting {step}");
    })
    .await?;
    demo.wait_ready(READY).await?;

    // The demo's load, short: 2,000 orders at 300/s.
    let first = demo.start_load(load(Some(2_000), 1))?;
    wait_until("2,000 orders are sent", Duration::from_secs(60), || async {
        first.is_finished().then_some(())
    })
    .await?;
    let mut sent = first.finish().await?;
    assert_eq!(sent.sent, 2_000);
    let books = demo.drain(&sent, DRAIN).await?;
    eprintln!("books after the first load:\n{books}");
    assert!(books.problems().is_empty(), "{:#?}", books.problems());

    // Scaling with orders flowing: the load runs until the stage is back at one replica.
    let second = demo.start_load(load(None, 2))?;
    for replicas in [3, 1] {
        demo.scale("status", replicas, SCALE).await?;
        assert_eq!(
            demo.processes("status").await?,
            usize::try_from(replicas)?,
            "worker processes of the status stage"
        );
        assert!(!second.is_finished(), "the load flows during the scaling");
    }
    let during = second.sent();
    sent.merge(second.finish().await?);
    eprintln!(
        "{during} orders sent while scaling status 1 -> 3 -> 1; {} in total",
        sent.sent
    );
    let books = demo.drain(&sent, DRAIN).await?;
    eprintln!("books after scaling:\n{books}");
    assert!(books.problems().is_empty(), "{:#?}", books.problems());

    demo.stop().await?;
    ns.cleanup().await?;
    std::fs::remove_dir_all(&work_dir)?;
    Ok(())
}
