//! Delivering detector alerts to an HTTP(S) webhook, signed with the host's Ed25519 key.
//!
//! Alerts arrive as already-serialised JSON bodies through [`Sender::send`], which never blocks:
//! a bounded queue sits between the detectors and one delivery task, and a body that does not
//! fit is dropped and reported (agentd's signed log keeps every alert anyway; the webhook is a
//! notification channel, not the record). The task delivers bodies one at a time, in order,
//! retrying transient failures with exponential backoff. Every delivery that fails for good, and
//! every dropped body, is handed to the `on_failure` callback so agentd can log it as a signed
//! record: a receiver that stops hearing from a host can be told apart from a host that stopped
//! alerting.
//!
//! # Wire format (version 1)
//!
//! Each body is sent as one HTTP/1.1 request:
//!
//! ```text
//! POST <path from the URL, query included> HTTP/1.1
//! Host: <host[:port]>
//! User-Agent: custos-agentd/<agentd version>
//! Content-Type: application/json
//! Content-Length: <body length>
//! Connection: close
//! X-Custos-Delivery: <delivery id>
//! X-Custos-Timestamp: <unix seconds>
//! X-Custos-Key: <key text>
//! X-Custos-Signature: ed25519=<base64>
//!
//! <body>
//! ```
//!
//! - `X-Custos-Delivery` is an opaque token of at most 64 characters from `[0-9a-f-]`, unique
//!   per body on the sending host (it is built from the agentd process's start time, its pid and
//!   a counter). Retries of one body carry the same id, so a receiver deduplicates on
//!   (`X-Custos-Key`, `X-Custos-Delivery`).
//! - `X-Custos-Timestamp` is the sender's clock, in decimal Unix seconds, when the attempt was
//!   signed. Each retry is re-signed with a fresh timestamp.
//! - `X-Custos-Key` is the host's verifier key in its text form,
//!   `<name>+<hex key id>+<base64(0x01 || 32-byte Ed25519 public key)>` (the C2SP signed-note
//!   format agentd's log uses; split on the first two `+` only, base64 has `+` in its
//!   alphabet). The header is a claim, not a credential: the receiver must compare the whole
//!   text with the key it pinned for that host and use the pinned key, never one taken from the
//!   request.
//! - `X-Custos-Signature` is `ed25519=` followed by the standard base64 (RFC 4648 §4, with
//!   padding) of the 64-byte Ed25519 signature (RFC 8032, pure Ed25519, no prehash) over the
//!   bytes
//!
//!   ```text
//!   "custos-webhook-v1" LF <X-Custos-Timestamp> LF <X-Custos-Delivery> LF <body>
//!   ```
//!
//!   where LF is the byte 0x0A, the timestamp and id are the exact header values, and the body
//!   is the exact request body bytes (not re-serialised JSON).
//!
//! To verify, a receiver: (1) looks up the pinned key for the `X-Custos-Key` text and rejects
//! unknown keys; (2) rejects a timestamp further than its replay window (for example 5 minutes)
//! from its own clock; (3) rebuilds the message above and checks the signature with the pinned
//! public key (a strict check, like `verify_strict` in ed25519-dalek); (4) drops a delivery id
//! it has already accepted within the window. Any 2xx answer means "accepted".
//!
//! # Delivery rules
//!
//! - Any 2xx status is success. The response body is not read.
//! - Connection errors, TLS errors, timeouts (the whole attempt, connect to status line, is
//!   bounded by [`WebhookConfig::timeout`]), 5xx and 429 are retried after 0.5 s, 1 s, 2 s, 4 s…
//!   ([`WebhookConfig::backoff`] doubled each time, capped at 30 s), up to
//!   [`WebhookConfig::attempts`] attempts in all.
//! - Any other status (3xx, since redirects are not followed, and 4xx other than 429) is a
//!   permanent failure: the receiver understood the request and refused it, so repeating it
//!   would not help.
//!
//! # Transport
//!
//! The request is written by hand over a `TcpStream`, or a `tokio-rustls` stream for
//! `https://`, rather than through hyper's client: one `Content-Length` POST with
//! `Connection: close` and a status line to read back is all the protocol this needs, and doing
//! it here adds no dependency and keeps the whole exchange, including the per-attempt timeout,
//! in one readable function. Connections are not reused: alerts are rare enough that a
//! connection per body costs nothing, and it leaves no pooled state to go stale.
//!
//! `https://` trusts only the CA bundle named by [`WebhookConfig::ca`] (agentd carries no
//! public web roots): the receiver's certificate must chain to it and name the URL's host.
//! Plain `http://` works, for tests and for a receiver on the same host; anywhere else alerts
//! should travel over `https://`, since over plain HTTP anyone on the path can read them (the
//! signature still stops them from being forged or altered).
//!
//! Bodies, the key and the URL's path and query (webhook URLs often carry a secret token) are
//! never logged; logs name the receiver as `scheme://host:port` and a delivery by its id.

use std::{
    collections::VecDeque,
    fmt,
    net::{IpAddr, Ipv6Addr},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
    sync::{
        Notify,
        mpsc::{self, error::TrySendError},
    },
};
use tokio_rustls::{
    TlsConnector,
    rustls::{
        self, ClientConfig, RootCertStore,
        pki_types::{CertificateDer, ServerName, pem::PemObject as _},
    },
};

/// Default for [`WebhookConfig::timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for [`WebhookConfig::attempts`].
pub const DEFAULT_ATTEMPTS: u32 = 5;
/// Default for [`WebhookConfig::queue`].
pub const DEFAULT_QUEUE: usize = 1024;
/// Default for [`WebhookConfig::backoff`].
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(500);

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The first line of every signed message. Naming the format and its version keeps a signature
/// made for a webhook from verifying as anything else the host's key signs (log checkpoints).
const SIGNATURE_CONTEXT: &[u8] = b"custos-webhook-v1\n";

/// How much of a response is read looking for its status line: a receiver that sends more
/// without one is not speaking HTTP.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// How many dropped bodies are remembered one by one until the task reports them; past that they
/// are counted, so a flood of alerts against a dead receiver cannot grow memory without bound.
const MAX_DROP_NOTICES: usize = 1024;

/// Sent in `User-Agent`.
const USER_AGENT: &str = concat!("custos-agentd/", env!("CARGO_PKG_VERSION"));

