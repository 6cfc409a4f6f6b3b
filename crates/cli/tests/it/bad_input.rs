//! Bad input gets a 4xx with a message that says what to fix, never a 5xx or a hang.

use reqwest::StatusCode;
use tresor_api_types::ErrorResponse;

use crate::support::*;

/// Asserts an error response: the status, a JSON body repeating it, and a message containing `says`.
fn assert_refused(resp: &tresor_client::RawResponse, status: StatusCode, says: &str) {
    assert_eq!(resp.status, status, "body: {}", resp.body);
    let body: ErrorResponse = serde_json::from_str(&resp.body)
        .unwrap_or_else(|e| panic!("error body is not an ErrorResponse ({e}): {}", resp.body));
    assert_eq!(body.status_code, status.as_u16());
    assert!(
        body.msg.contains(says),
        "message {:?} should mention {says:?}",
        body.msg
    );
}

#[tokio::test]
async fn malformed_task_documents_are_refused_with_the_field_named() {
    let server = TestServer::start().await;
    let post = |body: &str| server.client.post_raw("tasks", body.as_bytes().to_vec());
    let ok_executor = r#"{"image":"x","command":["true"]}"#;

    assert_refused(
        &post("{\"executors\": [").await.unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid JSON",
    );
    assert_refused(
        &post("").await.unwrap(),
        StatusCode::BAD_REQUEST,
        "body is empty",
    );
    assert_refused(
        &post("[1,2]").await.unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid JSON",
    );
    assert_refused(
        &post(&format!(r#"{{"executors":[{ok_executor}],"nmae":"typo"}}"#))
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "unknown field `nmae`",
    );
    assert_refused(
        &post(r#"{"executors":[{"image":"x","command":["true"],"evn":{}}]}"#)
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "executors[0].evn: unknown field `evn`",
    );
    assert_refused(
        &post(r#"{"name":"no executors"}"#).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "executors: at least one executor",
    );
    assert_refused(
        &post(r#"{"executors":[]}"#).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "executors: at least one executor",
    );
    assert_refused(
        &post(&format!(
            r#"{{"executors":[{ok_executor}],"inputs":[{{"path":"data/in","content":"x"}}]}}"#
        ))
        .await
        .unwrap(),
        StatusCode::BAD_REQUEST,
        "inputs[0].path: \"data/in\" must be an absolute path",
    );
    assert_refused(
        &post(r#"{"executors":[{"image":"x","command":["true"],"workdir":"../up"}]}"#)
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "executors[0].workdir",
    );
    assert_refused(
        &post(&format!(r#"{{"executors":[{ok_executor}],"outputs":[{{"path":"/data/o","url":"s3://bucket/o"}}]}}"#)).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "outputs[0].url",
    );
    assert_refused(
        &post(&format!(
            r#"{{"executors":[{ok_executor}],"resources":{{"cpu_cores":1.5}}}}"#
        ))
        .await
        .unwrap(),
        StatusCode::BAD_REQUEST,
        "resources.cpu_cores",
    );
    // A path that starts with a multi-byte character and holds a wildcard once panicked the
    // handler (an empty reply); one with a newline forged a log line.
    for (outputs, says) in [
        (
            r#"[{"path":"é*","path_prefix":"é","url":"file:///x"}]"#,
            "outputs[0].path",
        ),
        (
            r#"[{"path":"/data/a\nERROR forged","url":"file:///x"}]"#,
            "outputs[0].path: \"/data/a\\nERROR forged\" must not contain control characters",
        ),
    ] {
        assert_refused(
            &post(&format!(
                r#"{{"executors":[{ok_executor}],"outputs":{outputs}}}"#
            ))
            .await
            .unwrap(),
            StatusCode::BAD_REQUEST,
            says,
        );
    }
    assert_refused(
        &post(&format!(
            r#"{{"executors":[{ok_executor}],"state":"COMPLETE"}}"#
        ))
        .await
        .unwrap(),
        StatusCode::BAD_REQUEST,
        "state: is set by the server",
    );
}

#[tokio::test]
async fn an_oversized_body_is_a_413_not_a_hang() {
    let server = TestServer::start().await;
    let big = format!(
        r#"{{"executors":[{{"image":"x","command":["true"]}}],"description":"{}"}}"#,
        "x".repeat(10 * 1024 * 1024)
    );
    let resp = server
        .client
        .post_raw("tasks", big.into_bytes())
        .await
        .unwrap();
    assert_refused(
        &resp,
        StatusCode::PAYLOAD_TOO_LARGE,
        "larger than this server accepts",
    );
}

#[tokio::test]
async fn bad_list_parameters_are_refused() {
    let server = TestServer::start().await;
    let client = server.client.clone();
    let get = |q: String| {
        let client = client.clone();
        async move { client.get_raw(&q).await }
    };
    for size in ["0", "-1", "2048", "99999999999999999999"] {
        let resp = get(format!("tasks?page_size={size}")).await.unwrap();
        assert_refused(&resp, StatusCode::BAD_REQUEST, "page_size");
    }
    assert_refused(
        &get("tasks?page_token=forged".to_owned()).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "page_token",
    );
    assert_refused(
        &get("tasks?view=EVERYTHING".to_owned()).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "view",
    );
    assert_refused(
        &get("tasks?state=DONE".to_owned()).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "state",
    );
    assert_refused(
        &get("tasks?colour=red".to_owned()).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "unknown query parameter \"colour\"",
    );
    assert_refused(
        &get("tasks?tag_value=x".to_owned()).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "tag_value",
    );

    // A real token replayed against another listing is refused too.
    for _ in 0..3 {
        server.client.create_task(&sh_task("true")).await.unwrap();
    }
    let page = server
        .client
        .list_tasks(&tresor_client::ListTasks {
            page_size: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    let token = page.next_page_token.unwrap();
    let resp = get(format!(
        "tasks?page_size=1&name_prefix=x&page_token={token}"
    ))
    .await
    .unwrap();
    assert_refused(&resp, StatusCode::BAD_REQUEST, "page_token");
    let resp = get(format!("tasks?page_size=1&page_token={token}"))
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
}

#[tokio::test]
async fn unknown_ids_and_routes_are_404_and_wrong_methods_405() {
    let server = TestServer::start().await;
    assert_refused(
        &server.client.get_raw("tasks/no-such-task").await.unwrap(),
        StatusCode::NOT_FOUND,
        "task not found",
    );
    assert_refused(
        &server.client.get_raw("tasks/..%2F..%2Fetc").await.unwrap(),
        StatusCode::NOT_FOUND,
        "task not found",
    );
    assert_refused(
        &server
            .client
            .post_raw("tasks/no-such-task:cancel", vec![])
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "task not found",
    );
    assert_refused(
        &server.client.post_raw("tasks/abc", vec![]).await.unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
        ":cancel",
    );
    assert_refused(
        &server.client.get_raw("nope").await.unwrap(),
        StatusCode::NOT_FOUND,
        "no endpoint",
    );
    let resp = server
        .client
        .post_raw("service-info", b"{}".to_vec())
        .await
        .unwrap();
    assert_refused(
        &resp,
        StatusCode::METHOD_NOT_ALLOWED,
        "does not accept POST",
    );
}
