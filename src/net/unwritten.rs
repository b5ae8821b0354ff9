//! Bytes waiting to be written: large parts (a request carrying a value) kept as they came and
//! written in vectored writes of their own buffers, never copied; small ones copied together,
//! since the kernel spends more on an iovec of its own than the copy of a few bytes costs.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use bytes::{Buf, Bytes, BytesMut};

use super::Stream;

/// Parts handed to one system call at most: well under every system's `IOV_MAX`.
const MAX_PARTS_PER_WRITE: usize = 64;

/// The largest number of parts whose queue is kept once empty, and the largest buffer of
/// copied parts kept once written: a spike does not hold its memory for the connection's life.
const KEPT_PARTS: usize = 1024;
const KEPT_COPIED: usize = 1024 * 1024;

/// Parts up to this size are copied together rather than written from their own buffers.
const COPIED_UP_TO: usize = 1024;

/// Bytes to write, in order.
#[derive(Debug, Default)]
pub struct Unwritten {
    parts: VecDeque<Bytes>,
    /// Small parts copied together since the last part of `parts`.
    copied: BytesMut,
    len: usize,
}

impl Unwritten {
    pub fn push(&mut self, part: Bytes) {
        self.len += part.len();
        if part.len() <= COPIED_UP_TO {
            self.copied.extend_from_slice(&part);
        } else {
            self.close_copied();
            self.parts.push_back(part);
        }
    }

    /// Writes what `encode` puts in the buffer of copied parts: what the proxy makes itself
    /// goes there once, not through a buffer of its own.
    pub fn encode(&mut self, encode: impl FnOnce(&mut BytesMut)) {
        let before = self.copied.len();
        encode(&mut self.copied);
        self.len += self.copied.len() - before;
    }

    /// Moves what was copied together into the parts, after those before it. The buffer's
    /// memory is reused once the part is written and let go.
    fn close_copied(&mut self) {
        if !self.copied.is_empty() {
            self.parts.push_back(self.copied.split().freeze());
        }
    }

    /// Bytes not written yet.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes what the socket takes now, without waiting; on TLS, sends what it holds first.
    pub fn write_to(&mut self, stream: &Stream) -> io::Result<()> {
        if self.parts.is_empty() {
            // Only small parts, as usual: one buffer, one write.
            if !self.copied.is_empty() || stream.is_holding_output() {
                let written = stream.try_write(&self.copied)?;
                self.consume(written);
            }
        }
        while !self.parts.is_empty() || stream.is_holding_output() {
            let mut slices = [IoSlice::new(&[]); MAX_PARTS_PER_WRITE];
            let mut n = 0;
            for (slice, part) in slices.iter_mut().zip(&self.parts) {
                *slice = IoSlice::new(part);
                n += 1;
            }
            // What was copied after the last part goes in the same write.
            if n < MAX_PARTS_PER_WRITE && n == self.parts.len() && !self.copied.is_empty() {
                slices[n] = IoSlice::new(&self.copied);
                n += 1;
            }
            let offered: usize = slices[..n].iter().map(|s| s.len()).sum();
            let written = stream.try_write_vectored(&slices[..n])?;
            self.consume(written);
            if written < offered || written == 0 {
                break;
            }
        }
        if self.parts.is_empty() && self.parts.capacity() > KEPT_PARTS {
            self.parts = VecDeque::new();
        }
        if self.copied.is_empty() && self.copied.capacity() > KEPT_COPIED {
            self.copied = BytesMut::new();
        }
        Ok(())
    }

    /// The first `n` bytes were written: whole parts first, then what was copied after them.
    fn consume(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let Some(front) = self.parts.front_mut() else {
                self.copied.advance(n);
                return;
            };
            if n < front.len() {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.parts.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_parts_are_copied_together_and_large_ones_kept_in_order() {
        let mut out = Unwritten::default();
        out.push(Bytes::from_static(b"abc"));
        out.push(Bytes::new());
        out.push(Bytes::from_static(b"defg"));
        let large = Bytes::from(vec![b'x'; COPIED_UP_TO + 1]);
        out.push(large.clone());
        out.push(Bytes::from_static(b"hi"));
        out.close_copied();
        assert_eq!(out.len(), 7 + large.len() + 2);
        let parts: Vec<&[u8]> = out.parts.iter().map(|p| &p[..]).collect();
        assert_eq!(parts, [&b"abcdefg"[..], &large[..], b"hi"]);
        assert_eq!(
            out.parts[1].as_ptr(),
            large.as_ptr(),
            "the large part is not copied"
        );
        // What the proxy encodes itself goes straight into the copied buffer.
        out.encode(|buf| buf.extend_from_slice(b"!"));
        assert_eq!(
            (&out.copied[..], out.len()),
            (&b"!"[..], 7 + large.len() + 3)
        );
    }

    #[test]
    fn written_bytes_leave_whole_parts_and_the_rest_of_a_part_waits() {
        let mut out = Unwritten::default();
        out.push(Bytes::from(vec![b'a'; COPIED_UP_TO + 3]));
        out.push(Bytes::from(vec![b'b'; COPIED_UP_TO + 4]));
        out.consume(COPIED_UP_TO + 5);
        assert_eq!(out.len(), COPIED_UP_TO + 2);
        assert_eq!(&out.parts[0][..2], b"bb");
        out.push(Bytes::from_static(b"tail"));
        out.consume(COPIED_UP_TO + 3);
        assert_eq!(
            &out.copied[..],
            b"ail",
            "then what was copied after the parts"
        );
        out.consume(3);
        assert!(out.is_empty() && out.parts.is_empty() && out.copied.is_empty());
    }
}
