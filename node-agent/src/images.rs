//! Which local binary stands in for which container image. The agent pulls nothing: an image is
//! only a name that selects a binary on this machine. Registry host and digest are ignored, so
//! `docker.io/orderpipe/orderpipe-worker:0.1.0` and `orderpipe/orderpipe-worker` are the same
//! image. A mapping without a tag stands for every tag of its repository; a mapping with a tag
//! (`orderpipe/orderpipe-worker:faulty=...`) only for that tag, and wins over the tag-less one. That
//! is how a test releases a different binary as a new version of the same image (the e2e tests'
//! misbehaving worker, see `orderpipe-worker-faulty`): a tag nobody maps runs the repository's
//! binary. Pure; must not touch the file system beyond checking that a mapped binary exists.

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::error::NodeAgentError;

/// One `--image IMAGE=PATH` mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageMapping {
    /// The image as the user wrote it (normalised when matched).
    pub image: String,
    /// The local binary that runs for containers of this image.
    pub binary: PathBuf,
}

impl FromStr for ImageMapping {
    type Err = NodeAgentError;

    fn from_str(arg: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| NodeAgentError::ImageMapping {
            arg: arg.to_owned(),
            reason: reason.to_owned(),
        };
        let (image, binary) = arg
            .split_once('=')
            .ok_or_else(|| invalid("expected IMAGE=PATH"))?;
        if repository(image).is_empty() {
            return Err(invalid("the image name is empty"));
        }
        if binary.is_empty() {
            return Err(invalid("the binary path is empty"));
        }
        Ok(ImageMapping {
            image: image.to_owned(),
            binary: PathBuf::from(binary),
        })
    }
}

impl fmt::Display for ImageMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.image, self.binary.display())
    }
}

/// Image repository, or `repository:tag` for a tagged mapping → local binary.
#[derive(Debug, Clone, Default)]
pub(crate) struct ImageMap {
    binaries: BTreeMap<String, PathBuf>,
}

impl ImageMap {
    /// Adds (or replaces) a mapping.
    pub fn insert(&mut self, mapping: ImageMapping) {
        let key = match tag(&mapping.image) {
            Some(tag) => format!("{}:{tag}", repository(&mapping.image)),
            None => repository(&mapping.image),
        };
        self.binaries.insert(key, mapping.binary);
    }

    /// The binary for `image`, if one is mapped: for its tag, else for its repository.
    pub fn binary_for(&self, image: &str) -> Option<&Path> {
        let repository = repository(image);
        tag(image)
            .and_then(|tag| self.binaries.get(&format!("{repository}:{tag}")))
            .or_else(|| self.binaries.get(&repository))
            .map(PathBuf::as_path)
    }

    /// Makes every mapped binary an absolute path (a container runs in its pod directory, where a
    /// relative path would name something else) and fails on the first that is not an executable
    /// file, naming it: better at start-up than as a crash loop of every pod using it.
    pub fn resolve_binaries(&mut self) -> Result<(), NodeAgentError> {
        for (image, binary) in &mut self.binaries {
            let not_executable = || NodeAgentError::BinaryNotExecutable {
                image: image.clone(),
                binary: binary.clone(),
            };
            let absolute = std::fs::canonicalize(&*binary).map_err(|_| not_executable())?;
            let executable = std::fs::metadata(&absolute)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
            if !executable {
                return Err(not_executable());
            }
            *binary = absolute;
        }
        Ok(())
    }

