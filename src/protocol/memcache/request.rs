//! memcached text and meta requests from clients: framed, checked as memcached checks them, and
//! handed on as zero-copy slices of the read buffer.

use bytes::{Bytes, BytesMut};
use memchr::memchr;
use thiserror::Error;

use super::{Verb, parse_decimal};

/// memcached's longest key.
pub const MAX_KEY_BYTES: usize = 250;
/// memcached closes a connection whose command line has no newline within this many bytes,
/// unless it is a multi-key get.
const MAX_LINE_BYTES: usize = 2048;
/// Tokens remembered per line: enough for every command's fixed fields. Keys of a long
/// multi-get are walked with [`Request::tokens`].
const MAX_TOKENS: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest value accepted in a storage command; larger ones are refused before they are
    /// forwarded (memcached's `-I`, 1 MB by default).
    pub item_size_max: usize,
    /// Longest multi-key get line (memcached sets none; libmemcached's mget sends every key
    /// on one line).
    pub max_get_line: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            item_size_max: 1024 * 1024,
            max_get_line: 16 * 1024 * 1024,
        }
    }
}

/// Input after which memcached closes the connection.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("line too long")]
    LineTooLong,
}

/// One framed client command.
#[derive(Debug)]
pub struct Request {
    pub verb: Verb,
    /// The command line with its newline, then the data block of a storage command.
    frame: Bytes,
    /// Length of the command line without `\r\n`.
    line_len: usize,
    /// `noreply` (text) or `q` (meta), and where its token is in the line.
    quiet: Option<(usize, usize)>,
}

/// What the parser made of one command.
#[derive(Debug)]
pub enum Parsed {
    Request(Request),
    /// A command memcached refuses with `reply` (`ERROR`, `CLIENT_ERROR …`, `SERVER_ERROR …`);
    /// `silent` when it carried `noreply`, for memcached then says nothing.
    Reject {
        reply: &'static str,
        silent: bool,
    },
    /// A request of memcached's binary protocol, which the proxy does not speak: the binary
    /// error response to send before closing the connection, so a binary client fails at once
    /// instead of waiting for a reply that never comes.
    Binary(Bytes),
}

/// The first byte of a binary-protocol request, and the size of its header.
const BINARY_REQUEST: u8 = 0x80;
const BINARY_HEADER: usize = 24;

/// A binary-protocol error response to `header` (a request's): status 0x0081, unknown command.
fn binary_refusal(header: &[u8]) -> Bytes {
    const WHY: &[u8] = b"binary protocol not served by the proxy: use the text or meta protocol";
    let mut response = Vec::with_capacity(BINARY_HEADER + WHY.len());
    // Magic, the request's opcode, no key, no extras, raw data, status.
    response.extend_from_slice(&[0x81, header[1], 0, 0, 0, 0, 0x00, 0x81]);
    response.extend_from_slice(&(WHY.len() as u32).to_be_bytes());
    // The request's opaque, then no CAS.
    response.extend_from_slice(&header[12..16]);
    response.extend_from_slice(&[0; 8]);
    response.extend_from_slice(WHY);
    Bytes::from(response)
}

pub const ERROR: &str = "ERROR";
pub const BAD_FORMAT: &str = "CLIENT_ERROR bad command line format";
pub const BAD_CHUNK: &str = "CLIENT_ERROR bad data chunk";
pub const TOO_LARGE: &str = "SERVER_ERROR object too large for cache";

/// Frames commands out of a client's byte stream, remembering data it must skip. The
/// [`Limits`] are passed to each parse rather than kept: a parser lives as long as its client,
/// and an idle client's memory counts.
#[derive(Debug, Default)]
pub struct RequestParser {
    /// Bytes of a refused value still to be discarded, as memcached swallows them.
    swallow: usize,
    /// Bytes at the start of the buffer known to hold no newline: a long multi-get line is
    /// scanned once, not again with every read.
    no_newline: usize,
}

/// The start and end of the first space-separated tokens of `line`, how many tokens there
/// are, and the last one's span.
fn tokenize(line: &[u8]) -> ([(usize, usize); MAX_TOKENS], usize, (usize, usize)) {
    let mut spans = [(0, 0); MAX_TOKENS];
    let mut n = 0;
    let mut last = (0, 0);
    for (start, end) in token_spans(line) {
        if n < MAX_TOKENS {
            spans[n] = (start, end);
        }
        last = (start, end);
        n += 1;
    }
    (spans, n, last)
}

/// The span of a meta command's `q` flag among the tokens from `first_flag` on.
fn quiet_flag(line: &[u8], first_flag: usize) -> Option<(usize, usize)> {
    token_spans(line)
        .skip(first_flag)
        .find(|&(s, e)| &line[s..e] == b"q")
}

