//! Client requests: arrays of bulk strings, and inline commands.
//!
//! The parser is resumable: when a request is incomplete it remembers how far it got (argument
//! count, arguments seen, the offset where the next one starts), so a 500 MB request arriving in
//! 64 KB reads is scanned once, not once per read.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use super::{encode, int_line, parse_int};

/// The most the parser reserves ahead for an argument still arriving.
const MAX_EAGER_RESERVE: usize = 1024 * 1024;

/// Bounds on what one client request may claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most arguments in one request (Redis: 1,048,576).
    pub max_args: usize,
    /// Largest single argument in bytes (Redis' proto-max-bulk-len: 512 MB).
    pub max_bulk_bytes: usize,
    /// Longest inline command line, and longest `*`/`$` header line (Redis: 64 KB).
    pub max_inline_bytes: usize,
    /// Largest whole request, every argument counted (Redis' proto-max-bulk-len: 512 MB).
    pub max_request_bytes: usize,
    /// Largest request, and argument, of a client that has not authenticated yet (Redis:
    /// 16 KB; it also allows such a client at most 10 arguments).
    pub max_unauthenticated_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_args: 1024 * 1024,
            max_bulk_bytes: 512 * 1024 * 1024,
            max_inline_bytes: 64 * 1024,
            max_request_bytes: 512 * 1024 * 1024,
            max_unauthenticated_bytes: 16 * 1024,
        }
    }
}

/// Arguments a client that has not authenticated may send in one request, as Redis allows.
const MAX_UNAUTHENTICATED_ARGS: i64 = 10;

/// Malformed client input: the client gets `-ERR Protocol error: …` and the connection closes.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("invalid multibulk length")]
    InvalidMultibulkLength,
    #[error("invalid bulk length")]
    InvalidBulkLength,
    #[error("expected '$', got '{}'", char::from(*.0))]
    ExpectedBulk(u8),
    #[error("expected CRLF after bulk string")]
    MissingCrlf,
    #[error("too big inline request")]
    InlineTooBig,
    #[error("too big mbulk count string")]
    HeaderTooBig,
    #[error("unbalanced quotes in request")]
    UnbalancedQuotes,
    #[error("unauthenticated multibulk length")]
    UnauthenticatedMultibulkLength,
    #[error("unauthenticated bulk length")]
    UnauthenticatedBulkLength,
    #[error("request larger than max_request_bytes ({0})")]
    RequestTooBig(usize),
}

/// One complete request. `frame` is the request in RESP form (the client's own bytes for a
/// multibulk request), so it can be forwarded to a backend as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    frame: Bytes,
    args: Args,
}

/// Arguments whose positions are kept in the request itself: enough for nearly every command
/// (an MGET of ten keys has eleven), so parsing one allocates nothing.
const INLINE_ARGS: usize = 12;

/// Where a request's arguments lie in its frame: the first [`INLINE_ARGS`] inline, the rest
/// on the heap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Args {
    inline: [(usize, usize); INLINE_ARGS],
    more: Vec<Range<usize>>,
    len: usize,
}

impl Args {
    fn push(&mut self, range: Range<usize>) {
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = (range.start, range.end),
            None => self.more.push(range),
        }
        self.len += 1;
    }

    fn get(&self, i: usize) -> Range<usize> {
        match self.inline.get(i) {
            Some(&(start, end)) if i < self.len => start..end,
            _ => self.more[i - INLINE_ARGS].clone(),
        }
    }
}

impl Request {
    /// Builds a request from its arguments (inline commands, and tests).
    pub fn from_args<'a>(args: impl ExactSizeIterator<Item = &'a [u8]>) -> Request {
        let mut buf = BytesMut::new();
        encode::array(&mut buf, args.len());
        let mut ranges = Args::default();
        for a in args {
            encode::bulk_header(&mut buf, a.len());
            ranges.push(buf.len()..buf.len() + a.len());
            buf.extend_from_slice(a);
            buf.extend_from_slice(b"\r\n");
        }
        Request {
            frame: buf.freeze(),
            args: ranges,
        }
    }

    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    pub fn argc(&self) -> usize {
        self.args.len
    }

    pub fn arg(&self, i: usize) -> &[u8] {
        &self.frame[self.args.get(i)]
    }

    /// The frame after argument `i`: the arguments that follow it, as they were sent.
    pub fn after(&self, i: usize) -> &[u8] {
        &self.frame[self.args.get(i).end + 2..]
    }

    pub fn args(&self) -> impl ExactSizeIterator<Item = &[u8]> + Clone {
        (0..self.args.len).map(|i| self.arg(i))
    }
}

