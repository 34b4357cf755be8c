//! Where the API listens: a Unix socket (always; mode 0660, owner root, the configured group)
//! and, when configured, TCP with mutual TLS.
//!
//! Listeners are bound during start-up, before any program loads, so a socket or certificate
//! problem refuses the start instead of leaving a daemon nobody can reach. TLS handshakes are
//! done here rather than inside tonic so that a refused client (no certificate, wrong CA) is
//! recorded like any other refused call.

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::net::{TcpStream, UnixListener};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, RootCertStore, ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
        server::WebPkiClientVerifier,
    },
    server::TlsStream,
};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};

use super::{proto::custos_server::CustosServer, service::Service};
use crate::{
    config::api::{ApiSettings, TcpSettings},
    control::ControlTx,
    record::Records,
};

/// Refused handshakes recorded per second at most (a port scan must not flood the log); the
/// rest are counted in the next record's `status_detail`.
const DENIED_PER_SECOND: u32 = 10;

/// How long a TLS client has to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest gRPC message accepted from a client (requests are small).
const MAX_REQUEST: usize = 64 << 10;

/// The API could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A file or socket operation failed.
    #[error("{what}: {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The TLS material is unusable.
    #[error("api.tcp: {0}")]
    Tls(String),
}

/// Listeners bound at start-up.
pub struct Bound {
    unix: std::os::unix::net::UnixListener,
    socket: PathBuf,
    tcp: Option<(std::net::TcpListener, TlsAcceptor)>,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ServeError + 'a {
    move |source| ServeError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Binds the socket (replacing a stale one: the caller holds the instance lock) and the TCP
/// listener, and loads the TLS material.
pub fn bind(settings: &ApiSettings) -> Result<Bound, ServeError> {
    let socket = &settings.socket;
    if let Some(dir) = socket.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(io_err("cannot create the socket's directory", dir))?;
    }
    match fs::remove_file(socket) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(io_err("cannot remove the stale socket", socket)(err)),
    }
    // Created under a tight umask, so the socket is never connectable by others, not even
    // between bind and chmod.
    // SAFETY: umask only changes this process's file creation mask; it is restored at once.
    let old = unsafe { libc::umask(0o177) };
    let unix = std::os::unix::net::UnixListener::bind(socket);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let unix = unix.map_err(io_err("cannot bind the API socket", socket))?;
    let gid = settings.socket_group.as_ref().map(|(_, gid)| *gid);
    std::os::unix::fs::chown(socket, Some(0), Some(gid.unwrap_or(0)))
        .map_err(io_err("cannot set the API socket's owner", socket))?;
    fs::set_permissions(socket, fs::Permissions::from_mode(0o660))
        .map_err(io_err("cannot set the API socket's mode", socket))?;
    unix.set_nonblocking(true)
        .map_err(io_err("cannot configure the API socket", socket))?;
    let tcp = match &settings.tcp {
        None => None,
        Some(tcp) => {
            let acceptor = tls_acceptor(tcp)?;
            let listener = std::net::TcpListener::bind(tcp.listen).map_err(|source| {
                ServeError::Tls(format!("cannot listen on {}: {source}", tcp.listen))
            })?;
            listener
                .set_nonblocking(true)
                .map_err(|e| ServeError::Tls(e.to_string()))?;
            Some((listener, acceptor))
        }
    };
    Ok(Bound {
        unix,
        socket: socket.clone(),
        tcp,
    })
}

