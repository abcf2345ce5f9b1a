//! The stack's Prometheus and the kit tests query it with.
//!
//! The server is the Debian package's `prometheus` (on `PATH`, installed by `make e2e-setup`), run
//! like every other component: its own port, its data and config in `<work dir>/prometheus/`, ready
//! when `/-/ready` answers, stopped with the stack. It scrapes what the cluster's ServiceMonitors
//! select, never a hand-written list: `service_monitors` resolves them into `targets.json` next to
//! the config, which Prometheus follows (file service discovery; Debian builds Prometheus without
//! Kubernetes discovery, see `stack/README.md`, "Prometheus"). The system around the pipelines
//! (broker, Argo Rollouts, kube-state-metrics, node-exporter, see `exporters`) is in a second file,
//! `system-targets.json`.
//!
//! Tests and the demo load alert rules by writing files into [`PrometheusServer::rules_dir`]
//! (`$PROMETHEUS_RULES_DIR`) and calling [`reload`]; the lifecycle API is enabled for that.
//!
//! A process that runs outside the cluster (an operator started by a test or by `make run`, as
//! kubebuilder users run theirs) has no pod for a ServiceMonitor to find. [`LocalTarget`] puts it
//! in a file of its own in [`PrometheusServer::local_targets_dir`] (`$PROMETHEUS_TARGETS_DIR`),
//! which the same scrape job follows, with the labels its ServiceMonitor would have given it.
//!
//! The kit ([`query`], [`active_targets`], [`wait_for_targets`], [`reload`],
//! [`every_panel_returns_data`]) speaks the HTTP API and knows nothing about orderpipe's metrics.

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
    system_targets_file: PathBuf,
    local_targets_dir: PathBuf,
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
        let system_targets_file = home.join("system-targets.json");
        fs::write(&system_targets_file, "[]")
            .map_err(|e| StackError::io("writing", &system_targets_file, e))?;
        let local_targets_dir = home.join("local-targets");
        fs::create_dir_all(&local_targets_dir)
            .map_err(|e| StackError::io("creating", &local_targets_dir, e))?;
        let config_file = home.join("prometheus.yml");
        let sd_files = [
            targets_file.clone(),
            system_targets_file.clone(),
            local_targets_dir.join("*.json"),
        ];
        let config = serde_norway::to_string(&config(&sd_files, &rules_dir)).map_err(|error| {
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
            system_targets_file,
            local_targets_dir,
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

    /// Where [`LocalTarget`]s are written.
    pub fn local_targets_dir(&self) -> &Path {
        &self.local_targets_dir
    }

    /// The file-SD file `service_monitors::run` keeps up to date.
    pub fn targets_file(&self) -> &Path {
        &self.targets_file
    }

    /// The file-SD file of the system targets (`exporters::write_targets`).
    pub fn system_targets_file(&self) -> &Path {
        &self.system_targets_file
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

/// The configuration: one job whose targets are the ServiceMonitors', the system's and the local
/// processes' (file service discovery on `sd_files`; each group names its `job`, as the
/// Prometheus Operator would).
fn config(sd_files: &[PathBuf], rules_dir: &Path) -> Value {
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
                "files": sd_files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
                // Besides the file watch: a missed change is picked up within this.
                "refresh_interval": SCRAPE_INTERVAL,
            }],
        }],
    })
}

/// `program` from `PATH`.
pub(crate) fn system_binary(program: &'static str, hint: &'static str) -> Result<PathBuf> {
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

/// One alert the Prometheus at `url` holds now (pending or firing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// `alertname`, the rule's labels and the series' labels.
    pub labels: BTreeMap<String, String>,
    /// `pending` (its condition holds, `for` has not passed yet) or `firing`.
    pub state: String,
}

/// The alerts of the Prometheus at `url`, as `/api/v1/alerts` lists them.
pub async fn alerts(url: &str) -> Result<Vec<Alert>> {
    let data = api_get(url, "/api/v1/alerts", &[]).await?;
    Ok(data["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|alert| Alert {
            labels: string_map(&alert["labels"]),
            state: alert["state"].as_str().unwrap_or_default().to_owned(),
        })
        .collect())
}

/// The names of the rule groups the Prometheus at `url` has loaded.
pub async fn rule_groups(url: &str) -> Result<Vec<String>> {
    let data = api_get(url, "/api/v1/rules", &[]).await?;
    Ok(data["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|group| group["name"].as_str().map(str::to_owned))
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

/// Every query of a Grafana dashboard, as a panel would run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanelQuery {
    pub title: String,
    /// The expression with the dashboard's variables replaced.
    pub expr: String,
}

/// The queries of every panel of `dashboard` (Grafana JSON: `panels[].targets[].expr`), each
/// `$variable` replaced by its value in `variables` and `$__rate_interval` by `1m`.
pub fn panel_queries(dashboard: &Value, variables: &[(&str, &str)]) -> Vec<PanelQuery> {
    dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or_default();
            panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(move |target| {
                    let expr = variables.iter().fold(
                        target["expr"].as_str()?.replace("$__rate_interval", "1m"),
                        |expr, (name, value)| expr.replace(&format!("${name}"), value),
                    );
                    Some(PanelQuery {
                        title: title.to_owned(),
                        expr,
                    })
                })
        })
        .collect()
}

