//! Redaction: every secret value, and the encodings a task is likely to print it in, becomes
//! `***`, in whole buffers and in streams whose chunks may split a value anywhere.
//!
//! The matcher indexes each form of each value by its first 8 bytes. Since every form is at least
//! that long, any occurrence covers a 4-byte window starting at a multiple of 5 of the text: a
//! bit filter of every 4-byte piece of every key answers for those windows only, so the text is
//! read in steps of 5, and a hit is confirmed against the whole form, computed from the value
//! only then. A redactor holds the values (shared, never copied) and about 100 bytes per form,
//! whatever the values' sizes: its memory grows linearly with the bytes stored, by about 2 KiB
//! per secret plus 100 bytes per line of a multi-line value.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};

use crate::SecretValue;

/// What a redacted value becomes.
pub const MASK: &[u8] = b"***";
/// Shorter values are refused at creation: a member's value as short as a common word (`task`,
/// `WARN`) would mask the words of every log line and refuse ordinary task documents. Every form
/// that is redacted (the value, each of its lines, each encoding) is at least this long too.
pub const MIN_SECRET_LEN: usize = 8;
/// Every form is indexed by its first `KEY_LEN` bytes.
const KEY_LEN: usize = MIN_SECRET_LEN;
/// The filter's pieces of a key, and the step between the text windows it is asked about: a
/// key of `KEY_LEN` bytes holds a `GRAM`-byte piece at every offset up to `STRIDE - 1`.
const GRAM: usize = 4;
const STRIDE: usize = KEY_LEN - GRAM + 1;
/// How much of a value the index keys are computed from.
const KEY_SOURCE: usize = 64;

/// The parts of base64 that depend only on `value`, when it starts at `offset` (0 to 2) within a
/// base64 group.
fn base64_form(value: &[u8], engine: &impl Engine, offset: usize) -> Option<Vec<u8>> {
    let mut input = vec![0u8; offset];
    input.extend_from_slice(value);
    let encoded = engine.encode(&input);
    // Characters mixing prefix bits, and the last one mixing bits of whatever follows, vary.
    let skip = [0, 2, 3][offset];
    let stable_end = (8 * input.len()) / 6;
    (stable_end > skip).then(|| encoded.as_bytes()[skip..stable_end].to_vec())
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";
const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";

fn url_encoded(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() * 3);
    for &b in value {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[
                b'%',
                HEX_UPPER[usize::from(b >> 4)],
                HEX_UPPER[usize::from(b & 15)],
            ]);
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
    let digits = if upper { HEX_UPPER } else { HEX_LOWER };
    let mut out = Vec::with_capacity(value.len() * 2);
    for &b in value {
        out.extend_from_slice(&[digits[usize::from(b >> 4)], digits[usize::from(b & 15)]]);
    }
    out
}

/// One form of a value that is redacted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Raw,
    /// One line (without its `\r`), by byte range.
    Line {
        start: u32,
        len: u32,
    },
    Base64 {
        url_safe: bool,
        offset: u8,
    },
    Url,
    Json,
    Hex {
        upper: bool,
    },
}

const ENCODINGS: [Form; 10] = [
    Form::Base64 {
        url_safe: false,
        offset: 0,
    },
    Form::Base64 {
        url_safe: false,
        offset: 1,
    },
    Form::Base64 {
        url_safe: false,
        offset: 2,
    },
    Form::Base64 {
        url_safe: true,
        offset: 0,
    },
    Form::Base64 {
        url_safe: true,
        offset: 1,
    },
    Form::Base64 {
        url_safe: true,
        offset: 2,
    },
    Form::Url,
    Form::Json,
    Form::Hex { upper: false },
    Form::Hex { upper: true },
];

