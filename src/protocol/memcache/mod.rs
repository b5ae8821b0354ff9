//! memcached's text and meta protocol: client commands, backend replies, and the replies the
//! proxy makes itself.

mod reply;
mod request;

pub use reply::{ReplyError, ReplyScanner, is_error_line};
pub use request::{
    BAD_FORMAT, ERROR, Limits, MAX_KEY_BYTES, ParseError, Parsed, Request, RequestParser,
};

use crate::keyword::keywords;

keywords! {
    /// The commands the proxy knows, by their names on the wire.
    pub enum Verb ("memcached command") {
        Get = "get",
        Gets = "gets",
        Gat = "gat",
        Gats = "gats",
        Set = "set",
        Add = "add",
        Replace = "replace",
        Append = "append",
        Prepend = "prepend",
        Cas = "cas",
        Delete = "delete",
        Incr = "incr",
        Decr = "decr",
        Touch = "touch",
        Stats = "stats",
        FlushAll = "flush_all",
        Version = "version",
        Verbosity = "verbosity",
        Quit = "quit",
        MetaGet = "mg",
        MetaSet = "ms",
        MetaDelete = "md",
        MetaArithmetic = "ma",
        MetaNoop = "mn",
        MetaDebug = "me",
        // memcached's administrative commands, which make no sense through a proxy.
        Shutdown = "shutdown",
        Slabs = "slabs",
        LruCrawler = "lru_crawler",
        Lru = "lru",
        Watch = "watch",
        CacheMemlimit = "cache_memlimit",
        Misbehave = "misbehave",
        Debugtime = "debugtime",
        Extstore = "extstore",
    }
}

/// How a backend's reply to a command is framed, and what it may say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyShape {
    /// One line, starting with one of the answers (or an error line).
    Line(Answers),
    /// `VALUE` lines with their data blocks, then `END`.
    Values,
    /// One line, starting with one of the answers (or an error line); `VA <size> …` is
    /// followed by a data block.
    Meta(Answers),
    /// `STAT` lines, then `END`.
    Stats,
}

/// The first words of the replies a command can get, besides an error line ([`NUMBER`] for a
/// decimal number); empty for any line. A reply that begins otherwise answers some other
/// request: the connection is out of step with its requests, and nothing on it can be trusted.
pub type Answers = &'static [&'static [u8]];

/// In [`Answers`]: a decimal number (incr and decr's new value).
pub const NUMBER: &[u8] = b"0-9";

impl Verb {
    pub fn is_meta(self) -> bool {
        matches!(
            self,
            Verb::MetaGet
                | Verb::MetaSet
                | Verb::MetaDelete
                | Verb::MetaArithmetic
                | Verb::MetaNoop
                | Verb::MetaDebug
        )
    }

    /// Whether a data block follows the command line.
    pub fn has_data(self) -> bool {
        matches!(
            self,
            Verb::Set
                | Verb::Add
                | Verb::Replace
                | Verb::Append
                | Verb::Prepend
                | Verb::Cas
                | Verb::MetaSet
        )
    }

    /// Whether the command changes data: it goes to a shard's master and every replica.
    pub fn is_write(self) -> bool {
        self.has_data()
            || matches!(
                self,
                Verb::Delete
                    | Verb::Incr
                    | Verb::Decr
                    | Verb::Touch
                    | Verb::Gat
                    | Verb::Gats
                    | Verb::MetaDelete
                    | Verb::MetaArithmetic
            )
    }

    pub fn is_multi_get(self) -> bool {
        matches!(self, Verb::Get | Verb::Gets | Verb::Gat | Verb::Gats)
    }

    pub fn reply_shape(self) -> ReplyShape {
        use ReplyShape::{Line, Meta};
        match self {
            Verb::Get | Verb::Gets | Verb::Gat | Verb::Gats => ReplyShape::Values,
            Verb::Stats => ReplyShape::Stats,
            Verb::Set | Verb::Add | Verb::Replace | Verb::Append | Verb::Prepend | Verb::Cas => {
                Line(&[b"STORED", b"NOT_STORED", b"EXISTS", b"NOT_FOUND"])
            }
            Verb::Delete => Line(&[b"DELETED", b"NOT_FOUND"]),
            Verb::Incr | Verb::Decr => Line(&[NUMBER, b"NOT_FOUND"]),
            Verb::Touch => Line(&[b"TOUCHED", b"NOT_FOUND"]),
            Verb::FlushAll | Verb::Verbosity => Line(&[b"OK"]),
            Verb::Version => Line(&[b"VERSION"]),
            Verb::MetaGet => Meta(&[b"VA", b"HD", b"EN"]),
            Verb::MetaArithmetic => Meta(&[b"VA", b"HD", b"NF", b"NS", b"EX"]),
            Verb::MetaSet => Line(&[b"HD", b"NS", b"EX", b"NF"]),
            Verb::MetaDelete => Line(&[b"HD", b"NF", b"EX"]),
            Verb::MetaNoop => Line(&[b"MN"]),
            Verb::MetaDebug => Line(&[b"ME", b"EN"]),
            _ => Line(&[]),
        }
    }

