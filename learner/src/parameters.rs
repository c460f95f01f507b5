//! The `Parameters` gRPC service: serves the newest published weights, and
//! streams every newer version to watchers, each version cut into chunks
//! below 1 MiB. Publishing is a `watch` channel: a slow watcher skips
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
        let after_version = request.into_inner().after_version;
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
