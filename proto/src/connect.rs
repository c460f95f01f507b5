//! Client connections that wait for their server: retry with exponential
//! backoff until the server answers or shutdown is requested.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// How long to wait between connection attempts.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The delay after `attempt` failed attempts (doubling, capped).
    pub fn delay(&self, attempt: u32) -> Duration {
        self.initial.saturating_mul(1u32 << attempt.min(16)).min(self.max)
    }
}

/// Normalises `host:port` to `http://host:port`.
pub fn endpoint_uri(address: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    }
}

/// HTTP/2 flow-control windows of every fleet connection, both ends. The
/// HTTP/2 default of 64 KiB makes a sender of sequences or batches of
/// hundreds of KB wait for a window update every 64 KiB; a larger start and
/// adaptive (BDP-probing) windows let a message go out in one burst.
pub const INITIAL_STREAM_WINDOW: u32 = 4 << 20;
pub const INITIAL_CONNECTION_WINDOW: u32 = 16 << 20;

/// Largest HTTP/2 frame a peer may send us (HTTP/2's default is 16 KiB).
/// Sequences and batches run to megabytes; larger frames mean fewer frame
/// headers, wake-ups and writes per message.
pub const MAX_FRAME_SIZE: u32 = 1 << 20;

/// The client end of a fleet connection to `address` (not yet connected).
pub fn endpoint(address: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(endpoint_uri(address))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .initial_stream_window_size(INITIAL_STREAM_WINDOW)
        .initial_connection_window_size(INITIAL_CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .http2_adaptive_window(true))
}

/// The server end: a tonic server builder with the same windows.
pub fn server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(INITIAL_STREAM_WINDOW)
        .initial_connection_window_size(INITIAL_CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .http2_adaptive_window(Some(true))
}

/// Connects to `address`, retrying with `backoff`. Returns `None` when
/// `shutdown` fires first; a malformed address is an error at once.
pub async fn connect(address: &str, backoff: Backoff, shutdown: &CancellationToken) -> Result<Option<Channel>, tonic::transport::Error> {
    let endpoint = endpoint(address)?;
    let mut attempt = 0;
    loop {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            result = endpoint.connect() => result,
        };
        match result {
            Ok(channel) => return Ok(Some(channel)),
            Err(error) => {
                let delay = backoff.delay(attempt);
                tracing::debug!(%address, %error, ?delay, "server not reachable yet; retrying");
                attempt += 1;
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// [`connect`] for long-running clients: a malformed address is fatal to the
/// process (logged, then `shutdown` is cancelled), so `None` means "stop".
pub async fn connect_or_stop(address: &str, backoff: Backoff, shutdown: &CancellationToken) -> Option<Channel> {
    match connect(address, backoff, shutdown).await {
        Ok(channel) => channel,
        Err(error) => {
            tracing::error!(%error, %address, "invalid server address; stopping");
            shutdown.cancel();
            None
        }
    }
}

/// Sleeps for `duration` unless `shutdown` fires first.
pub async fn sleep_or_cancel(duration: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(duration) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(b.delay(0), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(400));
        assert_eq!(b.delay(10), Duration::from_secs(1));
        assert_eq!(b.delay(1000), Duration::from_secs(1));
    }

    #[test]
    fn addresses_get_a_scheme() {
        assert_eq!(endpoint_uri("127.0.0.1:5000"), "http://127.0.0.1:5000");
        assert_eq!(endpoint_uri("https://a:1"), "https://a:1");
    }
}