/// The bytes of `form` of `value`; `None` when the value has no such form (JSON of non-UTF-8).
fn materialize(value: &[u8], form: Form) -> Option<Cow<'_, [u8]>> {
    Some(match form {
        Form::Raw => Cow::Borrowed(value),
        Form::Line { start, len } => {
            Cow::Borrowed(value.get(start as usize..(start as usize + len as usize))?)
        }
        Form::Base64 { url_safe, offset } => Cow::Owned(if url_safe {
            base64_form(value, &URL_SAFE_NO_PAD, offset.into())?
        } else {
            base64_form(value, &STANDARD_NO_PAD, offset.into())?
        }),
        Form::Url => Cow::Owned(url_encoded(value)),
        Form::Json => Cow::Owned(json_escaped(value)?),
        Form::Hex { upper } => Cow::Owned(hex(value, upper)),
    })
}

/// A form's length, counted without building it.
fn form_len(value: &[u8], form: Form) -> usize {
    match form {
        Form::Raw => value.len(),
        Form::Line { len, .. } => len as usize,
        Form::Base64 { offset, .. } => {
            let skip = [0, 2, 3][usize::from(offset)];
            ((8 * (value.len() + usize::from(offset))) / 6).saturating_sub(skip)
        }
        Form::Url => value
            .iter()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(b) {
                    1
                } else {
                    3
                }
            })
            .sum(),
        Form::Json => std::str::from_utf8(value).map_or(0, |text| {
            text.chars()
                .map(|c| match c {
                    '"' | '\\' | '\n' | '\r' | '\t' => 2,
                    c if (c as u32) < 0x20 => 6,
                    c => c.len_utf8(),
                })
                .sum()
        }),
        Form::Hex { .. } => 2 * value.len(),
    }
}

/// Every form of `value` that is redacted, with its index key. Keys come from the forms of a
/// prefix of the value (every encoding maps a prefix to a prefix), so a large value is never
/// encoded whole here.
fn keyed_forms(value: &[u8]) -> Vec<(u64, Form)> {
    let mut out = Vec::new();
    let mut push = |bytes: &[u8], form: Form| {
        if let Some(key) = bytes.get(..KEY_LEN) {
            let mut word = [0u8; KEY_LEN];
            word.copy_from_slice(key);
            out.push((u64::from_le_bytes(word), form));
        }
    };
    if value.len() < MIN_SECRET_LEN {
        return out;
    }
    push(value, Form::Raw);
    let mut start = 0usize;
    for line in value.split(|b| *b == b'\n') {
        let trimmed = line.strip_suffix(b"\r").unwrap_or(line);
        if trimmed.len() >= MIN_SECRET_LEN
            && trimmed.len() < value.len()
            && let (Ok(start32), Ok(len32)) = (u32::try_from(start), u32::try_from(trimmed.len()))
        {
            push(
                trimmed,
                Form::Line {
                    start: start32,
                    len: len32,
                },
            );
        }
        start += line.len() + 1;
    }
    let utf8 = std::str::from_utf8(value).is_ok();
    let mut prefix = &value[..value.len().min(KEY_SOURCE)];
    if let Err(e) = std::str::from_utf8(prefix)
        && utf8
    {
        prefix = &prefix[..e.valid_up_to()];
    }
    for form in ENCODINGS {
        if form == Form::Json && !utf8 {
            continue;
        }
        if form_len(value, form) < MIN_SECRET_LEN {
            continue;
        }
        if let Some(bytes) = materialize(prefix, form) {
            push(&bytes, form);
        }
    }
    out
}

/// The multiplicative hash behind the filter.
fn filter_slot(gram: u32, shift: u32) -> usize {
    (u64::from(gram).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> shift) as usize
}

fn gram_at(input: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; GRAM] = input.get(at..at + GRAM)?.try_into().ok()?;
    Some(u32::from_le_bytes(bytes))
}

fn key_at(input: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; KEY_LEN] = input.get(at..at + KEY_LEN)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// Hashes the 8-byte keys with one multiply: they are only looked up after the filter hit, on
/// text the server does not choose, and a collision costs a comparison, never a wrong answer.
#[derive(Default)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (n ^ (n >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        self.0 ^= self.0 >> 32;
    }
}

type KeyMap = HashMap<u64, Vec<Candidate>, std::hash::BuildHasherDefault<KeyHasher>>;

