//! CLIENT LIST, INFO, KILL and UNBLOCK about the proxy's own clients, in Redis's formats.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

/// CLIENT LIST's or INFO's lines, each as its fields.
fn parse(text: &str) -> Vec<HashMap<String, String>> {
    text.lines()
        .map(|l| {
            l.split(' ')
                .filter_map(|f| f.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

fn client_list(c: &mut redis::Connection, args: &[&str]) -> Vec<HashMap<String, String>> {
    let text: String = redis::cmd("CLIENT").arg("LIST").arg(args).query(c).unwrap();
    parse(&text)
}

fn client_id(c: &mut redis::Connection) -> i64 {
    redis::cmd("CLIENT").arg("ID").query(c).unwrap()
}

#[test]
fn list_and_info_show_each_client_in_redis_format() {
    let (_shards, port, _proxy) = three_shards("cl", "    databases: 2\n");
    let mut me = connect(port);
    let _: () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg("app1")
        .query(&mut me)
        .unwrap();
    let mut other = connect(port);
    let other_id = client_id(&mut other);
    let _: () = redis::cmd("SELECT").arg(1).query(&mut other).unwrap();
    let mut listener = Raw::connect(port);
    listener.roundtrip(
        &command(&[b"SUBSCRIBE", b"news"]),
        b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n",
    );
    let my_id = client_id(&mut me);

    let all = client_list(&mut me, &[]);
    assert_eq!(all.len(), 3, "{all:?}");
    let mine = all.iter().find(|c| c["id"] == my_id.to_string()).unwrap();
    assert_eq!(
        (&mine["name"][..], &mine["cmd"][..], &mine["flags"][..]),
        ("app1", "client", "N")
    );
    assert_eq!(mine["laddr"], format!("127.0.0.1:{port}"));
    let theirs = all
        .iter()
        .find(|c| c["id"] == other_id.to_string())
        .unwrap();
    assert_eq!((&theirs["db"][..], &theirs["cmd"][..]), ("1", "select"));
    let subscribed = all.iter().find(|c| c["flags"] == "P").unwrap();
    assert_eq!(
        (&subscribed["sub"][..], &subscribed["psub"][..]),
        ("1", "0")
    );

    // Filters.
    let pubsub = client_list(&mut me, &["TYPE", "pubsub"]);
    assert_eq!(pubsub.len(), 1);
    assert_eq!(client_list(&mut me, &["TYPE", "normal"]).len(), 2);
    assert!(client_list(&mut me, &["TYPE", "master"]).is_empty());
    let by_id = client_list(&mut me, &["ID", &other_id.to_string(), "99999"]);
    assert_eq!(by_id.len(), 1);
    assert_eq!(by_id[0]["id"], other_id.to_string());
    let mut raw = Raw::connect(port);
    raw.roundtrip(
        &command(&[b"CLIENT", b"LIST", b"TYPE", b"foo"]),
        b"-ERR Unknown client type 'foo'\r\n",
    );
    raw.roundtrip(
        &command(&[b"CLIENT", b"LIST", b"ID", b"x"]),
        b"-ERR Invalid client ID\r\n",
    );

    // CLIENT INFO: the client itself, with the fields of one redis-server's, in its order.
    let info: String = redis::cmd("CLIENT").arg("INFO").query(&mut me).unwrap();
    let info = &parse(&info)[0];
    assert_eq!(
        (&info["id"][..], &info["name"][..]),
        (&my_id.to_string()[..], "app1")
    );
    // Redis 7.0's fields, in its order, whatever the backends (a Valkey 8 server lists more,
    // which clients read by name).
    let server = Redis::start_on(Program::Redis, &[]);
    let theirs: String = redis::cmd("CLIENT")
        .arg("INFO")
        .query(&mut server.client())
        .unwrap();
    let ours: String = redis::cmd("CLIENT").arg("INFO").query(&mut me).unwrap();
    let keys = |line: &str| -> Vec<String> {
        line.split(' ')
            .filter_map(|f| f.split_once('=').map(|(k, _)| k.to_string()))
            .collect()
    };
    assert_eq!(keys(&ours), keys(&theirs));
    assert!(ours.ends_with('\n'));
}

#[test]
fn kill_closes_the_chosen_clients_and_answers_as_redis_does() {
    let (_shards, port, proxy) = three_shards("ck", "");
    let mut me = connect(port);
    let mut victim = Raw::connect(port);
    victim.roundtrip(b"PING\r\n", b"+PONG\r\n");
    let mut by_addr = Raw::connect(port);
    by_addr.roundtrip(b"PING\r\n", b"+PONG\r\n");
    let victim_id = client_list(&mut me, &[])
        .into_iter()
        .map(|c| c["id"].parse::<i64>().unwrap())
        .find(|&id| id != client_id(&mut me))
        .unwrap();

    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(victim_id)
        .query(&mut me)
        .unwrap();
    assert_eq!(killed, 1);
    assert!(victim.is_closed());
    wait_until("the kill counted", Duration::from_secs(10), || {
        let metrics = proxy.http("/metrics").1;
        metric(
            &metrics,
            "ringproxy_client_closes_total{pool=\"main\",reason=\"killed\"}",
        ) == 1
    });

    // The old form names an address.
    let addr = client_list(&mut me, &[])
        .into_iter()
        .find(|c| c["id"] != client_id(&mut me).to_string())
        .unwrap()["addr"]
        .clone();
    let mut raw = Raw::connect(port);
    raw.roundtrip(&command(&[b"CLIENT", b"KILL", addr.as_bytes()]), b"+OK\r\n");
    assert!(by_addr.is_closed());
    raw.roundtrip(
        &command(&[b"CLIENT", b"KILL", b"1.2.3.4:5"]),
        b"-ERR No such client\r\n",
    );
    raw.roundtrip(
        &command(&[b"CLIENT", b"KILL", b"ID", b"0"]),
        b"-ERR client-id should be greater than 0\r\n",
    );
    raw.roundtrip(&command(&[b"CLIENT", b"KILL", b"ID", b"999999"]), b":0\r\n");
    // Every normal client but the one asking (SKIPME yes by default).
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query(&mut me)
        .unwrap();
    assert_eq!(killed, 1);
    assert!(raw.is_closed());
    // Killed clients leave the list at once.
    assert_eq!(client_list(&mut me, &[]).len(), 1);
    // SKIPME no: the client itself, after its reply.
    let mut last = Raw::connect(port);
    last.roundtrip(b"PING\r\n", b"+PONG\r\n");
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query(&mut me)
        .unwrap();
    assert!(last.is_closed());
    last = Raw::connect(port);
    last.roundtrip(
        &command(&[b"CLIENT", b"KILL", b"TYPE", b"normal", b"SKIPME", b"no"]),
        b":2\r\n",
    );
    assert!(last.is_closed());
}

#[test]
fn unblock_answers_the_waiting_command_and_loses_nothing() {
    let (_shards, port, _proxy) = three_shards("cu", "");
    let mut me = connect(port);
    let mut waiter = Raw::connect(port);
    let waiter_id = {
        waiter.send(&command(&[b"CLIENT", b"ID"]));
        let line = waiter.read_line();
        line.trim()[1..].to_string()
    };
    let wait_blocked = |me: &mut redis::Connection, blocked: bool| {
        wait_until("blocked as expected", Duration::from_secs(10), || {
            let list = client_list(me, &["ID", &waiter_id]);
            list[0]["flags"].contains('b') == blocked
        });
    };
    let unblock = |me: &mut redis::Connection, how: &[&str]| -> i64 {
        redis::cmd("CLIENT")
            .arg("UNBLOCK")
            .arg(&waiter_id)
            .arg(how)
            .query(me)
            .unwrap()
    };
    // Listed as blocked once the proxy sent the command; the server answers 1 once the
    // command waits there (0 before, as it would for a client not blocked yet).
    let unblocked = |me: &mut redis::Connection, how: &[&str]| {
        wait_until("unblocked on the server", Duration::from_secs(10), || {
            unblock(me, how) == 1
        });
    };
    // Not blocked: nothing to do.
    assert_eq!(unblock(&mut me, &[]), 0);

    waiter.send(&command(&[b"BLPOP", b"cu:q", b"0"]));
    wait_blocked(&mut me, true);
    unblocked(&mut me, &[]);
    assert_eq!(waiter.read_line(), "*-1\r\n");
    wait_blocked(&mut me, false);
    waiter.roundtrip(b"PING\r\n", b"+PONG\r\n");

    waiter.send(&command(&[
        b"BLMOVE", b"cu:q", b"cu:r", b"LEFT", b"LEFT", b"0",
    ]));
    wait_blocked(&mut me, true);
    unblocked(&mut me, &["ERROR"]);
    assert_eq!(
        waiter.read_line(),
        "-UNBLOCKED client unblocked via CLIENT UNBLOCK\r\n"
    );
    waiter.send(&command(&[b"BRPOPLPUSH", b"cu:q", b"cu:r", b"0"]));
    wait_blocked(&mut me, true);
    unblocked(&mut me, &["TIMEOUT"]);
    // As redis-server answers a list move that timed out.
    assert_eq!(waiter.read_line(), "*-1\r\n");

    // The backend stopped waiting: a push afterwards stays in the list.
    let _: i64 = redis::cmd("RPUSH")
        .arg("cu:q")
        .arg("job")
        .query(&mut me)
        .unwrap();
    let len: i64 = redis::cmd("LLEN").arg("cu:q").query(&mut me).unwrap();
    assert_eq!(len, 1);
    let info: String = redis::cmd("INFO").arg("clients").query(&mut me).unwrap();
    assert!(info.contains("blocked_clients:0\r\n"), "{info}");
    let mut raw = Raw::connect(port);
    raw.roundtrip(
        &command(&[b"CLIENT", b"UNBLOCK", waiter_id.as_bytes(), b"LATER"]),
        b"-ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR\r\n",
    );
    raw.roundtrip(&command(&[b"CLIENT", b"NO-EVICT", b"on"]), b"+OK\r\n");
    raw.roundtrip(
        &command(&[b"CLIENT", b"NO-TOUCH", b"maybe"]),
        b"-ERR syntax error\r\n",
    );
}
