//! The operating-system side of containers. Each container process runs in its own process group
//! (its PID is the group ID), stdin from /dev/null, stdout and stderr appended to its log, and is
//! guarded by the stack's watchdog (`orderpipe_stack::spawn_watchdog`), which kills the group
//! once the agent's process is gone, so even a SIGKILLed agent leaves no orphans. The
//! [`ProcessTable`] lists the live groups so a dropped agent handle can stop them without a
//! runtime. Must not signal anything but groups this module started, and never a reaped one.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

use super::error::StartError;
use super::launch::Launch;
use orderpipe_stack::{dismiss_watchdog, pid_alive, spawn_watchdog};

/// How often a blocking stop polls for exits.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Process groups running right now, each with its termination grace period.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProcessTable {
    groups: Arc<Mutex<BTreeMap<u32, Duration>>>,
}

impl ProcessTable {
    fn insert(&self, group: u32, grace: Duration) {
        self.lock().insert(group, grace);
    }

    fn remove(&self, group: u32) {
        self.lock().remove(&group);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Duration>> {
        self.groups.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// SIGTERM to every group, up to the longest grace period for them to exit, then SIGKILL:
    /// the stop of last resort when the agent's tasks can no longer do it (a dropped handle).
    /// Exited leaders count as gone even unreaped (`pid_alive` treats zombies so).
    pub fn stop_all_blocking(&self) {
        let groups = self.lock().clone();
        let Some(grace) = groups.values().max().copied() else {
            return;
        };
        for &group in groups.keys() {
            signal_group(group, Signal::SIGTERM);
        }
        let deadline = std::time::Instant::now() + grace;
        while groups.keys().any(|&g| pid_alive(g)) && std::time::Instant::now() < deadline {
            std::thread::sleep(STOP_POLL);
        }
        for &group in groups.keys() {
            if pid_alive(group) {
                signal_group(group, Signal::SIGKILL);
            }
        }
    }
}

fn signal_group(group: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(group) else {
        return;
    };
    match killpg(Pid::from_raw(raw), signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(error) => {
            tracing::warn!(group, %signal, %error, "could not signal a container's process group")
        }
    }
}

/// One running container process.
#[derive(Debug)]
pub(crate) struct ContainerProcess {
    child: tokio::process::Child,
    pid: u32,
    exit: Option<ExitStatus>,
    watchdog: Option<std::process::Child>,
    table: ProcessTable,
}

impl ContainerProcess {
    /// Starts `launch` in `cwd` in a new process group, output appended to `log`, registered in
    /// `table` with its grace period. `label` names it in the log header and the watchdog.
    pub fn spawn(
        launch: &Launch,
        cwd: &Path,
        log: &Path,
        label: &str,
        grace: Duration,
        table: &ProcessTable,
    ) -> Result<ContainerProcess, StartError> {
        let log_error = |error| StartError::Log {
            path: log.to_path_buf(),
            error,
        };
        let mut out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(log_error)?;
        // One log per container across restarts; a header per start shows where each begins.
        writeln!(
            out,
            "==== orderpipe-node-agent: starting {label}: {} {}",
            launch.program.display(),
            launch.args.join(" ")
        )
        .map_err(log_error)?;
        let err = out.try_clone().map_err(log_error)?;
        let child = tokio::process::Command::new(&launch.program)
            .args(&launch.args)
            // The container sees its own environment only, as under a kubelet.
            .env_clear()
            .envs(&launch.env)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|error| StartError::Exec {
                program: launch.program.clone(),
                error,
            })?;
        let Some(pid) = child.id() else {
            // Only possible if the child was already reaped, which nothing did yet.
            return Err(StartError::Exec {
                program: launch.program.clone(),
                error: std::io::Error::other("the new process has no PID"),
            });
        };
        table.insert(pid, grace);
        let mut process = ContainerProcess {
            child,
            pid,
            exit: None,
            watchdog: None,
            table: table.clone(),
        };
        // On failure `process` is dropped, which kills the group it just started.
        process.watchdog =
            Some(spawn_watchdog(label, std::process::id(), pid).map_err(StartError::Watchdog)?);
        Ok(process)
    }

    /// PID of the group leader, also the process group ID.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits for the leader to exit (cancel-safe), then clears up after it.
    pub async fn wait(&mut self) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        // An error means the child was already reaped elsewhere, which cannot happen here;
        // report it as a SIGKILL rather than hang.
        let status = self
            .child
            .wait()
            .await
            .unwrap_or_else(|_| ExitStatus::from_raw(Signal::SIGKILL as i32));
        self.exited(status);
        status
    }

