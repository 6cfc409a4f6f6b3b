//! Redaction: every secret value, and the encodings a task is likely to print it in, becomes
//! `***`, in whole buffers and in streams whose chunks may split a value anywhere.

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};

use crate::SecretValue;

/// What a redacted value becomes.
pub const MASK: &[u8] = b"***";
/// Shorter values are refused at creation: they cannot be redacted without masking noise.
pub const MIN_SECRET_LEN: usize = 4;

/// The parts of base64 that depend only on `value`, when it starts at each of the three
/// possible offsets within a base64 group.
fn base64_forms(value: &[u8], engine: &impl Engine) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for offset in 0..3usize {
        let mut input = vec![0u8; offset];
        input.extend_from_slice(value);
        let encoded = engine.encode(&input);
        // Characters mixing prefix bits, and the last one mixing bits of whatever follows, vary.
        let skip = [0, 2, 3][offset];
        let stable_end = (8 * input.len()) / 6;
        if stable_end > skip {
            out.push(encoded.as_bytes()[skip..stable_end].to_vec());
        }
    }
    out
}

fn url_encoded(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in value {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

fn json_escaped(value: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(value).ok()?;
    let mut out = String::new();
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    Some(out.into_bytes())
}

fn hex(value: &[u8], upper: bool) -> Vec<u8> {
    value
        .iter()
        .map(|b| {
            if upper {
                format!("{b:02X}")
            } else {
                format!("{b:02x}")
            }
        })
        .collect::<String>()
        .into_bytes()
}

/// Every form of `value` that is redacted.
fn forms(value: &[u8]) -> Vec<Vec<u8>> {
    let mut all = vec![value.to_vec()];
    for line in value.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() >= MIN_SECRET_LEN {
            all.push(line.to_vec());
        }
    }
    all.extend(base64_forms(value, &STANDARD_NO_PAD));
    all.extend(base64_forms(value, &URL_SAFE_NO_PAD));
    all.push(url_encoded(value));
    all.extend(json_escaped(value));
    all.push(hex(value, false));
    all.push(hex(value, true));
    all.retain(|f| f.len() >= MIN_SECRET_LEN);
    all.sort();
    all.dedup();
    all
}

/// Redacts a fixed set of secret values.
#[derive(Clone)]
pub struct Redactor {
    matcher: Option<AhoCorasick>,
    longest: usize,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redactor(***)")
    }
}

impl Redactor {
    pub fn new<'a>(values: impl IntoIterator<Item = &'a SecretValue>) -> Redactor {
        let patterns: Vec<Vec<u8>> = values
            .into_iter()
            .filter(|v| v.len() >= MIN_SECRET_LEN)
            .flat_map(|v| forms(v.expose_secret()))
            .collect();
        let longest = patterns.iter().map(Vec::len).max().unwrap_or(0);
        // Up to a few thousand patterns (a task's secrets; the benchmark's 100), a DFA scans about
        // twice as fast; beyond that its build time and memory outweigh the gain, so the library
        // picks (the server-wide log redactor can hold every secret of every workspace).
        let kind = (patterns.len() <= 2_000).then_some(AhoCorasickKind::DFA);
        let matcher = if patterns.is_empty() {
            None
        } else {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .kind(kind)
                .build(&patterns)
                .or_else(|_| {
                    AhoCorasick::builder()
                        .match_kind(MatchKind::LeftmostLongest)
                        .build(&patterns)
                })
                .ok()
        };
        Redactor { matcher, longest }
    }

    /// Whether `input` holds any secret value or encoding.
    pub fn finds_in(&self, input: &[u8]) -> bool {
        self.matcher.as_ref().is_some_and(|m| m.is_match(input))
    }

    /// `input` with every secret value and encoding replaced by `***`.
    pub fn redact(&self, input: &[u8]) -> Vec<u8> {
        let Some(matcher) = &self.matcher else {
            return input.to_vec();
        };
        let mut out = Vec::with_capacity(input.len());
        let mut last = 0;
        for m in matcher.find_iter(input) {
            out.extend_from_slice(&input[last..m.start()]);
            out.extend_from_slice(MASK);
            last = m.end();
        }
        out.extend_from_slice(&input[last..]);
        out
    }

    /// `redact` for text.
    pub fn redact_str(&self, input: &str) -> String {
        String::from_utf8_lossy(&self.redact(input.as_bytes())).into_owned()
    }

    /// A streaming redactor that holds back just enough bytes to catch a value split across chunks.
    pub fn stream(&self) -> RedactStream<'_> {
        RedactStream {
            redactor: self,
            carry: Vec::new(),
        }
    }
}