/// The rolling hash that confirms a candidate form in constant time: polynomial, modulo the
/// Mersenne prime 2^61 - 1, with a base drawn at random for each redactor, so text an attacker
/// writes cannot be made to collide with a form on purpose.
const MODULUS: u64 = (1 << 61) - 1;

fn mul_mod(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    let sum = (product as u64 & MODULUS) + (product >> 61) as u64;
    if sum >= MODULUS { sum - MODULUS } else { sum }
}

fn add_mod(a: u64, b: u64) -> u64 {
    let sum = a + b;
    if sum >= MODULUS { sum - MODULUS } else { sum }
}

fn pow_mod(mut base: u64, mut exp: u64) -> u64 {
    let mut out = 1;
    while exp > 0 {
        if exp & 1 == 1 {
            out = mul_mod(out, base);
        }
        base = mul_mod(base, base);
        exp >>= 1;
    }
    out
}

fn hash_bytes(base: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0, |h, b| add_mod(mul_mod(h, base), u64::from(*b)))
}

/// The rolling hash's base, drawn once per process.
static BASE: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
    let mut seed = [0u8; 8];
    match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed) {
        Ok(()) => u64::from_le_bytes(seed) % (MODULUS - (1 << 20)) + (1 << 20),
        Err(_) => 0x1F2E_3D4C_5B6A_7988 % MODULUS,
    }
});

/// What confirms one form in constant time: its length, hash and `base^len`.
#[derive(Debug, Clone, Copy)]
struct Confirm {
    len: usize,
    hash: u64,
    /// `base^len`, to take the form's window out of the text's prefix hashes.
    shift: u64,
}

/// One form of a value, as an index holds it. Its hash needs the whole form built, which takes
/// milliseconds for a large value, so it is made the first time text starts like the form and
/// then kept: most forms of most values never are.
#[derive(Debug)]
struct FormEntry {
    key: u64,
    form: Form,
    confirm: std::sync::OnceLock<Option<Confirm>>,
}

/// A secret value with its forms' keys, shared by every redactor made from it, and their
/// confirmations once made.
pub struct IndexedValue {
    value: Arc<SecretValue>,
    forms: Vec<FormEntry>,
    /// The longest form, counted without building it.
    longest: usize,
}

impl std::fmt::Debug for IndexedValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IndexedValue(***)")
    }
}

impl IndexedValue {
    pub fn new(value: Arc<SecretValue>) -> IndexedValue {
        let bytes = value.expose_secret();
        let keyed = keyed_forms(bytes);
        let longest = keyed
            .iter()
            .map(|(_, form)| form_len(bytes, *form))
            .max()
            .unwrap_or(0);
        let forms = keyed
            .into_iter()
            .map(|(key, form)| FormEntry {
                key,
                form,
                confirm: std::sync::OnceLock::new(),
            })
            .collect();
        IndexedValue {
            value,
            forms,
            longest,
        }
    }

    /// The value's length in bytes.
    pub fn len(&self) -> usize {
        self.value.len()
    }

    pub fn is_empty(&self) -> bool {
        self.value.len() == 0
    }

    fn confirm(&self, form: usize) -> Option<Confirm> {
        let entry = self.forms.get(form)?;
        *entry.confirm.get_or_init(|| {
            let base = *BASE;
            let whole = materialize(self.value.expose_secret(), entry.form)?;
            Some(Confirm {
                len: whole.len(),
                hash: hash_bytes(base, &whole),
                shift: pow_mod(base, whole.len() as u64),
            })
        })
    }
}

/// A form that starts with a key, in an index: which value, and which of its forms.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    id: u32,
    form: u32,
}

/// The index of one redactor's values.
struct Index {
    values: Vec<Arc<IndexedValue>>,
    /// One bit per hash slot; set where a `GRAM`-byte piece of some key falls.
    filter: Vec<u64>,
    shift: u32,
    /// Key -> the forms that start with it.
    forms: KeyMap,
    /// The longest form: how much a stream holds back.
    longest: usize,
    /// The rolling hash's base.
    base: u64,
}

/// Candidate checks a scan may make per byte of text before it stops and treats the rest of the
/// text as secret: crafted values and text (many forms sharing one key, text that repeats it)
/// would otherwise cost a check per form at every position.
const CHECKS_PER_BYTE: usize = 8;

