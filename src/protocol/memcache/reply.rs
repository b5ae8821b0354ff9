//! Framing memcached's replies on a backend connection: how long the reply at the front of the
//! buffer is, given the shape its request calls for.

use memchr::memchr;
use thiserror::Error;

use super::{Answers, NUMBER, ReplyShape, parse_decimal};

#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ReplyError(&'static str);

/// Finds where replies end. Resumable: lines already known to belong to an unfinished
/// multi-line reply are not scanned again when more bytes arrive.
#[derive(Debug, Default)]
pub struct ReplyScanner {
    /// Bytes of the current reply already scanned.
    pos: usize,
}

/// An error line ends any reply: memcached sends it instead of what was asked for.
pub fn is_error_line(line: &[u8]) -> bool {
    line.starts_with(b"ERROR")
        || line.starts_with(b"CLIENT_ERROR")
        || line.starts_with(b"SERVER_ERROR")
}

/// The data length in `VALUE <key> <flags> <bytes> [<cas>]` (token 3) or `VA <size> …` (token 1).
fn data_len(line: &[u8], token: usize) -> Result<usize, ReplyError> {
    let line = line.strip_suffix(b"\r\n").unwrap_or(line);
    line.split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .nth(token)
        .and_then(parse_decimal)
        .map(|n| n as usize)
        .ok_or(ReplyError("a value line without a length"))
}

/// Whether a one-line reply is one of `answers` or an error line.
fn fits(line: &[u8], answers: Answers) -> bool {
    let word = line
        .split(|&b| b == b' ' || b == b'\r')
        .next()
        .unwrap_or(line);
    let number = !word.is_empty() && word.iter().all(u8::is_ascii_digit);
    answers.is_empty()
        || is_error_line(line)
        || answers
            .iter()
            .any(|&a| a == word || (a == NUMBER && number))
}

