//! Fetches over HTTP on the host's network on a user's behalf (a task's http inputs, a workflow
//! registered by URL). The host's network is where loopback and private services and cloud
//! metadata live, so such a fetch reaches public addresses only: names are resolved by
//! `PublicOnly`, which hands the connection only the public addresses it checked (no second
//! lookup that a rebinding DNS server could answer differently), and address literals are
//! checked at the start and at every redirect.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tresor_domain::net::is_private_address;

/// What a refusal says: the fetch was aimed at this host's own or its networks' services.
pub const PRIVATE: &str = "is a loopback, private or link-local address, which is not fetched from";

/// A resolver that answers only public addresses, and fails for a name that has none.
#[derive(Debug, Clone, Copy)]
struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|addr| !is_private_address(addr.ip()))
                .collect();
            if resolved.is_empty() {
                return Err(format!("{host} {PRIVATE}").into());
            }
            Ok(Box::new(resolved.into_iter()) as Addrs)
        })
    }
}

/// Refuses a URL whose host is a private address literal; names are left to `PublicOnly`.
pub fn check_literal(url: &reqwest::Url) -> Result<(), String> {
    match url.host() {
        Some(url::Host::Ipv4(ip)) if is_private_address(ip.into()) => {
            Err(format!("{ip} {PRIVATE}"))
        }
        Some(url::Host::Ipv6(ip)) if is_private_address(ip.into()) => {
            Err(format!("[{ip}] {PRIVATE}"))
        }
        Some(_) => Ok(()),
        None => Err("the URL has no host".to_owned()),
    }
}

/// A client following at most 10 redirects that, unless `allow_private`, reaches public
/// addresses only. Check the first URL with `check_literal` too.
pub fn client(allow_private: bool, connect_timeout: Duration) -> reqwest::Result<reqwest::Client> {
    let builder = reqwest::Client::builder().connect_timeout(connect_timeout);
    if allow_private {
        return builder
            .redirect(reqwest::redirect::Policy::limited(10))
            .build();
    }
    builder
        .dns_resolver(std::sync::Arc::new(PublicOnly))
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            if attempt.previous().len() >= 10 {
                return attempt.error("too many redirects");
            }
            match check_literal(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(why) => attempt.error(why),
            }
        }))
        .build()
}

/// A request error's whole story, without the URL (which may hold a presigned signature):
/// reqwest's own words and those of every cause below them (a refused address among them).
pub fn error_text(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(inner) = cause {
        let words = inner.to_string();
        if !text.contains(&words) {
            text.push_str(": ");
            text.push_str(&words);
        }
        cause = inner.source();
    }
    text
}