impl Index {
    fn build(values: Vec<Arc<IndexedValue>>) -> Option<Index> {
        let mut forms = KeyMap::default();
        let mut longest = 0;
        let mut kept = Vec::new();
        for value in values {
            if value.forms.is_empty() {
                continue;
            }
            let Ok(id) = u32::try_from(kept.len()) else {
                break;
            };
            longest = longest.max(value.longest);
            for (i, entry) in value.forms.iter().enumerate() {
                let Ok(form) = u32::try_from(i) else {
                    break;
                };
                forms
                    .entry(entry.key)
                    .or_default()
                    .push(Candidate { id, form });
            }
            kept.push(value);
        }
        if forms.is_empty() {
            return None;
        }
        // About 64 bits per piece keeps false hits near 1 in 64 windows.
        let bits = (forms.len() * STRIDE * 64)
            .next_power_of_two()
            .trailing_zeros()
            .clamp(12, 24);
        let mut filter = vec![0u64; (1usize << bits) / 64];
        let shift = 64 - bits;
        for key in forms.keys() {
            let key = key.to_le_bytes();
            for offset in 0..STRIDE {
                if let Some(gram) = gram_at(&key, offset) {
                    let slot = filter_slot(gram, shift);
                    filter[slot / 64] |= 1 << (slot % 64);
                }
            }
        }
        Some(Index {
            values: kept,
            filter,
            shift,
            forms,
            longest,
            base: *BASE,
        })
    }

    /// Whether some key holds this piece.
    fn may_hold(&self, gram: u32) -> bool {
        let slot = filter_slot(gram, self.shift);
        self.filter
            .get(slot / 64)
            .is_some_and(|bits| bits & (1 << (slot % 64)) != 0)
    }
}

/// One search of one text: prefix hashes from its first candidate on, extended only as far as
/// a candidate needs, and what is left of its budget of checks.
struct Scan<'a> {
    index: &'a Index,
    input: &'a [u8],
    /// `prefix[i]` is the hash of `input[origin..origin + i]`.
    prefix: Vec<u64>,
    origin: usize,
    budget: usize,
}