impl ReplyScanner {
    /// The length of the complete reply at the start of `buf`, or `None` until it is complete.
    pub fn scan(&mut self, buf: &[u8], shape: ReplyShape) -> Result<Option<usize>, ReplyError> {
        loop {
            let Some(nl) = memchr(b'\n', &buf[self.pos..]) else {
                return Ok(None);
            };
            let line_end = self.pos + nl + 1;
            let line = &buf[self.pos..line_end];
            let first = self.pos == 0;
            let end = match shape {
                ReplyShape::Line(answers) | ReplyShape::Meta(answers) if !fits(line, answers) => {
                    return Err(ReplyError("a reply its request cannot get"));
                }
                ReplyShape::Line(_) => line_end,
                ReplyShape::Meta(_) if line.starts_with(b"VA ") => {
                    let end = line_end + data_len(line, 1)? + 2;
                    if buf.len() < end {
                        return Ok(None);
                    }
                    end
                }
                ReplyShape::Meta(_) => line_end,
                ReplyShape::Values | ReplyShape::Stats if line == b"END\r\n" => line_end,
                ReplyShape::Values if line.starts_with(b"VALUE ") => {
                    let end = line_end + data_len(line, 3)? + 2;
                    if buf.len() < end {
                        return Ok(None);
                    }
                    if &buf[end - 2..end] != b"\r\n" {
                        return Err(ReplyError("a value without its CRLF"));
                    }
                    self.pos = end;
                    continue;
                }
                ReplyShape::Stats if line.starts_with(b"STAT ") => {
                    self.pos = line_end;
                    continue;
                }
                _ if first && is_error_line(line) => line_end,
                ReplyShape::Values => return Err(ReplyError("an unexpected line in a get reply")),
                ReplyShape::Stats => return Err(ReplyError("an unexpected line in a stats reply")),
            };
            self.pos = 0;
            return Ok(Some(end));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::memcache::Verb;

    /// Every reply is found at its full length, and at no shorter prefix.
    fn check(reply: &[u8], shape: ReplyShape) {
        let mut scanner = ReplyScanner::default();
        for cut in 0..reply.len() {
            assert_eq!(scanner.scan(&reply[..cut], shape), Ok(None), "cut {cut}");
        }
        let mut buf = reply.to_vec();
        buf.extend_from_slice(b"NEXT\r\n");
        assert_eq!(scanner.scan(&buf, shape), Ok(Some(reply.len())));
        assert_eq!(
            ReplyScanner::default().scan(&buf, shape),
            Ok(Some(reply.len()))
        );
    }

    #[test]
    fn frames_every_shape() {
        check(b"STORED\r\n", Verb::Set.reply_shape());
        check(b"END\r\n", ReplyShape::Values);
        check(
            b"VALUE a 0 2\r\nhi\r\nVALUE b 5 3 99\r\nEND\r\nEND\r\n",
            ReplyShape::Values,
        );
        check(
            b"CLIENT_ERROR bad command line format\r\n",
            ReplyShape::Values,
        );
        check(b"VA 2 t-1\r\nhi\r\n", Verb::MetaGet.reply_shape());
        check(b"EN\r\n", Verb::MetaGet.reply_shape());
        check(b"STAT pid 1\r\nSTAT uptime 2\r\nEND\r\n", ReplyShape::Stats);
        check(b"SERVER_ERROR busy\r\n", ReplyShape::Stats);
    }

    #[test]
    fn replies_their_request_cannot_get_are_errors() {
        // (reply, the request's verb, whether the reply fits it)
        for (reply, verb, fits) in [
            (&b"VALUE k 0 1\r\nx\r\nEND\r\n"[..], Verb::Set, false),
            (b"STORED\r\n", Verb::Delete, false),
            (b"DELETED\r\n", Verb::Incr, false),
            (b"HD\r\n", Verb::Touch, false),
            (b"END\r\n", Verb::MetaGet, false),
            (b"STORED\r\n", Verb::MetaSet, false),
            (b"12\r\n", Verb::Incr, true),
            (b"NOT_FOUND\r\n", Verb::Decr, true),
            (b"ERROR\r\n", Verb::Set, true),
            (b"SERVER_ERROR out of memory\r\n", Verb::MetaSet, true),
            (b"HD k1 t5\r\n", Verb::MetaGet, true),
            (b"NS\r\n", Verb::MetaSet, true),
            (b"EN\r\n", Verb::MetaGet, true),
            (b"VERSION 1.6.18\r\n", Verb::Version, true),
        ] {
            let got = ReplyScanner::default().scan(reply, verb.reply_shape());
            let want = fits.then_some(reply.len());
            assert_eq!(
                got.ok().flatten(),
                want,
                "{verb} {:?}",
                String::from_utf8_lossy(reply)
            );
        }
    }

    #[test]
    fn odd_replies_are_errors() {
        let mut s = ReplyScanner::default();
        assert!(s.scan(b"VALUE a 0 x\r\n", ReplyShape::Values).is_err());
        let mut s = ReplyScanner::default();
        assert!(
            s.scan(b"VALUE a 0 1\r\nxyz\r\n", ReplyShape::Values)
                .is_err()
        );
        let mut s = ReplyScanner::default();
        assert!(s.scan(b"STORED\r\n", ReplyShape::Values).is_err());
        let mut s = ReplyScanner::default();
        assert!(
            s.scan(b"STAT a 1\r\nSTORED\r\n", ReplyShape::Stats)
                .is_err()
        );
    }

    proptest::proptest! {
        /// Any get reply memcached could send, with values that contain CRLF and `END`, is
        /// framed at its full length and at no prefix, fed all at once or byte by byte.
        #[test]
        fn get_replies_are_framed_exactly(
            values in proptest::collection::vec(
                ("[a-z0-9:]{1,20}", 0u32..1000, proptest::collection::vec(
                    proptest::prop_oneof![
                        proptest::prelude::any::<u8>(),
                        proptest::prelude::Just(b'\r'),
                        proptest::prelude::Just(b'\n'),
                    ], 0..64)),
                0..6),
        ) {
            let mut reply = Vec::new();
            for (key, flags, data) in &values {
                reply.extend_from_slice(format!("VALUE {key} {flags} {}\r\n", data.len()).as_bytes());
                reply.extend_from_slice(data);
                reply.extend_from_slice(b"\r\n");
            }
            reply.extend_from_slice(b"END\r\n");
            check(&reply, ReplyShape::Values);
        }

        /// Random bytes never make the scanner panic or claim more than it was given.
        #[test]
        fn random_bytes_are_framed_or_refused(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            shape in proptest::prop_oneof![
                proptest::prelude::Just(ReplyShape::Line(&[])),
                proptest::prelude::Just(ReplyShape::Values),
                proptest::prelude::Just(Verb::MetaGet.reply_shape()),
                proptest::prelude::Just(ReplyShape::Stats),
            ],
        ) {
            if let Ok(Some(len)) = ReplyScanner::default().scan(&data, shape) {
                proptest::prop_assert!(len > 0 && len <= data.len());
                proptest::prop_assert_eq!(
                    ReplyScanner::default().scan(&data[..len], shape),
                    Ok(Some(len))
                );
            }
        }
    }
}