    /// The mappings, for the start-up log line.
    pub fn describe(&self) -> String {
        self.binaries
            .iter()
            .map(|(image, binary)| format!("{image}={}", binary.display()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The path components of an image reference without registry host and digest (the last one
/// still carrying its tag).
fn path_parts(image: &str) -> Vec<&str> {
    let without_digest = image.split_once('@').map_or(image, |(name, _)| name);
    let mut parts: Vec<&str> = without_digest.split('/').collect();
    // Like Docker: a first component with a dot or a port, or `localhost`, is a registry host.
    if parts.len() > 1
        && parts
            .first()
            .is_some_and(|host| host.contains(['.', ':']) || *host == "localhost")
    {
        parts.remove(0);
    }
    parts
}

/// The tag of an image reference, if it has one.
fn tag(image: &str) -> Option<&str> {
    let last = *path_parts(image).last()?;
    last.split_once(':')
        .map(|(_, tag)| tag)
        .filter(|tag| !tag.is_empty())
}

/// The repository part of an image reference: without registry host, tag or digest, and without
/// Docker Hub's implicit `library/`.
fn repository(image: &str) -> String {
    let mut parts = path_parts(image);
    if let Some(last) = parts.last_mut() {
        *last = last.split_once(':').map_or(*last, |(name, _tag)| name);
    }
    if parts.len() > 1 && parts.first() == Some(&"library") {
        parts.remove(0);
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_tag_and_digest_do_not_matter() {
        for image in [
            "orderpipe/orderpipe-worker",
            "orderpipe/orderpipe-worker:0.1.0",
            "docker.io/orderpipe/orderpipe-worker:0.1.0",
            "localhost:5000/orderpipe/orderpipe-worker:e2e",
            "ghcr.io/orderpipe/orderpipe-worker@sha256:0123abcd",
            "registry.local:443/orderpipe/orderpipe-worker:1@sha256:0123abcd",
        ] {
            assert_eq!(repository(image), "orderpipe/orderpipe-worker", "{image}");
        }
        assert_eq!(repository("docker.io/library/busybox:1.36"), "busybox");
        assert_eq!(repository("busybox"), "busybox");
    }

    #[test]
    fn a_mapping_selects_the_binary_for_every_spelling_of_the_image() {
        let mut map = ImageMap::default();
        map.insert(
            "docker.io/orderpipe/orderpipe-worker=/opt/worker"
                .parse()
                .expect("valid"),
        );
        assert_eq!(
            map.binary_for("orderpipe/orderpipe-worker:0.1.0"),
            Some(Path::new("/opt/worker"))
        );
        assert_eq!(map.binary_for("orderpipe/other:0.1.0"), None);
        // Same repository name under another owner is another image.
        assert_eq!(map.binary_for("someone/orderpipe-worker"), None);
    }

    #[test]
    fn a_tagged_mapping_wins_for_its_tag_only() {
        let mut map = ImageMap::default();
        map.insert(
            "orderpipe/orderpipe-worker=/opt/worker"
                .parse()
                .expect("valid"),
        );
        map.insert(
            "orderpipe/orderpipe-worker:faulty=/opt/faulty"
                .parse()
                .expect("valid"),
        );
        for (image, binary) in [
            ("orderpipe/orderpipe-worker:faulty", "/opt/faulty"),
            (
                "localhost:5000/orderpipe/orderpipe-worker:faulty",
                "/opt/faulty",
            ),
            (
                "orderpipe/orderpipe-worker:faulty@sha256:0123abcd",
                "/opt/faulty",
            ),
            ("orderpipe/orderpipe-worker:e2e", "/opt/worker"),
            ("orderpipe/orderpipe-worker", "/opt/worker"),
            ("orderpipe/orderpipe-worker@sha256:0123abcd", "/opt/worker"),
        ] {
            assert_eq!(map.binary_for(image), Some(Path::new(binary)), "{image}");
        }
        assert_eq!(tag("localhost:5000/orderpipe/orderpipe-worker"), None);

        // Without a tag-less mapping, other tags of the repository run nothing.
        let mut map = ImageMap::default();
        map.insert(
            "orderpipe/orderpipe-worker:faulty=/opt/faulty"
                .parse()
                .expect("valid"),
        );
        assert_eq!(map.binary_for("orderpipe/orderpipe-worker:e2e"), None);
    }

    #[test]
    fn malformed_mappings_are_refused_with_the_argument() {
        for arg in ["orderpipe/worker", "=/opt/worker", "orderpipe/worker="] {
            let err = arg.parse::<ImageMapping>().expect_err(arg);
            assert!(err.to_string().contains(arg), "{err}");
        }
    }

    #[test]
    fn binaries_become_absolute_and_a_missing_one_is_named() {
        let mut map = ImageMap::default();
        map.insert(
            "orderpipe/w=/nonexistent/orderpipe-worker"
                .parse()
                .expect("valid"),
        );
        let err = map.resolve_binaries().expect_err("missing");
        assert!(
            err.to_string().contains("/nonexistent/orderpipe-worker"),
            "{err}"
        );

        let dir = tempfile::tempdir().expect("tempdir");
        let binary = dir.path().join("worker");
        std::fs::write(&binary, "#!/bin/sh\n").expect("write");
        let mut map = ImageMap::default();
        map.insert(ImageMapping {
            image: "orderpipe/w".into(),
            binary: binary.clone(),
        });
        let err = map.resolve_binaries().expect_err("not executable");
        assert!(
            matches!(err, NodeAgentError::BinaryNotExecutable { .. }),
            "{err}"
        );

        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        // `../../tmp/.../worker`: relative to the test's working directory.
        let cwd = std::env::current_dir().expect("cwd");
        let relative: PathBuf = std::iter::repeat_n("..", cwd.components().count() - 1)
            .map(PathBuf::from)
            .chain(binary.strip_prefix("/").map(Path::to_path_buf))
            .collect();
        assert!(relative.is_relative());
        let mut map = ImageMap::default();
        map.insert(ImageMapping {
            image: "orderpipe/w".into(),
            binary: relative,
        });
        map.resolve_binaries().expect("executable");
        let resolved = map.binary_for("orderpipe/w").expect("mapped");
        assert!(resolved.is_absolute(), "{}", resolved.display());
        assert_eq!(resolved, binary.canonicalize().expect("canonical"));
    }
}
