//! What a container's process is started with, resolved the way a kubelet resolves it: `envFrom`
//! then `env` (later entries win), `$(VAR)` expansion in env values, command and args, `fieldRef`s
//! from the pod, and `secretKeyRef`/`configMapKeyRef` from the Secrets and ConfigMaps read for this
//! start. Only [`fetch_sources`] does I/O; everything else is pure so the rules are unit-tested.
//! Must not start anything or decide about restarts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVarSource, Pod, Secret};
use kube::{Api, Client};

use super::error::{ConfigError, SourceKind};

/// The only address a pod gets from this agent: every process shares the machine's loopback.
pub(crate) const POD_IP: &str = "127.0.0.1";

/// A container's program, arguments and environment, ready to exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// A Secret's or ConfigMap's entries as bytes (a ConfigMap's `data` and `binaryData` together).
type Entries = BTreeMap<String, Vec<u8>>;

/// The Secrets and ConfigMaps a container refers to, as read for one start (`None`: not found).
#[derive(Debug, Clone, Default)]
pub(crate) struct EnvSources {
    objects: BTreeMap<(SourceKind, String), Option<Entries>>,
}

impl EnvSources {
    #[cfg(test)]
    fn with(mut self, kind: SourceKind, name: &str, entries: Option<&[(&str, &str)]>) -> Self {
        let entries = entries.map(|pairs| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                .collect()
        });
        self.objects.insert((kind, name.to_owned()), entries);
        self
    }

    fn get(&self, kind: SourceKind, name: &str) -> Option<&Entries> {
        self.objects
            .get(&(kind, name.to_owned()))
            .and_then(Option::as_ref)
    }
}

/// Reads every Secret and ConfigMap the container's env refers to (each once).
pub(crate) async fn fetch_sources(
    client: &Client,
    namespace: &str,
    container: &Container,
) -> Result<EnvSources, ConfigError> {
    let mut sources = EnvSources::default();
    for (kind, name) in referenced_sources(container) {
        let fetch_error = |error| ConfigError::Fetch {
            kind,
            namespace: namespace.to_owned(),
            name: name.clone(),
            error,
        };
        let entries = match kind {
            SourceKind::Secret => Api::<Secret>::namespaced(client.clone(), namespace)
                .get_opt(&name)
                .await
                .map_err(fetch_error)?
                .map(|secret| {
                    let data = secret.data.unwrap_or_default();
                    data.into_iter().map(|(k, v)| (k, v.0)).collect()
                }),
            SourceKind::ConfigMap => Api::<ConfigMap>::namespaced(client.clone(), namespace)
                .get_opt(&name)
                .await
                .map_err(fetch_error)?
                .map(|config_map| {
                    let text = config_map.data.unwrap_or_default();
                    let binary = config_map.binary_data.unwrap_or_default();
                    text.into_iter()
                        .map(|(k, v)| (k, v.into_bytes()))
                        .chain(binary.into_iter().map(|(k, v)| (k, v.0)))
                        .collect()
                }),
        };
        sources.objects.insert((kind, name), entries);
    }
    Ok(sources)
}

/// The Secrets and ConfigMaps that `env` and `envFrom` refer to.
fn referenced_sources(container: &Container) -> BTreeSet<(SourceKind, String)> {
    let mut names = BTreeSet::new();
    for from in container.env_from.iter().flatten() {
        names.extend(
            from.secret_ref
                .as_ref()
                .map(|s| (SourceKind::Secret, s.name.clone())),
        );
        names.extend(
            from.config_map_ref
                .as_ref()
                .map(|c| (SourceKind::ConfigMap, c.name.clone())),
        );
    }
    for source in container
        .env
        .iter()
        .flatten()
        .filter_map(|e| e.value_from.as_ref())
    {
        names.extend(
            source
                .secret_key_ref
                .as_ref()
                .map(|s| (SourceKind::Secret, s.name.clone())),
        );
        names.extend(
            source
                .config_map_key_ref
                .as_ref()
                .map(|c| (SourceKind::ConfigMap, c.name.clone())),
        );
    }
    names
}

