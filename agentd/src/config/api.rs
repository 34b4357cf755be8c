//! `[api]`: where the gRPC API listens and who may do what.
//!
//! ```toml
//! [api]
//! socket = "/run/custos/agentd.sock"   # mode 0660, owner root
//! socket_group = "custos"              # may connect (readers); default: root only
//! operator_group = "custos-admin"      # operators on the socket, besides root
//! subscriber_window = 256              # chunks (<= 256 records each) kept for slow streams
//!
//! [api.tcp]                            # off unless configured; always mutual TLS
//! listen = "0.0.0.0:7443"
//! cert = "/etc/custos/tls/server.pem"
//! key = "/etc/custos/tls/server.key"
//! client_ca = "/etc/custos/tls/clients.pem"
//! [[api.tcp.client]]
//! identity = "spiffe://example.org/auditor"   # a URI or DNS name, or the subject CN
//! role = "reader"                             # or "operator"
//! ```

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use toml::Spanned;

use super::{ConfigError, Validator, raw};

/// What a caller may do. Ordered: an operator may do all a reader may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Streams, proofs, agents, status.
    Reader,
    /// Also containment and policy reloads.
    Operator,
}

impl Role {
    /// The name used in the configuration and in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Operator => "operator",
        }
    }
}

/// The API's TCP listener (mutual TLS only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSettings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// CA certificates client certificates must chain to (PEM).
    pub client_ca: PathBuf,
    /// Certificate identity → role.
    pub clients: Vec<(String, Role)>,
}

/// `[api]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSettings {
    /// The Unix socket.
    pub socket: PathBuf,
    /// The group owning the socket (its members may connect), by name and id.
    pub socket_group: Option<(String, u32)>,
    /// The group whose members are operators on the socket.
    pub operator_gid: Option<u32>,
    /// Chunks of live records kept for subscribers; one that falls further behind is served
    /// from the log files instead (and told it lagged).
    pub subscriber_window: usize,
    /// The TCP listener.
    pub tcp: Option<TcpSettings>,
}

/// The default socket path.
pub const DEFAULT_SOCKET: &str = "/run/custos/agentd.sock";

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_SOCKET),
            socket_group: None,
            operator_gid: None,
            subscriber_window: crate::api::hub::CHANNEL_CHUNKS,
            tcp: None,
        }
    }
}

impl ApiSettings {
    /// The first configured identity among `names`, with its role.
    pub fn role_of<'a>(&'a self, names: &[String]) -> Option<(&'a str, Role)> {
        let tcp = self.tcp.as_ref()?;
        names.iter().find_map(|name| {
            tcp.clients
                .iter()
                .find(|(identity, _)| identity == name)
                .map(|(identity, role)| (identity.as_str(), *role))
        })
    }
}

impl Validator<'_> {
    pub(super) fn api(&self, raw: &raw::RawApi) -> Result<ApiSettings, ConfigError> {
        let mut api = ApiSettings::default();
        let absolute = |value: &Spanned<String>, field: &str| -> Result<PathBuf, ConfigError> {
            let path = Path::new(value.get_ref());
            if path.is_absolute() {
                Ok(path.to_owned())
            } else {
                Err(self.error(value.span(), field, "must be an absolute path"))
            }
        };
        let group = |value: &Spanned<String>, field: &str| -> Result<u32, ConfigError> {
            match nix::unistd::Group::from_name(value.get_ref()) {
                Ok(Some(group)) => Ok(group.gid.as_raw()),
                _ => Err(self.error(
                    value.span(),
                    field,
                    format!("no group named {:?} on this host", value.get_ref()),
                )),
            }
        };
        if let Some(socket) = &raw.socket {
            api.socket = absolute(socket, "api.socket")?;
        }
        if let Some(name) = &raw.socket_group {
            api.socket_group = Some((name.get_ref().clone(), group(name, "api.socket_group")?));
        }
        if let Some(name) = &raw.operator_group {
            api.operator_gid = Some(group(name, "api.operator_group")?);
        }
        if let Some(window) =
            self.range(&raw.subscriber_window, "api.subscriber_window", 4, 65_536)?
        {
            api.subscriber_window = window as usize;
        }
        if let Some(tcp) = &raw.tcp {
            let span = tcp.span();
            let tcp = tcp.get_ref();
            let listen = tcp.listen.get_ref().parse::<SocketAddr>().map_err(|_| {
                self.error(
                    tcp.listen.span(),
                    "api.tcp.listen",
                    format!("{:?} is not an address (ip:port)", tcp.listen.get_ref()),
                )
            })?;
            let mut clients = Vec::new();
            for (i, client) in tcp.clients.iter().enumerate() {
                let client = client.get_ref();
                let identity = client.identity.get_ref().trim();
                if identity.is_empty() {
                    return Err(self.error(
                        client.identity.span(),
                        format!("api.tcp.client[{i}].identity"),
                        "must not be empty",
                    ));
                }
                let role = match client.role.get_ref().as_str() {
                    "reader" => Role::Reader,
                    "operator" => Role::Operator,
                    other => {
                        return Err(self.error(
                            client.role.span(),
                            format!("api.tcp.client[{i}].role"),
                            format!("{other:?} is not a role (reader, operator)"),
                        ));
                    }
                };
                if clients.iter().any(|(id, _)| id == identity) {
                    return Err(self.error(
                        client.identity.span(),
                        format!("api.tcp.client[{i}].identity"),
                        format!("{identity:?} is listed twice"),
                    ));
                }
                clients.push((identity.to_owned(), role));
            }
            if clients.is_empty() {
                return Err(self.error(
                    span,
                    "api.tcp.client",
                    "a TCP listener needs at least one [[api.tcp.client]] (identity and role)",
                ));
            }
            api.tcp = Some(TcpSettings {
                listen,
                cert: absolute(&tcp.cert, "api.tcp.cert")?,
                key: absolute(&tcp.key, "api.tcp.key")?,
                client_ca: absolute(&tcp.client_ca, "api.tcp.client_ca")?,
                clients,
            });
        }
        Ok(api)
    }
}
