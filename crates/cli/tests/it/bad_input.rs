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

mod properties {
    //! Random documents and forms against the real server: every one gets an answer below 500.

    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    use serde_json::Value;

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "name",
                "executors",
                "image",
                "command",
                "inputs",
                "outputs",
                "path",
                "url",
                "resources",
                "cpu_cores",
                "ram_gb",
                "disk_gb",
                "tags",
                "volumes",
                "env",
                "workdir",
                "content",
                "type",
                "state",
                "id",
                "stdin",
                "stdout",
                "ignore_error",
                "backend_parameters",
                "tresor.secrets",
                "tresor.secrets.env",
            ])
            .prop_map(str::to_owned),
            ".{0,8}",
        ]
    }

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            prop_oneof![
                Just("/data/x".to_owned()),
                Just("../../etc/passwd".to_owned()),
                Just("file:///etc/shadow".to_owned()),
                Just("debian:12".to_owned()),
                ".{0,24}",
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..4).prop_map(Value::Array),
                vec((key(), inner), 0..6)
                    .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
            ]
        })
    }

    /// A WES form: known and unknown fields, values of any shape, files with hostile names.
    fn form() -> impl Strategy<Value = Vec<(String, Option<String>, Vec<u8>)>> {
        let field = prop_oneof![
            prop::sample::select(vec![
                "workflow_url",
                "workflow_type",
                "workflow_type_version",
                "workflow_params",
                "tags",
                "workflow_engine_parameters",
                "workflow_engine",
                "workflow_engine_version",
                "workflow_attachment",
            ])
            .prop_map(str::to_owned),
            "[a-z_]{0,12}",
        ];
        let file_name = proptest::option::of(prop_oneof![
            Just("Snakefile".to_owned()),
            Just("../../escape".to_owned()),
            Just("/etc/passwd".to_owned()),
            Just(".tresor/engine.py".to_owned()),
            Just("a/./b".to_owned()),
            ".{0,16}",
        ]);
        let body = prop_oneof![
            Just(b"SMK".to_vec()),
            Just(b"9".to_vec()),
            Just(b"Snakefile".to_vec()),
            Just(b"{\"x\": 1}".to_vec()),
            Just(b"CWL".to_vec()),
            Just(b"v1.2".to_vec()),
            vec(any::<u8>(), 0..64),
        ];
        vec((field, file_name, body), 0..8)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn random_tes_documents_and_wes_forms_get_an_answer_below_500() {
        // With the engines configured, so a form gets as far as it can.
        let server = crate::workflows::wes_server().await;
        let (url, token) = (server.url.clone(), server.admin_token.clone());
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let http = reqwest::Client::new();
            let cases: u32 = std::env::var("TRESOR_PROPTEST_HTTP_CASES")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(96);
            let mut runner = TestRunner::new(Config::with_cases(cases));
            runner
                .run(&(json(), vec(any::<u8>(), 0..200)), |(doc, raw)| {
                    for body in [serde_json::to_vec(&doc).unwrap(), raw] {
                        let status = handle.block_on(async {
                            http.post(format!("{url}/ga4gh/tes/v1/tasks"))
                                .bearer_auth(&token)
                                .header("content-type", "application/json")
                                .body(body.clone())
                                .send()
                                .await
                                .unwrap()
                                .status()
                        });
                        prop_assert!(
                            status.as_u16() < 500,
                            "{status} for {}",
                            String::from_utf8_lossy(&body)
                        );
                    }
                    Ok(())
                })
                .unwrap();
            let mut runner = TestRunner::new(Config::with_cases(cases));
            runner
                .run(&(form(), vec(any::<u8>(), 0..300)), |(parts, raw)| {
                    let status = handle.block_on(async {
                        let mut form = reqwest::multipart::Form::new();
                        for (name, file, body) in parts.clone() {
                            let mut part = reqwest::multipart::Part::bytes(body);
                            if let Some(file) = file {
                                part = part.file_name(file);
                            }
                            form = form.part(name, part);
                        }
                        http.post(format!("{url}/ga4gh/wes/v1/runs"))
                            .bearer_auth(&token)
                            .multipart(form)
                            .send()
                            .await
                            .unwrap()
                            .status()
                    });
                    prop_assert!(status.as_u16() < 500, "{status} for form {parts:?}");
                    // And a body that only claims to be a form.
                    let status = handle.block_on(async {
                        http.post(format!("{url}/ga4gh/wes/v1/runs"))
                            .bearer_auth(&token)
                            .header("content-type", "multipart/form-data; boundary=XyZ")
                            .body(raw.clone())
                            .send()
                            .await
                            .unwrap()
                            .status()
                    });
                    prop_assert!(status.as_u16() < 500, "{status} for raw {raw:?}");
                    Ok(())
                })
                .unwrap();
        })
        .await
        .unwrap();
        // Still healthy after all of it.
        let ready = reqwest::get(format!("{}/readyz", server.url))
            .await
            .unwrap();
        assert_eq!(ready.status(), 200);
    }
}
