//! A task's way out: an HTTP proxy listening on the sandbox's own loopback, served by the worker
//! from the host's network, which connects only to the destinations on the workspace's egress
//! allowlist. The sandbox itself keeps no network: its namespace holds nothing but loopback, and
//! the proxy's listening socket, bound there from outside, is the only door.
//!
//! The proxy speaks what package managers and SDKs expect of `HTTP_PROXY`/`HTTPS_PROXY`:
//! `CONNECT host:port` tunnels (TLS passes through untouched) and plain `http://` requests in
//! absolute form, each request checked on its own, so a kept-alive connection cannot wander
//! to another host.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tresor_crypto::redact::Redactor;
use tresor_domain::EgressRule;
use tresor_domain::net::is_private_address;

/// The proxy's port on the sandbox's loopback (its network namespace is the task's own).
pub const EGRESS_PORT: u16 = 3128;
/// Connections one executor may hold open to the proxy at once; more wait to be accepted. The
/// same number again bounds its open tunnels, which outlive their connection's HTTP exchange.
const MAX_CONNECTIONS: usize = 64;
/// The longest destination a refusal names in the task's system log.
const MAX_NOTED_LENGTH: usize = 260;
/// How long connecting to an allowed destination may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Refused destinations remembered for the task's system log.
const MAX_NOTED_REFUSALS: usize = 16;

/// The environment that points an executor's HTTP clients at the proxy, except for what the
/// task serves itself on its own loopback.
pub fn proxy_env() -> Vec<(String, String)> {
    let url = format!("http://127.0.0.1:{EGRESS_PORT}");
    let own = "localhost,127.0.0.1,::1".to_owned();
    ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"]
        .into_iter()
        .map(|name| (name.to_owned(), url.clone()))
        .chain(["NO_PROXY", "no_proxy"].map(|name| (name.to_owned(), own.clone())))
        .collect()
}

/// Binds the proxy's listening socket inside network namespace `namespace` (bubblewrap's
/// report of it), found through process `pid` (the sandbox's first process). `setns` moves
/// only the calling thread, so a thread of its own does it and ends; the socket stays in the
/// sandbox's namespace, and the worker accepts on it from the host's side. This needs the
/// worker to hold `CAP_SYS_ADMIN` (run as root), as it does when the server switches executors
/// to other users.
pub fn listen_in(pid: u32, namespace_inode: u64) -> Result<std::net::TcpListener, String> {
    use std::os::unix::fs::MetadataExt;
    let namespace = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| format!("opening the sandbox's network namespace: {e}"))?;
    // The pid could have ended and been reused since bubblewrap reported it: bind only in the
    // very namespace it reported, and never in the host's own.
    let found = namespace
        .metadata()
        .map_err(|e| format!("the sandbox's network namespace: {e}"))?
        .ino();
    let own = std::fs::metadata("/proc/self/ns/net")
        .map_err(|e| format!("the worker's network namespace: {e}"))?
        .ino();
    if found != namespace_inode || found == own {
        return Err("the sandbox ended before its egress proxy was in place".to_owned());
    }
    let bound = std::thread::spawn(move || {
        rustix::thread::move_into_link_name_space(
            namespace.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|e| {
            format!(
                "entering the sandbox's network namespace: {e}; a workspace egress allowlist needs the server (and on a cluster, its workers) to run as root"
            )
        })?;
        // Loopback is not up yet (bubblewrap brings it up after the worker lets it go on), so
        // the socket is bound to any address: in this namespace that is loopback alone.
        let listener = std::net::TcpListener::bind((IpAddr::from([0, 0, 0, 0]), EGRESS_PORT))
            .map_err(|e| format!("binding the egress proxy in the sandbox: {e}"))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("the egress proxy's socket: {e}"))?;
        Ok(listener)
    });
    bound
        .join()
        .map_err(|_| "the egress proxy's thread failed".to_owned())?
}

/// A running proxy for one executor. Dropping it closes the listener and every connection.
pub struct EgressProxy {
    _stop: watch::Sender<()>,
    refused: Arc<Mutex<Vec<String>>>,
}

impl EgressProxy {
    /// Serves `listener` with the allowlist `rules` until dropped; `allow_private`: whether it
    /// may connect to loopback, private and link-local addresses.
    pub fn start(
        listener: std::net::TcpListener,
        rules: Vec<EgressRule>,
        allow_private: bool,
        redactor: Redactor,
    ) -> Result<EgressProxy, String> {
        let listener = TcpListener::from_std(listener)
            .map_err(|e| format!("the egress proxy's socket: {e}"))?;
        let (stop, stopped) = watch::channel(());
        let refused = Arc::new(Mutex::new(Vec::new()));
        let proxy = Arc::new(Proxy {
            rules,
            allow_private,
            tunnels: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            redactor,
            refused: refused.clone(),
            stopped,
        });
        tokio::spawn(accept_loop(listener, proxy));
        Ok(EgressProxy {
            _stop: stop,
            refused,
        })
    }

