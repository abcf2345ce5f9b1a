//! Where the prebuilt e2e tools live (kube-apiserver, etcd, kwok, the Kafka classpath, the
//! third-party CRDs) and where this workspace keeps its own files (`target/e2e`, `crds/`, the
//! binaries cargo built).
//! Only resolves paths and reads small descriptor files; must not build or download anything:
//! `make e2e-tools` (e2e/tools/build.sh) owns the cache.

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Result, StackError};

/// The tools directory: `$E2E_TOOLS_DIR`, else `${ORDERPIPE_CACHE:-$HOME/.cache/orderpipe}/e2e-tools/current`.
#[derive(Debug, Clone)]
pub struct Tools {
    root: PathBuf,
}

impl Tools {
    /// Finds the tools directory and resolves the `current` symlink, so a rebuild of the cache
    /// while a stack runs cannot swap binaries under it.
    pub fn locate() -> Result<Tools> {
        let configured = match env::var_os("E2E_TOOLS_DIR") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => cache_dir().join("e2e-tools").join("current"),
        };
        let root = fs::canonicalize(&configured).map_err(|_| StackError::ToolMissing {
            path: configured.clone(),
            hint: "the tools directory does not exist",
        })?;
        Ok(Tools { root })
    }

    /// A tools directory at an explicit path (tests, or a hand-built layout).
    pub fn at(root: impl Into<PathBuf>) -> Tools {
        Tools { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `bin/<name>`, checked to exist so a missing build fails before anything starts.
    pub fn bin(&self, name: &str) -> Result<PathBuf> {
        self.file(&["bin", name], "binary not built")
    }

    /// `<root>/<parts...>`, or the error naming it with `hint` when it is not there.
    fn file(&self, parts: &[&str], hint: &'static str) -> Result<PathBuf> {
        let path = parts
            .iter()
            .fold(self.root.clone(), |path, part| path.join(part));
        if path.is_file() {
            Ok(path)
        } else {
            Err(StackError::ToolMissing { path, hint })
        }
    }

    /// kwok's Stage objects: `kwok/stages.yaml`, or every `kwok/*.yaml` (the layout may split them).
    pub fn kwok_configs(&self) -> Result<Vec<PathBuf>> {
        let files = yaml_files(&self.root.join("kwok"))?;
        if files.is_empty() {
            return Err(StackError::ToolMissing {
                path: self.root.join("kwok"),
                hint: "no kwok stage files (kwok refuses to run without stages)",
            });
        }
        Ok(files)
    }

    /// Every third-party CRD manifest shipped with the tools (Argo Rollouts, Prometheus Operator).
    pub fn third_party_crds(&self) -> Result<Vec<PathBuf>> {
        let crds = self.root.join("crds");
        let mut files = Vec::new();
        if crds.is_dir() {
            for group in sorted_entries(&crds)? {
                if group.is_dir() {
                    files.extend(yaml_files(&group)?);
                }
            }
        }
        Ok(files)
    }

    /// The Prometheus JMX exporter's Java agent, which serves the broker's metrics.
    pub fn jmx_exporter_agent(&self) -> Result<PathBuf> {
        self.file(
            &["jmx-exporter", "jmx_prometheus_javaagent.jar"],
            "JMX exporter agent not downloaded",
        )
    }

    /// The Java classpath of the Kafka broker (one line, `:`-separated).
    pub fn kafka_classpath(&self) -> Result<String> {
        let path = self.root.join("kafka").join("classpath.txt");
        let text = fs::read_to_string(&path).map_err(|_| StackError::ToolMissing {
            path: path.clone(),
            hint: "Kafka classpath not resolved",
        })?;
        Ok(text.trim().to_owned())
    }
}

/// `${ORDERPIPE_CACHE:-$HOME/.cache/orderpipe}`, the same default as the Makefile.
fn cache_dir() -> PathBuf {
    match env::var_os("ORDERPIPE_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => home_dir().join(".cache").join("orderpipe"),
    }
}

fn home_dir() -> PathBuf {
    env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

/// The checkout the harness runs in: the nearest ancestor of the current directory that is an
/// orderpipe checkout (cargo runs tests in their crate's directory, the Makefile runs binaries in
/// the root), else the one it was compiled in. Not the compiled-in path first: a target dir shared
/// by several checkouts (worktrees, CI's clean clones) holds one `orderpipe-stack` for all of them,
/// built in whichever ran cargo last, maybe since deleted.
pub fn workspace_root() -> PathBuf {
    env::current_dir()
        .ok()
        .and_then(|cwd| {
            cwd.ancestors()
                .find(|dir| is_checkout(dir))
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        })
}

/// An orderpipe checkout: the stack crate and the committed CRDs.
fn is_checkout(dir: &Path) -> bool {
    dir.join("stack").join("Cargo.toml").is_file() && dir.join("crds").is_dir()
}

/// `$CARGO_TARGET_DIR/e2e`, else `<workspace>/target/e2e`: every stack's work dir lives below.
pub fn e2e_root() -> PathBuf {
    let target = match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    };
    target.join("e2e")
}

/// A binary of this workspace that cargo built next to the running executable: in
/// `target/<profile>/` for a binary, the parent of a test's `target/<profile>/deps/`.
pub fn built_binary(name: &str) -> Result<PathBuf> {
    let exe =
        env::current_exe().map_err(|e| StackError::io("locating", "the running executable", e))?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let binary = dir.join(name);
    if binary.is_file() {
        return Ok(binary);
    }
    let profile = if dir.ends_with("release") {
        " --release"
    } else {
        ""
    };
    Err(StackError::NotBuilt {
        binary,
        build: format!("cargo build{profile} --bin {name}"),
    })
}

/// Our own CRDs (`crds/*.yaml` of the repo, committed). A directory without any is an error: a
/// stack without the OrderPipeline CRD would fail every test with a 404 far from the cause. A
/// `kustomization.yaml` there is kustomize's, not a CRD.
pub fn repo_crds(dir: &Path) -> Result<Vec<PathBuf>> {
    let is_kustomization = |path: &PathBuf| {
        matches!(
            path.file_name().and_then(OsStr::to_str),
            Some("kustomization.yaml" | "kustomization.yml")
        )
    };
    let crds: Vec<PathBuf> = yaml_files(dir)?
        .into_iter()
        .filter(|p| !is_kustomization(p))
        .collect();
    if crds.is_empty() {
        return Err(StackError::NoCrds {
            dir: dir.to_path_buf(),
        });
    }
    Ok(crds)
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    Ok(sorted_entries(dir)?
        .into_iter()
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(OsStr::to_str),
                    Some("yaml") | Some("yml")
                )
        })
        .collect())
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = fs::read_dir(dir)
        .map_err(|e| StackError::io("reading directory", dir, e))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| StackError::io("reading directory", dir, e))?;
    entries.sort();
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_files_are_sorted_and_filtered_by_extension() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["b.yaml", "a.yml", "notes.txt"] {
            fs::write(dir.path().join(name), "x").expect("write");
        }
        fs::create_dir(dir.path().join("sub.yaml")).expect("mkdir");
        let names: Vec<_> = yaml_files(dir.path())
            .expect("list")
            .into_iter()
            .map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        assert_eq!(names, [Some("a.yml".to_owned()), Some("b.yaml".to_owned())]);
    }

    #[test]
    fn a_binary_that_is_not_built_names_the_cargo_command_that_builds_it() {
        let err = built_binary("no-such-binary").expect_err("not built");
        assert!(
            matches!(&err, StackError::NotBuilt { binary, build }
                if binary.ends_with("no-such-binary") && build.ends_with("--bin no-such-binary")),
            "{err}"
        );
    }

    #[test]
    fn repo_crds_skip_the_kustomization() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["kustomization.yaml", "orderpipe.dev_orderpipelines.yaml"] {
            fs::write(dir.path().join(name), "x").expect("write");
        }
        let files = repo_crds(dir.path()).expect("list");
        assert_eq!(
            files,
            [dir.path().join("orderpipe.dev_orderpipelines.yaml")]
        );
    }

    #[test]
    fn a_missing_or_empty_repo_crd_dir_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("crds");
        let err = repo_crds(&missing).expect_err("no CRDs").to_string();
        assert!(err.contains(&missing.display().to_string()), "{err}");
        fs::create_dir(&missing).expect("mkdir");
        fs::write(missing.join("kustomization.yaml"), "x").expect("write");
        assert!(repo_crds(&missing).is_err(), "a kustomization is no CRD");
    }

    #[test]
    fn the_workspace_root_is_this_checkout() {
        // Tests run in their crate's directory, inside the checkout.
        let root = workspace_root();
        assert!(is_checkout(&root), "{}", root.display());
        let cwd = env::current_dir().expect("cwd");
        assert!(
            cwd.starts_with(&root),
            "{} in {}",
            cwd.display(),
            root.display()
        );
    }

    #[test]
    fn missing_binary_names_the_path_and_the_make_target() {
        let tools = Tools::at("/nonexistent-tools");
        let err = tools.bin("etcd").expect_err("must be missing").to_string();
        assert!(err.contains("/nonexistent-tools/bin/etcd"), "{err}");
        assert!(err.contains("make e2e-tools"), "{err}");
    }
}
