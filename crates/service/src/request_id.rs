//! The id of the API request being served, for the tasks it creates: the server sets it around
//! each handler, a new task keeps it in its spec, and the task's worker logs it on every line,
//! so one id leads from the API call to the worker's log lines.

use std::future::Future;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The request id of the handler this runs in, if any.
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Runs `work` with `id` as its request id.
pub async fn scope<F: Future>(id: String, work: F) -> F::Output {
    REQUEST_ID.scope(id, work).await
}

/// Whether a client's `X-Request-Id` may be kept as the request's id: short, and only characters
/// that cannot break a log line or a header.
pub fn acceptable(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_id_is_there_inside_the_scope_only() {
        assert_eq!(current(), None);
        let inside = scope("req-1".to_owned(), async { current() }).await;
        assert_eq!(inside.as_deref(), Some("req-1"));
    }

    #[test]
    fn only_short_plain_ids_are_kept() {
        assert!(acceptable("0192f1c2-aaaa-7bbb-8ccc-0123456789ab"));
        assert!(!acceptable(""));
        assert!(!acceptable(&"a".repeat(65)));
        assert!(!acceptable("a b"));
        assert!(!acceptable("a\nlevel=ERROR"));
        assert!(!acceptable("\"}"));
    }
}
