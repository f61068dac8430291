//! The byte-level half of the fast decode path: a cursor over a frame's text
//! that reads the envelope's tokens and skips (validating) the raw values
//! `payload`, `args` and `meta` in one pass.
//!
//! It only ever answers "here is the token" or [`NotFast`]: anything it does
//! not handle simply (escapes in envelope strings, odd numbers, nesting deeper
//! than [`MAX_DEPTH`], invalid JSON of any kind) sends the frame to the serde
//! path, which owns every error message. So the scanner needs to be exact
//! only about what it accepts: it must accept nothing serde_json refuses, and
//! a raw value it returns is the same slice serde_json's `RawValue` would be.

use serde_json::value::RawValue;

use crate::decode::MAX_DEPTH;

/// A JSON value passed through untouched: a slice of the frame it came in,
/// known to be valid JSON (it can only be made by the decoder, which checked
/// it, or from a [`RawValue`]). Copying it copies a pointer, not the JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawJson<'a>(&'a str);

impl<'a> RawJson<'a> {
    /// Wraps text [`Cursor::value`] has validated as one JSON value.
    fn new(valid: &'a str) -> Self {
        RawJson(valid)
    }

    /// The JSON text, exactly as the client sent it.
    pub fn get(&self) -> &'a str {
        self.0
    }
}

impl<'a> From<&'a RawValue> for RawJson<'a> {
    fn from(raw: &'a RawValue) -> Self {
        RawJson(raw.get())
    }
}

/// The scanner gave up: decode the frame the slow way.
#[derive(Debug)]
pub(crate) struct NotFast;

pub(crate) type Scan<T> = Result<T, NotFast>;

/// A position in a frame's text. Every token reader first skips JSON
/// whitespace.
#[derive(Debug)]
pub(crate) struct Cursor<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Cursor { text, bytes: text.as_bytes(), pos: 0 }
    }

    /// How far the cursor is into the text.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// Moves the cursor to `pos` (a place an earlier scan of the same
    /// bytes reached).
    pub(crate) fn seek(&mut self, pos: usize) {
        self.pos = pos;
    }

    fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.pos..).unwrap_or_default()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The next byte after whitespace, consumed.
    pub(crate) fn next_token(&mut self) -> Scan<u8> {
        self.skip_ws();
        let b = *self.bytes.get(self.pos).ok_or(NotFast)?;
        self.pos += 1;
        Ok(b)
    }

    /// Consumes `expected` (after whitespace), or gives up.
    pub(crate) fn expect(&mut self, expected: u8) -> Scan<()> {
        if self.next_token()? == expected { Ok(()) } else { Err(NotFast) }
    }

    /// Whether only whitespace is left.
    pub(crate) fn at_end(&mut self) -> bool {
        self.skip_ws();
        self.pos == self.bytes.len()
    }

    /// The next byte after whitespace, not consumed.
    pub(crate) fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.bytes.get(self.pos).copied()
    }

    /// Consumes a `null` literal if one comes next.
    pub(crate) fn null(&mut self) -> bool {
        self.skip_ws();
        let found = self.rest().starts_with(b"null");
        if found {
            self.pos += 4;
        }
        found
    }

    /// A string without escapes, borrowed without its quotes.
    pub(crate) fn plain_string(&mut self) -> Scan<&'a str> {
        self.expect(b'"')?;
        let start = self.pos;
        let end = self.string_end(start);
        if self.bytes.get(end) != Some(&b'"') {
            // An escape, a control character or the end of the text.
            return Err(NotFast);
        }
        self.pos = end + 1;
        self.text.get(start..end).ok_or(NotFast)
    }

    /// A non-negative integer without sign, fraction or exponent that fits
    /// an `i64` (anything else is left to serde, which knows what to say).
    pub(crate) fn integer(&mut self) -> Scan<i64> {
        self.skip_ws();
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
        let digits = self.text.get(start..self.pos).ok_or(NotFast)?;
        if digits.len() > 1 && digits.starts_with('0') {
            return Err(NotFast);
        }
        if let Some(b'.' | b'e' | b'E') = self.bytes.get(self.pos) {
            return Err(NotFast);
        }
        digits.parse().map_err(|_| NotFast)
    }

    /// Skips one complete JSON value, validating it as serde_json would,
    /// and returns its text (without surrounding whitespace). Nesting deeper
    /// than [`MAX_DEPTH`] gives up, so what it returns needs no depth check.
    pub(crate) fn value(&mut self) -> Scan<RawJson<'a>> {
        self.skip_ws();
        let start = self.pos;
        self.pos = skip_value(self.bytes, start).ok_or(NotFast)?;
        self.text.get(start..self.pos).map(RawJson::new).ok_or(NotFast)
    }

    /// From `from`, the index of the first `"`, `\\` or control character
    /// (or the end).
    fn string_end(&self, from: usize) -> usize {
        string_end(self.bytes, from)
    }
}

