//! Child processes of a stack: each component runs in its own process group with stdout and
//! stderr appended to a log file, and is stopped by PID (SIGTERM to the group, SIGKILL after a
//! grace period). Each component also gets a watchdog, a tiny `sh` loop in a process group of
//! its own, that kills the component's group once the process that started it is gone; that is
//! what keeps a SIGKILLed test or supervisor from leaving orphans behind, since
//! `unsafe_code = "forbid"` rules out PR_SET_PDEATHSIG in a pre_exec hook.
//! Must not find or signal processes by name: only the PIDs this module spawned.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::error::{Result, StackError};

/// Polls `kill -0` on the parent; when the parent is gone, TERM then KILL the component's group.
/// Exits on its own once the group is gone (normal stop), so it never outlives its component by
/// more than one poll. `$1` = parent PID, `$2` = component process group.
const WATCHDOG_SCRIPT: &str = r#"parent=$1 group=$2
while kill -0 "$parent" 2>/dev/null; do
  kill -0 "-$group" 2>/dev/null || exit 0
  sleep 1
done
kill -TERM "-$group" 2>/dev/null || exit 0
i=0
while [ "$i" -lt 25 ] && kill -0 "-$group" 2>/dev/null; do
  sleep 0.2
  i=$((i + 1))
done
kill -KILL "-$group" 2>/dev/null
exit 0
"#;

/// How often a stop polls for the children's exit.
const STOP_POLL: Duration = Duration::from_millis(50);

/// What to run for one component; kept so a restart uses exactly the same command line.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub cwd: PathBuf,
}

