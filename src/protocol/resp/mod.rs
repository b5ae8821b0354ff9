//! RESP (Redis serialization protocol): client requests, backend replies, and encoders.

pub mod encode;
mod reply;
mod request;
mod value;

pub use reply::{ReplyError, ReplyScanner, bulk_elements};

pub use request::{Limits, ProtocolError, Request, RequestParser};
pub use value::Value;

/// Most digits an integer may have (with its sign, it stays within `i64`).
const MAX_DIGITS: usize = 18;

/// The integer of a well-formed header line (`*n`, `$n`, …) whose digits start at `at`: its value
/// and the offset after the line's CRLF. `None` for anything else — incomplete, malformed or too
/// long — which the caller's general path (`memchr` for the line, then [`parse_int`]) sorts out.
/// Header lines are a few bytes long, and reading their digits directly costs less than
/// searching for the line's end first.
#[inline]
pub fn int_line(buf: &[u8], at: usize) -> Option<(i64, usize)> {
    let negative = buf.get(at) == Some(&b'-');
    let start = at + usize::from(negative);
    let mut n: i64 = 0;
    let mut i = start;
    while let Some(&d) = buf.get(i).filter(|d| d.is_ascii_digit()) {
        if i - start == MAX_DIGITS {
            return None;
        }
        n = n * 10 + i64::from(d - b'0');
        i += 1;
    }
    if i == start || buf.get(i..i + 2) != Some(b"\r\n") {
        return None;
    }
    Some((if negative { -n } else { n }, i + 2))
}

/// Parses a decimal integer as RESP writes it (optional `-`, digits only).
pub fn parse_int(digits: &[u8]) -> Option<i64> {
    let (neg, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > MAX_DIGITS {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + i64::from(d - b'0');
    }
    Some(if neg { -n } else { n })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{int_line, parse_int};

    #[test]
    fn parse_int_accepts_resp_integers_only() {
        assert_eq!(parse_int(b"0"), Some(0));
        assert_eq!(parse_int(b"-1"), Some(-1));
        assert_eq!(
            parse_int(b"123456789012345678"),
            Some(123_456_789_012_345_678)
        );
        for bad in [&b""[..], b"-", b"1a", b" 1", b"+1", b"1234567890123456789"] {
            assert_eq!(parse_int(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn int_line_reads_only_complete_well_formed_lines() {
        assert_eq!(int_line(b"*3\r\n$3", 1), Some((3, 4)));
        assert_eq!(int_line(b"$-1\r\n", 1), Some((-1, 5)));
        assert_eq!(
            int_line(b"$123456789012345678\r\n", 1),
            Some((123_456_789_012_345_678, 21))
        );
        for left in [
            &b"$12"[..],
            b"$12\r",
            b"$1\n",
            b"$\r\n",
            b"$-\r\n",
            b"$1 \r\n",
            b"$1234567890123456789\r\n",
        ] {
            assert_eq!(int_line(left, 1), None, "{left:?}");
        }
    }

    proptest! {
        /// `int_line` reads a line exactly when the general path (the line's end, then
        /// `parse_int` of what comes before its CRLF) reads it, and reads the same.
        #[test]
        fn int_line_agrees_with_the_general_path(line in prop::collection::vec(prop::sample::select(b"-0123456789\r\nx".to_vec()), 0..24)) {
            let general = memchr::memchr(b'\n', &line)
                .filter(|&nl| nl >= 1 && line[nl - 1] == b'\r')
                .and_then(|nl| Some((parse_int(&line[..nl - 1])?, nl + 1)));
            prop_assert_eq!(int_line(&line, 0), general);
        }
    }
}
