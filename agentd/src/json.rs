//! A JSON writer whose output is canonical (RFC 8785, JSON Canonicalization Scheme) by
//! construction: object members are sorted by key, strings use the canonical escapes, and
//! numbers are integers within ±2^53 (larger values must be written as strings).
//!
//! Records are built with it directly, without an intermediate tree: an object collects its
//! members' encoded values in one buffer, then writes them out in key order. The bytes it
//! produces are what agentd hashes and signs, so the encoding is fixed here and tested against
//! an independent canonicalisation in the tests.

/// Largest integer JSON carries exactly (2^53 - 1).
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Which bytes need escaping in a JSON string: control characters, `"` and `\\`.
const NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Appends `s` as a canonical JSON string.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !NEEDS_ESCAPE[b as usize] {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\x08' => out.extend_from_slice(b"\\b"),
            b'\x0c' => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn write_u64(out: &mut Vec<u8>, v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut v = v;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

use std::borrow::Cow;

/// A member key: almost always a literal, occasionally built at run time.
pub type Key = Cow<'static, str>;

/// RFC 8785 member order: by UTF-16 code units (byte order when both keys are ASCII).
fn key_order(a: &str, b: &str) -> std::cmp::Ordering {
    if a.is_ascii() && b.is_ascii() {
        a.cmp(b)
    } else {
        a.encode_utf16().cmp(b.encode_utf16())
    }
}

/// A JSON object under construction. Members may be added in any order; [`Obj::write_to`]
/// writes them sorted by key. Keys must be unique (checked in debug builds).
pub struct Obj {
    /// The members' encoded values, back to back.
    values: Vec<u8>,
    /// (key, start, end) of each member's value in `values`.
    members: Vec<(Key, u32, u32)>,
    /// Whether every key is ASCII (then byte order is RFC 8785 order).
    ascii: bool,
}

impl Default for Obj {
    fn default() -> Self {
        Self::new()
    }
}

impl Obj {
    /// An empty object.
    pub fn new() -> Self {
        Self {
            values: Vec::with_capacity(256),
            members: Vec::with_capacity(24),
            ascii: true,
        }
    }

    fn push(&mut self, key: impl Into<Key>, start: usize) {
        let key = key.into();
        self.ascii &= key.is_ascii();
        self.members
            .push((key, start as u32, self.values.len() as u32));
    }

    /// A string member.
    pub fn str(&mut self, key: impl Into<Key>, value: &str) -> &mut Self {
        let start = self.values.len();
        write_str(&mut self.values, value);
        self.push(key, start);
        self
    }

    /// An unsigned integer member. Values above 2^53 - 1 are written as strings, which keeps
    /// them exact (callers use strings for 64-bit values anyway).
    pub fn u64(&mut self, key: impl Into<Key>, value: u64) -> &mut Self {
        let start = self.values.len();
        if value <= MAX_SAFE_INTEGER {
            write_u64(&mut self.values, value);
        } else {
            self.values.push(b'"');
            write_u64(&mut self.values, value);
            self.values.push(b'"');
        }
        self.push(key, start);
        self
    }

    /// A signed integer member (same range rule as [`Obj::u64`]).
    pub fn i64(&mut self, key: impl Into<Key>, value: i64) -> &mut Self {
        let key = key.into();
        if value >= 0 {
            return self.u64(key, value as u64);
        }
        let start = self.values.len();
        let magnitude = value.unsigned_abs();
        if magnitude <= MAX_SAFE_INTEGER {
            self.values.push(b'-');
            write_u64(&mut self.values, magnitude);
        } else {
            self.values
                .extend_from_slice(format!("\"{value}\"").as_bytes());
        }
        self.push(key, start);
        self
    }

    /// A 64-bit value as a decimal string (nanosecond times, inode numbers).
    pub fn u64_str(&mut self, key: impl Into<Key>, value: u64) -> &mut Self {
        let start = self.values.len();
        self.values.push(b'"');
        write_u64(&mut self.values, value);
        self.values.push(b'"');
        self.push(key, start);
        self
    }

    /// A boolean member.
    pub fn bool(&mut self, key: impl Into<Key>, value: bool) -> &mut Self {
        let start = self.values.len();
        self.values
            .extend_from_slice(if value { b"true" } else { b"false" });
        self.push(key, start);
        self
    }

    /// A `null` member.
    pub fn null(&mut self, key: impl Into<Key>) -> &mut Self {
        let start = self.values.len();
        self.values.extend_from_slice(b"null");
        self.push(key, start);
        self
    }

    /// A nested object member, built by `build`.
    pub fn obj(&mut self, key: impl Into<Key>, build: impl FnOnce(&mut Obj)) -> &mut Self {
        let mut child = Obj::new();
        build(&mut child);
        self.obj_value(key, &child)
    }

    /// A nested object member, already built.
    pub fn obj_value(&mut self, key: impl Into<Key>, child: &Obj) -> &mut Self {
        let start = self.values.len();
        child.write_to(&mut self.values);
        self.push(key, start);
        self
    }

    /// An array of strings.
    pub fn strs<'a>(
        &mut self,
        key: impl Into<Key>,
        values: impl IntoIterator<Item = &'a str>,
    ) -> &mut Self {
        let start = self.values.len();
        self.values.push(b'[');
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                self.values.push(b',');
            }
            write_str(&mut self.values, value);
        }
        self.values.push(b']');
        self.push(key, start);
        self
    }

    /// An array of objects.
    pub fn objs<'a>(
        &mut self,
        key: impl Into<Key>,
        values: impl IntoIterator<Item = &'a Obj>,
    ) -> &mut Self {
        let start = self.values.len();
        self.values.push(b'[');
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                self.values.push(b',');
            }
            value.write_to(&mut self.values);
        }
        self.values.push(b']');
        self.push(key, start);
        self
    }

    /// A member whose value is already canonical JSON (for example another record's bytes).
    pub fn raw(&mut self, key: impl Into<Key>, json: &[u8]) -> &mut Self {
        let start = self.values.len();
        self.values.extend_from_slice(json);
        self.push(key, start);
        self
    }

    /// Whether a member `key` was added.
    pub fn has(&self, key: &str) -> bool {
        self.members.iter().any(|(k, _, _)| k == key)
    }

    /// Appends the object, members sorted by key, to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut order: Vec<usize> = (0..self.members.len()).collect();
        // RFC 8785 sorts by UTF-16 code units; keys here are ASCII, where that is byte order.
        if self.ascii {
            order.sort_unstable_by(|&a, &b| {
                self.members[a]
                    .0
                    .as_bytes()
                    .cmp(self.members[b].0.as_bytes())
            });
        } else {
            order.sort_unstable_by(|&a, &b| key_order(&self.members[a].0, &self.members[b].0));
        }
        debug_assert!(
            order
                .windows(2)
                .all(|w| self.members[w[0]].0 != self.members[w[1]].0),
            "duplicate key in {:?}",
            self.members.iter().map(|m| &m.0).collect::<Vec<_>>()
        );
        out.push(b'{');
        for (i, &m) in order.iter().enumerate() {
            let (key, start, end) = &self.members[m];
            if i > 0 {
                out.push(b',');
            }
            write_str(out, key);
            out.push(b':');
            out.extend_from_slice(&self.values[*start as usize..*end as usize]);
        }
        out.push(b'}');
    }

    /// The object's canonical bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.values.len() + self.members.len() * 16 + 2);
        self.write_to(&mut out);
        out
    }
}

