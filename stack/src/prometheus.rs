//! The stack's Prometheus and the kit tests query it with.
//!
//! The server is the Debian package's `prometheus` (on `PATH`, installed by `make e2e-setup`), run
//! like every other component: its own port, its data and config in `<work dir>/prometheus/`, ready
//! when `/-/ready` answers, stopped with the stack. It scrapes what the cluster's ServiceMonitors
//! select, never a hand-written list: `service_monitors` resolves them into `targets.json` next to
//! the config, which Prometheus follows (file service discovery; Debian builds Prometheus without
//! Kubernetes discovery, see `stack/README.md`, "Prometheus").
//!
//! Tests and the demo load alert rules by writing files into [`PrometheusServer::rules_dir`]
//! (`$PROMETHEUS_RULES_DIR`) and calling [`reload`]; the lifecycle API is enabled for that.
//!
//! The kit ([`query`], [`active_targets`], [`wait_for_targets`], [`reload`]) speaks the HTTP API
//! and knows nothing about orderpipe's metrics.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::component::{Component, Member};
use crate::error::{Result, StackError};
use crate::ports::free_port;
use crate::process::CommandSpec;
use crate::wait::wait_until;

/// Faster than the ServiceMonitors' 15 s: a test waits for a few samples per `rate()` window, and
/// nothing here is expensive to scrape.
const SCRAPE_INTERVAL: &str = "5s";

/// The stack's Prometheus server.
#[derive(Debug)]
pub(crate) struct PrometheusServer {
    url: String,
    rules_dir: PathBuf,
    targets_file: PathBuf,
    timeout: Duration,
    member: Member,
}

impl PrometheusServer {
    /// Writes the configuration into `<dir>/prometheus/` and prepares the command line.
    pub fn prepare(dir: &Path, timeout: Duration) -> Result<PrometheusServer> {
        let program = system_binary(
            "prometheus",
            "install the Debian package `prometheus` (make e2e-setup)",
        )?;
        let home = dir.join("prometheus");
        let rules_dir = home.join("rules");
        fs::create_dir_all(&rules_dir).map_err(|e| StackError::io("creating", &rules_dir, e))?;
        let targets_file = home.join("targets.json");
        fs::write(&targets_file, "[]").map_err(|e| StackError::io("writing", &targets_file, e))?;
        let config_file = home.join("prometheus.yml");
        let config =
            serde_norway::to_string(&config(&targets_file, &rules_dir)).map_err(|error| {
                StackError::Yaml {
                    path: config_file.clone(),
                    error,
                }
            })?;
        fs::write(&config_file, config).map_err(|e| StackError::io("writing", &config_file, e))?;
        let port = free_port()?;
        let spec = CommandSpec::new(program, dir).args([
            format!("--config.file={}", config_file.display()),
            format!("--storage.tsdb.path={}", home.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            // POST /-/reload: tests add rule files to a running server.
            "--web.enable-lifecycle".to_owned(),
        ]);
        Ok(PrometheusServer {
            url: format!("http://127.0.0.1:{port}"),
            rules_dir,
            targets_file,
            timeout,
            member: Member::new(Component::Prometheus, spec, &dir.join("logs")),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn rules_dir(&self) -> &Path {
        &self.rules_dir
    }

    /// The file-SD file `service_monitors::run` keeps up to date.
    pub fn targets_file(&self) -> &Path {
        &self.targets_file
    }

    pub fn member(&self) -> &Member {
        &self.member
    }

    pub fn member_mut(&mut self) -> &mut Member {
        &mut self.member
    }

    /// Starts the server and waits until `/-/ready` answers.
    pub async fn start(&mut self) -> Result<()> {
        self.member.spawn()?;
        let http = http_client()?;
        let ready = format!("{}/-/ready", self.url);
        self.member
            .wait_ready("GET /-/ready", self.timeout, || {
                let request = http.get(&ready).send();
                async move { request.await.is_ok_and(|r| r.status().is_success()) }
            })
            .await
    }
}

/// The configuration: one job whose targets are the ServiceMonitors' (file service discovery).
fn config(targets_file: &Path, rules_dir: &Path) -> Value {
    json!({
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "evaluation_interval": SCRAPE_INTERVAL,
        },
        "rule_files": [
            rules_dir.join("*.yml").display().to_string(),
            rules_dir.join("*.yaml").display().to_string(),
        ],
        "scrape_configs": [{
            "job_name": "service-monitors",
            "file_sd_configs": [{
                "files": [targets_file.display().to_string()],
                // Besides the file watch: a missed change is picked up within this.
                "refresh_interval": SCRAPE_INTERVAL,
            }],
        }],
    })
}

/// `program` from `PATH`.
fn system_binary(program: &'static str, hint: &'static str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .ok_or(StackError::SystemToolMissing { program, hint })
}

fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|error| StackError::Http {
            component: "prometheus",
            error,
        })
}

/// One sample of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// One active scrape target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The target's labels after relabelling (`namespace`, `pod`, ...).
    pub labels: BTreeMap<String, String>,
    /// `up`, `down` or `unknown` (not scraped yet).
    pub health: String,
    pub scrape_url: String,
}