/// The environment the kubelet would give `container`: `base` first (what every container gets,
/// e.g. `HOSTNAME`), then `envFrom` in order, then `env` in order, each value `$(VAR)`-expanded
/// against what is defined before it.
pub(crate) fn resolve_env(
    pod: &Pod,
    container: &Container,
    sources: &EnvSources,
    base: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let mut env = base;
    for from in container.env_from.iter().flatten() {
        let reference = from
            .secret_ref
            .as_ref()
            .map(|r| (SourceKind::Secret, &r.name, r.optional))
            .or_else(|| {
                from.config_map_ref
                    .as_ref()
                    .map(|r| (SourceKind::ConfigMap, &r.name, r.optional))
            });
        let Some((kind, name, optional)) = reference else {
            continue;
        };
        let Some(entries) = sources.get(kind, name) else {
            if optional == Some(true) {
                continue;
            }
            return Err(ConfigError::NotFound {
                kind,
                name: name.clone(),
            });
        };
        let prefix = from.prefix.as_deref().unwrap_or_default();
        for (key, bytes) in entries {
            let var = format!("{prefix}{key}");
            // The kubelet skips keys that are not valid variable names (and records an event).
            if is_env_name(&var) {
                env.insert(var, utf8(bytes, kind, namespace, name, key)?);
            }
        }
    }
    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            Some(source) => resolve_source(pod, namespace, &var.name, source, sources)?,
            None => Some(expand(var.value.as_deref().unwrap_or_default(), |name| {
                env.get(name).cloned()
            })),
        };
        if let Some(value) = value {
            env.insert(var.name.clone(), value);
        }
    }
    Ok(env)
}

/// One `valueFrom`; `None` for an optional reference that is missing (the variable stays unset).
fn resolve_source(
    pod: &Pod,
    namespace: &str,
    var: &str,
    source: &EnvVarSource,
    sources: &EnvSources,
) -> Result<Option<String>, ConfigError> {
    if let Some(field) = &source.field_ref {
        return field_value(pod, &field.field_path)
            .map(Some)
            .ok_or_else(|| ConfigError::UnsupportedFieldPath {
                var: var.to_owned(),
                path: field.field_path.clone(),
            });
    }
    let key_ref = source
        .secret_key_ref
        .as_ref()
        .map(|r| (SourceKind::Secret, &r.name, &r.key, r.optional))
        .or_else(|| {
            source
                .config_map_key_ref
                .as_ref()
                .map(|r| (SourceKind::ConfigMap, &r.name, &r.key, r.optional))
        });
    let Some((kind, name, key, optional)) = key_ref else {
        return Err(ConfigError::UnsupportedSource {
            var: var.to_owned(),
            source_kind: if source.resource_field_ref.is_some() {
                "resourceFieldRef"
            } else {
                "an empty valueFrom"
            },
        });
    };
    let optional = optional == Some(true);
    let Some(entries) = sources.get(kind, name) else {
        return if optional {
            Ok(None)
        } else {
            Err(ConfigError::NotFound {
                kind,
                name: name.clone(),
            })
        };
    };
    match entries.get(key) {
        Some(bytes) => utf8(bytes, kind, namespace, name, key).map(Some),
        None if optional => Ok(None),
        None => Err(ConfigError::KeyNotFound {
            kind,
            namespace: namespace.to_owned(),
            name: name.clone(),
            key: key.clone(),
        }),
    }
}

/// The downward-API fields a kubelet offers through `fieldRef`; `None` for any other path.
fn field_value(pod: &Pod, path: &str) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.podIP" | "status.podIPs" | "status.hostIP" | "status.hostIPs" => {
            Some(POD_IP.to_owned())
        }
        _ => keyed("metadata.labels['", meta.labels.as_ref())
            .or_else(|| keyed("metadata.annotations['", meta.annotations.as_ref())),
    }
}

fn utf8(
    bytes: &[u8],
    kind: SourceKind,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<String, ConfigError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| ConfigError::NotUtf8 {
        kind,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        key: key.to_owned(),
    })
}

/// A C identifier-ish name, as the kubelet requires for `envFrom` keys.
fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The arguments after the program: the mapped binary stands in for the image's entrypoint, so a
/// `command` keeps only its arguments (`command[1..]`), followed by `args`; each is expanded.
fn arguments(container: &Container, env: &BTreeMap<String, String>) -> Vec<String> {
    let command_args = container.command.iter().flatten().skip(1);
    command_args
        .chain(container.args.iter().flatten())
        .map(|arg| expand(arg, |name| env.get(name).cloned()))
        .collect()
}

