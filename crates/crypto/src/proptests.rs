//! Property tests of what attackers feed the redactor: any output a task prints, cut anywhere.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

use crate::SecretValue;
use crate::redact::{Redactor, mask_credentials};

/// Bytes with some structure: a task's output mixes text, the secrets, and pieces of them.
fn text_around(secrets: &[Vec<u8>], filler: Vec<u8>, inserts: &[(Index, Index, bool)]) -> Vec<u8> {
    let mut text = filler;
    for (at, which, partial) in inserts {
        let secret = &secrets[which.index(secrets.len())];
        let piece = if *partial {
            &secret[..secret.len() / 2]
        } else {
            &secret[..]
        };
        let at = at.index(text.len() + 1);
        text.splice(at..at, piece.iter().copied());
    }
    text
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn redacting_a_stream_cut_anywhere_equals_redacting_it_whole(
        secrets in vec(vec(any::<u8>(), 8..40), 1..4),
        filler in vec(any::<u8>(), 0..300),
        inserts in vec((any::<Index>(), any::<Index>(), any::<bool>()), 0..6),
        cuts in vec(any::<Index>(), 0..12),
    ) {
        let values: Vec<SecretValue> = secrets.iter().cloned().map(SecretValue::new).collect();
        let redactor = Redactor::new(&values);
        let text = text_around(&secrets, filler, &inserts);
        let whole = redactor.redact(&text);
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(text.len() + 1)).collect();
        at.sort_unstable();
        at.dedup();
        let mut stream = redactor.stream();
        let mut out = Vec::new();
        let mut from = 0;
        for cut in at.into_iter().chain([text.len()]) {
            out.extend(stream.push(&text[from..cut]));
            from = cut;
        }
        out.extend(stream.finish());
        prop_assert_eq!(out, whole);
    }

    #[test]
    fn a_whole_secret_never_survives_redaction(
        secret in "[A-Za-z0-9+/=_-]{12,40}",
        before in "[ -~]{0,60}",
        after in "[ -~]{0,60}",
    ) {
        let redactor = Redactor::new([&SecretValue::new(secret.clone().into_bytes())]);
        let text = format!("{before}{secret}{after}");
        let out = redactor.redact(text.as_bytes());
        prop_assert!(
            !out.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }

    #[test]
    fn masking_credentials_is_total_and_idempotent(input in vec(any::<u8>(), 0..400)) {
        let once = mask_credentials(&input).into_owned();
        let twice = mask_credentials(&once).into_owned();
        prop_assert_eq!(once, twice);
    }
}
