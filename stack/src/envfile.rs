//! The shell-sourceable description of a running stack (`target/e2e/env`, and `env` in every
//! stack's work dir): how to reach it (KUBECONFIG, KAFKA_BOOTSTRAP_SERVERS) and which PIDs to
//! stop. Written atomically (temp file + rename), so a reader never sees half a file; it is how
//! tests find the shared stack and how `orderpipe-stack down` finds what to stop.
//! Must not contain secrets beyond paths: key material stays in the work dir.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Result, StackError};

/// Variable names, shared by the writer, the parser and the README.
pub mod var {
    pub const KUBECONFIG: &str = "KUBECONFIG";
    /// Every broker's PLAINTEXT listener, comma-separated: a bootstrap list for any client.
    pub const KAFKA_BOOTSTRAP_SERVERS: &str = "KAFKA_BOOTSTRAP_SERVERS";
    /// `id=host:port` of each broker, space-separated (its PID is in `E2E_PIDS` under its
    /// component name: `kafka` for the one-broker stack, `kafka-<id>` in a cluster).
    pub const KAFKA_BROKERS: &str = "KAFKA_BROKERS";
    /// The broker's SASL_SSL listener (CA and password files are in the work dir's `kafka-tls/`).
    pub const KAFKA_SASL_SSL_BOOTSTRAP_SERVERS: &str = "KAFKA_SASL_SSL_BOOTSTRAP_SERVERS";
    /// The stack's Prometheus (`http://127.0.0.1:<port>`), for queries and the canary analysis.
    pub const PROMETHEUS_URL: &str = "PROMETHEUS_URL";
    /// Rule files (`*.yml`, `*.yaml`) Prometheus loads; add one, then `POST $PROMETHEUS_URL/-/reload`.
    pub const PROMETHEUS_RULES_DIR: &str = "PROMETHEUS_RULES_DIR";
    /// File-SD files (`*.json`) of processes outside the cluster Prometheus scrapes too.
    pub const PROMETHEUS_TARGETS_DIR: &str = "PROMETHEUS_TARGETS_DIR";
    pub const TOOLS_DIR: &str = "E2E_TOOLS_DIR";
    pub const WORK_DIR: &str = "E2E_WORK_DIR";
    pub const SUPERVISOR_PID: &str = "E2E_SUPERVISOR_PID";
    pub const PIDS: &str = "E2E_PIDS";
}

/// What a client of the stack needs to know.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StackEnv {
    pub kubeconfig: Option<PathBuf>,
    pub kafka_bootstrap: Option<String>,
    pub kafka_secure_bootstrap: Option<String>,
    /// `(node id, 127.0.0.1:<port>)` of every broker.
    pub kafka_brokers: Vec<(i32, String)>,
    pub prometheus_url: Option<String>,
    pub prometheus_rules_dir: Option<PathBuf>,
    pub prometheus_targets_dir: Option<PathBuf>,
    pub tools_dir: PathBuf,
    pub work_dir: PathBuf,
    /// The process that owns the stack (the `orderpipe-stack serve` supervisor, or a test).
    pub supervisor_pid: u32,
    /// `(component, pid)`; each PID is also the component's process group.
    pub pids: Vec<(String, u32)>,
}

