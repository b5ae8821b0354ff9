//! The Redis frontend against a context of its own (no socket, nodes never reached): what it
//! answers itself, in order, and when it stops parsing.

use super::*;
use crate::server::session::harness::Harness;

fn cmd(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    out.into_bytes()
}

#[tokio::test]
async fn what_the_proxy_answers_itself_comes_back_in_order_in_one_read() {
    let mut h = Harness::<Resp>::new("");
    let pipeline = [cmd(&["PING"]), cmd(&["ECHO", "hi"]), cmd(&["PING", "x"])].concat();
    assert_eq!(
        h.send(&pipeline),
        ("+PONG\r\n$2\r\nhi\r\n$1\r\nx\r\n".into(), false)
    );
}

#[tokio::test]
async fn unknown_commands_and_wrong_arity_get_redis_errors_and_the_connection_stays() {
    let mut h = Harness::<Resp>::new("");
    let (read, closing) = h.send(&cmd(&["NOSUCH", "a"]));
    assert_eq!(
        read,
        "-ERR unknown command 'NOSUCH', with args beginning with: 'a' \r\n"
    );
    assert!(!closing);
    let (read, _) = h.send(&cmd(&["GET"]));
    assert_eq!(read, "-ERR wrong number of arguments for 'get' command\r\n");
}

#[tokio::test]
async fn malformed_input_gets_a_protocol_error_and_closes() {
    let mut h = Harness::<Resp>::new("");
    let (read, closing) = h.send(b"*1\r\n$x\r\n");
    assert!(read.starts_with("-ERR Protocol error"), "{read}");
    assert!(closing);
}

#[tokio::test]
async fn a_pool_with_auth_answers_noauth_until_the_client_authenticates() {
    let mut h = Harness::<Resp>::new("    auth: { password: pw }\n");
    assert_eq!(
        h.send(&cmd(&["GET", "k"])).0,
        "-NOAUTH Authentication required.\r\n"
    );
    assert_eq!(h.pending(), 0, "nothing was sent to a node");
    assert_eq!(h.send(&cmd(&["AUTH", "pw"])).0, "+OK\r\n");
    assert_eq!(h.send(&cmd(&["PING"])).0, "+PONG\r\n");
}

#[tokio::test]
async fn client_reply_off_mutes_replies_until_on() {
    let mut h = Harness::<Resp>::new("");
    let pipeline = [
        cmd(&["CLIENT", "REPLY", "OFF"]),
        cmd(&["PING"]),
        cmd(&["CLIENT", "REPLY", "ON"]),
        cmd(&["ECHO", "back"]),
    ]
    .concat();
    assert_eq!(h.send(&pipeline).0, "+OK\r\n$4\r\nback\r\n");
}

#[tokio::test]
async fn transaction_errors_are_answered_without_a_node() {
    let mut h = Harness::<Resp>::new("");
    assert_eq!(h.send(&cmd(&["EXEC"])).0, "-ERR EXEC without MULTI\r\n");
    assert_eq!(
        h.send(&cmd(&["DISCARD"])).0,
        "-ERR DISCARD without MULTI\r\n"
    );
    assert_eq!(h.send(&cmd(&["MULTI"])).0, "+OK\r\n");
    assert_eq!(
        h.send(&cmd(&["MULTI"])).0,
        "-ERR MULTI calls can not be nested\r\n"
    );
}

#[tokio::test]
async fn no_more_than_max_pipeline_requests_are_parsed_while_nodes_answer_none() {
    let mut h = Harness::<Resp>::new("    limits: { max_pipeline: 2 }\n");
    let gets = cmd(&["GET", "k"]).repeat(5);
    let (read, closing) = h.send(&gets);
    assert_eq!((read.as_str(), closing), ("", false));
    assert_eq!(h.pending(), 2);
    assert_eq!(
        h.unparsed.len(),
        cmd(&["GET", "k"]).len() * 3,
        "three wait unparsed"
    );
}
