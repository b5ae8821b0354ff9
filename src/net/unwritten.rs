//! Bytes waiting to be written, each part kept as it came: requests go out in vectored writes
//! of their own buffers, never copied into one.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use bytes::{Buf, Bytes};

use super::Stream;

/// Parts handed to one system call at most: well under every system's `IOV_MAX`.
const MAX_PARTS_PER_WRITE: usize = 128;

/// The largest number of parts whose queue is kept once empty: a spike does not hold its
/// memory for the connection's life.
const KEPT_PARTS: usize = 1024;

/// Bytes to write, in order.
#[derive(Debug, Default)]
pub struct Unwritten {
    parts: VecDeque<Bytes>,
    len: usize,
}

impl Unwritten {
    pub fn push(&mut self, part: Bytes) {
        if !part.is_empty() {
            self.len += part.len();
            self.parts.push_back(part);
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
        while !self.is_empty() || stream.is_holding_output() {
            let mut slices = [IoSlice::new(&[]); MAX_PARTS_PER_WRITE];
            let n = self.parts.len().min(MAX_PARTS_PER_WRITE);
            for (slice, part) in slices.iter_mut().zip(&self.parts) {
                *slice = IoSlice::new(part);
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
        Ok(())
    }

    /// The first `n` bytes were written.
    fn consume(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let Some(front) = self.parts.front_mut() else {
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
    fn written_bytes_leave_whole_parts_and_the_rest_of_a_part_waits() {
        let mut out = Unwritten::default();
        out.push(Bytes::from_static(b"abc"));
        out.push(Bytes::new());
        out.push(Bytes::from_static(b"defg"));
        assert_eq!((out.len(), out.parts.len()), (7, 2));
        out.consume(5);
        assert_eq!(out.len(), 2);
        assert_eq!(&out.parts[0][..], b"fg");
        out.consume(2);
        assert!(out.is_empty() && out.parts.is_empty());
    }
}