impl StackEnv {
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# The local orderpipe e2e stack, written by orderpipe-stack. Use: source target/e2e/env\n",
        );
        let mut export = |key: &str, value: &str| {
            let _ = writeln!(out, "export {key}={}", shell_quote(value));
        };
        if let Some(kubeconfig) = &self.kubeconfig {
            export(var::KUBECONFIG, &kubeconfig.display().to_string());
        }
        if let Some(bootstrap) = &self.kafka_bootstrap {
            export(var::KAFKA_BOOTSTRAP_SERVERS, bootstrap);
        }
        if let Some(bootstrap) = &self.kafka_secure_bootstrap {
            export(var::KAFKA_SASL_SSL_BOOTSTRAP_SERVERS, bootstrap);
        }
        if !self.kafka_brokers.is_empty() {
            let brokers: Vec<String> = self
                .kafka_brokers
                .iter()
                .map(|(id, address)| format!("{id}={address}"))
                .collect();
            export(var::KAFKA_BROKERS, &brokers.join(" "));
        }
        if let Some(url) = &self.prometheus_url {
            export(var::PROMETHEUS_URL, url);
        }
        if let Some(dir) = &self.prometheus_rules_dir {
            export(var::PROMETHEUS_RULES_DIR, &dir.display().to_string());
        }
        if let Some(dir) = &self.prometheus_targets_dir {
            export(var::PROMETHEUS_TARGETS_DIR, &dir.display().to_string());
        }
        export(var::TOOLS_DIR, &self.tools_dir.display().to_string());
        export(var::WORK_DIR, &self.work_dir.display().to_string());
        export(var::SUPERVISOR_PID, &self.supervisor_pid.to_string());
        let pids: Vec<String> = self.pids.iter().map(|(c, p)| format!("{c}={p}")).collect();
        export(var::PIDS, &pids.join(" "));
        // kubectl from the tools dir first, so `kubectl` matches the apiserver's version.
        out.push_str("export PATH=\"$E2E_TOOLS_DIR/bin:$PATH\"\n");
        out
    }

    pub fn parse(path: &Path, text: &str) -> Result<StackEnv> {
        let invalid = |reason: String| StackError::EnvFile {
            path: path.to_path_buf(),
            reason,
        };
        let mut env = StackEnv::default();
        let mut supervisor = None;
        for line in text.lines() {
            let Some(assignment) = line.strip_prefix("export ") else {
                continue;
            };
            let Some((key, raw)) = assignment.split_once('=') else {
                continue;
            };
            if key == "PATH" {
                continue;
            }
            let value =
                shell_unquote(raw).ok_or_else(|| invalid(format!("bad quoting: {line}")))?;
            match key {
                var::KUBECONFIG => env.kubeconfig = Some(PathBuf::from(value)),
                var::KAFKA_BOOTSTRAP_SERVERS => env.kafka_bootstrap = Some(value),
                var::KAFKA_SASL_SSL_BOOTSTRAP_SERVERS => env.kafka_secure_bootstrap = Some(value),
                var::KAFKA_BROKERS => {
                    for entry in value.split_whitespace() {
                        let broker = entry
                            .split_once('=')
                            .and_then(|(id, address)| Some((id.parse().ok()?, address.to_owned())))
                            .ok_or_else(|| invalid(format!("bad broker entry {entry:?}")))?;
                        env.kafka_brokers.push(broker);
                    }
                }
                var::PROMETHEUS_URL => env.prometheus_url = Some(value),
                var::PROMETHEUS_RULES_DIR => env.prometheus_rules_dir = Some(PathBuf::from(value)),
                var::PROMETHEUS_TARGETS_DIR => {
                    env.prometheus_targets_dir = Some(PathBuf::from(value));
                }
                var::TOOLS_DIR => env.tools_dir = PathBuf::from(value),
                var::WORK_DIR => env.work_dir = PathBuf::from(value),
                var::SUPERVISOR_PID => {
                    supervisor = Some(
                        value
                            .parse()
                            .map_err(|_| invalid(format!("bad pid: {line}")))?,
                    );
                }
                var::PIDS => {
                    for entry in value.split_whitespace() {
                        let (component, pid) = entry
                            .split_once('=')
                            .and_then(|(c, p)| Some((c.to_owned(), p.parse().ok()?)))
                            .ok_or_else(|| invalid(format!("bad pid entry {entry:?}")))?;
                        env.pids.push((component, pid));
                    }
                }
                _ => {}
            }
        }
        env.supervisor_pid =
            supervisor.ok_or_else(|| invalid(format!("{} missing", var::SUPERVISOR_PID)))?;
        Ok(env)
    }

    pub fn load(path: &Path) -> Result<StackEnv> {
        let text = fs::read_to_string(path).map_err(|e| StackError::io("reading", path, e))?;
        StackEnv::parse(path, &text)
    }

    /// Writes to a temporary sibling and renames it into place.
    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| StackError::io("creating", parent, e))?;
        }
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        fs::write(&tmp, self.render()).map_err(|e| StackError::io("writing", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| StackError::io("renaming into", path, e))
    }
}

fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

fn shell_unquote(raw: &str) -> Option<String> {
    let inner = raw.strip_prefix('\'')?.strip_suffix('\'')?;
    Some(inner.replace(r"'\''", "'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StackEnv {
        StackEnv {
            kubeconfig: Some(PathBuf::from("/w/it's here/kubeconfig")),
            kafka_bootstrap: Some("127.0.0.1:39092,127.0.0.1:39192".into()),
            kafka_secure_bootstrap: Some("127.0.0.1:39094,127.0.0.1:39194".into()),
            kafka_brokers: vec![(1, "127.0.0.1:39092".into()), (2, "127.0.0.1:39192".into())],
            prometheus_url: Some("http://127.0.0.1:39090".into()),
            prometheus_rules_dir: Some(PathBuf::from("/w/prometheus/rules")),
            prometheus_targets_dir: Some(PathBuf::from("/w/prometheus/local-targets")),
            tools_dir: PathBuf::from("/cache/e2e-tools/v1"),
            work_dir: PathBuf::from("/w"),
            supervisor_pid: 42,
            pids: vec![
                ("etcd".into(), 100),
                ("kafka-1".into(), 200),
                ("kafka-2".into(), 201),
            ],
        }
    }

    #[test]
    fn render_then_parse_round_trips() {
        let env = sample();
        let parsed = StackEnv::parse(Path::new("env"), &env.render()).expect("parse");
        assert_eq!(parsed, env);
    }

    #[test]
    fn rendered_file_is_valid_shell_with_the_documented_variables() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("env");
        sample().write(&path).expect("write");
        let output = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(". \"$1\" && printf '%s|%s|%s|%s' \"$KUBECONFIG\" \"$KAFKA_BOOTSTRAP_SERVERS\" \"$KAFKA_BROKERS\" \"$E2E_PIDS\"")
            .arg("sh")
            .arg(&path)
            .output()
            .expect("sh");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "/w/it's here/kubeconfig|127.0.0.1:39092,127.0.0.1:39192|\
             1=127.0.0.1:39092 2=127.0.0.1:39192|etcd=100 kafka-1=200 kafka-2=201"
        );
    }

    #[test]
    fn missing_supervisor_pid_is_an_error() {
        let err =
            StackEnv::parse(Path::new("env"), "export KUBECONFIG='/k'\n").expect_err("must fail");
        assert!(err.to_string().contains(var::SUPERVISOR_PID), "{err}");
    }
}