/// Webhook settings (the config layer builds this).
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Where to POST: `http://host[:port][/path]` or `https://…`.
    pub url: String,
    /// PEM CA bundle the receiver's certificate must chain to; required for `https://`, refused
    /// for `http://` (it would suggest an encryption that does not happen).
    pub ca: Option<PathBuf>,
    /// Limit on one attempt, from connecting to reading the status line (default 5 s).
    pub timeout: Duration,
    /// Attempts per body, the first included (default 5).
    pub attempts: u32,
    /// Bodies that may wait for delivery before new ones are dropped (default 1024).
    pub queue: usize,
    /// Wait after the first failed attempt; it doubles after each further one, up to 30 s
    /// (default 500 ms; tests shorten it).
    pub backoff: Duration,
}

impl WebhookConfig {
    /// Settings for `url` with every other field at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }
}

/// The defaults, with an empty `url` (which [`spawn`] refuses): for `..Default::default()` after
/// setting `url`.
impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            ca: None,
            timeout: DEFAULT_TIMEOUT,
            attempts: DEFAULT_ATTEMPTS,
            queue: DEFAULT_QUEUE,
            backoff: DEFAULT_BACKOFF,
        }
    }
}

/// A delivery that failed for good (after all attempts) or was dropped because the queue was
/// full.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The body's `X-Custos-Delivery` id.
    pub id: String,
    /// Attempts made (0 for a dropped body).
    pub attempts: u32,
    /// What went wrong with the last attempt, or why the body was dropped.
    pub error: String,
    /// The body was dropped without an attempt because the queue was full.
    pub dropped: bool,
}

/// Why the webhook could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The URL is not one this module can deliver to. The message never repeats the URL's path
    /// or query, which may hold a secret.
    #[error("webhook url: {0}")]
    Url(String),
    /// `https://` without a CA file.
    #[error(
        "webhook url is https:// but no CA file is set: set `ca` to the PEM bundle of the CA that signed the receiver's certificate"
    )]
    MissingCa,
    /// A CA file with an `http://` URL.
    #[error(
        "webhook `ca` is set but the url is http://, so alerts would travel unencrypted: use https:// (or drop `ca`)"
    )]
    CaWithoutTls,
    /// The CA file cannot be used.
    #[error("webhook CA file {}: {detail}", path.display())]
    Ca {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// Another setting is out of range.
    #[error("webhook {0}")]
    Setting(String),
    /// [`spawn`] was called outside a tokio runtime.
    #[error("the webhook must be started from inside a tokio runtime")]
    NoRuntime,
}

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// The port used when the URL names none.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// A parsed webhook URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Host name or IP address; an IPv6 address without its brackets.
    pub host: String,
    /// Port (80 or 443 when the URL names none).
    pub port: u16,
    /// Path and query, starting with `/` (`/` when the URL has none); the fragment is dropped.
    pub path: String,
}

impl Target {
    /// The `Host` header's value: the port is left out when it is the scheme's default.
    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == self.scheme.default_port() {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The host is this machine, so plain HTTP does not cross a network.
    fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

/// `scheme://host:port`, without the path: webhook paths often carry a secret token, and this is
/// what logs and errors show.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(
                f,
                "{}://[{}]:{}",
                self.scheme.as_str(),
                self.host,
                self.port
            )
        } else {
            write!(f, "{}://{}:{}", self.scheme.as_str(), self.host, self.port)
        }
    }
}

/// Parses and checks a URL: scheme `http` or `https`, a host, a port (default 80/443), a path
/// (default `/`). User credentials in the URL are refused, and so are spaces, control and
/// non-ASCII characters (they would have to be percent-encoded to go into a request line).
pub fn parse_url(url: &str) -> Result<Target, WebhookError> {
    let bad = |reason: &str| Err(WebhookError::Url(reason.to_owned()));
    if url.is_empty() {
        return bad("it is empty");
    }
    if !url.is_ascii() {
        return bad(
            "it has non-ASCII characters: percent-encode them, and write the host in its ASCII (punycode) form",
        );
    }
    if url.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return bad("it has spaces or control characters: percent-encode them");
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return bad("the scheme is missing: it must start with http:// or https://");
    };
    let scheme = if scheme.eq_ignore_ascii_case("http") {
        Scheme::Http
    } else if scheme.eq_ignore_ascii_case("https") {
        Scheme::Https
    } else if !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return Err(WebhookError::Url(format!(
            "scheme {scheme:?} is not supported: use http:// or https://"
        )));
    } else {
        return bad("the scheme is missing: it must start with http:// or https://");
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return bad("user credentials in the URL are not supported");
    }
    // The fragment is for the client's side only: it is never sent.
    let tail = tail.split_once('#').map_or(tail, |(before, _)| before);
    let path = if tail.starts_with('/') {
        tail.to_owned()
    } else {
        format!("/{tail}")
    };
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return bad("the host has an unclosed '['");
        };
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(WebhookError::Url(format!(
                "[{host}] is not an IPv6 address"
            )));
        }
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return bad("unexpected characters after the IPv6 address's ']'"),
            },
        };
        (host, port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        if port.is_some_and(|port| port.contains(':')) {
            return bad("an IPv6 address must be written in brackets, as in http://[::1]:8080/");
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        {
            return Err(WebhookError::Url(format!(
                "host {host:?} has characters a host name cannot have"
            )));
        }
        (host, port)
    };
    if host.is_empty() {
        return bad("the host is missing");
    }
    let port = match port {
        None => scheme.default_port(),
        Some("") => return bad("the port after ':' is empty"),
        Some(text) => match text.parse::<u16>() {
            // `parse` takes a leading '+', which no URL has.
            Ok(port) if port != 0 && text.bytes().all(|b| b.is_ascii_digit()) => port,
            _ => {
                return Err(WebhookError::Url(format!(
                    "port {text:?} is not a number from 1 to 65535"
                )));
            }
        },
    };
    Ok(Target {
        scheme,
        host: host.to_owned(),
        port,
        path,
    })
}

/// The signing function [`spawn`] takes: message bytes in, 64-byte Ed25519 signature out.
pub type SignFn = Arc<dyn Fn(&[u8]) -> [u8; 64] + Send + Sync>;
/// The failure callback [`spawn`] takes; called from the delivery task.
pub type FailureFn = Arc<dyn Fn(Failure) + Send + Sync>;

/// One queued body.
#[derive(Debug)]
struct Job {
    id: String,
    body: Vec<u8>,
}