    /// SIGTERM to the group, then SIGKILL once `deadline` passes; a stop request arriving on
    /// `stop` meanwhile can only bring the deadline forward (a second, shorter delete).
    pub async fn terminate(
        &mut self,
        mut deadline: Instant,
        stop: &mut watch::Receiver<Option<Instant>>,
    ) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        let mut stop_open = true;
        loop {
            tokio::select! {
                status = self.wait() => return status,
                () = sleep_until(deadline) => {
                    self.signal(Signal::SIGKILL);
                    return self.wait().await;
                }
                changed = stop.changed(), if stop_open => match changed {
                    Ok(()) => {
                        if let Some(requested) = *stop.borrow_and_update() {
                            deadline = deadline.min(requested);
                        }
                    }
                    Err(_) => stop_open = false,
                },
            }
        }
    }

    fn signal(&mut self, signal: Signal) {
        // Once the leader is reaped its PID (= the group ID) may be reused: never signal then.
        if self.exit.is_none() {
            signal_group(self.pid, signal);
        }
    }

    fn exited(&mut self, status: ExitStatus) {
        self.exit = Some(status);
        // A container ends with its main process: anything it left in its group goes too. The
        // kernel does not reuse a PID that still names a group, so this reaches only stragglers.
        signal_group(self.pid, Signal::SIGKILL);
        if let Some(watchdog) = self.watchdog.take() {
            dismiss_watchdog(watchdog);
        }
        self.table.remove(self.pid);
    }
}

impl Drop for ContainerProcess {
    /// Last resort (the task running it was aborted): the runner terminates gracefully first.
    fn drop(&mut self) {
        if self.exit.is_none() {
            signal_group(self.pid, Signal::SIGKILL);
            let status = self
                .child
                .try_wait()
                .ok()
                .flatten()
                .unwrap_or_else(|| ExitStatus::from_raw(Signal::SIGKILL as i32));
            self.exited(status);
        }
    }
}

/// The exit code a container runtime reports: the code, or 128 + the signal that killed it.
pub(crate) fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(128)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn launch(script: &str) -> Launch {
        Launch {
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".into(), script.into()],
            env: BTreeMap::new(),
        }
    }

    /// A shell that ignores SIGTERM, returned once its trap is set: a SIGTERM before that would
    /// kill the shell and prove nothing.
    async fn spawn_ignoring_sigterm(dir: &Path, table: &ProcessTable) -> ContainerProcess {
        let log = dir.join("c.log");
        let process = ContainerProcess::spawn(
            &launch("trap '' TERM; echo ready; while :; do sleep 1; done"),
            dir,
            &log,
            "stubborn",
            Duration::from_secs(30),
            table,
        )
        .expect("spawn");
        while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("ready\n")) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        process
    }

    #[tokio::test]
    async fn terminate_escalates_to_sigkill_at_the_deadline_and_clears_the_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = ProcessTable::default();
        let mut process = spawn_ignoring_sigterm(dir.path(), &table).await;
        let pid = process.pid();
        assert!(table.lock().contains_key(&pid));
        let (_stop_tx, mut stop) = watch::channel(None);
        let status = process
            .terminate(Instant::now() + Duration::from_millis(300), &mut stop)
            .await;
        assert_eq!(exit_code(status), 128 + Signal::SIGKILL as i32);
        assert!(!pid_alive(pid));
        assert!(table.lock().is_empty());
    }

    #[tokio::test]
    async fn a_shorter_stop_request_brings_the_kill_forward() {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = ProcessTable::default();
        let mut process = spawn_ignoring_sigterm(dir.path(), &table).await;
        let (stop_tx, mut stop) = watch::channel(None);
        let started = Instant::now();
        let terminate = process.terminate(started + Duration::from_secs(60), &mut stop);
        let shorten = async {
            stop_tx.send_replace(Some(Instant::now()));
        };
        let (status, ()) = tokio::join!(terminate, shorten);
        assert_eq!(exit_code(status), 128 + Signal::SIGKILL as i32);
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn a_dropped_table_owner_stops_every_group() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let table = ProcessTable::default();
        let process = runtime.block_on(async {
            ContainerProcess::spawn(
                &launch("sleep 600"),
                dir.path(),
                &dir.path().join("c.log"),
                "sleeper",
                Duration::from_secs(5),
                &table,
            )
            .expect("spawn")
        });
        let pid = process.pid();
        table.stop_all_blocking();
        assert!(!pid_alive(pid));
        drop(process);
        assert!(table.lock().is_empty());
    }
}
