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

/// The proxy's port on the sandbox's loopback (its network namespace is the task's own).
pub const EGRESS_PORT: u16 = 3128;
/// Connections one executor may hold open through the proxy at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 64;
/// How long connecting to an allowed destination may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Refused destinations remembered for the task's system log.
const MAX_NOTED_REFUSALS: usize = 16;

/// The environment that points an executor's HTTP clients at the proxy.
pub fn proxy_env() -> Vec<(String, String)> {
    let url = format!("http://127.0.0.1:{EGRESS_PORT}");
    ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"]
        .into_iter()
        .map(|name| (name.to_owned(), url.clone()))
        .collect()
}

/// Binds the proxy's listening socket inside the network namespace of process `pid` (the
/// sandbox's first process). `setns` moves only the calling thread, so a thread of its own
/// does it and ends; the socket stays in the sandbox's namespace, and the worker accepts on it
/// from the host's side. This needs the worker to hold `CAP_SYS_ADMIN` (run as root), as it
/// does when the server switches executors to other users.
pub fn listen_in(pid: u32) -> Result<std::net::TcpListener, String> {
    let namespace = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| format!("opening the sandbox's network namespace: {e}"))?;
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
        // The namespace holds only loopback, so every address is the sandbox's own.
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
    /// Serves `listener` with the allowlist `rules` until dropped.
    pub fn start(
        listener: std::net::TcpListener,
        rules: Vec<EgressRule>,
        redactor: Redactor,
    ) -> Result<EgressProxy, String> {
        let listener = TcpListener::from_std(listener)
            .map_err(|e| format!("the egress proxy's socket: {e}"))?;
        let (stop, stopped) = watch::channel(());
        let refused = Arc::new(Mutex::new(Vec::new()));
        let proxy = Arc::new(Proxy {
            rules,
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
        let mut target = proxy.connect(authority.host(), port).await?;
        let mut stopped = proxy.stopped.clone();
        tokio::spawn(async move {
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
    // The origin gets the path, not the absolute URL, and none of the proxy's own headers.
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
    for hop in [
        "proxy-authorization",
        "proxy-connection",
        "proxy-authenticate",
    ] {
        headers.remove(hop);
    }
    if !headers.contains_key(hyper::header::HOST)
        && let Ok(host) = authority.as_str().parse()
    {
        headers.insert(hyper::header::HOST, host);
    }
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, format!("{authority}: {e}")))?;
    Ok(response.map(Either::Left))
}

impl Proxy {
    /// Connects to `host:port` if a rule allows it, from the host's network.
    async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, Refusal> {
        let Some(rule) = self.rules.iter().find(|rule| rule.allows(host, port)) else {
            return Err(self.refuse(host, port, "it is not on the workspace's egress allowlist"));
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| (StatusCode::BAD_GATEWAY, format!("{host}: {e}")))?
            .collect();
        // A name may not lead to this host's own services or to link-local ones (cloud
        // metadata); only a rule naming such an address reaches it.
        let usable: Vec<SocketAddr> = resolved
            .into_iter()
            .filter(|addr| rule.names_an_address() || !is_host_local(addr.ip()))
            .collect();
        if usable.is_empty() {
            return Err(self.refuse(
                host,
                port,
                "it resolves only to loopback, link-local or unspecified addresses; allow the address itself to reach it",
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
        let destination = self.redactor.redact_str(&format!("{host}:{port}"));
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

/// Loopback, link-local, unspecified and multicast addresses: the host's own or its link's.
fn is_host_local(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_unicast_link_local()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn host_local_addresses_are_told_apart() {
        for local in [
            "127.0.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_host_local(local.parse().unwrap()), "{local}");
        }
        for remote in ["10.0.0.1", "151.101.0.223", "2a04:4e42::223"] {
            assert!(!is_host_local(remote.parse().unwrap()), "{remote}");
        }
    }
}
