//! RESP (Redis serialization protocol): client requests, backend replies, and encoders.

pub mod encode;
mod reply;
mod request;

pub use reply::{ReplyError, ReplyScanner, bulk_elements};

pub use request::{Limits, ProtocolError, Request, RequestParser};

/// Parses a decimal integer as RESP writes it (optional `-`, digits only).
pub fn parse_int(digits: &[u8]) -> Option<i64> {
    let (neg, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 18 {
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
    #[test]
    fn parse_int_accepts_resp_integers_only() {
        use super::parse_int;
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
}