/// The whole launch for one start.
pub(crate) fn launch(
    binary: &Path,
    container: &Container,
    env: BTreeMap<String, String>,
) -> Launch {
    Launch {
        program: binary.to_path_buf(),
        args: arguments(container, &env),
        env,
    }
}

/// Kubernetes' `$(VAR)` expansion: `$(NAME)` becomes NAME's value when it is defined and stays as
/// written when not; `$$` is an escaped `$` (so `$$(NAME)` yields `$(NAME)`); any other `$` and an
/// unterminated `$(` stay as written.
fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(escaped) = after.strip_prefix('$') {
            out.push('$');
            rest = escaped;
        } else if let Some(reference) = after.strip_prefix('(') {
            match reference.find(')') {
                Some(end) => {
                    let name = &reference[..end];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &reference[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = reference;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "PORT" => Some("41000".into()),
            _ => None,
        }
    }

    #[test]
    fn expansion_follows_the_kubernetes_rules() {
        let cases = [
            ("$(A)", "alpha"),
            ("x-$(A)-$(PORT)", "x-alpha-41000"),
            ("$(MISSING)", "$(MISSING)"),
            ("$$(A)", "$(A)"),
            ("$$", "$"),
            ("cost: $5", "cost: $5"),
            ("$(A", "$(A"),
            ("$", "$"),
            ("$()", "$()"),
            ("plain", "plain"),
        ];
        for (input, expected) in cases {
            assert_eq!(expand(input, lookup), expected, "{input}");
        }
    }

    fn pod_with(container: serde_json::Value) -> (Pod, Container) {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {
                "name": "web-1", "namespace": "shop", "uid": "u-1",
                "labels": { "app": "web" }, "annotations": { "team": "orders" },
            },
            "spec": { "nodeName": "orderpipe-local", "serviceAccountName": "default",
                      "containers": [container] },
        }))
        .expect("pod");
        let container = pod.spec.as_ref().expect("spec").containers[0].clone();
        (pod, container)
    }

    #[test]
    fn env_comes_from_literals_fields_secrets_and_config_maps_in_kubelet_order() {
        let (pod, container) = pod_with(json!({
            "name": "w", "image": "w",
            "envFrom": [
                { "configMapRef": { "name": "settings" }, "prefix": "CFG_" },
                { "secretRef": { "name": "absent", "optional": true } },
            ],
            "env": [
                { "name": "POD", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                { "name": "NS", "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } },
                { "name": "UID", "valueFrom": { "fieldRef": { "fieldPath": "metadata.uid" } } },
                { "name": "NODE", "valueFrom": { "fieldRef": { "fieldPath": "spec.nodeName" } } },
                { "name": "IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } },
                { "name": "APP", "valueFrom": { "fieldRef": { "fieldPath": "metadata.labels['app']" } } },
                { "name": "TEAM", "valueFrom": { "fieldRef": { "fieldPath": "metadata.annotations['team']" } } },
                { "name": "PASSWORD", "valueFrom": { "secretKeyRef": { "name": "creds", "key": "password" } } },
                { "name": "MODE", "valueFrom": { "configMapKeyRef": { "name": "settings", "key": "mode" } } },
                { "name": "OPTIONAL", "valueFrom": { "secretKeyRef": { "name": "creds", "key": "nope", "optional": true } } },
                { "name": "URL", "value": "http://$(IP):$(CFG_port)/$(POD)" },
                { "name": "CFG_mode", "value": "overridden" },
            ],
        }));
        let sources = EnvSources::default()
            .with(SourceKind::Secret, "creds", Some(&[("password", "s3cret")]))
            .with(SourceKind::Secret, "absent", None)
            .with(
                SourceKind::ConfigMap,
                "settings",
                Some(&[("mode", "fast"), ("port", "8080")]),
            );
        let base = BTreeMap::from([("HOSTNAME".to_owned(), "web-1".to_owned())]);
        let env = resolve_env(&pod, &container, &sources, base).expect("resolves");
        let expected: BTreeMap<String, String> = [
            ("HOSTNAME", "web-1"),
            ("CFG_mode", "overridden"),
            ("CFG_port", "8080"),
            ("POD", "web-1"),
            ("NS", "shop"),
            ("UID", "u-1"),
            ("NODE", "orderpipe-local"),
            ("IP", "127.0.0.1"),
            ("APP", "web"),
            ("TEAM", "orders"),
            ("PASSWORD", "s3cret"),
            ("MODE", "fast"),
            ("URL", "http://127.0.0.1:8080/web-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(env, expected);
    }

    #[test]
    fn a_missing_required_key_names_the_secret_and_the_key() {
        let (pod, container) = pod_with(json!({
            "name": "w", "image": "w",
            "env": [{ "name": "P", "valueFrom": { "secretKeyRef": { "name": "creds", "key": "password" } } }],
        }));
        let sources =
            EnvSources::default().with(SourceKind::Secret, "creds", Some(&[("user", "u")]));
        let err = resolve_env(&pod, &container, &sources, BTreeMap::new()).expect_err("missing");
        assert_eq!(
            err.to_string(),
            "couldn't find key password in Secret shop/creds"
        );

        let sources = EnvSources::default().with(SourceKind::Secret, "creds", None);
        let err = resolve_env(&pod, &container, &sources, BTreeMap::new()).expect_err("missing");
        assert_eq!(err.to_string(), "secret \"creds\" not found");
    }

    #[test]
    fn missing_config_maps_and_unsupported_sources_are_config_errors() {
        let (pod, container) = pod_with(json!({
            "name": "w", "image": "w",
            "env": [{ "name": "M", "valueFrom": { "configMapKeyRef": { "name": "cfg", "key": "mode" } } }],
        }));
        let sources = EnvSources::default().with(SourceKind::ConfigMap, "cfg", Some(&[]));
        let err = resolve_env(&pod, &container, &sources, BTreeMap::new()).expect_err("missing");
        assert_eq!(
            err.to_string(),
            "couldn't find key mode in ConfigMap shop/cfg"
        );

        let (pod, container) = pod_with(json!({
            "name": "w", "image": "w",
            "env": [{ "name": "CPU", "valueFrom": { "resourceFieldRef": { "resource": "limits.cpu" } } }],
        }));
        let err = resolve_env(&pod, &container, &EnvSources::default(), BTreeMap::new())
            .expect_err("unsupported");
        assert!(err.to_string().contains("resourceFieldRef"), "{err}");
    }

    #[test]
    fn referenced_sources_lists_each_secret_and_config_map_once() {
        let (_, container) = pod_with(json!({
            "name": "w", "image": "w",
            "envFrom": [{ "secretRef": { "name": "a" } }, { "configMapRef": { "name": "c" } }],
            "env": [
                { "name": "X", "valueFrom": { "secretKeyRef": { "name": "a", "key": "k" } } },
                { "name": "Y", "valueFrom": { "secretKeyRef": { "name": "b", "key": "k" } } },
                { "name": "Z", "valueFrom": { "configMapKeyRef": { "name": "c", "key": "k" } } },
            ],
        }));
        let names: Vec<(SourceKind, String)> = referenced_sources(&container).into_iter().collect();
        let expected = [
            (SourceKind::Secret, "a"),
            (SourceKind::Secret, "b"),
            (SourceKind::ConfigMap, "c"),
        ]
        .map(|(kind, name)| (kind, name.to_owned()));
        assert_eq!(names, expected);
    }

    #[test]
    fn the_binary_replaces_the_entrypoint_and_arguments_are_expanded() {
        let (_, container) = pod_with(json!({
            "name": "w", "image": "w",
            "command": ["/orderpipe-worker", "--log=$(LEVEL)"],
            "args": ["run", "--port=$(PORT)", "$$(PORT)"],
        }));
        let env = BTreeMap::from([
            ("LEVEL".to_owned(), "debug".to_owned()),
            ("PORT".to_owned(), "41000".to_owned()),
        ]);
        let launch = launch(Path::new("/opt/worker"), &container, env);
        assert_eq!(launch.program, Path::new("/opt/worker"));
        assert_eq!(
            launch.args,
            ["--log=debug", "run", "--port=41000", "$(PORT)"]
        );
    }
}
