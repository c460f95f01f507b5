//! The `Parameters` gRPC service: serves the newest published weights, and
//! streams every newer version to watchers (or the next one, then ends the
//! stream, for a watcher that asks for a single version), each version cut
//! into chunks below 1 MiB. Publishing is a `watch` channel: a slow watcher skips
//! intermediate versions instead of queueing them. A watch that starts
//! after a version this learner has not published is refused with
//! OUT_OF_RANGE rather than left waiting for a version that may never come
//! (versions only grow, so a client can only have seen an older one).

use std::pin::Pin;
use std::sync::Arc;

use fleet_agent::Weights;
use fleet_proto::chunk_weights;
use fleet_proto::pb::{self, parameters_server::Parameters};
use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::WeightsChunk, Status>> + Send>>;

#[derive(Debug, Clone)]
pub struct ParametersService {
    weights: watch::Receiver<Arc<Weights>>,
}

impl ParametersService {
    pub fn new(weights: watch::Receiver<Arc<Weights>>) -> Self {
        Self { weights }
    }
}

/// Sends one version's chunks; false when the client has gone.
async fn send_version(tx: &mpsc::Sender<Result<pb::WeightsChunk, Status>>, weights: &Weights) -> bool {
    for chunk in chunk_weights(weights.version, &weights.bytes) {
        if tx.send(Ok(chunk)).await.is_err() {
            return false;
        }
    }
    true
}

#[tonic::async_trait]
impl Parameters for ParametersService {
    type GetWeightsStream = ChunkStream;
    type WatchWeightsStream = ChunkStream;

    async fn get_weights(&self, _request: Request<pb::GetWeightsRequest>) -> Result<Response<ChunkStream>, Status> {
        let current = self.weights.borrow().clone();
        let chunks = chunk_weights(current.version, &current.bytes).into_iter().map(Ok);
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn watch_weights(&self, request: Request<pb::WatchWeightsRequest>) -> Result<Response<ChunkStream>, Status> {
        let pb::WatchWeightsRequest {
            after_version,
            single_version,
        } = request.into_inner();
        let newest = self.weights.borrow().version;
        if after_version > newest {
            return Err(Status::out_of_range(format!(
                "after_version {after_version} is newer than the newest published weights version {newest}; \
                 watch after a version this learner has published (0: from the current one)"
            )));
        }
        let mut weights = self.weights.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut sent = after_version;
            loop {
                let current = weights.borrow_and_update().clone();
                if current.version > sent {
                    if !send_version(&tx, &current).await {
                        return;
                    }
                    sent = current.version;
                    if single_version {
                        return; // dropping `tx` ends the stream with OK
                    }
                }
                tokio::select! {
                    changed = weights.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use fleet_proto::WeightsAssembler;
    use fleet_proto::pb::parameters_client::ParametersClient;
    use fleet_proto::pb::parameters_server::ParametersServer;
    use fleet_proto::tls::Tls;
    use futures::StreamExt;
    use tokio_stream::wrappers::TcpListenerStream;

    use super::*;

    /// Watchers that ask for one version at a time, as actors do, on one
    /// connection, while the learner publishes a new version every few
    /// microseconds (a small network learning fast), for several seconds:
    /// every call carries exactly one newer version and then ends, and the
    /// connection lives. Watchers that dropped each stream after its version
    /// (the next one already on the way) made h2 reset the late frames' stream
    /// again; past 1024 such resets h2 closed the connection (GOAWAY
    /// ENHANCE_YOUR_CALM, `too_many_internal_resets`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn single_version_watchers_keep_their_connection_while_versions_stream_in() {
        const WATCHERS: usize = 4;
        const RUN: Duration = Duration::from_secs(6);
        let blob = |version: u64| {
            Arc::new(Weights {
                version,
                bytes: vec![version as u8; 30_000].into(),
            })
        };
        let (weights_tx, weights_rx) = watch::channel(blob(1));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            fleet_proto::connect::server(&Tls::default())
                .unwrap()
                .add_service(ParametersServer::new(ParametersService::new(weights_rx)))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let publishing = Arc::new(AtomicBool::new(true));
        let publisher = {
            let publishing = publishing.clone();
            std::thread::spawn(move || {
                let mut version = 1;
                while publishing.load(Ordering::Relaxed) {
                    version += 1;
                    weights_tx.send_replace(blob(version));
                    std::thread::sleep(Duration::from_micros(20));
                }
                version
            })
        };

        let channel = fleet_proto::connect::endpoint(&address, &Tls::default())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + RUN;
        let mut watchers = Vec::new();
        for _ in 0..WATCHERS {
            // Clones of one channel share its connection.
            let mut client = ParametersClient::new(channel.clone());
            watchers.push(tokio::spawn(async move {
                let (mut calls, mut after_version) = (0u64, 0);
                while tokio::time::Instant::now() < deadline {
                    let request = pb::WatchWeightsRequest {
                        after_version,
                        single_version: true,
                    };
                    let mut stream = match client.watch_weights(request).await {
                        Ok(response) => response.into_inner(),
                        Err(status) => panic!("call {calls} failed: {status:?}"),
                    };
                    let mut assembler = WeightsAssembler::new(1 << 20);
                    let (version, bytes) = loop {
                        let chunk = match stream.next().await {
                            Some(Ok(chunk)) => chunk,
                            other => panic!("call {calls}: the stream ended before a whole version: {other:?}"),
                        };
                        if let Some(whole) = assembler.push(chunk).unwrap() {
                            break whole;
                        }
                    };
                    assert!(version > after_version, "call {calls}: version {version} after {after_version}");
                    assert_eq!(bytes, blob(version).bytes, "call {calls}");
                    match stream.next().await {
                        None => {}
                        Some(next) => panic!("call {calls}: the stream went on after its version: {next:?}"),
                    }
                    after_version = version;
                    calls += 1;
                }
                calls
            }));
        }
        let mut calls = 0;
        for watcher in watchers {
            calls += watcher.await.unwrap();
        }
        publishing.store(false, Ordering::Relaxed);
        let published = publisher.join().unwrap();
        // Enough streams on the one connection to have tripped h2's limit.
        assert!(calls > 2 * 1024, "only {calls} calls in {RUN:?} ({published} versions published)");
    }
}