/// See `Redactor::stream`.
pub struct RedactStream<'a> {
    redactor: &'a Redactor,
    carry: Vec<u8>,
}

impl RedactStream<'_> {
    /// Feeds a chunk; returns what is safe to pass on.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let Some(matcher) = &self.redactor.matcher else {
            return chunk.to_vec();
        };
        self.carry.extend_from_slice(chunk);
        let buf = std::mem::take(&mut self.carry);
        // A match starting before `cut` lies wholly inside `buf`; later ones may continue in the
        // next chunk and wait in `carry`.
        let cut = buf
            .len()
            .saturating_sub(self.redactor.longest.saturating_sub(1));
        let mut out = Vec::with_capacity(buf.len());
        let mut last = 0;
        for m in matcher.find_iter(&buf) {
            if m.start() >= cut {
                break;
            }
            out.extend_from_slice(&buf[last..m.start()]);
            out.extend_from_slice(MASK);
            last = m.end();
        }
        let emit_to = cut.max(last);
        out.extend_from_slice(&buf[last..emit_to]);
        self.carry = buf[emit_to..].to_vec();
        out
    }

    /// Flushes what is held back.
    pub fn finish(mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.carry);
        self.redactor.redact(&rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &[u8] = b"tr3s0r-CANARY `x` $Y \"z\"\nsecond-line";

    fn redactor() -> Redactor {
        Redactor::new([&SecretValue::new(CANARY.to_vec())])
    }

    #[test]
    fn the_value_and_its_encodings_are_masked() {
        let r = redactor();
        let mut samples = vec![
            CANARY.to_vec(),
            b"second-line".to_vec(),
            STANDARD_NO_PAD.encode(CANARY).into_bytes(),
            base64::engine::general_purpose::STANDARD
                .encode(CANARY)
                .into_bytes(),
            URL_SAFE_NO_PAD.encode(CANARY).into_bytes(),
            url_encoded(CANARY),
            json_escaped(CANARY).unwrap(),
            hex(CANARY, false),
            hex(CANARY, true),
        ];
        // base64 of the value preceded by 1 and 2 other bytes (the other alignments).
        for prefix in [&b"a"[..], b"ab"] {
            let mut v = prefix.to_vec();
            v.extend_from_slice(CANARY);
            samples.push(STANDARD_NO_PAD.encode(&v).into_bytes());
        }
        for sample in samples {
            let text = [b"before ".as_slice(), &sample, b" after"].concat();
            let out = r.redact(&text);
            assert!(
                out.windows(3).any(|w| w == MASK),
                "not masked: {}",
                String::from_utf8_lossy(&sample)
            );
            assert!(
                !out.windows(11).any(|w| w == b"tr3s0r-CANA"),
                "{}",
                String::from_utf8_lossy(&out)
            );
            assert!(out.starts_with(b"before ") && out.ends_with(b" after"));
        }
    }

    #[test]
    fn streams_are_redacted_across_every_chunk_boundary() {
        let r = redactor();
        let text = [b"log: ".as_slice(), CANARY, b" and ", CANARY, b" end"].concat();
        let whole = r.redact(&text);
        for size in 1..text.len() {
            let mut stream = r.stream();
            let mut out = Vec::new();
            for chunk in text.chunks(size) {
                out.extend(stream.push(chunk));
            }
            out.extend(stream.finish());
            assert_eq!(out, whole, "chunk size {size}");
        }
    }

    #[test]
    fn the_log_writer_redacts_every_line_once_loaded() {
        use std::io::Write;
        let shared = SharedRedactor::default();
        let mut out = Vec::new();
        {
            let mut w = RedactingWriter::new(&mut out, shared.clone());
            w.write_all(b"before: tr3s0r-CANARY\n").unwrap();
            shared.replace(redactor());
            w.write_all(b"after: tr3s0r-CANARY `x` $Y \"z\"\nsecond-line\n")
                .unwrap();
        }
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, "before: tr3s0r-CANARY\nafter: ***\n");
    }

    #[test]
    fn short_values_and_no_values_change_nothing() {
        let r = Redactor::new([&SecretValue::new(b"abc".to_vec())]);
        assert_eq!(r.redact(b"abcabc"), b"abcabc");
        let none = Redactor::new(std::iter::empty());
        assert_eq!(none.redact(b"anything"), b"anything");
    }
}

