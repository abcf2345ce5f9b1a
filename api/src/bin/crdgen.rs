//! Prints the OrderPipeline CustomResourceDefinition as YAML; `make manifests` writes it to `crds/`.

fn main() -> Result<(), serde_yaml::Error> {
    print!("{}", orderpipe_api::crd_yaml()?);
    Ok(())
}