/// The end of the JSON value at `pos` (no whitespace before it), if it is
/// one. The raw-value half of the scanner: the position lives in a local,
/// not behind `&mut self`, so that it stays in a register, and the common
/// tokens (plain strings and keys, digits) are read inline.
fn skip_value(bytes: &[u8], mut pos: usize) -> Option<usize> {
    // Bit `d` set: the container at depth `d + 1` is an object.
    // MAX_DEPTH < 128, so one u128 is the whole stack.
    let mut objects: u128 = 0;
    let mut depth = 0usize;
    // The innermost container is an object (the stack's top bit, kept
    // at hand: most value ends are commas, which need only it).
    let mut object = false;
    loop {
        // A value is expected here.
        match token(bytes, &mut pos)? {
            b'"' => pos = skip_string(bytes, pos)?,
            open @ (b'{' | b'[') => {
                if depth == MAX_DEPTH {
                    return None;
                }
                let opened = open == b'{';
                pos = skip_ws(bytes, pos);
                let close = if opened { b'}' } else { b']' };
                if bytes.get(pos) == Some(&close) {
                    // Empty: closed at once, the stack untouched.
                    pos += 1;
                } else {
                    let bit = 1u128 << depth;
                    objects = if opened { objects | bit } else { objects & !bit };
                    depth += 1;
                    object = opened;
                    if object {
                        pos = member_key(bytes, pos)?;
                    }
                    continue;
                }
            }
            b't' => pos = literal(bytes, pos, b"rue")?,
            b'f' => pos = literal(bytes, pos, b"alse")?,
            b'n' => pos = literal(bytes, pos, b"ull")?,
            first @ (b'-' | b'0'..=b'9') => pos = skip_number(bytes, pos, first)?,
            _ => return None,
        }
        // A value just ended: close containers until one wants more.
        loop {
            if depth == 0 {
                return Some(pos);
            }
            match token(bytes, &mut pos)? {
                b',' => {
                    if object {
                        pos = member_key(bytes, pos)?;
                    }
                    break;
                }
                b'}' if object => {}
                b']' if !object => {}
                _ => return None,
            }
            depth -= 1;
            object = depth > 0 && objects & (1u128 << (depth - 1)) != 0;
        }
    }
}

/// Past JSON whitespace from `pos`.
#[inline(always)]
fn skip_ws(bytes: &[u8], mut pos: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = bytes.get(pos) {
        pos += 1;
    }
    pos
}

/// The next byte after whitespace, consumed. Machine-written JSON has no
/// whitespace between tokens: the byte at hand is read once.
#[inline(always)]
fn token(bytes: &[u8], pos: &mut usize) -> Option<u8> {
    let mut b = *bytes.get(*pos)?;
    if let b' ' | b'\t' | b'\n' | b'\r' = b {
        *pos = skip_ws(bytes, *pos);
        b = *bytes.get(*pos)?;
    }
    *pos += 1;
    Some(b)
}

/// `"key":` inside a raw object (any valid string), from `pos` (whitespace
/// allowed before it and before the colon).
#[inline(always)]
fn member_key(bytes: &[u8], mut pos: usize) -> Option<usize> {
    if token(bytes, &mut pos)? != b'"' {
        return None;
    }
    pos = skip_string(bytes, pos)?;
    (token(bytes, &mut pos)? == b':').then_some(pos)
}

/// `rest` of a literal whose first byte was consumed.
fn literal(bytes: &[u8], pos: usize, rest: &[u8]) -> Option<usize> {
    bytes.get(pos..)?.starts_with(rest).then_some(pos + rest.len())
}