/// Canonicalises any JSON value (RFC 8785) for checking: objects sorted by key, canonical
/// escapes, integers only. Returns `None` for floats or integers beyond ±2^53, which agentd never
/// writes.
pub fn canonicalize(value: &serde_json::Value, out: &mut Vec<u8>) -> Option<()> {
    use serde_json::Value;
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                (u <= MAX_SAFE_INTEGER).then_some(())?;
                write_u64(out, u);
            } else {
                let i = n.as_i64()?;
                (i.unsigned_abs() <= MAX_SAFE_INTEGER).then_some(())?;
                out.extend_from_slice(i.to_string().as_bytes());
            }
        }
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonicalize(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, key);
                out.push(b':');
                canonicalize(&map[key], out)?;
            }
            out.push(b'}');
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(text: &str) -> String {
        let value: serde_json::Value = serde_json::from_str(text).unwrap();
        let mut out = Vec::new();
        canonicalize(&value, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn objects_come_out_sorted_and_escaped() {
        let mut obj = Obj::new();
        obj.str("zeta", "a\"b\\c\n\u{1}\u{7f}é")
            .u64("alpha", 42)
            .i64("neg", -7)
            .u64("big", 1 << 60)
            .bool("yes", true)
            .null("nothing")
            .strs("list", ["x", "y"])
            .obj("inner", |o| {
                o.u64("b", 2).u64("a", 1);
            });
        let text = String::from_utf8(obj.to_bytes()).unwrap();
        assert_eq!(
            text,
            r#"{"alpha":42,"big":"1152921504606846976","inner":{"a":1,"b":2},"list":["x","y"],"neg":-7,"nothing":null,"yes":true,"zeta":"a\"b\\c\n\u0001é"}"#
        );
        // Parsing and canonicalising independently gives the same bytes.
        assert_eq!(canon(&text), text);
    }

    #[test]
    fn rfc8785_string_escapes() {
        let mut out = Vec::new();
        write_str(&mut out, "\u{8}\u{c}\n\r\t\u{1f}/\u{2028}");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"\\b\\f\\n\\r\\t\\u001f/\u{2028}\""
        );
    }

    #[test]
    fn canonicalize_sorts_by_utf16() {
        // RFC 8785 section 3.2.3: U+1F600 (surrogates D83D DE00) sorts before U+E000 in UTF-16,
        // after it in UTF-8.
        assert_eq!(
            canon("{\"\u{E000}\":2,\"\u{1F600}\":1}"),
            "{\"\u{1F600}\":1,\"\u{E000}\":2}"
        );
        assert_eq!(
            canon("[1,{\"b\":[],\"a\":null}]"),
            "[1,{\"a\":null,\"b\":[]}]"
        );
    }

    #[test]
    fn canonicalize_refuses_floats() {
        let value: serde_json::Value = serde_json::from_str("{\"a\":1.5}").unwrap();
        assert!(canonicalize(&value, &mut Vec::new()).is_none());
    }
}
