//! `fake-worker`: the stand-in "image" of the node agent's tests. It serves `/readyz` and
//! `/healthz` on `ORDERPIPE_METRICS_PORT` like the real worker, records how it was started, and
//! misbehaves on request, all through files in its working directory (the agent's pod dir):
//!
//! - at start it writes `fake-worker.json` (pid, args, env, cwd) and removes `unhealthy`;
//! - `/readyz` answers 503 while `unready` exists, `/healthz` 500 while `unhealthy` exists;
//! - on SIGTERM it waits `FAKE_WORKER_TERM_DELAY_MS`, writes `fake-worker.sigterm` (its pid) and
//!   exits 0, unless `FAKE_WORKER_IGNORE_SIGTERM` is set;
//! - `FAKE_WORKER_UNREADY_AT_START` creates `unready` before it listens;
//!   `FAKE_WORKER_CRASH_AFTER_MS` makes it exit 1 after that long.
//!
//! Every probe request is printed to stdout (the container log), so tests can count probes.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::signal::unix::{SignalKind, signal};

const UNREADY: &str = "unready";
const UNHEALTHY: &str = "unhealthy";

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let setting = |name: &str| env.get(name).filter(|v| !v.is_empty());
    let millis = |name: &str| -> anyhow::Result<Option<Duration>> {
        setting(name)
            .map(|v| v.parse().map(Duration::from_millis))
            .transpose()
            .with_context(|| format!("{name} must be a number of milliseconds"))
    };
    let port: u16 = setting("ORDERPIPE_METRICS_PORT")
        .context("ORDERPIPE_METRICS_PORT is not set")?
        .parse()
        .context("ORDERPIPE_METRICS_PORT must be a port")?;
    let crash_after = millis("FAKE_WORKER_CRASH_AFTER_MS")?;
    let term_delay = millis("FAKE_WORKER_TERM_DELAY_MS")?.unwrap_or_default();
    let ignore_sigterm = setting("FAKE_WORKER_IGNORE_SIGTERM").is_some();

    // A restart is the cure for unhealthiness: the fresh process starts healthy.
    remove_if_present(Path::new(UNHEALTHY))?;
    if setting("FAKE_WORKER_UNREADY_AT_START").is_some() {
        std::fs::write(UNREADY, "").context("creating unready")?;
    }
    let cwd = std::env::current_dir().context("reading the working directory")?;
    let record = serde_json::json!({
        "pid": std::process::id(),
        "args": std::env::args().skip(1).collect::<Vec<_>>(),
        "env": env,
        "cwd": cwd,
    });
    std::fs::write("fake-worker.json", serde_json::to_vec_pretty(&record)?)
        .context("writing fake-worker.json")?;

    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let app = Router::new()
        .route(
            "/readyz",
            get(|| probe("/readyz", UNREADY, StatusCode::SERVICE_UNAVAILABLE)),
        )
        .route(
            "/healthz",
            get(|| probe("/healthz", UNHEALTHY, StatusCode::INTERNAL_SERVER_ERROR)),
        );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{port}"))?;
    println!(
        "fake-worker {} listening on 127.0.0.1:{port}",
        std::process::id()
    );
    let mut server = tokio::spawn(async move { axum::serve(listener, app).await });
    let crash = async {
        match crash_after {
            Some(after) => tokio::time::sleep(after).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(crash);
    loop {
        tokio::select! {
            () = &mut crash => {
                println!("crashing as told (FAKE_WORKER_CRASH_AFTER_MS)");
                std::process::exit(1);
            }
            served = &mut server => anyhow::bail!("the HTTP server stopped: {served:?}"),
            _ = terminate.recv() => {
                if ignore_sigterm {
                    println!("ignoring SIGTERM as told");
                    continue;
                }
                println!("SIGTERM: exiting in {term_delay:?}");
                tokio::time::sleep(term_delay).await;
                std::fs::write("fake-worker.sigterm", std::process::id().to_string())
                    .context("writing fake-worker.sigterm")?;
                return Ok(());
            }
        }
    }
}

async fn probe(path: &str, failing_while: &str, failure: StatusCode) -> StatusCode {
    let status = if Path::new(failing_while).exists() {
        failure
    } else {
        StatusCode::OK
    };
    println!("GET {path} {}", status.as_u16());
    status
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}