fn token_spans(line: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut pos = 0;
    std::iter::from_fn(move || {
        while pos < line.len() && line[pos] == b' ' {
            pos += 1;
        }
        if pos == line.len() {
            return None;
        }
        let start = pos;
        pos += memchr(b' ', &line[pos..]).unwrap_or(line.len() - pos);
        Some((start, pos))
    })
}

fn is_multi_get(line: &[u8]) -> bool {
    let start = line.iter().position(|&b| b != b' ').unwrap_or(line.len());
    let rest = &line[start..];
    rest.starts_with(b"get ") || rest.starts_with(b"gets ")
}

/// Whether `s` is a number memcached's `strtoul`/`strtol` checks accept for a field.
fn numeric(s: &[u8], negative_ok: bool, max: u64) -> bool {
    let digits = match s.split_first() {
        Some((b'-', rest)) if negative_ok => rest,
        _ => s,
    };
    parse_decimal(digits).is_some_and(|n| n <= max)
}

impl RequestParser {
    /// Whether `buf` holds the start of a command that is not complete yet.
    pub fn is_mid_request(&self, buf: &[u8]) -> bool {
        !buf.is_empty() || self.swallow > 0
    }

    /// Takes the next command out of `buf`, or returns `None` until one is complete.
    pub fn parse(
        &mut self,
        buf: &mut BytesMut,
        limits: &Limits,
    ) -> Result<Option<Parsed>, ParseError> {
        if self.swallow > 0 {
            let n = self.swallow.min(buf.len());
            let _ = buf.split_to(n);
            self.swallow -= n;
            if self.swallow > 0 {
                return Ok(None);
            }
        }
        if buf.first() == Some(&BINARY_REQUEST) {
            if buf.len() < BINARY_HEADER {
                return Ok(None);
            }
            let refusal = binary_refusal(&buf[..BINARY_HEADER]);
            buf.clear();
            return Ok(Some(Parsed::Binary(refusal)));
        }
        let Some(nl) = memchr(b'\n', &buf[self.no_newline..]).map(|i| self.no_newline + i) else {
            self.no_newline = buf.len();
            let limit = if is_multi_get(buf) {
                limits.max_get_line
            } else {
                MAX_LINE_BYTES
            };
            return if buf.len() > limit {
                Err(ParseError::LineTooLong)
            } else {
                Ok(None)
            };
        };
        self.no_newline = 0;
        let line_len = if nl > 0 && buf[nl - 1] == b'\r' {
            nl - 1
        } else {
            nl
        };
        let line = &buf[..line_len];
        let (spans, n, last) = tokenize(line);
        let token = |i: usize| &line[spans[i].0..spans[i].1];
        let verb = match n {
            0 => None,
            _ => std::str::from_utf8(token(0))
                .ok()
                .and_then(|v| v.parse::<Verb>().ok()),
        };
        let reject = |reply, silent| Ok(Some(Parsed::Reject { reply, silent }));
        let Some(verb) = verb else {
            let _ = buf.split_to(nl + 1);
            return reject(ERROR, false);
        };
        if line.iter().any(|&b| b < b' ' || b == 0x7f) {
            // memcached reads such a line otherwise than the proxy does (a NUL ends it early),
            // so it could answer with more or fewer replies than one. Refused here, its value
            // skipped when its length can be read, so the client gets one reply.
            let len_token = match verb {
                Verb::MetaSet => 2,
                _ => 4,
            };
            let data = match verb.has_data() && n > len_token {
                true => parse_decimal(token(len_token)).map(|l| l as usize + 2),
                false => None,
            };
            let _ = buf.split_to(nl + 1);
            self.swallow = data.unwrap_or(0);
            return self.parse_after_refusal(buf, BAD_FORMAT, false);
        }
        let last_is_noreply = n > 1 && &line[last.0..last.1] == b"noreply";
        let mut quiet = None;
        let mut data_len = 0;
        let checked: Result<(), &'static str> = match verb {
            Verb::Set | Verb::Add | Verb::Replace | Verb::Append | Verb::Prepend | Verb::Cas => {
                let fields = if verb == Verb::Cas { 6 } else { 5 };
                if n != fields && n != fields + 1 {
                    Err(ERROR)
                } else {
                    if last_is_noreply {
                        quiet = Some(last);
                    }
                    let ok = token(1).len() <= MAX_KEY_BYTES
                        && numeric(token(2), false, u32::MAX.into())
                        && numeric(token(3), true, i32::MAX as u64)
                        && numeric(token(4), false, i32::MAX as u64 - 2)
                        && (verb != Verb::Cas || numeric(token(5), false, u64::MAX));
                    if ok {
                        data_len = parse_decimal(token(4)).unwrap_or(0) as usize;
                        Ok(())
                    } else {
                        Err(BAD_FORMAT)
                    }
                }
            }
            Verb::MetaSet => {
                if n < 2 {
                    Err(ERROR)
                } else if n < 3 || token(1).len() > MAX_KEY_BYTES {
                    Err(BAD_FORMAT)
                } else {
                    match parse_decimal(token(2)).filter(|&l| l <= i32::MAX as u64 - 2) {
                        Some(len) => {
                            data_len = len as usize;
                            quiet = quiet_flag(line, 3);
                            Ok(())
                        }
                        None => Err(BAD_FORMAT),
                    }
                }
            }
            Verb::Get | Verb::Gets | Verb::Gat | Verb::Gats => {
                let first_key = if matches!(verb, Verb::Gat | Verb::Gats) {
                    2
                } else {
                    1
                };
                if n < 2 {
                    Err(ERROR)
                } else if token_spans(line)
                    .skip(first_key)
                    .any(|(s, e)| e - s > MAX_KEY_BYTES)
                {
                    Err(BAD_FORMAT)
                } else {
                    Ok(())
                }
            }
            Verb::Incr | Verb::Decr | Verb::Touch => {
                if n == 3 || n == 4 {
                    if last_is_noreply {
                        quiet = Some(last);
                    }
                    Ok(())
                } else {
                    Err(ERROR)
                }
            }
            Verb::Delete => {
                if (2..=4).contains(&n) {
                    if last_is_noreply {
                        quiet = Some(last);
                    }
                    Ok(())
                } else {
                    Err(ERROR)
                }
            }
            Verb::FlushAll | Verb::Verbosity => {
                let fields = if verb == Verb::FlushAll { 1..=3 } else { 2..=3 };
                if fields.contains(&n) {
                    if last_is_noreply {
                        quiet = Some(last);
                    }
                    Ok(())
                } else {
                    Err(ERROR)
                }
            }
            Verb::MetaGet | Verb::MetaDelete | Verb::MetaArithmetic | Verb::MetaDebug => {
                if n < 2 {
                    Err(ERROR)
                } else {
                    quiet = quiet_flag(line, 2);
                    Ok(())
                }
            }
            _ => Ok(()),
        };
        let silent = last_is_noreply && !verb.is_meta();
        if let Err(reply) = checked {
            let _ = buf.split_to(nl + 1);
            return reject(reply, silent);
        }
        if data_len > limits.item_size_max {
            let _ = buf.split_to(nl + 1);
            self.swallow = data_len + 2;
            return self.parse_after_refusal(buf, TOO_LARGE, silent);
        }
        let frame_len = if verb.has_data() {
            nl + 1 + data_len + 2
        } else {
            nl + 1
        };
        if buf.len() < frame_len {
            return Ok(None);
        }
        let frame = buf.split_to(frame_len).freeze();
        if verb.has_data() && &frame[frame_len - 2..] != b"\r\n" {
            return reject(BAD_CHUNK, silent);
        }
        Ok(Some(Parsed::Request(Request {
            verb,
            frame,
            line_len,
            quiet,
        })))
    }

    /// Starts swallowing a refused value, and reports the refusal.
    fn parse_after_refusal(
        &mut self,
        buf: &mut BytesMut,
        reply: &'static str,
        silent: bool,
    ) -> Result<Option<Parsed>, ParseError> {
        let n = self.swallow.min(buf.len());
        let _ = buf.split_to(n);
        self.swallow -= n;
        Ok(Some(Parsed::Reject { reply, silent }))
    }
}

impl Request {
    /// The command line without its newline.
    pub fn line(&self) -> &[u8] {
        &self.frame[..self.line_len]
    }

    /// The line's space-separated tokens, the command name first.
    pub fn tokens(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let line = self.line();
        token_spans(line).map(move |(s, e)| &line[s..e])
    }

    /// Token `i` of the line, if there is one.
    pub fn token(&self, i: usize) -> Option<&[u8]> {
        self.tokens().nth(i)
    }

    /// Whether the client asked for no reply: `noreply` on a text command, `q` on a meta one.
    pub fn is_quiet(&self) -> bool {
        self.quiet.is_some()
    }

    /// The request as a backend should get it: without `noreply` or `q`, so every request is
    /// answered and replies stay matched to requests; the proxy drops what the client asked
    /// not to see. Zero-copy unless there is such a token.
    pub fn forwarded(&self) -> Bytes {
        let Some((start, end)) = self.quiet else {
            return self.frame.clone();
        };
        let mut out = BytesMut::with_capacity(self.frame.len());
        out.extend_from_slice(&self.frame[..start]);
        out.extend_from_slice(&self.frame[end..]);
        out.freeze()
    }

    /// The whole request as the client sent it.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }
}

#[cfg(test)]
mod tests;