/// Queues bodies for the delivery task. Cheap to clone; the task ends once every clone is
/// dropped and the queue is empty.
#[derive(Debug, Clone)]
pub struct Sender {
    jobs: mpsc::Sender<Job>,
    drops: Arc<Drops>,
}

impl Sender {
    /// Queues a body; never blocks. Returns false when the body was dropped: the queue is full
    /// (the drop is reported to `on_failure` with `dropped: true`, from the delivery task), or
    /// the delivery task is gone (only when its runtime is shutting down; then it is only logged).
    pub fn send(&self, body: Vec<u8>) -> bool {
        let id = next_id();
        match self.jobs.try_send(Job { id, body }) {
            Ok(()) => true,
            Err(TrySendError::Full(job)) => {
                // Reported from the task, not from here: `on_failure` writes a signed record,
                // and calling it on the sender's thread would make `send` do that work, or
                // re-enter it if the record is itself forwarded here.
                self.drops.push(job.id);
                false
            }
            Err(TrySendError::Closed(job)) => {
                tracing::warn!(id = %job.id, "webhook delivery task has stopped; alert not sent");
                false
            }
        }
    }
}

/// Bodies dropped because the queue was full, waiting for the task to report them.
#[derive(Debug, Default)]
struct Drops {
    state: Mutex<DropState>,
    /// Woken on each drop; a wake-up with no waiter is kept, so none is lost.
    wake: Notify,
    /// The queue's size, for the report.
    queue: usize,
}

#[derive(Debug, Default)]
struct DropState {
    ids: VecDeque<String>,
    /// Drops past [`MAX_DROP_NOTICES`], reported together.
    overflow: u64,
    /// The id of the last of those.
    overflow_last: Option<String>,
}

impl Drops {
    fn push(&self, id: String) {
        {
            // The state stays consistent whatever panicked while holding the lock: every
            // update is a single push or counter bump.
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.ids.len() < MAX_DROP_NOTICES {
                state.ids.push_back(id);
            } else {
                state.overflow += 1;
                state.overflow_last = Some(id);
            }
        }
        self.wake.notify_one();
    }

    /// Reports the drops seen so far.
    fn report(&self, on_failure: &FailureFn) {
        let state = std::mem::take(&mut *self.state.lock().unwrap_or_else(PoisonError::into_inner));
        let count = state.ids.len() as u64 + state.overflow;
        if count == 0 {
            return;
        }
        // One warning per batch: a log line per dropped alert would add to the flood that
        // caused the drops.
        tracing::warn!(
            dropped = count,
            first = state.ids.front().map(String::as_str).unwrap_or_default(),
            "webhook queue full ({} bodies waiting); alerts dropped",
            self.queue
        );
        let error = format!(
            "queue full ({} bodies waiting): dropped without an attempt",
            self.queue
        );
        for id in state.ids {
            on_failure(Failure {
                id,
                attempts: 0,
                error: error.clone(),
                dropped: true,
            });
        }
        if let Some(id) = state.overflow_last {
            on_failure(Failure {
                id,
                attempts: 0,
                error: format!(
                    "queue full ({} bodies waiting): {} bodies dropped without an attempt while earlier drops were being reported; this is the last of them",
                    self.queue, state.overflow
                ),
                dropped: true,
            });
        }
    }
}

/// A delivery id unique on this host: the process's start time (first use, in milliseconds),
/// its pid, and a counter. Two processes with the same pid never run at once, and a later one
/// starts at a later time.
fn next_id() -> String {
    static START: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let start = *START.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            })
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{start:x}-{:x}-{n:x}", std::process::id())
}

/// Starts the delivery task on the current tokio runtime.
///
/// `sign` signs the message bytes with the host's Ed25519 key (returns the 64-byte signature);
/// `key` is the public key's text form, sent in `X-Custos-Key` for the receiver to match against
/// the key it pinned; `on_failure` is called from the task for every delivery that failed for
/// good and every dropped body, so agentd can log it as a signed record. Fails, without
/// starting anything, on a bad URL, a missing or unreadable CA file, a zero setting, or outside
/// a runtime.
pub fn spawn(
    config: WebhookConfig,
    key: String,
    sign: SignFn,
    on_failure: FailureFn,
) -> Result<Sender, WebhookError> {
    let target = parse_url(&config.url)?;
    if config.attempts == 0 {
        return Err(WebhookError::Setting("attempts must be at least 1".into()));
    }
    if config.queue == 0 {
        return Err(WebhookError::Setting(
            "queue must hold at least 1 body".into(),
        ));
    }
    if config.timeout.is_zero() {
        return Err(WebhookError::Setting("timeout must be more than 0".into()));
    }
    // The key goes into a header line as is.
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(WebhookError::Setting(
            "key text must be non-empty printable ASCII without spaces".into(),
        ));
    }
    let tls = match (target.scheme, &config.ca) {
        (Scheme::Https, Some(ca)) => {
            let name = ServerName::try_from(target.host.clone()).map_err(|_| {
                WebhookError::Url(format!(
                    "host {:?} is not a name a TLS certificate can carry",
                    target.host
                ))
            })?;
            Some((tls_connector(ca)?, name))
        }
        (Scheme::Https, None) => return Err(WebhookError::MissingCa),
        (Scheme::Http, Some(_)) => return Err(WebhookError::CaWithoutTls),
        (Scheme::Http, None) => None,
    };
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| WebhookError::NoRuntime)?;
    if target.scheme == Scheme::Http && !target.is_loopback() {
        tracing::warn!(
            receiver = %target,
            "webhook uses plain http://: alerts cross the network unencrypted; use https://"
        );
    }
    let (jobs, queue) = mpsc::channel(config.queue);
    let drops = Arc::new(Drops {
        queue: config.queue,
        ..Drops::default()
    });
    let delivery = Delivery {
        target,
        tls,
        key,
        sign,
        timeout: config.timeout,
        attempts: config.attempts,
        backoff: config.backoff,
    };
    runtime.spawn(run(queue, Arc::clone(&drops), delivery, on_failure));
    Ok(Sender { jobs, drops })
}