    /// Replies memcached leaves out in quiet mode (`q`): a meta get's miss, the other meta
    /// commands' success.
    pub fn quiet_hides(self, reply: &[u8]) -> bool {
        match self {
            Verb::MetaGet => reply.starts_with(b"EN"),
            Verb::MetaSet | Verb::MetaDelete => reply.starts_with(b"HD"),
            Verb::MetaArithmetic => reply.starts_with(b"HD") || reply.starts_with(b"VA "),
            _ => true,
        }
    }
}

/// Parses unsigned decimal digits (memcached's numeric fields), refusing overflow.
pub fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if d.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        } else {
            None
        }
    })
}

/// Decodes standard base64 (meta commands' `b` flag) into `out`; returns the decoded length,
/// or `None` when `input` is not base64 or does not fit.
pub fn decode_base64(input: &[u8], out: &mut [u8]) -> Option<usize> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    if input.is_empty() || !input.len().is_multiple_of(4) {
        return None;
    }
    let mut len = 0;
    let chunks = input.len() / 4;
    for (i, chunk) in input.chunks(4).enumerate() {
        let pad = if i + 1 == chunks {
            chunk.iter().rev().take_while(|&&c| c == b'=').count()
        } else {
            0
        };
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = n.to_be_bytes();
        let produced = 3 - pad;
        out.get_mut(len..len + produced)?
            .copy_from_slice(&bytes[1..1 + produced]);
        len += produced;
    }
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_fields() {
        assert_eq!(parse_decimal(b"0"), Some(0));
        assert_eq!(parse_decimal(b"18446744073709551615"), Some(u64::MAX));
        for bad in [&b""[..], b"-1", b"1x", b"18446744073709551616", b" 1"] {
            assert_eq!(parse_decimal(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn base64_keys() {
        let mut out = [0u8; 16];
        let cases: [(&[u8], &[u8]); 4] = [
            (b"Zm9v", b"foo"),
            (b"Zm9vYg==", b"foob"),
            (b"Zm9vYmE=", b"fooba"),
            (b"AP8=", &[0x00, 0xff]),
        ];
        for (encoded, decoded) in cases {
            let n = decode_base64(encoded, &mut out).unwrap();
            assert_eq!(&out[..n], decoded);
        }
        for bad in [&b"!!!!"[..], b"Zm9", b"", b"Z==="] {
            assert_eq!(decode_base64(bad, &mut out), None, "{bad:?}");
        }
        assert_eq!(decode_base64(b"Zm9vYmFy", &mut [0u8; 4]), None);
    }

    #[test]
    fn quiet_mode_hides_what_memcached_hides() {
        assert!(Verb::MetaGet.quiet_hides(b"EN\r\n"));
        assert!(!Verb::MetaGet.quiet_hides(b"VA 1\r\nx\r\n"));
        assert!(Verb::MetaSet.quiet_hides(b"HD\r\n"));
        assert!(!Verb::MetaSet.quiet_hides(b"NS\r\n"));
        assert!(!Verb::MetaDelete.quiet_hides(b"NF\r\n"));
        assert!(Verb::MetaArithmetic.quiet_hides(b"VA 1\r\n7\r\n"));
        assert!(!Verb::MetaArithmetic.quiet_hides(b"NF\r\n"));
    }

    /// Standard base64 with padding, as clients encode keys for the `b` flag.
    fn encode_base64(bytes: &[u8]) -> Vec<u8> {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        for chunk in bytes.chunks(3) {
            let mut n = [0u8; 3];
            n[..chunk.len()].copy_from_slice(chunk);
            let n = u32::from_be_bytes([0, n[0], n[1], n[2]]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]);
                } else {
                    out.push(b'=');
                }
            }
        }
        out
    }

    proptest::proptest! {
        /// Every key a client can send base64-encoded decodes to its bytes, and a buffer one
        /// byte short is refused rather than overrun.
        #[test]
        fn base64_keys_decode_to_their_bytes(
            key in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..=MAX_KEY_BYTES),
        ) {
            let encoded = encode_base64(&key);
            let mut out = [0u8; MAX_KEY_BYTES];
            proptest::prop_assert_eq!(decode_base64(&encoded, &mut out), Some(key.len()));
            proptest::prop_assert_eq!(&out[..key.len()], &key[..]);
            let mut short = vec![0u8; key.len() - 1];
            proptest::prop_assert_eq!(decode_base64(&encoded, &mut short), None);
        }

        /// Whatever bytes arrive, decoding never panics or claims more than fits.
        #[test]
        fn base64_decoding_of_anything_is_bounded(
            input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let mut out = [0u8; 16];
            if let Some(len) = decode_base64(&input, &mut out) {
                proptest::prop_assert!(len <= out.len());
            }
        }
    }
}
