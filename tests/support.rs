//! Spawning `fleet` processes for tests: free ports from the ready line,
//! children killed when the guard drops.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

pub const FLEET: &str = env!("CARGO_BIN_EXE_fleet");

/// A running role process and the addresses it reported.
pub struct Role {
    /// Held so that dropping the guard kills the process.
    pub child: Child,
    pub grpc: String,
    pub metrics: String,
}

impl Role {
    /// Starts `fleet <args…>` with loopback listeners and waits for its ready line.
    pub async fn start(args: &[&str]) -> Role {
        let mut child = Command::new(FLEET)
            .args(args)
            .args(["--metrics-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn fleet");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let line = lines.next_line().await.unwrap().expect("fleet exited before its ready line");
                if line.starts_with("fleet-ready") {
                    return line;
                }
            }
        })
        .await
        .expect("ready line within 30 s");
        let field = |key: &str| {
            ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{key}=")))
                .unwrap()
                .to_string()
        };
        Role {
            grpc: field("grpc"),
            metrics: field("metrics"),
            child,
        }
    }

    pub fn grpc_uri(&self) -> String {
        format!("http://{}", self.grpc)
    }
}

/// GET /metrics and return the body.
pub async fn scrape(address: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(address).await?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n").await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default())
}

/// The value of the first sample whose series (name plus labels) starts with `series`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}