fn tls_acceptor(tcp: &TcpSettings) -> Result<TlsAcceptor, ServeError> {
    let read_certs =
        |path: &Path, what: &str| -> Result<Vec<CertificateDer<'static>>, ServeError> {
            let certs: Vec<_> = CertificateDer::pem_file_iter(path)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|err| ServeError::Tls(format!("{what} {}: {err}", path.display())))?;
            if certs.is_empty() {
                return Err(ServeError::Tls(format!(
                    "{what} {}: no PEM certificate in it",
                    path.display()
                )));
            }
            Ok(certs)
        };
    let mode = fs::metadata(&tcp.key)
        .map_err(io_err("cannot read the TLS key", &tcp.key))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(ServeError::Tls(format!(
            "key {} is readable by others (mode {:o}): chmod 600 it",
            tcp.key.display(),
            mode & 0o777
        )));
    }
    let certs = read_certs(&tcp.cert, "cert")?;
    let key = PrivateKeyDer::from_pem_file(&tcp.key)
        .map_err(|err| ServeError::Tls(format!("key {}: {err}", tcp.key.display())))?;
    let mut roots = RootCertStore::empty();
    for ca in read_certs(&tcp.client_ca, "client_ca")? {
        roots
            .add(ca)
            .map_err(|err| ServeError::Tls(format!("client_ca: {err}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .map_err(|err| ServeError::Tls(format!("client_ca: {err}")))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| ServeError::Tls(err.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|err| ServeError::Tls(format!("cert and key: {err}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves the API until `shutdown` resolves. Refused TLS handshakes are logged as `api.denied`.
pub async fn serve(
    bound: Bound,
    service: Service,
    control: ControlTx,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let service = Arc::new(service);
    let grpc =
        || CustosServer::from_arc(Arc::clone(&service)).max_decoding_message_size(MAX_REQUEST);
    let unix = UnixListener::from_std(bound.unix).map_err(|err| {
        tracing::error!(%err, "cannot use the API socket");
        err
    });
    let Ok(unix) = unix else {
        return Ok(());
    };
    tracing::info!(socket = %bound.socket.display(), "API listening");
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut servers = Vec::new();
    let mut stop = stop_tx.subscribe();
    let unix_server = tonic::transport::Server::builder()
        .add_service(grpc())
        .serve_with_incoming_shutdown(UnixListenerStream::new(unix), async move {
            let _ = stop.recv().await;
        });
    servers.push(tokio::spawn(unix_server));
    if let Some((listener, acceptor)) = bound.tcp {
        let listener = tokio::net::TcpListener::from_std(listener);
        match listener {
            Ok(listener) => {
                tracing::info!(addr = ?listener.local_addr().ok(), "API listening on TCP (mutual TLS)");
                let (tx, rx) = tokio::sync::mpsc::channel(16);
                tokio::spawn(accept_tls(listener, acceptor, tx, control));
                let mut stop = stop_tx.subscribe();
                let tcp_server = tonic::transport::Server::builder()
                    .add_service(grpc())
                    .serve_with_incoming_shutdown(ReceiverStream::new(rx), async move {
                        let _ = stop.recv().await;
                    });
                servers.push(tokio::spawn(tcp_server));
            }
            Err(err) => tracing::error!(%err, "cannot use the API's TCP listener"),
        }
    }
    shutdown.await;
    let _ = stop_tx.send(());
    for server in servers {
        if let Ok(Err(err)) = server.await {
            tracing::warn!(%err, "API server ended with an error");
        }
    }
    let _ = fs::remove_file(&bound.socket);
    Ok(())
}

/// Accepts TCP connections and completes their TLS handshakes, each in its own task.
async fn accept_tls(
    listener: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    tx: tokio::sync::mpsc::Sender<Result<TlsStream<TcpStream>, io::Error>>,
    control: ControlTx,
) {
    let records = Arc::new(Records::new());
    let limiter = Arc::new(std::sync::Mutex::new(Limiter::default()));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(%err, "API: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, tx, control, records, limiter) = (
            acceptor.clone(),
            tx.clone(),
            control.clone(),
            Arc::clone(&records),
            Arc::clone(&limiter),
        );
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send(Ok(tls)).await;
                }
                Ok(Err(err)) => {
                    let admitted = limiter
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .admit(std::time::Instant::now());
                    let Some(suppressed) = admitted else {
                        return;
                    };
                    tracing::warn!(%peer, %err, "API: TLS handshake refused");
                    let mut detail = format!("TLS handshake refused: {err}");
                    if suppressed > 0 {
                        detail.push_str(&format!(
                            " ({suppressed} more refused handshakes not recorded one by one)"
                        ));
                    }
                    control.send(records.api_denied(
                        "connect",
                        &peer.to_string(),
                        None,
                        "tls",
                        &detail,
                    ));
                }
                Err(_) => tracing::debug!(%peer, "API: TLS handshake timed out"),
            }
        });
    }
}

/// Admits at most [`DENIED_PER_SECOND`] records per second.
#[derive(Debug, Default)]
struct Limiter {
    window: Option<std::time::Instant>,
    admitted: u32,
    suppressed: u64,
}

impl Limiter {
    /// `Some(refusals suppressed since the last admitted one)` when a record may be written.
    fn admit(&mut self, now: std::time::Instant) -> Option<u64> {
        if self
            .window
            .is_none_or(|start| now.duration_since(start) >= Duration::from_secs(1))
        {
            self.window = Some(now);
            self.admitted = 0;
        }
        if self.admitted < DENIED_PER_SECOND {
            self.admitted += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn refusals_are_rate_limited_and_counted() {
        let mut limiter = Limiter::default();
        let t0 = Instant::now();
        for _ in 0..DENIED_PER_SECOND {
            assert_eq!(limiter.admit(t0), Some(0));
        }
        assert_eq!(limiter.admit(t0), None);
        assert_eq!(limiter.admit(t0 + Duration::from_millis(500)), None);
        assert_eq!(limiter.admit(t0 + Duration::from_secs(1)), Some(2));
        assert_eq!(limiter.admit(t0 + Duration::from_secs(1)), Some(0));
    }
}
