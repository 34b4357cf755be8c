//! Connecting to agentd's API, over its Unix socket or over TCP with mutual TLS, with errors
//! that say what to do.

use std::{io, path::PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

use super::proto::custos_client::CustosClient;

/// A connected API client.
pub type Client = CustosClient<Channel>;

/// The stream `StreamEvents` returns.
pub type EventStream = tonic::Streaming<super::proto::StreamEventsResponse>;

/// Where agentd is.
#[derive(Debug, Clone)]
pub enum Target {
    /// The Unix socket.
    Unix(PathBuf),
    /// TCP with mutual TLS.
    Tls {
        /// `host:port`.
        endpoint: String,
        /// The CA that signed the server's certificate (PEM file).
        ca: PathBuf,
        /// This client's certificate (PEM file).
        cert: PathBuf,
        /// This client's key (PEM file).
        key: PathBuf,
        /// The name the server certificate must carry (default: the endpoint's host).
        server_name: Option<String>,
    },
}

/// Why agentctl could not reach agentd.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No socket.
    #[error("agentd is not running, or listens elsewhere: no socket at {0} (see --socket)")]
    NoSocket(PathBuf),
    /// The socket refused us.
    #[error(
        "permission denied on {0}: the socket is root's, mode 0660, and its group is `[api] socket_group`; run as root or as a member of that group"
    )]
    Denied(PathBuf),
    /// Nobody answers on the socket.
    #[error("agentd is not running: nothing answers on {0}")]
    Refused(PathBuf),
    /// A file could not be read.
    #[error("cannot read {path}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Connecting failed.
    #[error("cannot connect to agentd at {target}: {detail}")]
    Transport {
        /// Where.
        target: String,
        /// Why.
        detail: String,
    },
}

/// Connects.
pub async fn connect(target: &Target) -> Result<CustosClient<Channel>, ConnectError> {
    let channel = match target {
        Target::Unix(path) => {
            // A first plain connection gives a precise reason when it fails.
            match tokio::net::UnixStream::connect(path).await {
                Ok(_) => {}
                Err(err) => {
                    return Err(match err.kind() {
                        io::ErrorKind::NotFound => ConnectError::NoSocket(path.clone()),
                        io::ErrorKind::PermissionDenied => ConnectError::Denied(path.clone()),
                        io::ErrorKind::ConnectionRefused => ConnectError::Refused(path.clone()),
                        _ => ConnectError::Transport {
                            target: path.display().to_string(),
                            detail: err.to_string(),
                        },
                    });
                }
            }
            let path = path.clone();
            // The URI is required by the API but unused: the connector dials the socket.
            Endpoint::from_static("http://agentd.invalid")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await
                .map_err(|err| ConnectError::Transport {
                    target: "the socket".into(),
                    detail: format!("{err}: {}", source_chain(&err)),
                })?
        }
        Target::Tls {
            endpoint,
            ca,
            cert,
            key,
            server_name,
        } => {
            let read = |path: &PathBuf| {
                std::fs::read(path).map_err(|source| ConnectError::File {
                    path: path.clone(),
                    source,
                })
            };
            let host = endpoint
                .rsplit_once(':')
                .map_or(endpoint.as_str(), |(host, _)| host)
                .trim_matches(['[', ']']);
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read(ca)?))
                .identity(Identity::from_pem(read(cert)?, read(key)?))
                .domain_name(server_name.clone().unwrap_or_else(|| host.to_owned()));
            let transport = |err: tonic::transport::Error| ConnectError::Transport {
                target: endpoint.clone(),
                detail: format!("{err}: {}", source_chain(&err)),
            };
            Endpoint::from_shared(format!("https://{endpoint}"))
                .map_err(transport)?
                .tls_config(tls)
                .map_err(transport)?
                .connect()
                .await
                .map_err(transport)?
        }
    };
    Ok(CustosClient::new(channel).max_decoding_message_size(64 << 20))
}

fn source_chain(err: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut source = err.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}
