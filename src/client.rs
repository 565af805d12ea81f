//! Connecting the CLI to a running daemon over its unix socket.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::proto::guard::guard_client::GuardClient;

/// Largest response the CLI accepts (100k flows are ~15 MB).
pub const MAX_RESPONSE: usize = 256 << 20;

/// The daemon could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach routeguard at {path}: {reason} (is `routeguard run` running with this --socket?)")]
pub struct ConnectError {
    /// Socket path tried.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// Connects to the Guard API on the unix socket at `path`.
pub async fn connect(path: &Path) -> Result<GuardClient<Channel>, ConnectError> {
    let fail = |reason: String| ConnectError { path: path.to_path_buf(), reason };
    // Fail fast with the real reason (missing file, permission denied,
    // nobody listening) instead of tonic's generic transport error.
    tokio::net::UnixStream::connect(path).await.map_err(|e| fail(e.to_string()))?;
    let p = path.to_path_buf();
    // The URI is required by the API but unused: the connector ignores it.
    let channel = Endpoint::try_from("http://[::1]:50051")
        .map_err(|e| fail(e.to_string()))?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = p.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?)) }
        }))
        .await
        .map_err(|e| fail(e.to_string()))?;
    // Flow and route listings of a busy router exceed tonic's 4 MiB default.
    Ok(GuardClient::new(channel).max_decoding_message_size(MAX_RESPONSE))
}
