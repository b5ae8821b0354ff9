//! A RESP reply read as a tree, for the few replies the proxy reads itself (a cluster's slot
//! map). Never on the hot path: replies to clients are scanned and passed on as bytes.

use super::{int_line, parse_int};

/// One reply value, borrowing the reply's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    /// A simple, bulk or verbatim string.
    Text(&'a [u8]),
    Int(i64),
    /// A null of any type.
    Nil,
    Error(&'a [u8]),
    /// An array, set or push; a map as its keys and values in turn.
    List(Vec<Value<'a>>),
    /// A double, boolean or big number, as written.
    Other(&'a [u8]),
}

impl<'a> Value<'a> {
    /// Reads the one complete reply `buf` holds, nested at most `max_depth` deep; `None` for
    /// anything else.
    pub fn read(buf: &'a [u8], max_depth: usize) -> Option<Value<'a>> {
        match read_at(buf, 0, max_depth)? {
            (value, end) if end == buf.len() => Some(value),
            _ => None,
        }
    }

    pub fn text(&self) -> Option<&'a [u8]> {
        match self {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }

    /// An integer, or a string that holds one.
    pub fn int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            Value::Text(t) => parse_int(t),
            _ => None,
        }
    }

    pub fn list(&self) -> Option<&[Value<'a>]> {
        match self {
            Value::List(items) => Some(items),
            _ => None,
        }
    }

    /// The value after the key `key` in a map (or a flat list of keys and values).
    pub fn field(&self, key: &str) -> Option<&Value<'a>> {
        let items = self.list()?;
        items
            .chunks_exact(2)
            .find(|pair| pair[0].text() == Some(key.as_bytes()))
            .map(|pair| &pair[1])
    }
}

/// The value at `at`, and where it ends.
fn read_at(buf: &[u8], at: usize, depth: usize) -> Option<(Value<'_>, usize)> {
    let kind = *buf.get(at)?;
    let nl = at + memchr::memchr(b'\n', buf.get(at..)?)?;
    if nl < at + 2 || buf[nl - 1] != b'\r' {
        return None;
    }
    let line = &buf[at + 1..nl - 1];
    let next = nl + 1;
    let counted = || int_line(buf, at + 1).map(|(n, _)| n);
    Some(match kind {
        b'+' => (Value::Text(line), next),
        b'-' => (Value::Error(line), next),
        b':' => (Value::Int(parse_int(line)?), next),
        b'_' => (Value::Nil, next),
        b',' | b'#' | b'(' => (Value::Other(line), next),
        b'$' | b'!' | b'=' => match counted()? {
            -1 => (Value::Nil, next),
            len if len >= 0 => {
                let end = next.checked_add(usize::try_from(len).ok()?)?;
                if buf.get(end..end + 2)? != b"\r\n" {
                    return None;
                }
                let body = &buf[next..end];
                match kind {
                    b'!' => (Value::Error(body), end + 2),
                    // A verbatim string starts with its format: `txt:`.
                    b'=' => (Value::Text(body.get(4..)?), end + 2),
                    _ => (Value::Text(body), end + 2),
                }
            }
            _ => return None,
        },
        b'*' | b'~' | b'>' | b'%' => {
            let n = counted()?;
            if n == -1 {
                return Some((Value::Nil, next));
            }
            let n = usize::try_from(n).ok()? * if kind == b'%' { 2 } else { 1 };
            if depth == 0 || n > buf.len() - next {
                return None;
            }
            let mut items = Vec::with_capacity(n);
            let mut pos = next;
            for _ in 0..n {
                let (item, end) = read_at(buf, pos, depth - 1)?;
                items.push(item);
                pos = end;
            }
            (Value::List(items), pos)
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::resp::ReplyScanner;
    use proptest::prelude::*;

    #[test]
    fn reads_every_type() {
        let reply = b"*7\r\n+OK\r\n:-5\r\n$3\r\nabc\r\n$-1\r\n%1\r\n$1\r\nk\r\n:1\r\n=8\r\ntxt:some\r\n-ERR no\r\n";
        let value = Value::read(reply, 4).unwrap();
        let items = value.list().unwrap();
        assert_eq!(items[0], Value::Text(b"OK"));
        assert_eq!(items[1].int(), Some(-5));
        assert_eq!(items[2].text(), Some(&b"abc"[..]));
        assert_eq!(items[3], Value::Nil);
        assert_eq!(items[4].field("k"), Some(&Value::Int(1)));
        assert_eq!(items[5], Value::Text(b"some"));
        assert_eq!(items[6], Value::Error(b"ERR no"));
        assert_eq!(Value::read(b"*2\r\n:1\r\n", 4), None);
        assert_eq!(Value::read(b"*1\r\n*1\r\n:1\r\n", 1), None);
    }

    proptest! {
        /// Whatever the bytes, reading never panics, and what it reads is one complete reply
        /// to the scanner too.
        #[test]
        fn reads_only_complete_replies(bytes in proptest::collection::vec(
            prop_oneof![Just(b'*'), Just(b'$'), Just(b':'), Just(b'\r'), Just(b'\n'), Just(b'1'),
                        Just(b'2'), Just(b'-'), Just(b'%'), Just(b'+'), any::<u8>()], 0..40)) {
            if Value::read(&bytes, 8).is_some() {
                prop_assert_eq!(ReplyScanner::new(8).scan(&bytes), Ok(Some(bytes.len())));
            }
        }
    }
}