/// Builds the TLS client side from the CA bundle.
fn tls_connector(path: &Path) -> Result<TlsConnector, WebhookError> {
    let ca_error = |detail: String| WebhookError::Ca {
        path: path.to_owned(),
        detail,
    };
    let pem = std::fs::read(path).map_err(|err| ca_error(format!("cannot read it: {err}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| ca_error(format!("not a PEM file: {err}")))?;
    if certs.is_empty() {
        return Err(ca_error("no PEM certificate in it".into()));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|err| ca_error(format!("not a usable CA certificate: {err}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| WebhookError::Setting(format!("TLS: {err}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // This client speaks HTTP/1.1 only; saying so stops an h2-capable server from choosing h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The delivery task: delivers queued bodies in order and, meanwhile, reports drops.
async fn run(
    mut queue: mpsc::Receiver<Job>,
    drops: Arc<Drops>,
    delivery: Delivery,
    on_failure: FailureFn,
) {
    let deliver = async {
        while let Some(job) = queue.recv().await {
            if let Err(failure) = delivery.deliver(&job).await {
                on_failure(failure);
            }
        }
    };
    // Drops are reported while a delivery is under way, not after it: one that keeps failing
    // can take minutes.
    let report = async {
        loop {
            drops.wake.notified().await;
            drops.report(&on_failure);
        }
    };
    tokio::select! {
        () = deliver => {}
        () = report => {}
    }
    drops.report(&on_failure);
}

/// Everything one delivery needs.
struct Delivery {
    target: Target,
    /// For `https://`: the connector and the name the certificate must carry.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    key: String,
    sign: SignFn,
    timeout: Duration,
    attempts: u32,
    backoff: Duration,
}

/// Why an attempt failed.
#[derive(Debug)]
struct AttemptError {
    message: String,
    /// Worth another attempt.
    retry: bool,
}

impl AttemptError {
    fn retry(message: String) -> Self {
        Self {
            message,
            retry: true,
        }
    }
}

impl Delivery {
    /// Delivers one body, with retries; the error is the [`Failure`] to report.
    async fn deliver(&self, job: &Job) -> Result<(), Failure> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = tokio::time::timeout(self.timeout, self.attempt(job))
                .await
                .unwrap_or_else(|_| {
                    Err(AttemptError::retry(format!(
                        "{}: no answer within {:?}",
                        self.target, self.timeout
                    )))
                });
            match result {
                Ok(()) => {
                    tracing::debug!(id = %job.id, attempt, receiver = %self.target, "webhook delivered");
                    return Ok(());
                }
                Err(err) if err.retry && attempt < self.attempts => {
                    let wait = backoff(self.backoff, attempt);
                    tracing::info!(
                        id = %job.id,
                        attempt,
                        error = %err.message,
                        "webhook delivery failed; retrying in {wait:?}"
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(err) => {
                    tracing::warn!(
                        id = %job.id,
                        attempts = attempt,
                        error = %err.message,
                        "webhook delivery failed for good"
                    );
                    return Err(Failure {
                        id: job.id.clone(),
                        attempts: attempt,
                        error: err.message,
                        dropped: false,
                    });
                }
            }
        }
    }

    /// One attempt: connect, send the freshly signed request, read the status.
    async fn attempt(&self, job: &Job) -> Result<(), AttemptError> {
        let request = self.request(job);
        let tcp = TcpStream::connect((self.target.host.as_str(), self.target.port))
            .await
            .map_err(|err| {
                AttemptError::retry(format!("cannot connect to {}: {err}", self.target))
            })?;
        // The request goes out in one write; there is nothing to gain from delaying it.
        let _ = tcp.set_nodelay(true);
        let (status, reason) = match &self.tls {
            None => exchange(tcp, &request, &self.target).await?,
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await.map_err(|err| {
                    AttemptError::retry(format!("TLS with {}: {err}", self.target))
                })?;
                exchange(tls, &request, &self.target).await?
            }
        };
        match status {
            200..=299 => Ok(()),
            429 | 500..=599 => Err(AttemptError::retry(format!(
                "{} answered {status} {reason}",
                self.target
            ))),
            300..=399 => Err(AttemptError {
                message: format!(
                    "{} answered {status} {reason}; redirects are not followed: set the url to the final address",
                    self.target
                ),
                retry: false,
            }),
            _ => Err(AttemptError {
                message: format!("{} answered {status} {reason}", self.target),
                retry: false,
            }),
        }
    }

    /// The whole request, signed now.
    fn request(&self, job: &Job) -> Vec<u8> {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let signature = (self.sign)(&signed_message(timestamp, &job.id, &job.body));
        let head = format!(
            "POST {path} HTTP/1.1\r\n\
             Host: {host}\r\n\
             User-Agent: {USER_AGENT}\r\n\
             Content-Type: application/json\r\n\
             Content-Length: {length}\r\n\
             Connection: close\r\n\
             X-Custos-Delivery: {id}\r\n\
             X-Custos-Timestamp: {timestamp}\r\n\
             X-Custos-Key: {key}\r\n\
             X-Custos-Signature: ed25519={signature}\r\n\
             \r\n",
            path = self.target.path,
            host = self.target.authority(),
            length = job.body.len(),
            id = job.id,
            key = self.key,
            signature = B64.encode(signature),
        );
        let mut request = Vec::with_capacity(head.len() + job.body.len());
        request.extend_from_slice(head.as_bytes());
        request.extend_from_slice(&job.body);
        request
    }
}

/// The bytes signed for one attempt (see the module documentation).
fn signed_message(timestamp: u64, id: &str, body: &[u8]) -> Vec<u8> {
    let timestamp = timestamp.to_string();
    let mut message =
        Vec::with_capacity(SIGNATURE_CONTEXT.len() + timestamp.len() + id.len() + body.len() + 2);
    message.extend_from_slice(SIGNATURE_CONTEXT);
    message.extend_from_slice(timestamp.as_bytes());
    message.push(b'\n');
    message.extend_from_slice(id.as_bytes());
    message.push(b'\n');
    message.extend_from_slice(body);
    message
}

/// The wait after failed attempt number `attempt` (1-based).
fn backoff(base: Duration, attempt: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(MAX_BACKOFF)
}

/// Writes the request and reads the response's final status code and reason phrase.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &[u8],
    target: &Target,
) -> Result<(u16, String), AttemptError> {
    let io_error =
        |what: &str, err: std::io::Error| AttemptError::retry(format!("{what} {target}: {err}"));
    stream
        .write_all(request)
        .await
        .map_err(|err| io_error("cannot send to", err))?;
    stream
        .flush()
        .await
        .map_err(|err| io_error("cannot send to", err))?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        if let Some(status) = final_status(&buf).map_err(|detail| {
            AttemptError::retry(format!("{target} did not answer in HTTP: {detail}"))
        })? {
            return Ok(status);
        }
        if buf.len() >= MAX_RESPONSE_HEAD {
            return Err(AttemptError::retry(format!(
                "{target} did not answer in HTTP: no status line in its first {MAX_RESPONSE_HEAD} bytes"
            )));
        }
        let read = (&mut stream)
            .take((MAX_RESPONSE_HEAD - buf.len()) as u64)
            .read_buf(&mut buf)
            .await
            .map_err(|err| io_error("cannot read the answer from", err))?;
        if read == 0 {
            return Err(AttemptError::retry(format!(
                "{target} closed the connection without answering"
            )));
        }
    }
}

/// Finds the final status line in what was read of a response: `Ok(None)` until it is complete.
/// Interim 1xx responses (a server may send `100 Continue` unasked) are skipped whole.
fn final_status(buf: &[u8]) -> Result<Option<(u16, String)>, String> {
    let mut start = 0;
    loop {
        let Some(line_end) = find(&buf[start..], b"\r\n") else {
            return Ok(None);
        };
        let (status, reason) = status_line(&buf[start..start + line_end])?;
        if !(100..200).contains(&status) || status == 101 {
            return Ok(Some((status, reason)));
        }
        let Some(head_end) = find(&buf[start..], b"\r\n\r\n") else {
            return Ok(None);
        };
        start += head_end + 4;
    }
}

/// Parses `HTTP/1.x 200 OK`. The reason phrase is the receiver's text, headed for logs and
/// signed records: it is kept short and printable.
fn status_line(line: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(line);
    let mut parts = text.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/") {
        return Err("the answer does not start with an HTTP status line".into());
    }
    let status = match code.parse::<u16>() {
        Ok(status) if code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()) => status,
        _ => return Err(format!("status code {:?} is not 3 digits", clip(code))),
    };
    Ok((status, clip(parts.next().unwrap_or_default())))
}

/// At most 64 printable ASCII characters of `text`.
fn clip(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(64)
        .collect()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
    use tokio::{
        net::TcpListener,
        sync::mpsc::{UnboundedReceiver, unbounded_channel},
        time::timeout,
    };
    use tokio_rustls::{
        TlsAcceptor,
        rustls::{ServerConfig, pki_types::PrivateKeyDer},
    };

    use super::*;

    /// How long a test waits for something that should happen at once.
    const WAIT: Duration = Duration::from_secs(5);

    const KEY_TEXT: &str = "test.example+0a0b0c0d+AUt/key+text==";

    // A throwaway CA and a server certificate it signed for 127.0.0.1 and localhost, valid
    // 2000-2125, made with openssl for these tests only.
    const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBdTCCARugAwIBAgIBATAKBggqhkjOPQQDAjAhMR8wHQYDVQQDDBZjdXN0b3Mg
d2ViaG9vayB0ZXN0IENBMCAXDTAwMDEwMTAwMDAwMFoYDzIxMjUwMTAxMDAwMDAw
WjAhMR8wHQYDVQQDDBZjdXN0b3Mgd2ViaG9vayB0ZXN0IENBMFkwEwYHKoZIzj0C
AQYIKoZIzj0DAQcDQgAEAtrSsmZSeKbhgJXFSxpcnKk+ZRSZCm0MChpbl49YrzDv
Eo9oj0Uj9NqCEglvM+aNOY9qQrviqou67l2RoFO7y6NCMEAwDwYDVR0TAQH/BAUw
AwEB/zAOBgNVHQ8BAf8EBAMCAQYwHQYDVR0OBBYEFNTUuVg+gwwgjZ5XInHpFjMa
8tt4MAoGCCqGSM49BAMCA0gAMEUCIQCmKpBkt1SXjSKmHpqjgUXx6pbDDDHKjjVf
es3JBMyHowIgAUjODSPOQwtiG1Ag8UrVM/SmxO4yUsjPO9J+DIp0azg=
-----END CERTIFICATE-----
";
    const TEST_SERVER_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBuTCCAV+gAwIBAgIBAjAKBggqhkjOPQQDAjAhMR8wHQYDVQQDDBZjdXN0b3Mg
d2ViaG9vayB0ZXN0IENBMCAXDTAwMDEwMTAwMDAwMFoYDzIxMjUwMTAxMDAwMDAw
WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC
AAQ2RcFMuVc3cRwuJbJwFGRToxaSkNyFcX9htzZI1ILBdnHW9SATnhx9cSFV/g4f
gLNKCfqfPqT/4dZQLAWuT631o4GSMIGPMAwGA1UdEwEB/wQCMAAwDgYDVR0PAQH/
BAQDAgeAMBMGA1UdJQQMMAoGCCsGAQUFBwMBMBoGA1UdEQQTMBGCCWxvY2FsaG9z
dIcEfwAAATAfBgNVHSMEGDAWgBTU1LlYPoMMII2eVyJx6RYzGvLbeDAdBgNVHQ4E
FgQU1CiteHnRLHriSQFJfXQokF7ZQjowCgYIKoZIzj0EAwIDSAAwRQIgZt8ZR91X
3scliRnDLk+8bUeWGPEWwzr2D0EeApi2fR8CIQDfDHX18iD5RqNZ9QjDOL8keXjk
Ww0pnQ8rkWxbIpD45A==
-----END CERTIFICATE-----
";
    const TEST_SERVER_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgE8l8LSL6TSU+hFFn
TGcTxezDbRJDdmtktVAouq88UsahRANCAAQ2RcFMuVc3cRwuJbJwFGRToxaSkNyF
cX9htzZI1ILBdnHW9SATnhx9cSFV/g4fgLNKCfqfPqT/4dZQLAWuT631
-----END PRIVATE KEY-----
";

    /// One request as the test server saw it.
    #[derive(Debug)]
    struct Seen {
        request_line: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Seen {
        fn header(&self, name: &str) -> &str {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
        }
    }

    fn signing_key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn signer() -> SignFn {
        let key = signing_key();
        Arc::new(move |message: &[u8]| key.sign(message).to_bytes())
    }

    fn failures() -> (FailureFn, UnboundedReceiver<Failure>) {
        let (tx, rx) = unbounded_channel();
        let on_failure: FailureFn = Arc::new(move |failure| {
            let _ = tx.send(failure);
        });
        (on_failure, rx)
    }

    fn config(url: String) -> WebhookConfig {
        WebhookConfig {
            backoff: Duration::from_millis(10),
            ..WebhookConfig::new(url)
        }
    }

    /// Reads one request and answers it with `status`.
    async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, status: u16) -> Seen {
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                break end;
            }
            let n = stream.read_buf(&mut buf).await.unwrap();
            assert_ne!(n, 0, "client closed before the end of the head");
        };
        let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap().to_owned();
        let headers: Vec<(String, String)> = lines
            .map(|line| {
                let (name, value) = line.split_once(": ").unwrap();
                (name.to_owned(), value.to_owned())
            })
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .unwrap()
            .1
            .parse()
            .unwrap();
        let mut body = buf[head_end + 4..].to_vec();
        while body.len() < length {
            let n = stream.read_buf(&mut body).await.unwrap();
            assert_ne!(n, 0, "client closed before the end of the body");
        }
        stream
            .write_all(
                format!(
                    "HTTP/1.1 {status} Test\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let _ = stream.shutdown().await;
        Seen {
            request_line,
            headers,
            body,
        }
    }

    /// A server on a fresh loopback port that answers requests with `statuses` in turn (the last
    /// one repeats), over TLS when `tls` is given. Returns its `host:port` and what it saw.
    async fn server(
        statuses: Vec<u16>,
        tls: Option<TlsAcceptor>,
    ) -> (String, UnboundedReceiver<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (tx, rx) = unbounded_channel();
        tokio::spawn(async move {
            for n in 0.. {
                let (stream, _) = listener.accept().await.unwrap();
                let status = statuses[n.min(statuses.len() - 1)];
                let seen = match &tls {
                    None => serve_one(stream, status).await,
                    Some(acceptor) => {
                        serve_one(acceptor.accept(stream).await.unwrap(), status).await
                    }
                };
                let _ = tx.send(seen);
            }
        });
        (address, rx)
    }

    fn tls_acceptor() -> TlsAcceptor {
        let cert = CertificateDer::from_pem_slice(TEST_SERVER_CERT.as_bytes()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(TEST_SERVER_KEY.as_bytes()).unwrap();
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert], key)
                .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }

    async fn next<T>(rx: &mut UnboundedReceiver<T>) -> T {
        timeout(WAIT, rx.recv()).await.unwrap().unwrap()
    }

    /// Checks the signature headers of `seen` against the test key, as a receiver would.
    fn verify(seen: &Seen) {
        assert_eq!(seen.header("X-Custos-Key"), KEY_TEXT);
        let timestamp = seen.header("X-Custos-Timestamp");
        let id = seen.header("X-Custos-Delivery");
        let signature = seen
            .header("X-Custos-Signature")
            .strip_prefix("ed25519=")
            .unwrap();
        let signature: [u8; 64] = B64.decode(signature).unwrap().try_into().unwrap();
        let signature = Signature::from_bytes(&signature);
        let mut message = format!("custos-webhook-v1\n{timestamp}\n{id}\n").into_bytes();
        message.extend_from_slice(&seen.body);
        let verifier: VerifyingKey = signing_key().verifying_key();
        verifier.verify_strict(&message, &signature).unwrap();
        // The signature covers the body.
        message.push(b' ');
        assert!(verifier.verify_strict(&message, &signature).is_err());
    }

    #[tokio::test]
    async fn delivers_signed_bodies_in_order() {
        let (address, mut seen) = server(vec![200], None).await;
        let (on_failure, mut failed) = failures();
        let sender = spawn(
            config(format!("http://{address}/hook?token=x")),
            KEY_TEXT.into(),
            signer(),
            on_failure,
        )
        .unwrap();
        assert!(sender.send(br#"{"alert":"first"}"#.to_vec()));
        assert!(sender.clone().send(br#"{"alert":"second"}"#.to_vec()));

        let first = next(&mut seen).await;
        assert_eq!(first.request_line, "POST /hook?token=x HTTP/1.1");
        assert_eq!(first.header("Host"), address);
        assert_eq!(first.header("Content-Type"), "application/json");
        assert_eq!(first.header("Connection"), "close");
        assert!(first.header("User-Agent").starts_with("custos-agentd/"));
        assert_eq!(first.body, br#"{"alert":"first"}"#);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let timestamp: u64 = first.header("X-Custos-Timestamp").parse().unwrap();
        assert!(timestamp.abs_diff(now) < 60);
        verify(&first);

        let second = next(&mut seen).await;
        assert_eq!(second.body, br#"{"alert":"second"}"#);
        verify(&second);
        assert_ne!(
            first.header("X-Custos-Delivery"),
            second.header("X-Custos-Delivery")
        );
        assert!(failed.try_recv().is_err());
    }

    #[tokio::test]
    async fn retries_5xx_until_delivered() {
        let (address, mut seen) = server(vec![503, 503, 200], None).await;
        let (on_failure, mut failed) = failures();
        let sender = spawn(
            config(format!("http://{address}")),
            KEY_TEXT.into(),
            signer(),
            on_failure,
        )
        .unwrap();
        assert!(sender.send(b"{}".to_vec()));
        assert!(sender.send(b"[]".to_vec()));
        let attempts = [
            next(&mut seen).await,
            next(&mut seen).await,
            next(&mut seen).await,
        ];
        for attempt in &attempts {
            assert_eq!(attempt.request_line, "POST / HTTP/1.1");
            assert_eq!(attempt.body, b"{}");
            assert_eq!(
                attempt.header("X-Custos-Delivery"),
                attempts[0].header("X-Custos-Delivery")
            );
            verify(attempt);
        }
        // The next body arrives only once the first is settled: it was delivered, not failed.
        assert_eq!(next(&mut seen).await.body, b"[]");
        assert!(failed.try_recv().is_err());
    }

    #[tokio::test]
    async fn does_not_retry_4xx() {
        let (address, mut seen) = server(vec![400], None).await;
        let (on_failure, mut failed) = failures();
        let sender = spawn(
            config(format!("http://{address}/x")),
            KEY_TEXT.into(),
            signer(),
            on_failure,
        )
        .unwrap();
        assert!(sender.send(b"{}".to_vec()));
        let request = next(&mut seen).await;
        let failure = next(&mut failed).await;
        assert_eq!(failure.id, request.header("X-Custos-Delivery"));
        assert_eq!(failure.attempts, 1);
        assert!(!failure.dropped);
        assert!(failure.error.contains("400 Test"), "{}", failure.error);
        assert!(
            !failure.error.contains("/x"),
            "path leaked: {}",
            failure.error
        );
        assert!(seen.try_recv().is_err(), "retried a 400");
    }

    #[tokio::test]
    async fn retries_429() {
        let (address, mut seen) = server(vec![429, 200], None).await;
        let (on_failure, mut failed) = failures();
        let sender = spawn(
            config(format!("http://{address}")),
            KEY_TEXT.into(),
            signer(),
            on_failure,
        )
        .unwrap();
        assert!(sender.send(b"{}".to_vec()));
        assert!(sender.send(b"[]".to_vec()));
        assert_eq!(next(&mut seen).await.body, b"{}");
        assert_eq!(next(&mut seen).await.body, b"{}");
        assert_eq!(next(&mut seen).await.body, b"[]");
        assert!(failed.try_recv().is_err());
    }

    #[tokio::test]
    async fn reports_refused_connection_after_all_attempts() {
        // A port that was just free and now has nobody listening.
        let address = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let (on_failure, mut failed) = failures();
        let sender = spawn(
            WebhookConfig {
                attempts: 2,
                ..config(format!("http://{address}/"))
            },
            KEY_TEXT.into(),
            signer(),
            on_failure,
        )
        .unwrap();
        assert!(sender.send(b"{}".to_vec()));
        let failure = next(&mut failed).await;
        assert_eq!(failure.attempts, 2);
        assert!(!failure.dropped);
        assert!(
            failure.error.contains("cannot connect"),
            "{}",
            failure.error
        );
    }

    #[tokio::test]
    async fn times_out_a_silent_receiver() {
        // Connections complete in the kernel's backlog, but nobody ever answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (on_failure, mut failed) = failures();
        let sender = spawn(
            WebhookConfig {
                attempts: 2,
                timeout: Duration::from_millis(100),
                ..config(format!("http://{}/", listener.local_addr().unwrap()))
            },
            KEY_TEXT.into(),
            signer(),
            on_failure,
        )
        .unwrap();
        assert!(sender.send(b"{}".to_vec()));
        let failure = next(&mut failed).await;
        assert_eq!(failure.attempts, 2);
        assert!(
            failure.error.contains("no answer within"),
            "{}",
            failure.error
        );
    }

    #[tokio::test]
    async fn full_queue_drops_and_reports() {
        // Nobody answers, so the first body occupies the task while the others queue.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (on_failure, mut failed) = failures();
        let sender = spawn(
            WebhookConfig {
                queue: 1,
                timeout: Duration::from_secs(30),
                ..config(format!("http://{}/", listener.local_addr().unwrap()))
            },
            KEY_TEXT.into(),
            signer(),
            on_failure,
        )
        .unwrap();
        // The test runtime is single-threaded: the task has not run yet, so the first body
        // fills the queue.
        assert!(sender.send(b"1".to_vec()));
        assert!(!sender.send(b"2".to_vec()));
        assert!(!sender.send(b"3".to_vec()));
        let first = next(&mut failed).await;
        let second = next(&mut failed).await;
        for failure in [&first, &second] {
            assert!(failure.dropped);
            assert_eq!(failure.attempts, 0);
            assert!(failure.error.contains("queue full"), "{}", failure.error);
        }
        assert_ne!(first.id, second.id);
        // Once the task has taken the first body, the queue has room again.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(sender.send(b"4".to_vec()));
    }

    #[tokio::test]
    async fn delivers_over_tls() {
        let (address, mut seen) = server(vec![200], Some(tls_acceptor())).await;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, TEST_CA).unwrap();
        let (on_failure, mut failed) = failures();
        let sender = spawn(
            WebhookConfig {
                ca: Some(ca),
                ..config(format!("https://{address}/tls"))
            },
            KEY_TEXT.into(),
            signer(),
            on_failure,
        )
        .unwrap();
        assert!(sender.send(b"{}".to_vec()));
        assert!(sender.send(b"[]".to_vec()));
        let request = next(&mut seen).await;
        assert_eq!(request.request_line, "POST /tls HTTP/1.1");
        verify(&request);
        assert_eq!(next(&mut seen).await.body, b"[]");
        assert!(failed.try_recv().is_err());
    }

    #[tokio::test]
    async fn refuses_a_certificate_outside_the_ca() {
        let (address, _seen) = server(vec![200], Some(tls_acceptor())).await;
        let dir = tempfile::tempdir().unwrap();
        // The server's own certificate is not a CA: nothing chains to it.
        let ca = dir.path().join("not-the-ca.pem");
        std::fs::write(&ca, TEST_SERVER_CERT).unwrap();
        let (on_failure, mut failed) = failures();
        let sender = spawn(
            WebhookConfig {
                ca: Some(ca),
                attempts: 1,
                ..config(format!("https://{address}/"))
            },
            KEY_TEXT.into(),
            signer(),
            on_failure,
        )
        .unwrap();
        assert!(sender.send(b"{}".to_vec()));
        let failure = next(&mut failed).await;
        assert!(failure.error.contains("TLS"), "{}", failure.error);
    }

    #[tokio::test]
    async fn spawn_checks_its_settings() {
        let spawn_with = |config: WebhookConfig, key: &str| {
            let (on_failure, _) = failures();
            spawn(config, key.into(), signer(), on_failure).map(|_| ())
        };
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();

        let err = spawn_with(WebhookConfig::new("https://example.com/"), KEY_TEXT).unwrap_err();
        assert!(matches!(err, WebhookError::MissingCa), "{err}");
        let err = spawn_with(
            WebhookConfig {
                ca: Some(missing.clone()),
                ..WebhookConfig::new("https://example.com/")
            },
            KEY_TEXT,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
        let err = spawn_with(
            WebhookConfig {
                ca: Some(empty.clone()),
                ..WebhookConfig::new("https://example.com/")
            },
            KEY_TEXT,
        )
        .unwrap_err();
        assert!(err.to_string().contains("empty.pem"), "{err}");
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        let err = spawn_with(
            WebhookConfig {
                ca: Some(empty),
                ..WebhookConfig::new("http://example.com/")
            },
            KEY_TEXT,
        )
        .unwrap_err();
        assert!(matches!(err, WebhookError::CaWithoutTls), "{err}");
        let err = spawn_with(
            WebhookConfig {
                attempts: 0,
                ..WebhookConfig::new("http://127.0.0.1/")
            },
            KEY_TEXT,
        )
        .unwrap_err();
        assert!(err.to_string().contains("attempts"), "{err}");
        let err = spawn_with(
            WebhookConfig {
                queue: 0,
                ..WebhookConfig::new("http://127.0.0.1/")
            },
            KEY_TEXT,
        )
        .unwrap_err();
        assert!(err.to_string().contains("queue"), "{err}");
        let err =
            spawn_with(WebhookConfig::new("http://127.0.0.1/"), "a\r\nX-Evil: 1").unwrap_err();
        assert!(err.to_string().contains("key"), "{err}");
        let err = spawn_with(WebhookConfig::default(), KEY_TEXT).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        let err = spawn_with(WebhookConfig::new("ftp://127.0.0.1/"), KEY_TEXT).unwrap_err();
        assert!(matches!(err, WebhookError::Url(_)), "{err}");
    }

    #[test]
    fn defaults() {
        let config = WebhookConfig::new("http://127.0.0.1/");
        assert_eq!(config.url, "http://127.0.0.1/");
        assert_eq!(config.ca, None);
        assert_eq!(config.timeout, Duration::from_secs(5));
        assert_eq!(config.attempts, 5);
        assert_eq!(config.queue, 1024);
        assert_eq!(config.backoff, Duration::from_millis(500));
        assert!(WebhookConfig::default().url.is_empty());
    }

    #[test]
    fn spawn_needs_a_runtime() {
        let (on_failure, _) = failures();
        let err = spawn(
            WebhookConfig::new("http://127.0.0.1/"),
            KEY_TEXT.into(),
            signer(),
            on_failure,
        )
        .unwrap_err();
        assert!(matches!(err, WebhookError::NoRuntime), "{err}");
    }

    #[test]
    fn parses_urls() {
        let target = |scheme, host: &str, port, path: &str| Target {
            scheme,
            host: host.into(),
            port,
            path: path.into(),
        };
        for (url, expected) in [
            (
                "http://example.com",
                target(Scheme::Http, "example.com", 80, "/"),
            ),
            (
                "https://example.com/",
                target(Scheme::Https, "example.com", 443, "/"),
            ),
            (
                "HTTPS://hooks.example.com:8443/a/b?token=c#ignored",
                target(Scheme::Https, "hooks.example.com", 8443, "/a/b?token=c"),
            ),
            (
                "http://127.0.0.1:9000?x=1",
                target(Scheme::Http, "127.0.0.1", 9000, "/?x=1"),
            ),
            (
                "http://[::1]:8080/hook",
                target(Scheme::Http, "::1", 8080, "/hook"),
            ),
            (
                "https://[fe80::1]",
                target(Scheme::Https, "fe80::1", 443, "/"),
            ),
            (
                "http://collector_1.local:65535/",
                target(Scheme::Http, "collector_1.local", 65535, "/"),
            ),
        ] {
            assert_eq!(parse_url(url).unwrap(), expected, "{url}");
        }

        for (url, complaint) in [
            ("", "empty"),
            ("example.com/hook", "scheme is missing"),
            ("localhost:8080/hook", "scheme is missing"),
            ("://example.com/", "scheme is missing"),
            ("ftp://example.com/", "\"ftp\" is not supported"),
            ("http:///hook", "host is missing"),
            ("https://:443/", "host is missing"),
            ("http://?x=1", "host is missing"),
            ("http://example.com:abc/", "port \"abc\""),
            ("http://example.com:0/", "port \"0\""),
            ("http://example.com:65536/", "port \"65536\""),
            ("http://example.com:+80/", "port \"+80\""),
            ("http://example.com:/", "port after ':' is empty"),
            ("http://user:secret@example.com/", "credentials"),
            ("http://exa mple.com/", "spaces"),
            ("http://example.com/a\r\nX-Evil: 1", "control"),
            ("http://exämple.com/", "non-ASCII"),
            ("http://::1/", "brackets"),
            ("http://[::1/", "unclosed"),
            ("http://[example.com]/", "not an IPv6 address"),
            ("http://[::1]x/", "after the IPv6"),
            (
                "http://exa%6dple.com/",
                "characters a host name cannot have",
            ),
        ] {
            let err = parse_url(url).unwrap_err().to_string();
            assert!(err.contains(complaint), "{url:?}: {err}");
        }
        // Errors never repeat the path, which may be a secret.
        let err = parse_url("http://example.com:99999/secret-token").unwrap_err();
        assert!(!err.to_string().contains("secret-token"), "{err}");
    }

    #[test]
    fn target_display_leaves_out_the_path() {
        let target = parse_url("https://example.com/secret-token").unwrap();
        assert_eq!(target.to_string(), "https://example.com:443");
        assert_eq!(target.authority(), "example.com");
        let target = parse_url("http://[::1]:8080/secret-token").unwrap();
        assert_eq!(target.to_string(), "http://[::1]:8080");
        assert_eq!(target.authority(), "[::1]:8080");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let base = Duration::from_millis(500);
        let waits: Vec<_> = (1..=8).map(|attempt| backoff(base, attempt)).collect();
        assert_eq!(
            waits,
            [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0].map(Duration::from_secs_f64)
        );
        assert_eq!(backoff(base, 100), MAX_BACKOFF);
    }

    #[test]
    fn reads_the_final_status_line() {
        assert_eq!(final_status(b"HTTP/1.1 20"), Ok(None));
        assert_eq!(
            final_status(b"HTTP/1.1 204 No Content\r\n"),
            Ok(Some((204, "No Content".into())))
        );
        assert_eq!(
            final_status(b"HTTP/1.0 500\r\n"),
            Ok(Some((500, String::new())))
        );
        // An interim 100 is skipped, whole.
        assert_eq!(final_status(b"HTTP/1.1 100 Continue\r\nX: y\r\n"), Ok(None));
        assert_eq!(
            final_status(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\n"),
            Ok(Some((201, "Created".into())))
        );
        assert!(final_status(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(final_status(b"HTTP/1.1 2000 x\r\n").is_err());
        // A hostile reason phrase reaches logs short and printable.
        let long = format!("HTTP/1.1 418 {}\x1b[31m\r\n", "a".repeat(100));
        let (_, reason) = final_status(long.as_bytes()).unwrap().unwrap();
        assert_eq!(reason, "a".repeat(64));
    }

    #[test]
    fn delivery_ids_are_unique_and_plain() {
        let ids: Vec<_> = (0..100).map(|_| next_id()).collect();
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        for id in &ids {
            assert!(id.len() <= 64);
            assert!(
                id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'),
                "{id}"
            );
        }
    }
}
