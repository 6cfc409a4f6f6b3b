//! Credentials pasted into a document (a task's command or environment, a run's parameters),
//! recognized by their shape. The launch guard finds the values of stored secrets; this finds
//! what was never stored: a private key, an AWS key id, a token, `NAME=value` where the name
//! says it is a secret. Such a document is refused, since tresor keeps and shows documents in
//! plain text.

use std::sync::LazyLock;

/// Each shape with what it is called in a refusal.
/// ASCII-only patterns (`(?-u)`: this build of regex has no Unicode tables), on bytes.
static SHAPES: LazyLock<Vec<(regex::bytes::Regex, &'static str)>> = LazyLock::new(|| {
    [
        (r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----", "a private key"),
        (r"\b(?:AKIA|ASIA|A3T[A-Z0-9])[A-Z0-9]{16}\b", "an AWS access key id"),
        (
            // NAME=value or NAME: value (an assignment, `export`, an env entry, a JSON or YAML
            // key) where the name ends in a word for a secret, and the value is not a path, a
            // reference or a structure.
            r#"(?i)\b[A-Z0-9_]*(?:SECRET|SECRET_KEY|SECRET_ACCESS_KEY|PASSWORD|PASSWD|PRIVATE_KEY|API_KEY|ACCESS_TOKEN|AUTH_TOKEN|TOKEN)['"]?[ \t]*[=:][ \t]*['"]?[^\s'"$/{<\[][^\s'"]{7,}"#,
            "a secret assigned to a variable",
        ),
        (r"\bgh[pousr]_[A-Za-z0-9]{36,}\b", "a GitHub token"),
        (r"\bxox[abprs]-[A-Za-z0-9-]{10,}", "a Slack token"),
        (
            r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
            "a JSON Web Token",
        ),
        (r"\btrp_[A-Za-z0-9_]{16,}", "a tresor access token"),
        (r"(?i)\bauthorization:[ \t]*(?:bearer|basic)[ \t]+\S{8,}", "an Authorization header"),
        (r"(?i)x-amz-signature=[0-9a-f]{16,}", "a presigned URL's signature"),
    ]
    .into_iter()
    .filter_map(|(pattern, what)| {
        regex::bytes::Regex::new(&format!("(?-u){pattern}"))
            .ok()
            .map(|r| (r, what))
    })
    .collect()
});

/// What credential `text` holds in plain sight, if any.
pub fn credential_in(text: &str) -> Option<&'static str> {
    SHAPES
        .iter()
        .find(|(shape, _)| shape.is_match(text.as_bytes()))
        .map(|(_, what)| *what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pasted_credentials_are_found_and_their_look_alikes_are_not() {
        assert_eq!(SHAPES.len(), 9, "a pattern does not compile");
        for (text, what) in [
            (
                "export AWS_SECRET_ACCESS_KEY='wJalrXUtnFEMI/K7MDENG'",
                "a secret assigned",
            ),
            (
                "SNAKEMAKE_STORAGE_S3_SECRET_KEY=abcdefgh12345",
                "a secret assigned",
            ),
            ("db_password = hunter2hunter2", "a secret assigned"),
            (
                r#"{"aws_secret_access_key": "wJalrXUtnFEMIK7MDENG"}"#,
                "a secret assigned",
            ),
            ("password: hunter2hunter2", "a secret assigned"),
            ("key AKIAIOSFODNN7EXAMPLE here", "an AWS access key id"),
            (
                "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn",
                "a private key",
            ),
            (
                "ghp_0123456789abcdefghijABCDEFGHIJ0123456789",
                "a GitHub token",
            ),
            (
                "curl -H 'Authorization: Bearer abcdefgh12345'",
                "an Authorization header",
            ),
            (
                "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ3b3Jrc3BhY2UifQ.c2lnbmF0dXJlLWJ5dGVz",
                "a JSON Web Token",
            ),
        ] {
            assert!(
                credential_in(text).is_some_and(|w| w.starts_with(what)),
                "{text}: {:?}",
                credential_in(text)
            );
        }
        for text in [
            "TRESOR_IDENTITY_TOKEN_FILE=/run/tresor/identity/token",
            "PASSWORD=$DB_PASSWORD",
            "API_KEY=${API_KEY}",
            "SECRET=short",
            "printf %s \"$DB_PASS\" | sha256sum",
            "tags: tresor.secrets.env=DB_PASS",
            "the token is in a file",
            "inputs:\n  api_token: string\n  password: {type: string}",
        ] {
            assert_eq!(credential_in(text), None, "{text}");
        }
    }
}
