//! Who is calling, and what they may do.
//!
//! - On the Unix socket the kernel tells who the peer is (`SO_PEERCRED`). The socket's mode
//!   (0660, owner root, the configured group) decides who may connect at all; root and members
//!   of the configured operator group are operators, everyone else who can connect is a reader.
//! - On TCP the caller is the subject of its client certificate, which the TLS handshake has
//!   already checked against the configured client CA: its URI and DNS names and its common
//!   name are looked up in `[[api.tcp.client]]`; a certificate no entry names is refused.

use std::sync::Arc;

use tonic::{
    Request, Status,
    transport::server::{TcpConnectInfo, TlsConnectInfo, UdsConnectInfo},
};

use crate::config::api::{ApiSettings, Role};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// How records name it: `uid:0(root)` or the certificate identity that matched.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// `unix` or `tls`.
    pub transport: &'static str,
}

/// Authentication failed: the caller is not known at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknown {
    /// How the peer presented itself, for the record.
    pub peer: String,
    /// Why it was refused.
    pub reason: String,
}

/// Maps connections to callers.
#[derive(Debug, Clone)]
pub struct Authenticator {
    settings: Arc<ApiSettings>,
}

impl Authenticator {
    /// An authenticator for `settings`.
    pub fn new(settings: Arc<ApiSettings>) -> Self {
        Self { settings }
    }

    /// The caller of `request`.
    pub fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Unknown> {
        if let Some(info) = request.extensions().get::<UdsConnectInfo>() {
            let Some(cred) = info.peer_cred else {
                return Err(Unknown {
                    peer: "unix socket".into(),
                    reason: "the kernel gave no peer credentials".into(),
                });
            };
            return Ok(self.unix_caller(cred.uid(), cred.gid(), cred.pid()));
        }
        if let Some(info) = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>() {
            let peer = info
                .get_ref()
                .remote_addr()
                .map_or_else(|| "tcp".to_owned(), |a| a.to_string());
            let Some(certs) = info.peer_certs() else {
                return Err(Unknown {
                    peer,
                    reason: "no client certificate".into(),
                });
            };
            let Some(leaf) = certs.first() else {
                return Err(Unknown {
                    peer,
                    reason: "no client certificate".into(),
                });
            };
            let names = certificate_names(leaf.as_ref()).map_err(|reason| Unknown {
                peer: peer.clone(),
                reason,
            })?;
            return match self.settings.role_of(&names) {
                Some((identity, role)) => Ok(Caller {
                    name: identity.to_owned(),
                    role,
                    transport: "tls",
                }),
                None => Err(Unknown {
                    peer,
                    reason: format!(
                        "certificate names {names:?} match no [[api.tcp.client]] identity"
                    ),
                }),
            };
        }
        Err(Unknown {
            peer: "unknown transport".into(),
            reason: "the connection carries no identity".into(),
        })
    }

    fn unix_caller(&self, uid: u32, gid: u32, pid: Option<i32>) -> Caller {
        let user = nix::unistd::User::from_uid(uid.into())
            .ok()
            .flatten()
            .map_or_else(|| uid.to_string(), |u| u.name);
        let name = format!("uid:{uid}({user})");
        let operator = uid == 0
            || self.settings.operator_gid.is_some_and(|operators| {
                gid == operators || pid.is_some_and(|pid| groups_of(pid).contains(&operators))
            });
        Caller {
            name,
            role: if operator {
                Role::Operator
            } else {
                Role::Reader
            },
            transport: "unix",
        }
    }
}

/// The supplementary groups of process `pid` (`Groups:` in `/proc/PID/status`).
fn groups_of(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix("Groups:").map(|rest| {
                    rest.split_whitespace()
                        .filter_map(|g| g.parse().ok())
                        .collect()
                })
            })
        })
        .unwrap_or_default()
}

/// The names a certificate carries: URI and DNS subject alternative names, then the subject's
/// common names.
pub fn certificate_names(der: &[u8]) -> Result<Vec<String>, String> {
    use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|err| format!("unreadable client certificate: {err}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(uri) => names.push((*uri).to_owned()),
                GeneralName::DNSName(dns) => names.push((*dns).to_owned()),
                _ => {}
            }
        }
    }
    for cn in cert.subject().iter_common_name() {
        if let Ok(cn) = cn.as_str() {
            names.push(cn.to_owned());
        }
    }
    Ok(names)
}

/// Whether `caller` may make a call that needs `needed`.
pub fn allowed(caller: &Caller, needed: Role) -> bool {
    caller.role >= needed
}

/// The status for a refused call.
pub fn refused(method: &str, caller: Option<&Caller>, reason: &str) -> Status {
    match caller {
        Some(caller) => Status::permission_denied(format!(
            "{method} needs the operator role; {} is a {}",
            caller.name,
            caller.role.as_str()
        )),
        None => Status::unauthenticated(format!("{method}: {reason}")),
    }
}
