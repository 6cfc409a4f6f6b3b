//! What one client may take of the server: connections, time to send a request, and requests
//! per second per credential. Without these a few hundred idle or slow connections starve every
//! other user (`axum::serve` sets no header timeout at all), so `serve` runs its own accept loop.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::error::ApiError;

/// Limits on connections and requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections at once; more are closed as soon as they are accepted. `serve` lowers
    /// it to what the process's file-descriptor limit leaves room for.
    pub max_connections: usize,
    /// Time to send a request's headers, and the most a kept-alive connection may sit idle
    /// before its next request.
    pub header_timeout: Duration,
    /// Time to send each part of a request's body: reset by every frame that arrives.
    pub body_timeout: Duration,
    /// Time to send a whole request and have it answered, however its body arrives: without
    /// it a body trickled a byte at a time, each within `body_timeout`, would hold its
    /// connection for as long as the client likes.
    pub request_timeout: Duration,
    /// Sustained requests per second per credential (or per address, for requests without one).
    pub requests_per_second: u32,
    /// Requests a credential may send at once above the sustained rate.
    pub request_burst: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            requests_per_second: 200,
            request_burst: 400,
        }
    }
}

/// File descriptors kept back from connections, for the database, task files and logs.
const RESERVED_FDS: u64 = 128;

impl ConnectionLimits {
    /// `max_connections`, lowered to fit the process's soft limit on open files.
    pub fn effective_max_connections(&self) -> usize {
        let fds = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        let room = usize::try_from(fds.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
        self.max_connections.min(room).max(1)
    }
}

/// A 408 for a request that has not been received and answered within `deadline`.
pub(crate) async fn within_deadline(deadline: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::RequestTimeout(deadline.as_secs()).into_response(),
    }
}

/// Who a request is counted against: the SHA-256 of the access token it carries, or its peer
/// address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Requester {
    Credential([u8; 16]),
    Address(IpAddr),
    Unknown,
}

/// Requests per second per credential.
#[derive(Debug, Clone)]
pub(crate) struct RequestRates {
    limiter: Arc<DefaultKeyedRateLimiter<Requester>>,
}

impl RequestRates {
    pub(crate) fn new(limits: &ConnectionLimits) -> RequestRates {
        let per_second = NonZeroU32::new(limits.requests_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.request_burst.max(limits.requests_per_second))
            .unwrap_or(per_second);
        let limiter = Arc::new(governor::RateLimiter::keyed(
            Quota::per_second(per_second).allow_burst(burst),
        ));
        // Forget requesters that have been quiet, so the table does not grow without bound.
        let sweep = Arc::downgrade(&limiter);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                let Some(limiter) = sweep.upgrade() else {
                    return;
                };
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
        });
        RequestRates { limiter }
    }

    /// A 429 with `Retry-After` once the caller's credential has used its rate.
    pub(crate) async fn check(self, request: Request, next: Next) -> Response {
        let requester = match request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| credential_key(value.as_bytes()))
        {
            Some(key) => Requester::Credential(key),
            None => request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(Requester::Unknown, |c| Requester::Address(c.0.ip())),
        };
        match self.limiter.check_key(&requester) {
            Ok(()) => next.run(request).await,
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                ApiError::TooManyRequests(wait.as_secs().max(1)).into_response()
            }
        }
    }
}

/// The key a credential is counted under: the SHA-256 of the access token it carries, whatever
/// the spelling around it. The raw header would let one token count as many: `bearer`, trailing
/// spaces or a different Basic user name each made a fresh bucket. A header that carries no
/// token the way `extract::credential` reads one gives `None`, and the request is counted by
/// its address, like one without credentials.
fn credential_key(header: &[u8]) -> Option<[u8; 16]> {
    let value = std::str::from_utf8(header).ok()?.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    let token = if scheme.eq_ignore_ascii_case("bearer") {
        rest.as_bytes().to_vec()
    } else if scheme.eq_ignore_ascii_case("basic") {
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        // The user name is free text; only the password (the access token) says who it is.
        let colon = decoded.iter().position(|b| *b == b':')?;
        decoded[colon + 1..].to_vec()
    } else {
        return None;
    };
    if token.is_empty() {
        return None;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, &token);
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest.as_ref()[..16]);
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::credential_key;

    #[test]
    fn one_token_is_one_key_however_it_is_spelled() {
        use base64::Engine;
        let basic = |user: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:trp_token"))
            )
        };
        let key = credential_key(b"Bearer trp_token");
        assert!(key.is_some());
        for spelling in [
            "bearer trp_token".to_owned(),
            "BEARER   trp_token  ".to_owned(),
            "  Bearer trp_token".to_owned(),
            basic("alice"),
            basic(""),
            format!("basic {}  ", basic("mallory").trim_start_matches("Basic ")),
        ] {
            assert_eq!(credential_key(spelling.as_bytes()), key, "{spelling:?}");
        }
        assert_ne!(credential_key(b"Bearer trp_other"), key);
        let unparseable: [&[u8]; 6] = [
            b"Bearer",
            b"Bearer   ",
            b"Digest trp_token",
            b"Basic !!!",
            b"Basic dXNlcg==",
            b"Bearer \xff",
        ];
        for unparseable in unparseable {
            assert_eq!(credential_key(unparseable), None, "{unparseable:?}");
        }
    }
}
