//! Encoders for the replies the proxy writes itself.

use bytes::{BufMut, BytesMut};

/// Appends the decimal form of `n` without going through `fmt`.
pub fn put_int(buf: &mut BytesMut, n: i64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        buf.put_u8(b'-');
    }
    buf.put_slice(&tmp[i..]);
}

fn line(buf: &mut BytesMut, kind: u8, n: i64) {
    buf.put_u8(kind);
    put_int(buf, n);
    buf.put_slice(b"\r\n");
}

pub fn simple(buf: &mut BytesMut, s: &str) {
    buf.put_u8(b'+');
    buf.put_slice(s.as_bytes());
    buf.put_slice(b"\r\n");
}

/// An error reply; `msg` starts with its code (`ERR …`, `NOAUTH …`). Line breaks are flattened so
/// the reply stays one line.
pub fn error(buf: &mut BytesMut, msg: &str) {
    buf.put_u8(b'-');
    buf.extend(
        msg.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    buf.put_slice(b"\r\n");
}

pub fn integer(buf: &mut BytesMut, n: i64) {
    line(buf, b':', n);
}

pub fn bulk_header(buf: &mut BytesMut, len: usize) {
    line(buf, b'$', len as i64);
}

pub fn bulk(buf: &mut BytesMut, data: &[u8]) {
    bulk_header(buf, data.len());
    buf.put_slice(data);
    buf.put_slice(b"\r\n");
}

/// The null reply: `$-1` in RESP2, `_` in RESP3.
pub fn null(buf: &mut BytesMut, resp3: bool) {
    buf.put_slice(if resp3 { b"_\r\n" } else { b"$-1\r\n" });
}

pub fn array(buf: &mut BytesMut, len: usize) {
    line(buf, b'*', len as i64);
}

/// An out-of-band message header: a push (`>n`) in RESP3, an array in RESP2.
pub fn push(buf: &mut BytesMut, len: usize, resp3: bool) {
    if resp3 {
        line(buf, b'>', len as i64);
    } else {
        array(buf, len);
    }
}

/// A map header: `%n` in RESP3, an array of 2n in RESP2.
pub fn map(buf: &mut BytesMut, pairs: usize, resp3: bool) {
    if resp3 {
        line(buf, b'%', pairs as i64);
    } else {
        array(buf, pairs * 2);
    }
}

/// A set header: `~n` in RESP3, an array in RESP2.
pub fn set(buf: &mut BytesMut, len: usize, resp3: bool) {
    if resp3 {
        line(buf, b'~', len as i64);
    } else {
        array(buf, len);
    }
}

/// A request as RESP array of bulk strings: how the proxy sends commands to backends.
pub fn command<'a>(buf: &mut BytesMut, args: impl ExactSizeIterator<Item = &'a [u8]>) {
    array(buf, args.len());
    for a in args {
        bulk(buf, a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_each_type() {
        let mut b = BytesMut::new();
        simple(&mut b, "OK");
        error(&mut b, "ERR bad\r\nthing");
        integer(&mut b, -42);
        integer(&mut b, i64::MIN);
        bulk(&mut b, b"hi");
        null(&mut b, false);
        null(&mut b, true);
        map(&mut b, 2, false);
        map(&mut b, 2, true);
        command(&mut b, [&b"GET"[..], b"k"].into_iter());
        assert_eq!(
            &b[..],
            &b"+OK\r\n-ERR bad  thing\r\n:-42\r\n:-9223372036854775808\r\n$2\r\nhi\r\n$-1\r\n_\r\n*4\r\n%2\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"[..]
        );
    }
}
