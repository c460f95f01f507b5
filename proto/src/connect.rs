//! Client connections that wait for their server: retry with exponential
//! backoff, jittered, until the server answers or shutdown is requested. Every fleet
//! server and client is built here, with the same HTTP/2 windows, the same
//! keepalives and the same TLS settings ([`Tls`]; off, plain text, unless
//! configured).
//!
//! Keepalives are what end a call to a peer that stopped answering without
//! closing its connection (a stopped or frozen process, a dead host, a
//! network that drops packets): both ends ping a quiet connection, and one
//! whose ping goes unanswered is closed, failing every call on it with
//! UNAVAILABLE; the caller's own retry loop then reconnects. Timeouts on
//! single calls cannot do this for the long-lived streams (inserts, samples,
//! weights), which may rightly stay quiet for minutes.
//!
//! A connection also lives only while its clients end their streams
//! cleanly: [`sole_message`] reads a one-message stream to its end.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::tls::{Tls, is_handshake_failure};

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

    /// [`Backoff::delay`] with jitter: uniform between half of it and all of
    /// it. Every actor loses replay at the same moment when it restarts;
    /// without jitter they would all retry on the same schedule and land on
    /// the new replay together, attempt after attempt. Half the delay is
    /// kept so that the backoff still grows.
    pub fn jittered(&self, attempt: u32, rng: &mut impl rand::Rng) -> Duration {
        let delay = self.delay(attempt);
        delay.mul_f64(rng.random_range(0.5..=1.0))
    }
}