/// After a string's opening quote at `pos - 1`: just past its closing one.
/// A plain run up to the quote (nearly every string) is found inline; an
/// escape goes to [`skip_escaped`].
#[inline(always)]
fn skip_string(bytes: &[u8], pos: usize) -> Option<usize> {
    let stop = string_end(bytes, pos);
    match bytes.get(stop) {
        Some(b'"') => Some(stop + 1),
        _ => skip_escaped(bytes, stop),
    }
}

/// The rest of a string from `stop`, a byte that is not its closing quote.
/// Escapes must be valid (`\\u` with four hex digits; lone surrogates are
/// allowed in a raw value, as serde_json allows them); raw control
/// characters are not.
#[cold]
fn skip_escaped(bytes: &[u8], mut stop: usize) -> Option<usize> {
    loop {
        match bytes.get(stop) {
            Some(b'"') => return Some(stop + 1),
            Some(b'\\') => {
                let mut pos = stop + 1;
                match bytes.get(pos) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => pos += 1,
                    Some(b'u') => {
                        let hex = bytes.get(pos + 1..pos + 5)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        pos += 5;
                    }
                    _ => return None,
                }
                stop = string_end(bytes, pos);
            }
            _ => return None,
        }
    }
}

/// From `from`, the index of the first `"`, `\\` or control character (or
/// the end). Its first word is tested inline: most strings (keys, names,
/// ids) end within it.
#[inline(always)]
fn string_end(bytes: &[u8], from: usize) -> usize {
    match bytes.get(from..from + 8).map(<[u8; 8]>::try_from) {
        Some(Ok(word)) => match special_bytes(word) {
            0 => string_stop(bytes, from + 8),
            found => from + found.trailing_zeros() as usize / 8,
        },
        _ => string_stop(bytes, from),
    }
}

/// [`string_end`] past its first word. Long strings (payload text, most of
/// a frame) skip clean 32-byte blocks, a test the compiler turns into a few
/// vector instructions; then eight bytes at a time with bit tricks on a
/// `u64` find the exact byte (a byte loop with an early exit is not
/// vectorized).
fn string_stop(bytes: &[u8], from: usize) -> usize {
    let rest = bytes.get(from..).unwrap_or_default();
    let (blocks, _) = rest.as_chunks::<32>();
    let clean = 32 * blocks.iter().take_while(|block| !any_special(block)).count();
    let rest = rest.get(clean..).unwrap_or_default();
    let (words, tail) = rest.as_chunks::<8>();
    for (i, &word) in words.iter().enumerate() {
        let found = special_bytes(word);
        if found != 0 {
            // Little-endian: the lowest flagged byte comes first.
            return from + clean + i * 8 + found.trailing_zeros() as usize / 8;
        }
    }
    // Fewer than 8 bytes left.
    let special = |b: &u8| *b == b'"' || *b == b'\\' || *b < 0x20;
    from + clean + words.len() * 8 + tail.iter().position(special).unwrap_or(tail.len())
}

/// The rest of a number whose first byte (`-` or a digit) was consumed at
/// `pos - 1`, per the JSON grammar: no leading zeros, digits after `.` and
/// `e`.
#[inline(always)]
fn skip_number(bytes: &[u8], mut pos: usize, first: u8) -> Option<usize> {
    let first = if first == b'-' {
        pos += 1;
        *bytes.get(pos - 1)?
    } else {
        first
    };
    match first {
        b'0' => {}
        b'1'..=b'9' => pos = digits(bytes, pos),
        _ => return None,
    }
    match bytes.get(pos) {
        // A leading zero followed by more digits.
        Some(b'0'..=b'9') => None,
        Some(b'.' | b'e' | b'E') => skip_fraction(bytes, pos),
        _ => Some(pos),
    }
}

/// A number's fraction and exponent, from `pos` (at `.`, `e` or `E`).
fn skip_fraction(bytes: &[u8], mut pos: usize) -> Option<usize> {
    if bytes.get(pos) == Some(&b'.') {
        pos = some_digits(bytes, pos + 1)?;
    }
    if let Some(b'e' | b'E') = bytes.get(pos) {
        pos += 1;
        if let Some(b'+' | b'-') = bytes.get(pos) {
            pos += 1;
        }
        pos = some_digits(bytes, pos)?;
    }
    Some(pos)
}

