//! The process under test: spawned on its own (so its RSS and CPU are its own), logging to a file,
//! measured through `/proc/<pid>`, killed when dropped. Parsing of `/proc` text is pure and tested;
//! this module must not decide what to run.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// A running process under test.
#[derive(Debug)]
pub struct Measured {
    name: String,
    child: Child,
    log: PathBuf,
    ticks_per_second: f64,
}

/// CPU time used so far, and when it was read.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    cpu: Duration,
    at: Instant,
}

impl CpuSample {
    pub fn at(&self) -> Instant {
        self.at
    }
}

impl Measured {
    /// Starts `command` with stdout and stderr in `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> anyhow::Result<Self> {
        let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name}: {command:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
            ticks_per_second: clock_ticks_per_second()?,
        })
    }

    /// Fails with the log's tail when the process has exited: a dead process never catches up.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                tail.join("\n")
            );
        }
        Ok(())
    }

    pub fn cpu(&self) -> anyhow::Result<CpuSample> {
        let stat = self.read_proc("stat")?;
        let ticks =
            cpu_ticks(&stat).with_context(|| format!("parsing /proc stat of {}", self.name))?;
        Ok(CpuSample {
            cpu: Duration::from_secs_f64(ticks as f64 / self.ticks_per_second),
            at: Instant::now(),
        })
    }

    /// Peak resident set size so far, in bytes.
    pub fn peak_rss(&self) -> anyhow::Result<u64> {
        let status = self.read_proc("status")?;
        peak_rss_kib(&status)
            .map(|kib| kib * 1024)
            .with_context(|| format!("no VmHWM in /proc status of {}", self.name))
    }

    fn read_proc(&self, file: &str) -> anyhow::Result<String> {
        let path = format!("/proc/{}/{file}", self.child.id());
        std::fs::read_to_string(&path).with_context(|| format!("reading {path} ({})", self.name))
    }
}

impl Drop for Measured {
    fn drop(&mut self) {
        // The numbers are taken; how the process ends does not matter, and its group is never reused.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Share of one core used between two samples (1.0 = one core busy all the time).
pub fn cpu_share(from: CpuSample, to: CpuSample) -> Option<f64> {
    let wall = to.at.duration_since(from.at).as_secs_f64();
    let cpu = to.cpu.saturating_sub(from.cpu).as_secs_f64();
    (wall > 0.0).then(|| cpu / wall)
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may contain spaces, so fields are counted after its closing parenthesis.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `VmHWM` (peak RSS) of a `/proc/<pid>/status` text, in KiB.
pub fn peak_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `getconf CLK_TCK`: the unit of the CPU times in `/proc/<pid>/stat`.
fn clock_ticks_per_second() -> anyhow::Result<f64> {
    let output = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("running getconf CLK_TCK")?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("getconf CLK_TCK printed {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_count_fields_after_a_command_name_with_spaces() {
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 9 0";
        assert_eq!(cpu_ticks(stat), Some(300));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn peak_rss_is_read_from_vmhwm() {
        let status = "Name:\tjava\nVmPeak:\t 900 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(peak_rss_kib(status), Some(12_345));
        assert_eq!(peak_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn cpu_share_is_cpu_time_over_wall_time() {
        let at = Instant::now();
        let from = CpuSample {
            cpu: Duration::from_secs(1),
            at,
        };
        let to = CpuSample {
            cpu: Duration::from_secs(4),
            at: at + Duration::from_secs(2),
        };
        assert_eq!(cpu_share(from, to), Some(1.5));
        assert_eq!(cpu_share(from, from), None);
    }
}
