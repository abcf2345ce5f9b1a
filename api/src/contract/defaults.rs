//! Defaults applied when the spec leaves a setting out; the operator renders them and the worker falls
//! back to them, so both sides use these constants.

use std::time::Duration;

pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(25);
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(100);
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
pub const NOTIFY_CHANNEL: &str = "webhook";
pub const RETRY_MAX_ATTEMPTS: u32 = 8;
pub const RETRY_INITIAL_BACKOFF: Duration = Duration::from_millis(200);
pub const RETRY_MAX_BACKOFF: Duration = Duration::from_secs(30);
