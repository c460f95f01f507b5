//! What the tests add to the library's process and scrape helpers: the path
//! of the `fleet` binary under test, and starting a role of it with a
//! loopback metrics port and quiet logs.

use tokio::process::Command;

pub use fleet::process::Process;
pub use fleet::scrape::{metric, scrape, series};

pub const FLEET: &str = env!("CARGO_BIN_EXE_fleet");

/// Starts `fleet <args…>` with a loopback metrics listener and waits for its
/// ready line; the process is killed when the returned guard drops.
pub async fn start(args: &[&str]) -> Process {
    let mut command = Command::new(FLEET);
    command.args(args).args(["--metrics-listen", "127.0.0.1:0"]).env("RUST_LOG", "warn");
    let name = args.first().copied().unwrap_or("fleet");
    Process::spawn(name, command).await.expect("fleet role ready")
}