impl<'a> Scan<'a> {
    fn new(index: &'a Index, input: &'a [u8]) -> Scan<'a> {
        Scan {
            index,
            input,
            prefix: Vec::new(),
            origin: 0,
            budget: input.len().saturating_mul(CHECKS_PER_BYTE) + 4096,
        }
    }

    /// The hash of `input[start..start + len]`; `None` past the end of the text. Scans move
    /// left to right, so `start` is never before the first candidate's.
    fn window_hash(&mut self, start: usize, len: usize, shift: u64) -> Option<u64> {
        let end = start
            .checked_add(len)
            .filter(|end| *end <= self.input.len())?;
        // Restart the prefix at a candidate far past it, rather than hash the gap: text between
        // rare candidates is never hashed, and a restart costs at most one window.
        let reach = self.origin + self.prefix.len();
        if self.prefix.is_empty() || start < self.origin || start > reach + 4096 {
            self.origin = start;
            self.prefix.clear();
            self.prefix.push(0);
        }
        let base = self.index.base;
        let mut h = *self.prefix.last()?;
        while self.origin + self.prefix.len() - 1 < end {
            let b = *self.input.get(self.origin + self.prefix.len() - 1)?;
            h = add_mod(mul_mod(h, base), u64::from(b));
            self.prefix.push(h);
        }
        let after = *self.prefix.get(end - self.origin)?;
        let before = *self.prefix.get(start - self.origin)?;
        Some(add_mod(after, MODULUS - mul_mod(before, shift)))
    }

    /// The longest form that occurs at `at`; `Err` once the budget is spent.
    fn longest_at(&mut self, at: usize) -> Result<Option<usize>, ()> {
        let index = self.index;
        let Some(candidates) = key_at(self.input, at).and_then(|key| index.forms.get(&key)) else {
            return Ok(None);
        };
        let mut best: Option<usize> = None;
        for Candidate { id, form } in candidates {
            self.budget = self.budget.checked_sub(1).ok_or(())?;
            let Some(value) = index.values.get(*id as usize) else {
                continue;
            };
            let Some(confirm) = value.confirm(*form as usize) else {
                continue;
            };
            if best.is_some_and(|b| b >= confirm.len)
                || self.window_hash(at, confirm.len, confirm.shift) != Some(confirm.hash)
            {
                continue;
            }
            // The hashes agree: compare the bytes, once, for a match that is then skipped.
            let same = value
                .forms
                .get(*form as usize)
                .and_then(|entry| materialize(value.value.expose_secret(), entry.form))
                .is_some_and(|whole| self.input[at..].starts_with(&whole));
            if same {
                best = Some(confirm.len);
            }
        }
        Ok(best)
    }

    /// The leftmost match starting at or after `from`, and of those the longest. A match
    /// starting at `p` covers the window at the first anchor `from + k * STRIDE` at or after `p`,
    /// and anchors are visited in order, so the first confirmed match is the leftmost. Once the
    /// budget is spent, the rest of the text counts as one match: it is masked, never shown.
    fn next_match(&mut self, from: usize) -> Option<(usize, usize)> {
        let input = self.input;
        let rest = input.get(from..)?;
        let mut windows = rest.chunks_exact(STRIDE);
        let mut anchor = from;
        for window in windows.by_ref() {
            let gram = u32::from_le_bytes([window[0], window[1], window[2], window[3]]);
            if self.index.may_hold(gram)
                && let Some(found) = self.confirm(from, anchor)
            {
                return Some(found);
            }
            anchor += STRIDE;
        }
        let tail = windows.remainder();
        if tail.len() >= GRAM && self.index.may_hold(gram_at(tail, 0)?) {
            return self.confirm(from, anchor);
        }
        None
    }

    /// The first match starting between the previous anchor and `anchor`.
    fn confirm(&mut self, from: usize, anchor: usize) -> Option<(usize, usize)> {
        let first = anchor.saturating_sub(STRIDE - 1).max(from);
        for start in first..=anchor {
            match self.longest_at(start) {
                Ok(Some(len)) => return Some((start, start + len)),
                Ok(None) => {}
                Err(()) => return Some((start, self.input.len())),
            }
        }
        None
    }
}

/// Redacts a fixed set of secret values; cheap to clone.
#[derive(Clone, Default)]
pub struct Redactor {
    index: Option<Arc<Index>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redactor(***)")
    }
}