/// Where the parser stopped inside an incomplete multibulk request.
#[derive(Debug, Default)]
struct Progress {
    /// Arguments the array header announced.
    argc: usize,
    /// Arguments found so far.
    args: Args,
    /// Offset of the next unparsed byte.
    pos: usize,
}

impl Progress {
    /// Finds the arguments in `buf` after those found so far, up to the last one or to where
    /// `buf` ends. Returns whether all `argc` are found.
    fn scan(
        &mut self,
        buf: &mut BytesMut,
        limits: Limits,
        authenticated: bool,
    ) -> Result<bool, ProtocolError> {
        while self.args.len < self.argc {
            let pos = self.pos;
            if pos >= buf.len() {
                return Ok(false);
            }
            if buf[pos] != b'$' {
                return Err(ProtocolError::ExpectedBulk(buf[pos]));
            }
            let Some((len, start)) = header_line(buf, pos, limits.max_inline_bytes)? else {
                return Ok(false);
            };
            if len < 0 || len > limits.max_bulk_bytes as i64 {
                return Err(ProtocolError::InvalidBulkLength);
            }
            let end = start + len as usize;
            // Refused on the header, before the argument is buffered.
            if !authenticated && end + 2 > limits.max_unauthenticated_bytes {
                return Err(ProtocolError::UnauthenticatedBulkLength);
            }
            if end + 2 > limits.max_request_bytes {
                return Err(ProtocolError::RequestTooBig(limits.max_request_bytes));
            }
            if buf.len() < end + 2 {
                // Room for (a bounded part of) the argument now, so a large one is not copied
                // at every read; a client that only claims a large size reserves little.
                buf.reserve((end + 2 - buf.len()).min(MAX_EAGER_RESERVE));
                return Ok(false);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ProtocolError::MissingCrlf);
            }
            self.args.push(start..end);
            self.pos = end + 2;
        }
        Ok(true)
    }

    /// The request found, taken off the front of `buf`.
    fn finish(self, buf: &mut BytesMut) -> Request {
        let frame = buf.split_to(self.pos).freeze();
        Request {
            frame,
            args: self.args,
        }
    }
}

/// A client's request parser. The [`Limits`], and whether the client has authenticated, are
/// passed to each parse rather than kept: a parser lives as long as its client, and an idle
/// client's memory counts.
#[derive(Debug, Default)]
pub struct RequestParser {
    /// Only while a request is incomplete (boxed: idle clients keep many parsers).
    progress: Option<Box<Progress>>,
}

impl RequestParser {
    /// Takes one complete request off the front of `buf`. `Ok(None)`: more bytes are needed
    /// (what was scanned is remembered). Empty requests (`*0`, blank lines) are skipped. Until
    /// the client has `authenticated` (or if it need not), its requests are held to
    /// `max_unauthenticated_bytes`.
    pub fn parse(
        &mut self,
        buf: &mut BytesMut,
        limits: &Limits,
        authenticated: bool,
    ) -> Result<Option<Request>, ProtocolError> {
        loop {
            if buf.is_empty() {
                return Ok(None);
            }
            let parsed = if buf[0] == b'*' || self.progress.is_some() {
                self.parse_multibulk(buf, limits, authenticated)?
            } else {
                parse_inline(buf, limits)?
            };
            match parsed {
                Step::Done(req) => return Ok(Some(req)),
                Step::Empty => continue,
                Step::Incomplete => return Ok(None),
            }
        }
    }

    /// True while a request has been started but not finished: a close now loses it.
    pub fn is_mid_request(&self, buf: &BytesMut) -> bool {
        self.progress.is_some() || !buf.is_empty()
    }

    fn parse_multibulk(
        &mut self,
        buf: &mut BytesMut,
        limits: &Limits,
        authenticated: bool,
    ) -> Result<Step, ProtocolError> {
        let limits = *limits;
        if let Some(progress) = self.progress.as_deref_mut() {
            if !progress.scan(buf, limits, authenticated)? {
                return Ok(Step::Incomplete);
            }
            let progress = self.progress.take().expect("progress was set above");
            return Ok(Step::Done(progress.finish(buf)));
        }
        let Some((n, next)) = header_line(buf, 0, limits.max_inline_bytes)? else {
            return Ok(Step::Incomplete);
        };
        if n > limits.max_args as i64 {
            return Err(ProtocolError::InvalidMultibulkLength);
        }
        if !authenticated && n > MAX_UNAUTHENTICATED_ARGS {
            return Err(ProtocolError::UnauthenticatedMultibulkLength);
        }
        if n <= 0 {
            let _ = buf.split_to(next);
            return Ok(Step::Empty);
        }
        let mut progress = Progress {
            argc: n as usize,
            args: Args::default(),
            pos: next,
        };
        if progress.scan(buf, limits, authenticated)? {
            Ok(Step::Done(progress.finish(buf)))
        } else {
            self.progress = Some(Box::new(progress));
            Ok(Step::Incomplete)
        }
    }
}

