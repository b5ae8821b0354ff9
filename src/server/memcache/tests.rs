//! The memcache frontend against a context of its own (no socket, nodes never reached).

use super::*;
use crate::server::session::harness::Harness;

fn memcache() -> Harness<Memcache> {
    Harness::new("    protocol: memcache\n")
}

#[tokio::test]
async fn what_the_proxy_answers_itself_comes_back_in_order() {
    let mut h = memcache();
    let (read, closing) = h.send(b"mn\r\nverbosity 1\r\nverbosity 1 noreply\r\nmn\r\n");
    assert_eq!((read.as_str(), closing), ("MN\r\nOK\r\nMN\r\n", false));
}

#[tokio::test]
async fn administrative_commands_are_refused_by_name() {
    let mut h = memcache();
    assert_eq!(
        h.send(b"slabs reassign 1 2\r\n").0,
        "CLIENT_ERROR 'slabs' is not supported through the proxy\r\n"
    );
    assert_eq!(h.pending(), 0);
}

#[tokio::test]
async fn a_command_line_with_a_control_byte_never_reaches_a_node() {
    let mut h = memcache();
    let (read, closing) = h.send(b"get a\x00b\r\nmn\r\n");
    assert_eq!(read, "CLIENT_ERROR bad command line format\r\nMN\r\n");
    assert!(!closing);
    assert_eq!(h.pending(), 0);
}

#[tokio::test]
async fn quit_and_the_binary_protocol_close_the_connection() {
    let mut h = memcache();
    assert!(h.send(b"quit\r\n").1);
    let mut binary = memcache();
    // A binary GET's 24-byte header (magic 0x80) with a one-byte key.
    let mut header = [0u8; 25];
    (header[0], header[3], header[11]) = (0x80, 1, 1);
    let (read, closing) = binary.send(&header);
    assert!(closing, "{read:?}");
    assert!(!read.is_empty(), "refused in binary");
}

#[tokio::test]
async fn a_write_with_an_exptime_in_the_past_is_refused_when_the_pool_says_so() {
    let mut h = Harness::<Memcache>::new("    protocol: memcache\n    reject_past_exptime: true\n");
    let (read, _) = h.send(b"set k 0 1000000000 1\r\nv\r\n");
    assert!(
        read.starts_with("CLIENT_ERROR exptime 1000000000 is in the past"),
        "{read}"
    );
    assert_eq!(h.pending(), 0);
}