impl CommandSpec {
    pub fn new(program: PathBuf, cwd: &Path) -> Self {
        CommandSpec {
            program,
            args: Vec::new(),
            cwd: cwd.to_path_buf(),
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    fn command_line(&self) -> String {
        std::iter::once(self.program.display().to_string())
            .chain(self.args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// One running component: its process group leader and its watchdog.
#[derive(Debug)]
pub struct Process {
    component: &'static str,
    started: Instant,
    child: Child,
    exit: Option<ExitStatus>,
    watchdog: Option<Child>,
    log: PathBuf,
    /// SIGSTOPped by [`Process::pause`] and not yet continued.
    paused: bool,
}

impl Process {
    /// Starts `spec` in a new process group, output appended to `log`, guarded by a watchdog
    /// that watches this process.
    pub fn spawn(component: &'static str, spec: &CommandSpec, log: &Path) -> Result<Process> {
        let mut out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| StackError::io("opening log", log, e))?;
        // A header per start makes restarts visible in the one log file.
        writeln!(
            out,
            "==== orderpipe-stack: starting {component}: {}",
            spec.command_line()
        )
        .map_err(|e| StackError::io("writing log", log, e))?;
        let err = out
            .try_clone()
            .map_err(|e| StackError::io("opening log", log, e))?;
        let child = Command::new(&spec.program)
            .args(&spec.args)
            .current_dir(&spec.cwd)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|error| StackError::Spawn {
                component,
                program: spec.program.clone(),
                error,
            })?;
        let mut process = Process {
            component,
            started: Instant::now(),
            child,
            exit: None,
            watchdog: None,
            log: log.to_path_buf(),
            paused: false,
        };
        process.watchdog = Some(spawn_watchdog(
            component,
            std::process::id(),
            process.pid(),
        )?);
        Ok(process)
    }

    /// PID of the group leader, which is also the process group ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Appends a harness line to the component's log, with the time since spawn: the logs then
    /// show how long each component took to become ready.
    pub fn note(&self, what: &str) {
        if let Ok(mut log) = OpenOptions::new().append(true).open(&self.log) {
            let elapsed = self.started.elapsed().as_secs_f64();
            let _ = writeln!(
                log,
                "==== orderpipe-stack: {} {what} after {elapsed:.1} s",
                self.component
            );
        }
    }

    /// The error to report if the component has already exited (it never should on its own).
    pub fn exited_error(&mut self) -> Option<StackError> {
        let status = self.reap()?;
        let tail = log_tail(&self.log, 40);
        if tail.to_ascii_lowercase().contains("address already in use") {
            return Some(StackError::PortTaken {
                component: self.component,
            });
        }
        Some(StackError::ExitedEarly {
            component: self.component,
            status: status.to_string(),
            log: self.log.clone(),
            tail,
        })
    }

    /// The error for a readiness wait that ran out of time, with the log tail.
    pub fn not_ready_error(&self, what: impl Into<String>, waited: Duration) -> StackError {
        StackError::NotReady {
            component: self.component,
            what: what.into(),
            waited,
            log: self.log.clone(),
            tail: log_tail(&self.log, 40),
        }
    }

    /// Reaps the leader if it has exited; `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.reap()
    }

    fn reap(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    fn signal_group(&mut self, signal: Signal) -> Result<()> {
        // Once the leader is reaped its PID (= the group ID) may be reused: never signal then.
        if self.reap().is_some() {
            return Ok(());
        }
        match killpg(Pid::from_raw(self.pid() as i32), signal) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(error) => Err(StackError::Stop {
                component: self.component,
                pid: self.pid(),
                error,
            }),
        }
    }

    /// SIGKILL to the group, then reaps it: a crash, with no shutdown of any kind (for fault
    /// tests; a stop is [`stop_all`]).
    pub fn kill(&mut self) -> Result<ExitStatus> {
        self.signal_group(Signal::SIGKILL)?;
        let status = match self.exit {
            Some(status) => status,
            None => {
                let status = self
                    .child
                    .wait()
                    .map_err(|e| StackError::io("waiting for", PathBuf::from(self.component), e))?;
                self.exit = Some(status);
                status
            }
        };
        self.paused = false;
        self.dismiss_watchdog();
        self.note("killed (SIGKILL)");
        Ok(status)
    }

    /// SIGSTOP to the group: the process keeps its sockets open but answers nothing, the way a
    /// network partition or a long GC pause looks from outside.
    pub fn pause(&mut self) -> Result<()> {
        self.signal_group(Signal::SIGSTOP)?;
        self.paused = true;
        self.note("paused (SIGSTOP)");
        Ok(())
    }

    /// SIGCONT to the group after [`Process::pause`].
    pub fn resume(&mut self) -> Result<()> {
        self.signal_group(Signal::SIGCONT)?;
        self.paused = false;
        self.note("resumed (SIGCONT)");
        Ok(())
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Kills and reaps the watchdog (its job ends with a deliberate stop).
    fn dismiss_watchdog(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            dismiss_watchdog(watchdog);
        }
    }
}

impl Drop for Process {
    /// Last resort only: stacks stop their processes gracefully before dropping them.
    fn drop(&mut self) {
        if self.reap().is_none() {
            let _ = self.signal_group(Signal::SIGKILL);
            let _ = self.child.wait();
        }
        self.dismiss_watchdog();
    }
}

/// Starts a watchdog that kills process group `group` once process `parent` is gone. Also used
/// by the node agent for the containers it runs; `label` names the watchdog in `ps`.
pub fn spawn_watchdog(label: &str, parent: u32, group: u32) -> Result<Child> {
    Command::new("/bin/sh")
        .arg("-c")
        .arg(WATCHDOG_SCRIPT)
        .arg(format!("orderpipe-stack-watchdog-{label}"))
        .arg(parent.to_string())
        .arg(group.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own group: a Ctrl-C aimed at the test must not kill the watchdog with it.
        .process_group(0)
        .spawn()
        .map_err(|error| StackError::Spawn {
            component: "watchdog",
            program: PathBuf::from("/bin/sh"),
            error,
        })
}

/// Kills and reaps a watchdog whose group has been stopped deliberately.
pub fn dismiss_watchdog(mut watchdog: Child) {
    // The watchdog leads its own group, which also holds its `sleep`.
    let _ = killpg(Pid::from_raw(watchdog.id() as i32), Signal::SIGKILL);
    let _ = watchdog.wait();
}

/// SIGTERM every group, wait up to `grace` for all leaders to exit, SIGKILL the rest.
pub async fn stop_all(processes: &mut [&mut Process], grace: Duration) -> Result<()> {
    begin_stop(processes)?;
    let deadline = Instant::now() + grace;
    while !all_exited(processes) && Instant::now() < deadline {
        tokio::time::sleep(STOP_POLL).await;
    }
    finish_stop(processes)
}

/// [`stop_all`] for `Drop`, where nothing can be awaited.
pub fn stop_all_blocking(processes: &mut [&mut Process], grace: Duration) -> Result<()> {
    begin_stop(processes)?;
    let deadline = Instant::now() + grace;
    while !all_exited(processes) && Instant::now() < deadline {
        std::thread::sleep(STOP_POLL);
    }
    finish_stop(processes)
}

fn begin_stop(processes: &mut [&mut Process]) -> Result<()> {
    for process in processes.iter_mut() {
        process.signal_group(Signal::SIGTERM)?;
        // A stopped process only acts on its pending SIGTERM once continued.
        if process.paused {
            process.signal_group(Signal::SIGCONT)?;
            process.paused = false;
        }
    }
    Ok(())
}

fn all_exited(processes: &mut [&mut Process]) -> bool {
    processes.iter_mut().all(|p| p.reap().is_some())
}

fn finish_stop(processes: &mut [&mut Process]) -> Result<()> {
    for process in processes.iter_mut() {
        if process.reap().is_none() {
            process.signal_group(Signal::SIGKILL)?;
            process.exit =
                Some(process.child.wait().map_err(|e| {
                    StackError::io("waiting for", PathBuf::from(process.component), e)
                })?);
        }
        process.dismiss_watchdog();
    }
    Ok(())
}

/// Exit status as a short phrase ("exit status 1", "killed by SIGKILL").
pub fn describe_exit(status: ExitStatus) -> String {
    match status.signal() {
        Some(signal) => Signal::try_from(signal).map_or_else(
            |_| format!("killed by signal {signal}"),
            |s| format!("killed by {s}"),
        ),
        None => status.to_string(),
    }
}

/// The last `lines` lines of a log file (reads at most the last 64 KiB: Kafka logs get big).
pub fn log_tail(path: &Path, lines: usize) -> String {
    const WINDOW: u64 = 64 * 1024;
    let Ok(mut file) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(WINDOW)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether a PID still names a live process. A zombie counts as gone: it has exited and only
/// waits for a parent (possibly a non-reaping init) to collect it.
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself contain ") ".
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(dir: &Path) -> CommandSpec {
        CommandSpec::new(PathBuf::from("/bin/sleep"), dir).arg("600")
    }

    #[tokio::test]
    async fn stop_terminates_the_group_and_the_watchdog() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("sleep.log");
        let mut process = Process::spawn("sleep", &sleeper(dir.path()), &log).expect("spawn");
        let pid = process.pid();
        let watchdog = process.watchdog.as_ref().map(Child::id).expect("watchdog");
        assert!(pid_alive(pid));
        stop_all(&mut [&mut process], Duration::from_secs(5))
            .await
            .expect("stop");
        assert_eq!(
            process.exit.map(describe_exit).as_deref(),
            Some("killed by SIGTERM")
        );
        assert!(!pid_alive(pid));
        assert!(!pid_alive(watchdog));
        assert!(log_tail(&log, 5).contains("starting sleep: /bin/sleep 600"));
    }

    #[test]
    fn a_process_ignoring_sigterm_is_killed_after_the_grace_period() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = CommandSpec::new(PathBuf::from("/bin/sh"), dir.path())
            .args(["-c", "trap '' TERM; echo ready; while :; do sleep 1; done"]);
        let log = dir.path().join("log");
        let mut process = Process::spawn("stubborn", &spec, &log).expect("spawn");
        let pid = process.pid();
        // A SIGTERM that lands before the trap is set would kill the shell and prove nothing.
        let deadline = Instant::now() + Duration::from_secs(10);
        while log_tail(&log, 1) != "ready" && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        stop_all_blocking(&mut [&mut process], Duration::from_millis(300)).expect("stop");
        assert_eq!(
            process.exit.map(describe_exit).as_deref(),
            Some("killed by SIGKILL")
        );
        assert!(!pid_alive(pid));
    }

    #[test]
    fn watchdog_kills_the_group_when_the_parent_dies() {
        let mut component = Command::new("/bin/sleep")
            .arg("600")
            .process_group(0)
            .spawn()
            .expect("component");
        let mut parent = Command::new("/bin/sleep")
            .arg("600")
            .spawn()
            .expect("parent");
        let mut watchdog = spawn_watchdog("sleep", parent.id(), component.id()).expect("watchdog");
        parent.kill().expect("kill parent");
        parent.wait().expect("reap parent");
        let status = component.wait().expect("component must be killed");
        assert_eq!(describe_exit(status), "killed by SIGTERM");
        watchdog.wait().expect("watchdog exits on its own");
    }

    #[test]
    fn exited_component_reports_port_conflicts_distinctly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = CommandSpec::new(PathBuf::from("/bin/sh"), dir.path()).args([
            "-c",
            "echo 'listen tcp 127.0.0.1:1: bind: address already in use'; exit 1",
        ]);
        let mut process = Process::spawn("web", &spec, &dir.path().join("log")).expect("spawn");
        let mut error = None;
        let deadline = Instant::now() + Duration::from_secs(5);
        while error.is_none() && Instant::now() < deadline {
            error = process.exited_error();
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            matches!(error, Some(StackError::PortTaken { component: "web" })),
            "{error:?}"
        );
    }