    /// The destinations refused so far, for the task's system log.
    pub fn refused(&self) -> Vec<String> {
        self.refused.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

struct Proxy {
    rules: Vec<EgressRule>,
    allow_private: bool,
    tunnels: Arc<Semaphore>,
    redactor: Redactor,
    refused: Arc<Mutex<Vec<String>>>,
    stopped: watch::Receiver<()>,
}

type ProxyBody = Either<Incoming, Full<Bytes>>;

async fn accept_loop(listener: TcpListener, proxy: Arc<Proxy>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut stopped = proxy.stopped.clone();
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.changed() => return,
        };
        let Ok((stream, _)) = accepted else {
            // Out of descriptors, most likely: let some connections end first.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut stopped = proxy.stopped.clone();
            let service = hyper::service::service_fn({
                let proxy = proxy.clone();
                move |request| handle(request, proxy.clone())
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::select! {
                _ = connection => {}
                _ = stopped.changed() => {}
            }
        });
    }
}

async fn handle(
    request: Request<Incoming>,
    proxy: Arc<Proxy>,
) -> Result<Response<ProxyBody>, Infallible> {
    Ok(match forward(request, &proxy).await {
        Ok(response) => response,
        Err((status, message)) => answer(status, message),
    })
}

fn answer(status: StatusCode, message: String) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(message + "\n"))));
    *response.status_mut() = status;
    response
}

type Refusal = (StatusCode, String);

async fn forward(
    mut request: Request<Incoming>,
    proxy: &Arc<Proxy>,
) -> Result<Response<ProxyBody>, Refusal> {
    let authority = request.uri().authority().cloned().ok_or_else(|| {
        (
            StatusCode::BAD_REQUEST,
            "this is the task's egress proxy: send CONNECT host:port, or an http:// URL in absolute form (HTTP_PROXY and HTTPS_PROXY point here)".to_owned(),
        )
    })?;
    if request.method() == Method::CONNECT {
        let port = authority.port_u16().ok_or_else(|| {
            (
                StatusCode::BAD_REQUEST,
                "CONNECT needs host:port".to_owned(),
            )
        })?;
        let tunnel = proxy.tunnels.clone().try_acquire_owned().map_err(|_| {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("tresor egress: {MAX_CONNECTIONS} tunnels are open already; close one"),
            )
        })?;
        let mut target = proxy.connect(authority.host(), port).await?;
        let mut stopped = proxy.stopped.clone();
        tokio::spawn(async move {
            let _tunnel = tunnel;
            // The tunnel starts once the client has the 200 below.
            let Ok(upgraded) = hyper::upgrade::on(request).await else {
                return;
            };
            let mut upgraded = TokioIo::new(upgraded);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut upgraded, &mut target) => {}
                _ = stopped.changed() => {}
            }
        });
        return Ok(Response::new(Either::Right(Full::new(Bytes::new()))));
    }
    if request.uri().scheme_str() != Some("http") {
        return Err((
            StatusCode::BAD_REQUEST,
            "only http:// URLs are forwarded as requests; https:// goes through CONNECT".to_owned(),
        ));
    }
    let port = authority.port_u16().unwrap_or(80);
    let target = proxy.connect(authority.host(), port).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(target))
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, format!("{authority}: {e}")))?;
    let mut stopped = proxy.stopped.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = connection => {}
            _ = stopped.changed() => {}
        }
    });
    // The origin gets the path, not the absolute URL, a Host naming the destination it was
    // checked as, and none of the hop-by-hop headers (those `Connection` names among them).
    let path = request
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), ToString::to_string);
    *request.uri_mut() = path.parse().map_err(|_| {
        (
            StatusCode::BAD_REQUEST,
            "the request's path is not valid".to_owned(),
        )
    })?;
    let headers = request.headers_mut();
    let named: Vec<String> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    for hop in named.iter().map(String::as_str).chain([
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "proxy-authenticate",
    ]) {
        headers.remove(hop);
    }
    let host = match authority.port_u16() {
        Some(port) => format!("{}:{port}", authority.host()),
        None => authority.host().to_owned(),
    };
    let host = host.parse().map_err(|_| {
        (
            StatusCode::BAD_REQUEST,
            "the request's host is not valid".to_owned(),
        )
    })?;
    headers.insert(hyper::header::HOST, host);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, format!("{authority}: {e}")))?;
    Ok(response.map(Either::Left))
}

impl Proxy {
    /// Connects to `host:port` if a rule allows it, from the host's network.
    async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, Refusal> {
        if !self.rules.iter().any(|rule| rule.allows(host, port)) {
            return Err(self.refuse(host, port, "it is not on the workspace's egress allowlist"));
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| (StatusCode::BAD_GATEWAY, format!("{host}: {e}")))?
            .collect();
        // Unless the operator allows it, no rule leads to this host's own services, its
        // networks' or link-local ones (cloud metadata), whatever a name resolves to.
        let usable: Vec<SocketAddr> = resolved
            .into_iter()
            .filter(|addr| self.allow_private || !is_private_address(addr.ip()))
            .collect();
        if usable.is_empty() {
            return Err(self.refuse(
                host,
                port,
                "it resolves only to loopback, private or link-local addresses, which this server does not allow (local.allow_private_egress)",
            ));
        }
        let mut last = String::new();
        for addr in usable {
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
            }
        }
        Err((StatusCode::BAD_GATEWAY, format!("{host}:{port}: {last}")))
    }

    fn refuse(&self, host: &str, port: u16, why: &str) -> Refusal {
        // The host came from the task: it may carry a secret's value, so it is redacted.
        let mut destination = self.redactor.redact_str(&format!("{host}:{port}"));
        if destination.len() > MAX_NOTED_LENGTH {
            let mut cut = MAX_NOTED_LENGTH;
            while !destination.is_char_boundary(cut) {
                cut -= 1;
            }
            destination.truncate(cut);
            destination.push('…');
        }
        if let Ok(mut refused) = self.refused.lock()
            && refused.len() < MAX_NOTED_REFUSALS
            && !refused.contains(&destination)
        {
            refused.push(destination.clone());
        }
        (
            StatusCode::FORBIDDEN,
            format!("tresor egress: {destination} refused: {why}"),
        )
    }
}
