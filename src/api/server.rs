//! Serving the API: unix socket first, TCP+TLS only when configured.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tracing::info;

use super::GuardService;
use crate::config::Config;
use crate::core::CoreHandle;
use crate::proto::guard::guard_server::GuardServer;

/// Encoded descriptors of our protos, for gRPC reflection.
pub const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Another process answers on the socket path.
    #[error("another process is already serving on {0}; stop it or choose another --socket")]
    InUse(PathBuf),
    /// Filesystem or bind failure.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The socket path or address.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TLS material could not be read.
    #[error("cannot read TLS file {path}: {source}")]
    Tls {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// tonic failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection descriptors failed to load.
    #[error("gRPC reflection: {0}")]
    Reflection(String),
}

/// Binds the unix socket at `path` with mode 0660, refusing to steal it
/// from a live server and removing a stale file left by a dead one.
pub async fn bind_unix(path: &Path) -> Result<UnixListener, ServeError> {
    let bind_err = |source| ServeError::Bind { path: path.display().to_string(), source };
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir).map_err(bind_err)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(bind_err)?;
        }
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ServeError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
    Ok(listener)
}

/// Serves until `shutdown` resolves. The health service reports NOT_SERVING
/// until the core's first dump completes.
pub async fn serve(
    cfg: &Config,
    listener: UnixListener,
    core: CoreHandle,
    kernel: String,
    northbound: Option<crate::frr::proxy::Proxy>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_not_serving::<GuardServer<GuardService>>().await;
    let mut ready = core.ready_rx.clone();
    tokio::spawn(async move {
        if ready.wait_for(|r| *r).await.is_ok() {
            health.set_serving::<GuardServer<GuardService>>().await;
        }
    });
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(DESCRIPTORS)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let mut service = GuardService::new(core, kernel);
    if let Some(proxy) = northbound {
        service = service.with_northbound(proxy.states()).with_proxy(proxy);
    }
    let guard = GuardServer::new(service);

    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut tcp_task = None;
    if let (Some(addr), Some(tls)) = (cfg.api.listen, cfg.api.tls.clone()) {
        let read = |p: &Path| std::fs::read(p).map_err(|source| ServeError::Tls { path: p.to_path_buf(), source });
        let mut tls_cfg = ServerTlsConfig::new().identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?));
        if let Some(ca) = &tls.client_ca {
            tls_cfg = tls_cfg.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        let router = Server::builder()
            .tls_config(tls_cfg)?
            .add_service(health_svc.clone())
            .add_service(reflection.clone())
            .add_service(guard.clone());
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { path: addr.to_string(), source })?;
        info!(%addr, mtls = tls.client_ca.is_some(), "gRPC API listening on TCP with TLS");
        let mut stop = stop_tx.subscribe();
        // tonic ignores `tcp_nodelay` for a listener of our own: set it here.
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tcp_task = Some(tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.recv().await;
        })));
    }
    info!(socket = %cfg.socket.display(), "gRPC API listening on unix socket");
    let result = Server::builder()
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(guard)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    let _ = stop_tx.send(());
    if let Some(t) = tcp_task {
        let _ = t.await;
    }
    let _ = std::fs::remove_file(&cfg.socket);
    Ok(result?)
}
