//! `orderpipe-stack`: start, stop and inspect the shared local stack.
//!
//! `up` starts a detached supervisor (`serve`, hidden) that owns the stack, waits until the
//! supervisor has written the env file (= everything is ready) and returns; `down` stops the
//! supervisor by the PID in the env file, which stops the stack; components whose supervisor
//! died are stopped by their watchdogs. Must not stop anything it cannot tie to the env file.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use orderpipe_stack::{
    ENV_FILE_VAR, KafkaControllers, Kubernetes, MAX_KAFKA_NODES, Stack, StackEnv, kube_client_for,
    pid_alive, shared_env_file, wait_until,
};
use tokio::signal::unix::{SignalKind, signal};

/// `println!` that ignores a closed stdout (`orderpipe-stack up | head`): the stack matters more
/// than the message, and a panic here would skip the rest of `up`/`down`.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Local real-infrastructure stack for orderpipe's end-to-end tests"
)]
struct Cli {
    /// The env file describing the stack (default: target/e2e/env).
    #[arg(long, global = true, env = ENV_FILE_VAR)]
    env_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start the stack in the background and return once it is ready.
    Up(StackArgs),
    /// Stop the stack named by the env file.
    Down,
    /// Show whether the stack runs and answers.
    Status,
    /// Create topics on the stack's broker (the operator creates them in a real deployment; the
    /// scripts that run a binary outside the operator, like e2e/postman/run.sh, need them too).
    CreateTopics {
        /// `NAME:PARTITIONS`, e.g. `shop.orders:3`.
        #[arg(required = true, value_parser = topic_spec)]
        topics: Vec<(String, i32)>,
    },
    /// Run a stack in the foreground until SIGTERM/SIGINT (what `up` starts, detached).
    #[command(hide = true)]
    Serve(StackArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct StackArgs {
    /// Which components to run.
    #[arg(long, value_enum, default_value_t = Profile::Full)]
    profile: Profile,
    /// Stack name: the work dir is target/e2e/<name>.
    #[arg(long, default_value = "shared")]
    name: String,
    /// How long `up` waits for the whole stack.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Install our CRDs from this directory instead of the repo's `crds/`.
    #[arg(long)]
    crds_dir: Option<PathBuf>,
    /// Install no CRDs at all (neither ours nor the third-party ones).
    #[arg(long)]
    no_crds: bool,
    /// Also run the Argo Rollouts controller (full and kubernetes profiles).
    #[arg(long)]
    argo_rollouts: bool,
    /// Run no Prometheus (by default the full and kubernetes profiles run one).
    #[arg(long)]
    no_prometheus: bool,
    /// Kafka brokers (full and kafka profiles; kafka-ha: 3). From 3 on, internal topics and new
    /// topics get 3 replicas and min.insync.replicas=2 by default.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=i64::from(MAX_KAFKA_NODES)))]
    kafka_brokers: Option<u8>,
    /// Dedicated KRaft controllers (default: none, every broker is also a controller).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=i64::from(MAX_KAFKA_NODES)))]
    kafka_controllers: Option<u8>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Profile {
    /// Kafka + etcd, kube-apiserver, controller-manager, scheduler, kwok.
    Full,
    /// Kafka only.
    Kafka,
    /// Kafka only, three brokers (each also a KRaft controller), everything replicated:
    /// replication factor 3 and min.insync.replicas 2 for internal and new topics.
    KafkaHa,
    /// Kubernetes only (full control plane with kwok).
    Kubernetes,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env_file = cli.env_file.clone().unwrap_or_else(shared_env_file);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("orderpipe-stack: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Cmd::Up(args) => up(&env_file, &args),
            Cmd::Down => down(&env_file),
            Cmd::Status => status(&env_file).await,
            Cmd::CreateTopics { topics } => create_topics(&env_file, &topics),
            Cmd::Serve(args) => serve(&env_file, &args).await,
        }
    });
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("orderpipe-stack: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn topic_spec(spec: &str) -> Result<(String, i32), String> {
    spec.rsplit_once(':')
        .and_then(|(name, partitions)| {
            let partitions = partitions.parse().ok().filter(|p: &i32| *p > 0)?;
            (!name.is_empty()).then(|| (name.to_owned(), partitions))
        })
        .ok_or_else(|| format!("{spec:?} is not NAME:PARTITIONS with PARTITIONS > 0"))
}

fn create_topics(env_file: &Path, topics: &[(String, i32)]) -> anyhow::Result<ExitCode> {
    let Some(env) = running_stack(env_file)? else {
        bail!("no e2e stack runs (env file {})", env_file.display());
    };
    let bootstrap = env
        .kafka_bootstrap
        .context("the running stack has no Kafka broker")?;
    let topics: Vec<(&str, i32)> = topics.iter().map(|(n, p)| (n.as_str(), *p)).collect();
    orderpipe_stack::create_topics(&bootstrap, &topics)?;
    Ok(ExitCode::SUCCESS)
}

fn supervisor_log(env_file: &Path, name: &str) -> PathBuf {
    env_file
        .parent()
        .unwrap_or(Path::new("."))
        .join(format!("{name}-supervisor.log"))
}

/// Loads the env file if it names a live supervisor; removes it when it is stale.
fn running_stack(env_file: &Path) -> anyhow::Result<Option<StackEnv>> {
    if !env_file.exists() {
        return Ok(None);
    }
    let env = StackEnv::load(env_file)?;
    if pid_alive(env.supervisor_pid) {
        Ok(Some(env))
    } else {
        // Its watchdogs have stopped (or are stopping) the components.
        fs::remove_file(env_file)
            .with_context(|| format!("removing stale {}", env_file.display()))?;
        Ok(None)
    }
}

fn up(env_file: &Path, args: &StackArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    if let Some(env) = running_stack(env_file)? {
        say!(
            "e2e stack already running (supervisor pid {}).",
            env.supervisor_pid
        );
        print_usage(env_file, &env);
        return Ok(ExitCode::SUCCESS);
    }
    let log_path = supervisor_log(env_file, &args.name);
    if let Some(dir) = log_path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let exe = std::env::current_exe().context("locating the orderpipe-stack binary")?;
    let profile = args
        .profile
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default();
    let mut command = Command::new(exe);
    command
        .arg("--env-file")
        .arg(env_file)
        .arg("serve")
        .arg("--profile")
        .arg(profile)
        .arg("--name")
        .arg(&args.name);
    if let Some(dir) = &args.crds_dir {
        command.arg("--crds-dir").arg(dir);
    }
    if args.no_crds {
        command.arg("--no-crds");
    }
    if args.argo_rollouts {
        command.arg("--argo-rollouts");
    }
    if args.no_prometheus {
        command.arg("--no-prometheus");
    }
    if let Some(brokers) = args.kafka_brokers {
        command.arg("--kafka-brokers").arg(brokers.to_string());
    }
    if let Some(controllers) = args.kafka_controllers {
        command
            .arg("--kafka-controllers")
            .arg(controllers.to_string());
    }
    let mut supervisor = command
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the log handle")?)
        .stderr(log)
        .spawn()
        .context("starting the supervisor")?;
    let deadline = started + Duration::from_secs(args.timeout_secs);
    say!("starting the e2e stack (log: {}) ...", log_path.display());
    loop {
        if let Ok(env) = StackEnv::load(env_file)
            && env.supervisor_pid == supervisor.id()
        {
            say!(
                "e2e stack ready in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            print_usage(env_file, &env);
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(status) = supervisor.try_wait().context("polling the supervisor")? {
            eprintln!("{}", tail(&log_path, 60));
            bail!(
                "the e2e stack failed to start (supervisor {status}); full log: {}",
                log_path.display()
            );
        }
        if Instant::now() >= deadline {
            let _ = kill(Pid::from_raw(supervisor.id() as i32), Signal::SIGTERM);
            let _ = supervisor.wait();
            eprintln!("{}", tail(&log_path, 60));
            bail!("the e2e stack was not ready after {} s", args.timeout_secs);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn print_usage(env_file: &Path, env: &StackEnv) {
    say!("  source {}", env_file.display());
    if env.kubeconfig.is_some() {
        say!(
            "  kubectl get nodes                      # kubectl from the tools dir, KUBECONFIG set"
        );
    }
    if let Some(bootstrap) = &env.kafka_bootstrap {
        say!("  kcat -b {bootstrap} -L          # KAFKA_BOOTSTRAP_SERVERS={bootstrap}");
    }
    if let Some(url) = &env.prometheus_url {
        say!("  {url}/targets                # PROMETHEUS_URL={url}");
    }
    say!("  logs: {}/logs/", env.work_dir.display());
    say!("  stop: make e2e-down");
}

async fn serve(env_file: &Path, args: &StackArgs) -> anyhow::Result<ExitCode> {
    // Leave the terminal's session: closing it or pressing Ctrl-C must not stop the stack.
    // Fails only if we already lead a group, in which case there is no terminal to leave.
    let _ = nix::unistd::setsid();
    let mut hangup = signal(SignalKind::hangup()).context("handling SIGHUP")?;
    let mut terminate = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("handling SIGINT")?;

    let mut builder = Stack::builder(&args.name)
        .install_crds(!args.no_crds)
        .argo_rollouts(args.argo_rollouts)
        .prometheus(!args.no_prometheus);
    if let Some(dir) = &args.crds_dir {
        builder = builder.crds_dir(dir);
    }
    let builder = match args.profile {
        Profile::Full => builder,
        Profile::Kafka => builder.kafka_only(),
        Profile::KafkaHa => builder.kafka_ha(),
        Profile::Kubernetes => builder.kafka(false).kubernetes(Kubernetes::Full),
    };
    let builder = match args.kafka_brokers {
        Some(brokers) => builder.kafka_brokers(brokers),
        None => builder,
    };
    let builder = match args.kafka_controllers {
        Some(controllers) => builder.kafka_controllers(KafkaControllers::Dedicated(controllers)),
        None => builder,
    };
    let started = Instant::now();
    let stack = tokio::select! {
        stack = builder.start() => stack?,
        _ = terminate.recv() => bail!("stopped by SIGTERM while starting"),
        _ = interrupt.recv() => bail!("stopped by SIGINT while starting"),
    };
    stack.env().write(env_file)?;
    say!(
        "stack {} ready in {:.1} s: {:?}",
        stack.name(),
        started.elapsed().as_secs_f64(),
        stack.pids()
    );
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => continue,
        }
    }
    say!("stopping stack {}", stack.name());
    let stopped = stack.stop().await;
    if StackEnv::load(env_file).is_ok_and(|env| env.supervisor_pid == std::process::id()) {
        let _ = fs::remove_file(env_file);
    }
    stopped?;
    Ok(ExitCode::SUCCESS)
}

fn down(env_file: &Path) -> anyhow::Result<ExitCode> {
    if !env_file.exists() {
        say!(
            "no e2e stack running ({} does not exist)",
            env_file.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let env = StackEnv::load(env_file)?;
    let supervisor = Pid::from_raw(env.supervisor_pid as i32);
    if pid_alive(env.supervisor_pid) {
        kill(supervisor, Signal::SIGTERM).context("signalling the supervisor")?;
        // The supervisor stops every component gracefully (up to two grace periods).
        if !wait_gone(&[env.supervisor_pid], Duration::from_secs(60)) {
            let _ = kill(supervisor, Signal::SIGKILL);
        }
    }
    // Anything still alive is ours only if it still runs in the stack's work dir: a PID
    // recorded long ago may belong to someone else by now.
    let leftovers: Vec<u32> = env
        .pids
        .iter()
        .map(|(_, pid)| *pid)
        .filter(|pid| pid_alive(*pid) && runs_in(*pid, &env.work_dir))
        .collect();
    for pid in &leftovers {
        let _ = killpg(Pid::from_raw(*pid as i32), Signal::SIGKILL);
    }
    if !wait_gone(&leftovers, Duration::from_secs(10)) {
        bail!("processes {leftovers:?} survived SIGKILL");
    }
    let _ = fs::remove_file(env_file);
    say!("e2e stack stopped");
    Ok(ExitCode::SUCCESS)
}

async fn status(env_file: &Path) -> anyhow::Result<ExitCode> {
    let Some(env) = running_stack(env_file)? else {
        say!("no e2e stack running");
        return Ok(ExitCode::FAILURE);
    };
    let mut healthy = true;
    say!(
        "supervisor pid {} (work dir {})",
        env.supervisor_pid,
        env.work_dir.display()
    );
    for (component, pid) in &env.pids {
        let alive = pid_alive(*pid);
        healthy &= alive;
        say!(
            "  {component:<24} pid {pid:<8} {}",
            if alive { "running" } else { "GONE" }
        );
    }
    if let Some(kubeconfig) = &env.kubeconfig {
        let client = kube_client_for(kubeconfig).await?;
        let ready = wait_until("apiserver /readyz", Duration::from_secs(3), || async {
            let request = http::Request::get("/readyz").body(Vec::new()).ok()?;
            client.request_text(request).await.ok()
        })
        .await
        .is_ok();
        healthy &= ready;
        say!(
            "  kube-apiserver /readyz     {}",
            if ready { "ok" } else { "NOT READY" }
        );
    }
    if let Some(bootstrap) = &env.kafka_bootstrap {
        for address in bootstrap.split(',') {
            let reachable = std::net::TcpStream::connect_timeout(
                &address
                    .parse()
                    .with_context(|| format!("parsing {address} of KAFKA_BOOTSTRAP_SERVERS"))?,
                Duration::from_secs(2),
            )
            .is_ok();
            healthy &= reachable;
            say!(
                "  kafka {address:<20} {}",
                if reachable {
                    "accepting connections"
                } else {
                    "NOT REACHABLE"
                }
            );
        }
    }
    if let Some(url) = &env.prometheus_url {
        let targets = orderpipe_stack::prometheus::active_targets(url).await;
        healthy &= targets.is_ok();
        match targets {
            Ok(targets) => say!("  prometheus {url:<20} {} active targets", targets.len()),
            Err(error) => say!("  prometheus {url:<20} NOT ANSWERING: {error}"),
        }
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn runs_in(pid: u32, work_dir: &Path) -> bool {
    fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == work_dir)
}

fn wait_gone(pids: &[u32], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pids.iter().all(|pid| !pid_alive(*pid)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
