//! OrderPipeline API types and the operator-to-worker contract.
