//! What one client may take of the server: slow or idle connections are closed, connections
//! beyond the cap are refused at once, and a credential past its request rate gets a 429.

use std::time::Duration;

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

fn limits(cap: usize) -> tresor_server::ConnectionLimits {
    tresor_server::ConnectionLimits {
        max_connections: cap,
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(60),
        requests_per_second: 1000,
        request_burst: 1000,
    }
}

fn addr(server: &TestServer) -> String {
    server.url.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection (or `within` passes); returns what was read
/// and whether it closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&seen).into_owned(), closed)
}

#[tokio::test]
async fn slow_headers_slow_bodies_and_idle_connections_are_closed() {
    let server = TestServer::start_with(|s| s.limits = limits(64)).await;

    // Half a request's headers, then nothing.
    let mut slow = TcpStream::connect(addr(&server)).await.unwrap();
    slow.write_all(b"GET /ga4gh/tes/v1/service-info HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (_, closed) = read_until_closed(&mut slow, Duration::from_secs(10)).await;
    assert!(closed, "a connection sending headers slowly stayed open");

    // A whole request, answered, then silence: the kept-alive connection is closed too.
    let mut idle = TcpStream::connect(addr(&server)).await.unwrap();
    idle.write_all(b"GET /ga4gh/tes/v1/service-info HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut idle, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(closed, "an idle kept-alive connection stayed open");

    // A body promised and sent a byte at a time: refused once the body timeout passes.
    let mut trickle = TcpStream::connect(addr(&server)).await.unwrap();
    trickle
        .write_all(
            format!(
                "POST /ga4gh/tes/v1/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{",
                server.admin_token
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let writer = tokio::spawn(async move {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if trickle.write_all(b" ").await.is_err() {
                break;
            }
        }
        trickle
    });
    let mut trickle = writer.await.unwrap();
    let (answer, _) = read_until_closed(&mut trickle, Duration::from_secs(5)).await;
    assert!(
        answer.starts_with("HTTP/1.1 4"),
        "a trickled body got {answer:?}"
    );

    // Meanwhile the server answers everyone else.
    server.client.service_info().await.unwrap();
}

#[tokio::test]
async fn a_body_trickled_within_the_body_timeout_is_cut_at_the_request_timeout() {
    let server = TestServer::start_with(|s| {
        s.limits = tresor_server::ConnectionLimits {
            request_timeout: Duration::from_secs(2),
            ..limits(64)
        }
    })
    .await;
    let (mut reader, mut writer) = TcpStream::connect(addr(&server))
        .await
        .unwrap()
        .into_split();
    writer
        .write_all(
            format!(
                "POST /ga4gh/tes/v1/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{",
                server.admin_token
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // A byte every 0.6 s for 12 s: each arrives within the 1 s body timeout.
    let trickle = tokio::spawn(async move {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(600)).await;
            if writer.write_all(b" ").await.is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    seen.extend_from_slice(&buf[..n]);
                    if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        return;
                    }
                }
            }
        }
    })
    .await
    .is_ok();
    trickle.abort();
    let answer = String::from_utf8_lossy(&seen);
    assert!(
        ended,
        "a body trickled a byte at a time held its connection for 5 s: {answer:?}"
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "a trickled body got {answer:?}"
    );
    // Meanwhile the server answers everyone else.
    server.client.service_info().await.unwrap();
}

#[tokio::test]
async fn connections_beyond_the_cap_are_refused_and_slots_come_back() {
    let server = TestServer::start_with(|s| s.limits = limits(8)).await;
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(TcpStream::connect(addr(&server)).await.unwrap());
    }
    // Give the server a moment to accept them all.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(addr(&server)).await.unwrap();
    extra
        .write_all(b"GET /ga4gh/tes/v1/service-info HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut extra, Duration::from_millis(900)).await;
    assert!(
        closed && answer.is_empty(),
        "a connection beyond the cap was served: {answer:?}"
    );
    // The idle ones time out, and the server serves again.
    let mut served = false;
    for _ in 0..50 {
        if server.client.service_info().await.is_ok() {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "slots never came back");
    drop(held);
}

#[tokio::test]
async fn a_credential_past_its_rate_gets_429_with_retry_after_and_others_do_not() {
    let server = TestServer::start_with(|s| {
        s.limits = tresor_server::ConnectionLimits {
            requests_per_second: 2,
            request_burst: 5,
            ..limits(64)
        }
    })
    .await;
    let alice = server.user("alice").await;
    let http = reqwest::Client::new();
    let url = format!("{}/ga4gh/tes/v1/tasks", server.url);
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..20 {
        let resp = http
            .get(&url)
            .bearer_auth(&alice.token)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let body = resp.text().await.unwrap();
            assert!(body.contains("retry after"), "{body}");
        }
        statuses.push(status);
    }
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(limited >= 10, "{statuses:?}");
    assert!(retry_after.is_some_and(|s| s >= 1), "{retry_after:?}");
    // Another credential is counted on its own.
    server.client.list_tasks(&Default::default()).await.unwrap();
}

#[tokio::test]
async fn one_token_spelled_many_ways_shares_one_rate() {
    use base64::Engine;
    let server = TestServer::start_with(|s| {
        s.limits = tresor_server::ConnectionLimits {
            requests_per_second: 2,
            request_burst: 5,
            ..limits(64)
        }
    })
    .await;
    let alice = server.user("alice").await;
    let http = reqwest::Client::new();
    let url = format!("{}/ga4gh/tes/v1/tasks", server.url);
    let mut statuses = Vec::new();
    for i in 0..20 {
        // Every spelling the server accepts for the same token, each one different.
        let spaces = " ".repeat(i + 1);
        let authorization = match i % 4 {
            0 => format!("Bearer{spaces}{}", alice.token),
            1 => format!("bearer {}{spaces}", alice.token),
            2 => format!("BeArEr {}{spaces}", alice.token),
            _ => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("user-{i}:{}", alice.token))
            ),
        };
        let resp = http
            .get(&url)
            .header(reqwest::header::AUTHORIZATION, authorization)
            .send()
            .await
            .unwrap();
        statuses.push(resp.status());
    }
    // Each spelling is a valid credential, so what is not limited is answered.
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(limited >= 10, "{statuses:?}");
}
