//! What the operator tells users it did: one [`Change`] per write that changed something, published
//! as a Kubernetes Event on the pipeline.
//!
//! Pure: whoever plans a write describes its change here; the writer publishes it.

/// A change the operator made, published as a Kubernetes Event on the pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// PascalCase reason, e.g. `TopicCreated`, `PartitionsIncreased`.
    pub reason: &'static str,
    /// What changed, for humans.
    pub note: String,
}