fn parse_inline(buf: &mut BytesMut, limits: &Limits) -> Result<Step, ProtocolError> {
    let Some(nl) = memchr::memchr(b'\n', buf) else {
        if buf.len() > limits.max_inline_bytes {
            return Err(ProtocolError::InlineTooBig);
        }
        return Ok(Step::Incomplete);
    };
    if nl > limits.max_inline_bytes {
        return Err(ProtocolError::InlineTooBig);
    }
    let line = buf.split_to(nl + 1);
    let words = split_inline(&line[..nl])?;
    if words.is_empty() {
        return Ok(Step::Empty);
    }
    if words.len() > limits.max_args {
        return Err(ProtocolError::InvalidMultibulkLength);
    }
    Ok(Step::Done(Request::from_args(
        words.iter().map(Vec::as_slice),
    )))
}

#[expect(
    clippy::large_enum_variant,
    reason = "returned once per request and taken apart at once; boxing it would allocate"
)]
enum Step {
    Done(Request),
    Empty,
    Incomplete,
}

/// The integer of the `*n` / `$n` line starting at `at`, and the offset after its CRLF.
fn header_line(buf: &[u8], at: usize, max: usize) -> Result<Option<(i64, usize)>, ProtocolError> {
    if let Some((n, end)) = int_line(buf, at + 1)
        && end - at <= max + 2
    {
        return Ok(Some((n, end)));
    }
    let window = &buf[at..buf.len().min(at + max + 2)];
    let invalid = || {
        if window[0] == b'*' {
            ProtocolError::InvalidMultibulkLength
        } else {
            ProtocolError::InvalidBulkLength
        }
    };
    match memchr::memchr(b'\n', window) {
        Some(nl) if nl >= 2 && window[nl - 1] == b'\r' => {
            let n = parse_int(&window[1..nl - 1]).ok_or_else(invalid)?;
            Ok(Some((n, at + nl + 1)))
        }
        Some(_) => Err(invalid()),
        None if window.len() >= max + 2 => Err(ProtocolError::HeaderTooBig),
        None => Ok(None),
    }
}

/// Splits an inline command as redis-server does: words separated by blanks, with "double" and
/// 'single' quoted words (double quotes take \n \r \t \" \\ and \xHH escapes).
fn split_inline(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut words = Vec::new();
    let mut i = 0;
    while i < line.len() {
        if line[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let mut word = Vec::new();
        match line[i] {
            q @ (b'"' | b'\'') => {
                i += 1;
                loop {
                    let Some(&c) = line.get(i) else {
                        return Err(ProtocolError::UnbalancedQuotes);
                    };
                    i += 1;
                    if c == q {
                        break;
                    }
                    if c == b'\\' && i < line.len() {
                        let e = line[i];
                        i += 1;
                        if q == b'\'' {
                            word.push(if e == b'\'' { e } else { c });
                            if e != b'\'' {
                                word.push(e);
                            }
                            continue;
                        }
                        match e {
                            b'n' => word.push(b'\n'),
                            b'r' => word.push(b'\r'),
                            b't' => word.push(b'\t'),
                            b'a' => word.push(7),
                            b'b' => word.push(8),
                            b'x' if i + 1 < line.len()
                                && line[i].is_ascii_hexdigit()
                                && line[i + 1].is_ascii_hexdigit() =>
                            {
                                let hex = std::str::from_utf8(&line[i..i + 2]).unwrap_or("0");
                                word.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                                i += 2;
                            }
                            other => word.push(other),
                        }
                    } else {
                        word.push(c);
                    }
                }
                if line.get(i).is_some_and(|c| !c.is_ascii_whitespace()) {
                    return Err(ProtocolError::UnbalancedQuotes);
                }
            }
            _ => {
                while i < line.len() && !line[i].is_ascii_whitespace() {
                    word.push(line[i]);
                    i += 1;
                }
            }
        }
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests;