/// Normalises `host:port` to `http://host:port`, or `https://host:port`
/// with TLS on. With TLS on, an `http://` given with the address becomes
/// `https://` too: the TLS settings, not the address, decide whether a
/// connection is encrypted.
pub fn endpoint_uri(address: &str, tls: &Tls) -> String {
    match address.split_once("://") {
        Some(("http" | "https", rest)) if tls.is_on() => format!("https://{rest}"),
        Some(_) => address.to_string(),
        None => format!("{}://{address}", tls.scheme()),
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

/// How long a connection may be quiet before its end sends an HTTP/2 PING,
/// client and server alike. hyper counts from the last frame received, so a
/// busy connection is never pinged; a quiet one costs a 17-byte frame each
/// way every interval. Peers are fleet processes (tonic/hyper, which always
/// answer pings) and the env bridge, whose server is told to accept pings
/// this often.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// How long a PING may go unanswered before the connection is closed. A live
/// process answers from its I/O runtime in microseconds on loopback and
/// within a round trip elsewhere, even while its compute threads are busy;
/// 10 s leaves room for a machine under heavy load without a false alarm,
/// and bounds the detection of a dead peer at [`KEEPALIVE_INTERVAL`] +
/// `KEEPALIVE_TIMEOUT` = 20 s after its last frame.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest a call can wait on a peer that stopped answering before it
/// fails: a ping is due at most [`KEEPALIVE_INTERVAL`] after the last frame
/// and gets [`KEEPALIVE_TIMEOUT`] to come back.
pub const DEAD_PEER_DETECTION: Duration = KEEPALIVE_INTERVAL.saturating_add(KEEPALIVE_TIMEOUT);

/// The client end of a fleet connection to `address` (not yet connected),
/// over TLS when `tls` is on.
pub fn endpoint(address: &str, tls: &Tls) -> Result<Endpoint, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(endpoint_uri(address, tls))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .initial_stream_window_size(INITIAL_STREAM_WINDOW)
        .initial_connection_window_size(INITIAL_CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .http2_adaptive_window(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        // Also between calls: a channel kept for the next call (priority
        // updates, health) learns its server is gone before it needs it.
        .keep_alive_while_idle(true);
    match tls.client_config() {
        Some(config) => endpoint.tls_config(config),
        None => Ok(endpoint),
    }
}

/// The server end: a tonic server builder with the same windows and
/// keepalives (a client that stopped answering has its streams ended, and
/// what they held, an insert waiting for room or a batch being prepared,
/// let go), serving TLS (and requiring client certificates, under mutual
/// TLS) when `tls` is on. Every service added to it, health included, is
/// behind the same TLS.
pub fn server(tls: &Tls) -> Result<tonic::transport::Server, tonic::transport::Error> {
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(INITIAL_STREAM_WINDOW)
        .initial_connection_window_size(INITIAL_CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .http2_adaptive_window(Some(true))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
    match tls.server_config() {
        Some(config) => server.tls_config(config),
        None => Ok(server),
    }
}

/// Connects to `address` (over TLS when `tls` is on), retrying with
/// `backoff`. Returns `None` when `shutdown` fires first; a malformed
/// address is an error at once. A failed TLS handshake is retried too (the
/// certificates may be fixed on the other side) but logged as a warning,
/// where a server that is not up yet is only a debug line.
pub async fn connect(
    address: &str,
    tls: &Tls,
    backoff: Backoff,
    shutdown: &CancellationToken,
) -> Result<Option<Channel>, tonic::transport::Error> {
    let endpoint = endpoint(address, tls)?;
    let mut attempt = 0;
    loop {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            result = endpoint.connect() => result,
        };
        match result {
            Ok(channel) => return Ok(Some(channel)),
            Err(error) => {
                let delay = backoff.jittered(attempt, &mut rand::rng());
                if is_handshake_failure(&error) {
                    tracing::warn!(%address, error = %chain(&error), ?delay, "TLS handshake failed; retrying");
                } else {
                    tracing::debug!(%address, %error, ?delay, "server not reachable yet; retrying");
                }
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
pub async fn connect_or_stop(address: &str, tls: &Tls, backoff: Backoff, shutdown: &CancellationToken) -> Option<Channel> {
    match connect(address, tls, backoff, shutdown).await {
        Ok(channel) => channel,
        Err(error) => {
            tracing::error!(%error, %address, "invalid server address; stopping");
            shutdown.cancel();
            None
        }
    }
}

/// `error` and its sources, joined with `: ` (tonic's own `Display` is only
/// "transport error").
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(error) = next {
        text.push_str(": ");
        text.push_str(&error.to_string());
        next = error.source();
    }
    text
}

/// The one message of a response stream that should end after it (a
/// `Sample` call for one batch), read together with the stream's end.
/// `Ok(None)`: the stream ended without a message; an error: the status the
/// stream ended with, or a second message.
///
/// A client must not drop such a stream as soon as its message arrives.
/// The server has finished it, but its end may still be on the way; the
/// client then resets the stream and, remembering few reset streams, may
/// have forgotten it by the time the end arrives. h2 answers a frame for a
/// forgotten stream with a reset of its own (STREAM_CLOSED) and counts it as
/// an error on the connection; at 1024 it closes the connection with GOAWAY
/// (ENHANCE_YOUR_CALM, `too_many_internal_resets`), failing every call on it.
/// A client asking for one batch at a time gets there in seconds.
pub async fn sole_message<T>(stream: &mut tonic::Streaming<T>) -> Result<Option<T>, tonic::Status> {
    let Some(message) = stream.message().await? else {
        return Ok(None);
    };
    match stream.message().await? {
        None => Ok(Some(message)),
        Some(_) => Err(tonic::Status::internal(
            "the response stream held more than the one message asked for",
        )),
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

    /// Each jittered delay lies in the upper half of the plain one, the
    /// draws spread over that half, and two clients seeded apart retry on
    /// different schedules.
    #[test]
    fn jittered_backoff_stays_in_the_upper_half_and_spreads_clients_apart() {
        use rand::SeedableRng;
        let b = Backoff::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for attempt in 0..20 {
            let plain = b.delay(attempt);
            for _ in 0..100 {
                let d = b.jittered(attempt, &mut rng);
                assert!(
                    d >= plain / 2 && d <= plain,
                    "attempt {attempt}: {d:?} outside [{:?}, {plain:?}]",
                    plain / 2
                );
            }
        }
        let draws: Vec<Duration> = (0..1000).map(|_| b.jittered(3, &mut rng)).collect();
        let mean = draws.iter().sum::<Duration>().as_secs_f64() / draws.len() as f64;
        let plain = b.delay(3).as_secs_f64();
        assert!((0.7 * plain..0.8 * plain).contains(&mean), "mean {mean} s of a {plain} s delay");
        let below_three_quarters = draws.iter().filter(|d| d.as_secs_f64() < 0.75 * plain).count();
        assert!(
            (400..600).contains(&below_three_quarters),
            "{below_three_quarters} of 1000 in the lower half"
        );
        let schedule = |seed| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            (0..6).map(|attempt| b.jittered(attempt, &mut rng)).collect::<Vec<_>>()
        };
        assert_ne!(schedule(1), schedule(2));
    }

    #[test]
    fn addresses_get_a_scheme() {
        let off = Tls::default();
        assert_eq!(endpoint_uri("127.0.0.1:5000", &off), "http://127.0.0.1:5000");
        assert_eq!(endpoint_uri("https://a:1", &off), "https://a:1");
    }
}