impl Redactor {
    /// A redactor over copies of `values`.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a SecretValue>) -> Redactor {
        Redactor::shared(
            values
                .into_iter()
                .map(|v| Arc::new(SecretValue::new(v.expose_secret().to_vec()))),
        )
    }

    /// A redactor over values shared with their owner, not copied.
    pub fn shared(values: impl IntoIterator<Item = Arc<SecretValue>>) -> Redactor {
        Redactor::indexed(values.into_iter().map(|v| Arc::new(IndexedValue::new(v))))
    }

    /// A redactor over values whose forms are already indexed: building it only merges their
    /// entries, whatever the values' sizes.
    pub fn indexed(values: impl IntoIterator<Item = Arc<IndexedValue>>) -> Redactor {
        Redactor {
            index: Index::build(values.into_iter().collect()).map(Arc::new),
        }
    }

    /// Whether `input` holds any secret value or encoding.
    pub fn finds_in(&self, input: &[u8]) -> bool {
        self.index
            .as_ref()
            .is_some_and(|i| Scan::new(i, input).next_match(0).is_some())
    }

    /// `input` with every secret value and encoding replaced by `***`.
    pub fn redact(&self, input: &[u8]) -> Vec<u8> {
        let Some(index) = &self.index else {
            return input.to_vec();
        };
        let mut scan = Scan::new(index, input);
        let mut out = Vec::with_capacity(input.len());
        let mut last = 0;
        while let Some((start, end)) = scan.next_match(last) {
            out.extend_from_slice(&input[last..start]);
            out.extend_from_slice(MASK);
            last = end;
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
    /// Feeds a chunk; returns what is safe to pass on. Small chunks are gathered until a
    /// quarter of the longest form (at least 4 KiB) is new, so a task writing a byte at a time
    /// does not make the worker rescan what it holds back for every byte.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let Some(index) = &self.redactor.index else {
            return chunk.to_vec();
        };
        self.carry.extend_from_slice(chunk);
        let hold = index.longest.saturating_sub(1);
        if self.carry.len() < hold + (index.longest / 4).max(4096) {
            return Vec::new();
        }
        let buf = std::mem::take(&mut self.carry);
        // A match starting before `cut` lies wholly inside `buf`; later ones may continue in the
        // next chunk and wait in `carry`.
        let cut = buf.len().saturating_sub(hold);
        let mut scan = Scan::new(index, &buf);
        let mut out = Vec::with_capacity(buf.len());
        let mut last = 0;
        while let Some((start, end)) = scan.next_match(last) {
            if start >= cut {
                break;
            }
            out.extend_from_slice(&buf[last..start]);
            out.extend_from_slice(MASK);
            last = end;
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
    fn a_value_cannot_forge_a_log_line_or_hide_one_behind_escapes() {
        use std::io::Write;
        let mut out = Vec::new();
        {
            let mut w = RedactingWriter::new(&mut out, SharedRedactor::default());
            w.write_all(b"INFO path=\"/x\nERROR forged\" \x1b[2Kgone\ttab\n")
                .unwrap();
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "INFO path=\"/x\\nERROR forged\" \\x1b[2Kgone\ttab\n"
        );
        assert!(matches!(escape_controls(b"plain line\n"), Cow::Borrowed(_)));
    }

    #[test]
    fn short_values_and_no_values_change_nothing() {
        let r = Redactor::new([&SecretValue::new(b"task".to_vec())]);
        assert_eq!(r.redact(b"task WARN tasks"), b"task WARN tasks");
        assert!(!r.finds_in(b"a task"));
        let none = Redactor::new(std::iter::empty());
        assert_eq!(none.redact(b"anything"), b"anything");
    }

    #[test]
    fn a_large_multi_line_value_is_masked_whole_and_line_by_line() {
        // 64 KiB of PEM-like lines: every line and the whole value are masked; a prefix alone
        // (the header every such key shares) is not, so ordinary text stays readable.
        let mut value = b"-----BEGIN TEST KEY-----\n".to_vec();
        let mut n: u64 = 7;
        while value.len() < 64 * 1024 - 64 {
            for _ in 0..64 {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                value.push(
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
                        [(n >> 58) as usize],
                );
            }
            value.push(b'\n');
        }
        value.extend_from_slice(b"-----END TEST KEY-----");
        let r = Redactor::new([&SecretValue::new(value.clone())]);
        let text = [b"key: ".as_slice(), &value, b" done"].concat();
        assert_eq!(r.redact(&text), b"key: *** done");
        let third_line = value.split(|b| *b == b'\n').nth(2).unwrap().to_vec();
        assert_eq!(
            r.redact(&[b"x ".as_slice(), &third_line, b" y"].concat()),
            b"x *** y"
        );
        let hexed = hex(&value, false);
        assert_eq!(
            r.redact(&[b"<".as_slice(), &hexed, b">"].concat()),
            b"<***>"
        );
        assert_eq!(r.redact(b"-----BEGIN TES"), b"-----BEGIN TES");
    }

    #[test]
    fn the_longest_of_overlapping_forms_wins_and_neighbours_survive() {
        let r = Redactor::new([
            &SecretValue::new(b"abcdefgh".to_vec()),
            &SecretValue::new(b"abcdefghijkl".to_vec()),
        ]);
        assert_eq!(r.redact(b"1abcdefghijkl2abcdefgh3"), b"1***2***3");
        assert_eq!(r.redact(b"abcdefg"), b"abcdefg");
    }

    #[test]
    fn text_that_repeats_a_long_values_start_costs_one_check_per_position() {
        // A 64 KiB value of one repeated byte, and 1 MiB of that byte: every position starts
        // like the value, and none holds it whole. Each is settled by its hash, not by comparing
        // up to 64 KiB, and nothing is masked.
        let mut value = vec![b'a'; 64 * 1024 - 1];
        value.push(b'b');
        let r = Redactor::new([&SecretValue::new(value.clone())]);
        let text = vec![b'a'; 1 << 20];
        assert_eq!(r.redact(&text), text);
        let planted = [text.as_slice(), &value, b" end"].concat();
        assert_eq!(r.redact(&planted), [text.as_slice(), b"*** end"].concat());
    }

    #[test]
    fn a_scan_past_its_budget_masks_the_rest_rather_than_show_it() {
        // Hundreds of forms sharing one key, and text that repeats the key everywhere.
        let values: Vec<SecretValue> = (0..100)
            .map(|i| SecretValue::new([vec![b'a'; 8 + i], b"!".to_vec()].concat()))
            .collect();
        let r = Redactor::new(values.iter());
        let text = [b"visible ".as_slice(), &vec![b'a'; 100_000]].concat();
        let out = r.redact(&text);
        assert!(
            out.starts_with(b"visible "),
            "{}",
            String::from_utf8_lossy(&out[..40])
        );
        assert!(out.ends_with(MASK) && out.len() < text.len());
    }

    #[test]
    fn the_log_redactor_keeps_one_part_per_workspace() {
        let shared = SharedRedactor::default();
        shared.set_part(
            "a",
            Some(Redactor::new([&SecretValue::new(b"alpha-secret".to_vec())])),
        );
        shared.set_part(
            "b",
            Some(Redactor::new([&SecretValue::new(b"bravo-secret".to_vec())])),
        );
        assert_eq!(shared.redact(b"alpha-secret bravo-secret"), b"*** ***");
        shared.set_part("a", None);
        assert_eq!(
            shared.redact(b"alpha-secret bravo-secret"),
            b"alpha-secret ***"
        );
    }
}

/// The redactors shared by every writer of the server's log: one part per workspace, so a
/// change of secrets rebuilds one workspace's part, not every value of the server.
#[derive(Clone, Default)]
pub struct SharedRedactor(Arc<std::sync::RwLock<std::collections::BTreeMap<String, Redactor>>>);

impl std::fmt::Debug for SharedRedactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedRedactor(***)")
    }
}

