//! Every sample under `config/samples/` is a valid OrderPipeline: it deserializes into the Rust types
//! without losing a field, and it passes the CRD's CEL rules evaluated client-side.

use std::path::{Path, PathBuf};

use orderpipe_api::OrderPipeline;
use serde_json::Value;

fn samples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/samples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("orderpipe_"))
        })
        .collect();
    files.sort();
    files
}

/// True when every field present in `original` is present, with the same value, in `roundtrip`
/// (which may add defaults).
fn is_preserved(original: &Value, roundtrip: &Value) -> bool {
    match (original, roundtrip) {
        (Value::Object(o), Value::Object(r)) => o
            .iter()
            .all(|(k, v)| r.get(k).is_some_and(|rv| is_preserved(v, rv))),
        (Value::Array(o), Value::Array(r)) => {
            o.len() == r.len() && o.iter().zip(r).all(|(a, b)| is_preserved(a, b))
        }
        _ => original == roundtrip,
    }
}

#[test]
fn there_are_samples_to_check() {
    let names: Vec<String> = samples()
        .iter()
        .map(|p| p.file_name().unwrap_or_default().to_string_lossy().into())
        .collect();
    assert!(
        names.iter().any(|n| n.contains("checkout")),
        "checkout sample missing: {names:?}"
    );
    assert!(
        names.iter().any(|n| n.contains("minimal")),
        "minimal sample missing: {names:?}"
    );
}

#[test]
fn every_sample_deserializes_without_dropping_fields() {
    for path in samples() {
        let text = std::fs::read_to_string(&path).expect("sample readable");
        let original: Value = serde_norway::from_str(&text).expect("sample is YAML");
        let pipeline: OrderPipeline = serde_json::from_value(original.clone())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let roundtrip = serde_json::to_value(&pipeline).expect("serializes");
        assert!(
            is_preserved(&original, &roundtrip),
            "{}: a field is unknown to the Rust types or changed on the way through",
            path.display()
        );
    }
}

#[test]
fn every_sample_passes_the_cel_rules() {
    for path in samples() {
        let text = std::fs::read_to_string(&path).expect("sample readable");
        let pipeline: OrderPipeline = serde_norway::from_str(&text).expect("sample parses");
        if let Err(errors) = kube::core::cel::validate_cel(&pipeline) {
            panic!("{}: {errors:?}", path.display());
        }
    }
}
