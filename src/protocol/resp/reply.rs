//! Backend replies: an iterative scanner that finds where one complete reply ends, for every
//! RESP2 and RESP3 type, without recursion and with a cap on nesting.

use thiserror::Error;

use super::{int_line, parse_int};

/// A backend sent something that is not RESP: the connection cannot be trusted any more.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ReplyError {
    #[error("unknown reply type byte 0x{0:02x}")]
    UnknownType(u8),
    #[error("bad length in reply header")]
    BadLength,
    #[error("reply nested deeper than {0} levels")]
    TooDeep(usize),
    #[error("line without CRLF")]
    MissingCrlf,
}

/// Resumable: when a reply is incomplete it keeps the offset it reached and the counts of the
/// aggregates still open, so a large reply is scanned once.
#[derive(Debug)]
pub struct ReplyScanner {
    max_depth: usize,
    pos: usize,
    /// Elements still expected by each open aggregate, innermost last.
    open: Vec<u64>,
}

impl ReplyScanner {
    pub fn new(max_depth: usize) -> ReplyScanner {
        ReplyScanner {
            max_depth,
            pos: 0,
            open: Vec::new(),
        }
    }

    /// The length of the complete reply at the front of `buf`, or `None` if more bytes are needed.
    /// After `Some`, the caller removes those bytes and the scanner starts afresh.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, ReplyError> {
        loop {
            let Some(&kind) = buf.get(self.pos) else {
                return Ok(None);
            };
            // Aggregates and bulk strings announce a count (or a length) on their line.
            let counted = matches!(kind, b'$' | b'!' | b'=' | b'*' | b'~' | b'>' | b'%' | b'|');
            let fast = if counted {
                int_line(buf, self.pos + 1)
            } else {
                None
            };
            let (line_end, count) = match fast {
                Some((count, end)) => (end, count),
                None => {
                    let Some(nl) = memchr::memchr(b'\n', &buf[self.pos..]) else {
                        return Ok(None);
                    };
                    let line_end = self.pos + nl + 1;
                    if nl < 1 || buf[line_end - 2] != b'\r' {
                        return Err(ReplyError::MissingCrlf);
                    }
                    // A bare CRLF has no type byte.
                    if nl < 2 {
                        return Err(ReplyError::UnknownType(kind));
                    }
                    if !counted {
                        (line_end, 0)
                    } else {
                        let body = &buf[self.pos + 1..line_end - 2];
                        (line_end, parse_int(body).ok_or(ReplyError::BadLength)?)
                    }
                }
            };
            // How many child values this one opens (0 for a scalar).
            let children: u64 = match kind {
                b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => 0,
                b'$' | b'!' | b'=' => {
                    let len = count;
                    if len >= 0 {
                        let end = line_end + len as usize + 2;
                        if buf.len() < end {
                            return Ok(None);
                        }
                        if &buf[end - 2..end] != b"\r\n" {
                            return Err(ReplyError::MissingCrlf);
                        }
                        self.pos = end;
                    } else if len != -1 {
                        return Err(ReplyError::BadLength);
                    }
                    if len == -1 {
                        self.pos = line_end;
                    }
                    self.finish_value();
                    if self.open.is_empty() {
                        return Ok(Some(self.take()));
                    }
                    continue;
                }
                b'*' | b'~' | b'>' | b'%' | b'|' => {
                    let n = count;
                    if n < -1 {
                        return Err(ReplyError::BadLength);
                    }
                    let n = n.max(0) as u64;
                    match kind {
                        b'%' => n * 2,
                        // An attribute map is followed by the value it describes.
                        b'|' => n * 2 + 1,
                        _ => n,
                    }
                }
                other => return Err(ReplyError::UnknownType(other)),
            };
            self.pos = line_end;
            if children > 0 {
                if self.open.len() >= self.max_depth {
                    return Err(ReplyError::TooDeep(self.max_depth));
                }
                self.open.push(children);
            } else {
                self.finish_value();
            }
            if self.open.is_empty() {
                return Ok(Some(self.take()));
            }
        }
    }

    /// A value ended: count it against the open aggregates, closing those now full.
    fn finish_value(&mut self) {
        while let Some(left) = self.open.last_mut() {
            *left -= 1;
            if *left > 0 {
                return;
            }
            self.open.pop();
        }
    }

    fn take(&mut self) -> usize {
        std::mem::take(&mut self.pos)
    }
}