impl SharedRedactor {
    /// Replaces every part with one redactor.
    pub fn replace(&self, redactor: Redactor) {
        if let Ok(mut parts) = self.0.write() {
            parts.clear();
            parts.insert(String::new(), redactor);
        }
    }

    /// Sets (or with `None` removes) the redactor of one part.
    pub fn set_part(&self, part: &str, redactor: Option<Redactor>) {
        if let Ok(mut parts) = self.0.write() {
            match redactor {
                Some(r) => parts.insert(part.to_owned(), r),
                None => parts.remove(part),
            };
        }
    }

    /// Masks every secret value, then every credential of a known shape (`mask_credentials`).
    pub fn redact(&self, input: &[u8]) -> Vec<u8> {
        let mut text = Cow::Borrowed(input);
        if let Ok(parts) = self.0.read() {
            for redactor in parts.values() {
                if redactor.finds_in(&text) {
                    text = Cow::Owned(redactor.redact(&text));
                }
            }
        }
        mask_credentials(&text).into_owned()
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
        let redacted = self.redactor.redact(buf);
        self.inner.write_all(&escape_controls(&redacted))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// One log line with every control character but its final newline escaped (`\n`, `\x1b`…), so
/// a value that holds a newline cannot forge a line of its own, nor a terminal escape hide one.
pub fn escape_controls(line: &[u8]) -> Cow<'_, [u8]> {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    if !body.iter().any(|b| b.is_ascii_control() && *b != b'\t') {
        return Cow::Borrowed(line);
    }
    let mut out = Vec::with_capacity(line.len() + 16);
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.push(b),
            b if b.is_ascii_control() => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            b => out.push(b),
        }
    }
    if body.len() < line.len() {
        out.push(b'\n');
    }
    Cow::Owned(out)
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
