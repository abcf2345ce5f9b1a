//! The duration strings of the API (canary pauses and intervals, webhook timeouts, retry backoffs).
//!
//! Only the wire format and its admission pattern: parsing is the contract's job.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A duration such as `250ms`, `30s`, `5m`, `1h` or `1m30s`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(transparent)]
pub struct Duration(
    #[schemars(length(min = 2, max = 32), regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))] pub String,
);