/// Waits until every panel query of the dashboard in `file` returns at least one series from the
/// Prometheus at `url`; prints how many panels and queries there are and how many returned data.
/// On timeout the error names the panels without data.
pub async fn every_panel_returns_data(
    url: &str,
    file: &Path,
    variables: &[(&str, &str)],
    timeout: Duration,
) -> Result<()> {
    let text = fs::read_to_string(file).map_err(|e| StackError::io("reading", file, e))?;
    let dashboard: Value = serde_json::from_str(&text).map_err(|e| StackError::Prometheus {
        what: format!("dashboard {}", file.display()),
        reason: e.to_string(),
    })?;
    let queries = panel_queries(&dashboard, variables);
    let panels: std::collections::BTreeSet<&str> =
        queries.iter().map(|q| q.title.as_str()).collect();
    let empty = std::sync::Mutex::new(Vec::new());
    let outcome = wait_until("every panel query returns data", timeout, || async {
        let mut without_data = Vec::new();
        for panel in &queries {
            if query(url, &panel.expr).await.map_or(true, |s| s.is_empty()) {
                without_data.push(panel.title.clone());
            }
        }
        let done = without_data.is_empty() && !queries.is_empty();
        *empty
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = without_data;
        done.then_some(())
    })
    .await;
    let empty = empty
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    eprintln!(
        "measured: {}: {} panels ({} queries), {} returned data; empty: {empty:?}",
        file.file_name().unwrap_or_default().to_string_lossy(),
        panels.len(),
        queries.len(),
        queries.len() - empty.len()
    );
    outcome.map_err(|error| StackError::Prometheus {
        what: format!("the panels of {}", file.display()),
        reason: format!("{error}; without data: {empty:?}"),
    })
}

/// A process outside the cluster that the stack's Prometheus scrapes while this lives: one file-SD
/// file in `$PROMETHEUS_TARGETS_DIR`, removed on drop (Prometheus drops the target on its next
/// refresh).
#[derive(Debug)]
pub struct LocalTarget {
    file: PathBuf,
}

impl LocalTarget {
    /// Scrapes `address` (`127.0.0.1:<port>`, path `/metrics`) with `labels` (give it the `job`
    /// its ServiceMonitor would: the Service's name). `name` names the file.
    pub fn register(
        dir: &Path,
        name: &str,
        address: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<LocalTarget> {
        let file = dir.join(format!("{name}.json"));
        let group = json!([{ "targets": [address], "labels": labels }]);
        // Written whole, then renamed: Prometheus watches the directory.
        let tmp = dir.join(format!(".{name}.tmp"));
        fs::write(&tmp, group.to_string()).map_err(|e| StackError::io("writing", &tmp, e))?;
        fs::rename(&tmp, &file).map_err(|e| StackError::io("renaming", &tmp, e))?;
        Ok(LocalTarget { file })
    }
}

impl Drop for LocalTarget {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.file);
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
    fn the_job_follows_the_targets_files_and_rules_come_from_the_rules_dir() {
        let config = config(
            &[
                PathBuf::from("/w/prometheus/targets.json"),
                PathBuf::from("/w/prometheus/local-targets/*.json"),
            ],
            Path::new("/w/prometheus/rules"),
        );
        assert_eq!(
            config["scrape_configs"][0]["file_sd_configs"][0]["files"],
            json!([
                "/w/prometheus/targets.json",
                "/w/prometheus/local-targets/*.json"
            ])
        );
        assert_eq!(config["rule_files"][0], "/w/prometheus/rules/*.yml");
    }

    #[test]
    fn a_local_target_is_a_file_sd_group_until_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let labels = BTreeMap::from([("job".to_owned(), "orderpipe-operator-metrics".to_owned())]);
        let target =
            LocalTarget::register(dir.path(), "op", "127.0.0.1:8080", &labels).expect("register");
        let file = dir.path().join("op.json");
        let written: Value =
            serde_json::from_str(&fs::read_to_string(&file).expect("read")).expect("json");
        assert_eq!(
            written,
            json!([{ "targets": ["127.0.0.1:8080"], "labels": { "job": "orderpipe-operator-metrics" } }])
        );
        drop(target);
        assert!(!file.exists());
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
        let local = dir.path().join("local-targets").join("*.json");
        let text = serde_norway::to_string(&config(&[targets, local], &rules)).expect("yaml");
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
    fn panel_queries_have_the_variables_replaced() {
        let dashboard = json!({ "panels": [
            { "type": "row", "title": "Flow" },
            { "title": "Lag", "targets": [
                { "expr": "sum(lag{namespace=~\"$namespace\"})" },
                { "expr": "rate(x{pipeline=\"$pipeline\"}[$__rate_interval])" },
            ] },
        ] });
        let queries = panel_queries(&dashboard, &[("namespace", "ns-1"), ("pipeline", "shop")]);
        let exprs: Vec<(&str, &str)> = queries
            .iter()
            .map(|q| (q.title.as_str(), q.expr.as_str()))
            .collect();
        assert_eq!(
            exprs,
            [
                ("Lag", "sum(lag{namespace=~\"ns-1\"})"),
                ("Lag", "rate(x{pipeline=\"shop\"}[1m])"),
            ]
        );
    }

    #[test]
    fn vector_samples_parse() {
        let value = json!([1_700_000_000.5, "0.25"]);
        assert_eq!(sample_value(&value), Some(0.25));
        assert_eq!(sample_value(&json!([1, 2])), None);
    }
}