/// The bulk strings of an array or push frame (a Pub/Sub message or confirmation), in order;
/// they end at the first element that is not a bulk string.
pub fn bulk_elements(frame: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = memchr::memchr(b'\n', frame).map_or(&[][..], |nl| &frame[nl + 1..]);
    std::iter::from_fn(move || {
        let nl = memchr::memchr(b'\n', rest)?;
        let len: usize = std::str::from_utf8(rest.strip_prefix(b"$")?.get(..nl.checked_sub(2)?)?)
            .ok()?
            .parse()
            .ok()?;
        let element = rest.get(nl + 1..nl + 1 + len)?;
        rest = rest.get(nl + 1 + len + 2..)?;
        Some(element)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use redis_protocol::resp3::types::{OwnedFrame, Resp3Frame};

    fn scan_once(input: &[u8]) -> Result<Option<usize>, ReplyError> {
        ReplyScanner::new(64).scan(input)
    }

    #[test]
    fn every_type_scans_to_its_end() {
        let cases: [&[u8]; 17] = [
            b"+OK\r\n",
            b"-ERR x\r\n",
            b":12\r\n",
            b"$3\r\nfoo\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n",
            b"_\r\n",
            b",1.5\r\n",
            b"#t\r\n",
            b"(123456789012345678901234567890\r\n",
            b"!3\r\nbad\r\n",
            b"=7\r\ntxt:abc\r\n",
            b"%1\r\n+k\r\n+v\r\n",
            b"~2\r\n:1\r\n:2\r\n",
            b"|1\r\n+key\r\n+val\r\n:5\r\n",
        ];
        for c in cases {
            let mut with_tail = c.to_vec();
            with_tail.extend_from_slice(b"+NEXT\r\n");
            assert_eq!(
                scan_once(&with_tail),
                Ok(Some(c.len())),
                "{:?}",
                String::from_utf8_lossy(c)
            );
            for cut in 0..c.len() {
                assert_eq!(
                    scan_once(&c[..cut]),
                    Ok(None),
                    "cut {cut} of {:?}",
                    String::from_utf8_lossy(c)
                );
            }
        }
    }

    #[test]
    fn bad_replies_error() {
        assert_eq!(scan_once(b"?\r\n"), Err(ReplyError::UnknownType(b'?')));
        assert_eq!(scan_once(b"$x\r\n"), Err(ReplyError::BadLength));
        assert_eq!(scan_once(b"$-2\r\n"), Err(ReplyError::BadLength));
        assert_eq!(scan_once(b"$1\r\nab\r\n"), Err(ReplyError::MissingCrlf));
        assert_eq!(scan_once(b"+OK\n"), Err(ReplyError::MissingCrlf));
    }

    #[test]
    fn nesting_is_capped_without_recursion() {
        let deep = b"*1\r\n".repeat(100_000);
        assert_eq!(
            ReplyScanner::new(128).scan(&deep),
            Err(ReplyError::TooDeep(128))
        );
        let mut ok = b"*1\r\n".repeat(128);
        ok.extend_from_slice(b":1\r\n");
        assert_eq!(ReplyScanner::new(128).scan(&ok), Ok(Some(ok.len())));
    }

    #[test]
    fn resumes_where_it_stopped() {
        let whole = b"*3\r\n$5\r\nhello\r\n:1\r\n+x\r\n";
        let mut s = ReplyScanner::new(8);
        for cut in [3, 9, 18, 20] {
            assert_eq!(s.scan(&whole[..cut]), Ok(None));
        }
        assert_eq!(s.scan(whole), Ok(Some(whole.len())));
        assert_eq!(s.scan(b":7\r\n"), Ok(Some(4)));
    }

    fn frame_strategy() -> impl Strategy<Value = OwnedFrame> {
        use redis_protocol::resp3::types::OwnedFrame as F;
        let leaf = prop_oneof![
            "[a-z]{0,8}".prop_map(|s| F::SimpleString {
                data: s.into_bytes(),
                attributes: None
            }),
            "[a-z]{0,8}".prop_map(|s| F::SimpleError {
                data: s,
                attributes: None
            }),
            any::<i64>().prop_map(|n| F::Number {
                data: n,
                attributes: None
            }),
            prop::collection::vec(any::<u8>(), 0..16).prop_map(|d| F::BlobString {
                data: d,
                attributes: None
            }),
            Just(F::Null),
            any::<bool>().prop_map(|b| F::Boolean {
                data: b,
                attributes: None
            }),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(|v| F::Array {
                    data: v,
                    attributes: None
                }),
                prop::collection::vec(inner.clone(), 0..4).prop_map(|v| F::Push {
                    data: v,
                    attributes: None
                }),
            ]
        })
    }

    #[test]
    fn a_bare_crlf_is_refused_not_a_panic() {
        let mut scanner = ReplyScanner::new(128);
        assert_eq!(scanner.scan(b"\r\n"), Err(ReplyError::UnknownType(b'\r')));
        let mut scanner = ReplyScanner::new(128);
        assert_eq!(
            scanner.scan(b"*2\r\n:1\r\n\r\n"),
            Err(ReplyError::UnknownType(b'\r'))
        );
    }

    proptest! {
        /// Replies encoded by redis-protocol (the oracle) scan to exactly their encoded length,
        /// whole or cut anywhere.
        #[test]
        fn agrees_with_redis_protocol(frames in prop::collection::vec(frame_strategy(), 1..4)) {
            let mut wire = Vec::new();
            let mut lens = Vec::new();
            for f in &frames {
                let mut one = vec![0u8; f.encode_len(false)];
                let n = redis_protocol::resp3::encode::complete::encode(&mut one, f, false).unwrap();
                one.truncate(n);
                lens.push(n);
                wire.extend_from_slice(&one);
            }
            let mut rest = &wire[..];
            for want in lens {
                for cut in 0..want {
                    prop_assert_eq!(ReplyScanner::new(16).scan(&rest[..cut]), Ok(None));
                }
                prop_assert_eq!(ReplyScanner::new(16).scan(rest), Ok(Some(want)));
                let (_, used) = redis_protocol::resp3::decode::complete::decode(rest).unwrap().unwrap();
                prop_assert_eq!(used, want);
                rest = &rest[want..];
            }
        }

        #[test]
        fn random_bytes_are_framed_or_refused(data in prop::collection::vec(any::<u8>(), 0..200)) {
            // A reply found is within the bytes given, complete on its own, and found again
            // when the bytes come one at a time.
            if let Ok(Some(len)) = ReplyScanner::new(8).scan(&data) {
                prop_assert!(len > 0 && len <= data.len());
                prop_assert_eq!(ReplyScanner::new(8).scan(&data[..len]), Ok(Some(len)));
                let mut scanner = ReplyScanner::new(8);
                for cut in 0..len {
                    prop_assert_eq!(scanner.scan(&data[..cut]), Ok(None));
                }
                prop_assert_eq!(scanner.scan(&data[..len]), Ok(Some(len)));
            }
        }
    }
}
