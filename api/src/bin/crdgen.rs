//! Prints the OrderPipeline CustomResourceDefinition as YAML; `make manifests` writes it to `crds/`.

fn main() -> Result<(), serde_norway::Error> {
    print!("{}", orderpipe_api::crd_yaml()?);
    Ok(())
}
