//! `fleet bench`: measurements that print a table of numbers.
//!
//! - [`replay`]: the replay service under concurrent gRPC load.
//! - [`compression`]: the replay codecs on vector and image steps.
//! - [`learner`]: learner updates on synthetic batches, per model.
//! - [`env`]: the configured environment vector (native or bridged) alone.
//! - [`e2e`]: the whole system as `fleet run` starts it, per actor count and core.

pub mod compression;
pub mod e2e;
pub mod env;
pub mod learner;
pub mod replay;

use anyhow::{Context, Result, anyhow};

/// A process's peak resident set (`VmHWM` of `/proc/<pid>/status`), in bytes.
pub fn peak_rss_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    vm_hwm_bytes(&status).ok_or_else(|| anyhow!("no VmHWM in {path}"))
}

/// `VmHWM` of a `/proc/<pid>/status` text, in bytes.
fn vm_hwm_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|line| line.strip_prefix("VmHWM:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rss_is_read_from_the_vm_hwm_line() {
        let status = "Name:\tfleet\nVmPeak:\t  999 kB\nVmHWM:\t   16384 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(vm_hwm_bytes(status), Some(16384 * 1024));
        assert_eq!(vm_hwm_bytes("Name:\tkthreadd\n"), None);
        assert!(peak_rss_bytes(std::process::id()).unwrap() > 0);
    }
}