/// Evaluates `promql` now at the Prometheus at `url` (e.g. `$PROMETHEUS_URL`); an instant vector
/// or a scalar (as one sample without labels).
pub async fn query(url: &str, promql: &str) -> Result<Vec<Sample>> {
    let data = api_get(url, "/api/v1/query", &[("query", promql)]).await?;
    let invalid = |reason: &str| StackError::Prometheus {
        what: format!("query {promql}"),
        reason: format!("{reason}: {data}"),
    };
    match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .ok_or_else(|| invalid("no result"))?
            .iter()
            .map(|sample| {
                Ok(Sample {
                    labels: string_map(&sample["metric"]),
                    value: sample_value(&sample["value"]).ok_or_else(|| invalid("bad value"))?,
                })
            })
            .collect(),
        Some("scalar") => Ok(vec![Sample {
            labels: BTreeMap::new(),
            value: sample_value(&data["result"]).ok_or_else(|| invalid("bad value"))?,
        }]),
        _ => Err(invalid("not an instant vector or scalar")),
    }
}

/// The active targets of the Prometheus at `url`.
pub async fn active_targets(url: &str) -> Result<Vec<Target>> {
    let data = api_get(url, "/api/v1/targets", &[("state", "active")]).await?;
    Ok(data["activeTargets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|target| Target {
            labels: string_map(&target["labels"]),
            health: target["health"].as_str().unwrap_or_default().to_owned(),
            scrape_url: target["scrapeUrl"].as_str().unwrap_or_default().to_owned(),
        })
        .collect())
}

/// Waits until the active targets satisfy `expected` (service discovery and the first scrape take a
/// few seconds); returns them. On timeout the error lists what Prometheus had.
pub async fn wait_for_targets(
    url: &str,
    what: &str,
    timeout: Duration,
    expected: impl Fn(&[Target]) -> bool,
) -> Result<Vec<Target>> {
    let waited = wait_until(what, timeout, || async {
        let targets = active_targets(url).await.ok()?;
        expected(&targets).then_some(targets)
    })
    .await;
    match waited {
        Ok(targets) => Ok(targets),
        Err(error) => {
            let had = active_targets(url).await.map_or_else(
                |e| e.to_string(),
                |targets| {
                    targets
                        .iter()
                        .map(|t| format!("{:?} {} {}", t.labels, t.health, t.scrape_url))
                        .collect::<Vec<_>>()
                        .join("\n")
                },
            );
            Err(StackError::Prometheus {
                what: what.to_owned(),
                reason: format!("{error}; active targets:\n{had}"),
            })
        }
    }
}

/// Makes the Prometheus at `url` read its configuration and rule files again.
pub async fn reload(url: &str) -> Result<()> {
    let response = http_client()?
        .post(format!("{url}/-/reload"))
        .send()
        .await
        .map_err(|error| StackError::Http {
            component: "prometheus",
            error,
        })?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(StackError::Prometheus {
            what: "POST /-/reload".into(),
            reason: format!(
                "{}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            ),
        })
    }
}

/// GET an API path; the `data` of a `success` answer.
async fn api_get(url: &str, path: &str, params: &[(&str, &str)]) -> Result<Value> {
    let failed = |reason: String| StackError::Prometheus {
        what: format!("GET {path} {params:?}"),
        reason,
    };
    let response = http_client()?
        .get(format!("{url}{path}"))
        .query(params)
        .send()
        .await
        .map_err(|e| failed(e.to_string()))?;
    let body: Value = response.json().await.map_err(|e| failed(e.to_string()))?;
    if body["status"] != "success" {
        return Err(failed(format!("{} {}", body["errorType"], body["error"])));
    }
    Ok(body["data"].clone())
}

fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect()
}

/// `[<time>, "<value>"]`.
fn sample_value(value: &Value) -> Option<f64> {
    value.get(1)?.as_str()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_follows_the_targets_file_and_rules_are_loaded_from_the_rules_dir() {
        let config = config(
            Path::new("/w/prometheus/targets.json"),
            Path::new("/w/prometheus/rules"),
        );
        assert_eq!(
            config["scrape_configs"][0]["file_sd_configs"][0]["files"],
            json!(["/w/prometheus/targets.json"])
        );
        assert_eq!(config["rule_files"][0], "/w/prometheus/rules/*.yml");
    }

    /// The whole file as Prometheus parses it: `promtool check config`.
    #[test]
    fn promtool_accepts_the_configuration() {
        let Ok(promtool) = system_binary("promtool", "make e2e-setup") else {
            eprintln!("promtool not installed; skipped");
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let targets = dir.path().join("targets.json");
        fs::write(&targets, "[]").expect("write");
        let file = dir.path().join("prometheus.yml");
        let rules = dir.path().join("rules");
        let text = serde_norway::to_string(&config(&targets, &rules)).expect("yaml");
        fs::write(&file, text).expect("write");
        let output = std::process::Command::new(promtool)
            .arg("check")
            .arg("config")
            .arg(&file)
            .output()
            .expect("promtool runs");
        assert!(
            output.status.success(),
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    #[test]
    fn vector_samples_parse() {
        let value = json!([1_700_000_000.5, "0.25"]);
        assert_eq!(sample_value(&value), Some(0.25));
        assert_eq!(sample_value(&json!([1, 2])), None);
    }
}