/// A redactor shared by every writer of the server's log, replaced whenever secrets change.
#[derive(Clone, Default)]
pub struct SharedRedactor(std::sync::Arc<std::sync::RwLock<Option<Redactor>>>);

impl std::fmt::Debug for SharedRedactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedRedactor(***)")
    }
}

impl SharedRedactor {
    pub fn replace(&self, redactor: Redactor) {
        if let Ok(mut current) = self.0.write() {
            *current = Some(redactor);
        }
    }

    /// Masks every secret value, then every credential of a known shape (`mask_credentials`).
    pub fn redact(&self, input: &[u8]) -> Vec<u8> {
        let values_masked = match self.0.read() {
            Ok(current) => match current.as_ref() {
                Some(r) => r.redact(input),
                None => input.to_vec(),
            },
            Err(_) => input.to_vec(),
        };
        mask_credentials(&values_masked).into_owned()
    }
}

/// An `io::Write` that redacts each write (one log line, as `tracing` formats them) before
/// passing it on.
pub struct RedactingWriter<W> {
    inner: W,
    redactor: SharedRedactor,
}

impl<W> RedactingWriter<W> {
    pub fn new(inner: W, redactor: SharedRedactor) -> RedactingWriter<W> {
        RedactingWriter { inner, redactor }
    }
}

impl<W: std::io::Write> std::io::Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write_all(&self.redactor.redact(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Credentials tresor itself hands out, recognised by shape rather than by value: the
/// signature, key id and session token of a presigned URL, JWTs (task identity tokens), bearer
/// and basic credentials in headers, and access tokens (`trp_…`). They are masked wherever
/// secret values are: in the server's log, and in a task's logs.
static CREDENTIAL_SHAPES: std::sync::LazyLock<Option<regex::bytes::Regex>> =
    std::sync::LazyLock::new(|| {
        regex::bytes::Regex::new(concat!(
            r"(?-u)(?i:(x-amz-(?:signature|credential|security-token)=)[^&[:space:]'\x22<>]+)",
            r"|(?i:(authorization:[[:space:]]*(?:bearer|basic)[[:space:]]+)[^[:space:]'\x22]+)",
            r"|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",
            r"|trp_[A-Za-z0-9_]{16,}",
        ))
        .ok()
    });

/// `input` with every credential of a known shape (see `CREDENTIAL_SHAPES`) masked; the
/// parameter or header name stays, so the log still says what was there.
pub fn mask_credentials(input: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let Some(shapes) = CREDENTIAL_SHAPES.as_ref() else {
        return std::borrow::Cow::Borrowed(input);
    };
    shapes.replace_all(input, |caps: &regex::bytes::Captures<'_>| {
        let mut out = caps
            .get(1)
            .or_else(|| caps.get(2))
            .map(|name| name.as_bytes().to_vec())
            .unwrap_or_default();
        out.extend_from_slice(MASK);
        out
    })
}

/// `mask_credentials` for text.
pub fn mask_credentials_str(input: &str) -> String {
    String::from_utf8_lossy(&mask_credentials(input.as_bytes())).into_owned()
}

#[cfg(test)]
mod credential_tests {
    use super::*;

    #[test]
    fn presigned_signatures_tokens_and_headers_are_masked_by_shape() {
        let line = "GET http://s3/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F2026&X-Amz-Signature=abcdef0123 ok";
        let masked = mask_credentials_str(line);
        assert!(
            !masked.contains("abcdef0123") && !masked.contains("AKID"),
            "{masked}"
        );
        assert!(masked.contains("X-Amz-Signature=***"), "{masked}");
        assert!(
            masked.contains("X-Amz-Algorithm=AWS4-HMAC-SHA256"),
            "{masked}"
        );
        let jwt = "token eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ3b3Jrc3BhY2UifQ.c2lnbmF0dXJlLWJ5dGVz end";
        assert_eq!(mask_credentials_str(jwt), "token *** end");
        let header = "authorization: Bearer abc.def-ghi";
        assert_eq!(mask_credentials_str(header), "authorization: Bearer ***");
        let pat = "used trp_0123456789abcdef0123456789abcdef now";
        assert_eq!(mask_credentials_str(pat), "used *** now");
        assert_eq!(mask_credentials_str("nothing here"), "nothing here");
    }
}