/// Past the digits from `pos`, eight at a time while eight bytes are left.
#[inline(always)]
fn digits(bytes: &[u8], mut pos: usize) -> usize {
    while let Some(Ok(word)) = bytes.get(pos..pos + 8).map(<[u8; 8]>::try_from) {
        match non_digits(word) {
            0 => pos += 8,
            found => return pos + found.trailing_zeros() as usize / 8,
        }
    }
    while let Some(b'0'..=b'9') = bytes.get(pos) {
        pos += 1;
    }
    pos
}

/// Past at least one digit from `pos`.
fn some_digits(bytes: &[u8], pos: usize) -> Option<usize> {
    let end = digits(bytes, pos);
    (end > pos).then_some(end)
}

/// Flags (high bit) the bytes of `word` that are not ASCII digits. Exact
/// for every byte: no borrow or carry crosses a byte.
fn non_digits(word: [u8; 8]) -> u64 {
    const LOW7: u64 = u64::from_le_bytes([0x7f; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    // Digits become 0 to 9; every other byte something else.
    let x = u64::from_le_bytes(word) ^ (ONES * u64::from(b'0'));
    // Per byte, at most 0x7f + 0x76 < 0x100: the high bit is set exactly
    // when the low seven bits are 10 or more. A high bit of its own (a byte
    // of 0x80 or more) is not a digit either.
    (((x & LOW7) + ONES * (0x80 - 10)) | x) & HIGH
}

/// Whether `block` holds a byte that ends a plain run of string text. No
/// early exit, so that it compiles to vector compares and one mask test.
fn any_special(block: &[u8; 32]) -> bool {
    // `b ^ 2 <= 0x20` is exactly `b < 0x20 || b == b'"'`.
    block.iter().fold(false, |any, &b| any | ((b ^ 2) <= 0x20) | (b == b'\\'))
}

/// Flags (high bit) the bytes of `word` that end a plain run of string text:
/// `"`, `\\` and control characters. Bytes below `n` (n <= 128) are found with
/// the classic "has a zero byte" trick; a borrow can only wrongly flag bytes
/// above one that really is below `n`, so (little-endian) the lowest flag is
/// exact.
fn special_bytes(word: [u8; 8]) -> u64 {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    let below = |w: u64, n: u8| w.wrapping_sub(ONES * u64::from(n)) & !w & HIGH;
    let w = u64::from_le_bytes(word);
    // `b ^ 2 <= 0x20` is exactly `b < 0x20 || b == b'"'`.
    below(w ^ (ONES * 2), 0x21) | below(w ^ (ONES * u64::from(b'\\')), 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value `text` starts with, if the scanner accepts it, and what follows.
    fn scan(text: &str) -> Option<(&str, &str)> {
        let mut c = Cursor::new(text);
        let v = c.value().ok()?;
        Some((v.get(), &text[c.pos..]))
    }

    /// Whether `text` is exactly one value (whitespace around allowed).
    fn whole(text: &str) -> bool {
        let mut c = Cursor::new(text);
        c.value().is_ok() && c.at_end()
    }

    fn serde_accepts(text: &str) -> bool {
        serde_json::from_str::<&RawValue>(text).is_ok()
    }

    fn agrees(text: &str) {
        assert_eq!(whole(text), serde_accepts(text), "{text:?}");
    }

    /// JSON text with every byte the grammar cares about.
    fn json_like() -> impl proptest::strategy::Strategy<Value = String> {
        r#"[{}\[\]":, \t\n0-9.eE+\-\\/ubfnrtl"aé]{0,48}"#
    }

    /// A valid value's text, then one byte replaced, inserted or removed.
    fn nearly_valid() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(serde_json::Value::from),
            "[a-z\"\\\\\u{1}é]{0,40}".prop_map(serde_json::Value::from),
        ];
        let value = leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[a-z]{0,10}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        });
        (value, any::<prop::sample::Index>(), 0u8..4, select_byte()).prop_map(|(value, at, how, byte)| {
            let mut bytes = value.to_string().into_bytes();
            let at = at.index(bytes.len() + 1);
            match how {
                0 => {}
                1 if at < bytes.len() => bytes[at] = byte,
                2 => bytes.insert(at, byte),
                _ if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => {}
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    }

    fn select_byte() -> impl proptest::strategy::Strategy<Value = u8> {
        proptest::sample::select(b"{}[]\":, \t\n0123456789.eE+-\\/ux\x01".to_vec())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// The scanner and serde_json agree on every text: the scanner may
        /// only accept what serde accepts, and (on these texts, which need
        /// no depth beyond the limit) it accepts all of it.
        #[test]
        fn the_scanner_accepts_exactly_what_serde_accepts(text in json_like()) {
            agrees(&text);
        }

        #[test]
        fn the_scanner_agrees_with_serde_on_nearly_valid_json(text in nearly_valid()) {
            agrees(&text);
            // Inside an object too, after a key, as a payload is.
            agrees(&format!("{{\"p\":{text}}}"));
            agrees(&format!("[{text},{text}]"));
        }
    }

    #[test]
    fn every_kind_of_value() {
        for text in [
            "null",
            "true",
            "false",
            "0",
            "-0",
            "12",
            "1e5",
            "1E+5",
            "1.5E-3",
            "-12.25e10",
            r#""""#,
            r#""abc""#,
            "[]",
            "{}",
            r#"[1,"a",{"b":[null,true,false]},[],{}]"#,
            r#"{"a":{"b":{"c":[1,2,{"d":"e"}]}},"f":-1.0}"#,
            " \t\n\r[ 1 , { \"a\" : [ ] , \"b\" :{ } } ] \r\n",
        ] {
            assert!(whole(text), "{text:?}");
            agrees(text);
        }
    }

    #[test]
    fn the_value_is_returned_without_surrounding_whitespace() {
        assert_eq!(scan(" \n{ \"a\" : 1 } ,x"), Some((r#"{ "a" : 1 }"#, " ,x")));
        assert_eq!(scan("12,"), Some(("12", ",")));
        assert_eq!(scan("nullx"), Some(("null", "x")));
        assert_eq!(scan(r#""a"}"#), Some((r#""a""#, "}")));
    }

    #[test]
    fn escapes() {
        for text in [
            r#""\"\\\/\b\f\n\r\t""#,
            r#""\u00e9\u00E9""#,
            r#""\ud83d\ude00""#,
            // A lone surrogate is grammatical; serde_json's RawValue allows it.
            r#""\ud800""#,
            r#""\udc00x""#,
            r#"{"k\"ey":"v\\"}"#,
            "\"é ünïcode 😀\"",
        ] {
            assert!(whole(text), "{text:?}");
            agrees(text);
        }
        for text in [r#""\x""#, r#""\u12""#, r#""\u12g4""#, r#""\u""#, r#""\"#, r#""\'""#, r#""\U0041""#] {
            assert!(!whole(text), "{text:?}");
            agrees(text);
        }
    }

    #[test]
    fn invalid_strings() {
        for text in ["\"a\nb\"", "\"\t\"", "\"\u{1f}\"", "\"\u{0}\"", r#""abc"#, r#"""#, r#"{"a":"b}"#] {
            assert!(!whole(text), "{text:?}");
            agrees(text);
        }
        // DEL and everything above 0x7f are fine.
        agrees("\"\u{7f}\u{80}\"");
    }

    #[test]
    fn numbers_follow_the_grammar() {
        for bad in ["01", "-01", "00", "1.", ".5", "+1", "-", "1e", "1e+", "1.e5", "--1", "-a", "0x1", "1.5.2"] {
            assert!(!whole(bad), "{bad:?}");
            agrees(bad);
        }
        for good in ["-0", "0.0", "1e5", "1e-05", "1.5E-3", "123456789012345678901234567890", "1e999", "-0.0e0"] {
            assert!(whole(good), "{good:?}");
            agrees(good);
        }
    }

    #[test]
    fn structural_errors() {
        for bad in [
            "",
            " ",
            "[",
            "]",
            "{",
            "}",
            "[1,]",
            "[,1]",
            "[1 2]",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{1:2}",
            "{a:1}",
            "{\"a\" 1}",
            "[}",
            "{]",
            "tru",
            "nul",
            "True",
            "[1]]",
            "[[1]",
            "{\"a\":1 \"b\":2}",
        ] {
            assert!(!whole(bad), "{bad:?}");
            agrees(bad);
        }
    }

    #[test]
    fn depth_up_to_the_limit_and_not_beyond() {
        let nest = |d: usize| format!("{}1{}", "[".repeat(d), "]".repeat(d));
        assert!(whole(&nest(MAX_DEPTH)));
        assert!(!whole(&nest(MAX_DEPTH + 1)));
        let objects = |d: usize| format!("{}1{}", r#"{"a":"#.repeat(d), "}".repeat(d));
        assert!(whole(&objects(MAX_DEPTH)));
        assert!(!whole(&objects(MAX_DEPTH + 1)));
        // Mixed containers close in the right order.
        let mixed = format!("{}1{}", r#"[{"a":"#.repeat(MAX_DEPTH / 2), "}]".repeat(MAX_DEPTH / 2));
        assert!(whole(&mixed));
        assert!(!whole(&format!("{}1{}", r#"[{"a":"#.repeat(3), "]}".repeat(3))));
        // Depth returns to zero between siblings.
        let wide = format!("[{}1]", format!("{},", nest(MAX_DEPTH - 1)).repeat(3));
        assert!(whole(&wide));
        // Far beyond: gives up without recursion.
        assert!(!whole(&"[".repeat(100_000)));
    }

    #[test]
    fn truncated_values() {
        let full = r#"{"a":[1,2.5e3,"x\u0041",{"b":null}],"c":true}"#;
        assert!(whole(full));
        for cut in 0..full.len() {
            assert!(!whole(&full[..cut]), "{:?}", &full[..cut]);
        }
    }

    #[test]
    fn string_stop_and_end_find_the_first_special_byte_at_any_offset() {
        for len in 0..70 {
            for special in [b'"', b'\\', b'\n', 0u8, 0x1f] {
                // Bytes just above and just below the special ones, then it.
                let mut bytes: Vec<u8> =
                    [b'x', b' ', b'#', b']', 0xc3, 0xa9].iter().copied().cycle().take(len).collect();
                if len % 6 == 5 {
                    bytes.pop();
                    bytes.push(b'x');
                }
                bytes.push(special);
                bytes.extend_from_slice(b"yy\"");
                let text = String::from_utf8(bytes).unwrap();
                assert_eq!(string_stop(text.as_bytes(), 0), len, "{text:?}");
                assert_eq!(string_end(text.as_bytes(), 0), len, "{text:?}");
            }
            let plain = "é".repeat(len);
            assert_eq!(string_stop(plain.as_bytes(), 0), plain.len());
            assert_eq!(string_end(plain.as_bytes(), 0), plain.len());
        }
    }

    /// The word-at-a-time digit test flags exactly the bytes that are not
    /// ASCII digits, whatever their neighbours: every byte value, at every
    /// place in a word, between digits (whose borrows a looser trick would
    /// carry into the next byte, taking `:` for a digit).
    #[test]
    fn non_digits_flags_exactly_the_bytes_that_are_not_digits() {
        for place in 0..8 {
            for fill in [b'0', b'9', b'5', b'x'] {
                for byte in 0..=u8::MAX {
                    let mut word = [fill; 8];
                    word[place] = byte;
                    let expected = word
                        .iter()
                        .enumerate()
                        .filter(|(_, b)| !b.is_ascii_digit())
                        .fold(0u64, |flags, (i, _)| flags | 0x80 << (8 * i));
                    assert_eq!(non_digits(word), expected, "{word:?}");
                }
            }
        }
        for (text, end) in
            [("", 0), ("7", 1), ("12345678", 8), ("123456789:", 9), ("1234567:1", 7), ("0123456789012345678x", 19)]
        {
            assert_eq!(digits(text.as_bytes(), 0), end, "{text:?}");
        }
    }

    #[test]
    fn envelope_tokens() {
        let mut c = Cursor::new(" \"room\" : \"r\" , 17 ,null , 01");
        assert_eq!(c.plain_string().unwrap(), "room");
        c.expect(b':').unwrap();
        assert_eq!(c.plain_string().unwrap(), "r");
        assert_eq!(c.next_token().unwrap(), b',');
        assert_eq!(c.integer().unwrap(), 17);
        c.expect(b',').unwrap();
        assert!(c.null());
        c.expect(b',').unwrap();
        assert!(c.integer().is_err());
        for text in [r#""a\nb""#, "\"a\u{1}\"", r#""abc"#, "abc"] {
            assert!(Cursor::new(text).plain_string().is_err(), "{text:?}");
        }
        for text in ["1.0", "1e0", "-1", "", "9223372036854775808", "x"] {
            assert!(Cursor::new(text).integer().is_err(), "{text:?}");
        }
        assert_eq!(Cursor::new("9223372036854775807").integer().unwrap(), i64::MAX);
    }
}
