//! Keeps the operator's heap small: few malloc arenas, and freed memory handed back to the kernel
//! once resident memory has grown.
//!
//! Why few arenas: glibc gives threads that contend for the heap arenas of their own, up to eight
//! per core. The operator runs about 40 threads (the runtime's, the blocking pool's and each Kafka
//! client's), so it ended up with 16 arenas on 2 cores, each holding freed memory of its own that
//! no other thread reuses. [`ARENAS`] of them cut the RSS at 1,000 Ready pipelines from 75 to
//! 65 MiB (docs/benchmarks.md, issue 17); the operator's threads wait on the network, not on the
//! allocator's locks.
//!
//! Why trim: glibc keeps freed memory in its arenas and returns only the top of each heap. After a
//! burst (1,000 new pipelines: their list and watch bodies, applies, Kafka answers), most of what
//! was freed sits between live allocations and stays resident: at 1,000 Ready the operator had
//! 84 MiB anonymous RSS, of which `malloc_trim(0)` (which also releases whole free pages inside the
//! heaps) gave back 26 MiB (docs/benchmarks.md, issue 17). jemalloc as the global allocator, with
//! 1 s decay and its background thread, kept 81 MiB in the same run: its partly used pages stay.
//! So the operator stays on glibc and trims.
//!
//! A trim is not free: it walks every arena's free lists under that arena's lock, and each page it
//! releases is faulted in again when reused. Trimming every 5 s through the 1,000-pipeline burst
//! cost the operator about 15 s more CPU over 250 s; so it trims only once its resident memory is
//! [`GROWTH`] above what the last trim left, which bounds the peak the same way and costs nothing
//! while the operator is steady.
//!
//! The workspace denies `unsafe`; this module is the one place allowed it, for two FFI calls that
//! take no pointer and have no precondition. glibc only (the image is distroless/cc, glibc);
//! elsewhere it does nothing.
#![allow(unsafe_code)]

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Most malloc arenas: the main one and one other.
pub const ARENAS: i32 = 2;
/// How often the resident memory is looked at.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Growth of resident memory since the last trim that calls for the next.
pub const GROWTH: u64 = 8 * 1024 * 1024;

/// Whether to trim now, with `resident` bytes of anonymous memory resident and `after_last` left by
/// the last trim.
pub fn due(resident: u64, after_last: u64) -> bool {
    resident >= after_last.saturating_add(GROWTH)
}

/// Checks every [`CHECK_INTERVAL`] and trims when [`due`], until `stop` is cancelled.
pub async fn trim_when_grown(stop: CancellationToken) {
    let mut ticks = tokio::time::interval(CHECK_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The memory at start is the baseline: the first trim comes after the first growth.
    let mut after_last = resident_bytes().unwrap_or(0);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {
                let Some(resident) = resident_bytes() else { return };
                if due(resident, after_last) {
                    // A failed blocking task (a panic there) only skips one trim.
                    let _ = tokio::task::spawn_blocking(trim).await;
                    after_last = resident_bytes().unwrap_or(resident);
                }
            }
        }
    }
}

/// This process's resident anonymous memory (what a trim can lower; the binary's mapped pages are
/// the rest), from `/proc/self/status`; `None` where there is none.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    rss_anon(&status)
}

/// The `RssAnon:` line of a `/proc/<pid>/status` text, in bytes.
fn rss_anon(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("RssAnon:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// Bounds the malloc arenas to [`ARENAS`]. Call it before any thread is started: arenas that
/// exist stay.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn limit_arenas() {
    // SAFETY: mallopt takes two integers and sets the allocator's own parameter under its lock.
    // It returns 0 for a parameter glibc does not know, and then the default stays: nothing to do.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn limit_arenas() {}

/// Returns free heap memory to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim takes a size and touches only the allocator's own state, under its locks;
    // it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn a_trim_is_due_only_once_memory_grew_by_the_threshold() {
        assert!(!due(60 * MIB, 60 * MIB));
        assert!(!due(60 * MIB + GROWTH - 1, 60 * MIB));
        assert!(due(60 * MIB + GROWTH, 60 * MIB));
        // Memory that fell since (freed and trimmed by glibc itself) calls for nothing.
        assert!(!due(40 * MIB, 60 * MIB));
    }

    #[test]
    fn rss_anon_is_read_from_a_status_text() {
        let status = "Name:\torderpipe\nVmRSS:\t   77116 kB\nRssAnon:\t   60880 kB\n";
        assert_eq!(rss_anon(status), Some(60880 * 1024));
        assert_eq!(rss_anon("VmRSS:\t 1 kB\n"), None);
        assert_eq!(rss_anon("RssAnon:\t lots\n"), None);
    }

    #[test]
    fn the_resident_memory_of_this_process_is_read() {
        let resident = resident_bytes().expect("Linux has /proc/self/statm");
        assert!(resident > MIB, "{resident}");
    }
}
