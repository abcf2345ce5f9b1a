//! Prints the OrderPipeline API reference as Markdown; `make manifests` writes it to `docs/api.md`.

fn main() -> Result<(), serde_json::Error> {
    print!("{}", orderpipe_api::api_reference()?);
    Ok(())
}