    /// The state letter of `/proc/<pid>/stat` (R, S, T, Z...).
    fn proc_state(pid: u32) -> char {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        let (_, rest) = stat.rsplit_once(") ").expect("state");
        rest.chars().next().expect("state letter")
    }

    /// Whether `pid` reaches a state `wanted` accepts within 5 s (signals land asynchronously).
    fn reaches_state(pid: u32, wanted: impl Fn(char) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !wanted(proc_state(pid)) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    #[tokio::test]
    async fn pause_resume_and_kill_act_on_the_group_and_a_paused_process_still_stops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("sleep.log");
        let mut process = Process::spawn("sleep", &sleeper(dir.path()), &log).expect("spawn");
        let pid = process.pid();
        process.pause().expect("pause");
        assert!(process.is_paused());
        assert!(reaches_state(pid, |state| state == 'T'), "stopped");
        process.resume().expect("resume");
        assert!(reaches_state(pid, |state| state != 'T'), "continued");
        let watchdog = process.watchdog.as_ref().map(Child::id).expect("watchdog");
        let status = process.kill().expect("kill");
        assert_eq!(describe_exit(status), "killed by SIGKILL");
        assert!(!pid_alive(pid));
        assert!(!pid_alive(watchdog));
        assert!(log_tail(&log, 3).contains("sleep killed (SIGKILL)"));

        // A SIGSTOPped process gets its SIGTERM and a SIGCONT: it stops within the grace period.
        let mut paused = Process::spawn("sleep", &sleeper(dir.path()), &log).expect("spawn");
        paused.pause().expect("pause");
        stop_all(&mut [&mut paused], Duration::from_secs(5))
            .await
            .expect("stop");
        assert_eq!(
            paused.exit.map(describe_exit).as_deref(),
            Some("killed by SIGTERM")
        );
    }

    #[test]
    fn log_tail_returns_the_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        let text: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        fs::write(&path, text).expect("write");
        assert_eq!(log_tail(&path, 2), "line 99\nline 100");
    }

    #[test]
    fn pid_alive_is_false_for_reaped_and_true_for_running_processes() {
        let mut child = Command::new("/bin/sleep")
            .arg("600")
            .spawn()
            .expect("spawn");
        let pid = child.id();
        assert!(pid_alive(pid));
        child.kill().expect("kill");
        child.wait().expect("wait");
        assert!(!pid_alive(pid));
    }
}
