//! Transactions through ringproxy with real redis-server shards: pinned to one shard, queued by
//! the proxy, run on a reserved connection; WATCH, DISCARD and the errors a single Redis gives;
//! redis-py's Lock and a stock-selling script under concurrency.

mod common;

use std::time::Duration;

use common::*;
use redis::{Commands, Value};

/// Pools with `{…}` hash tags, so keys can be put together.
const TAGS: &str = "    hash_tag: \"{}\"\n";

/// Backend connections whose last command was `command`, over every shard.
fn connections_last_running(shards: &[Redis], command: &str) -> usize {
    shards
        .iter()
        .map(|s| {
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query(&mut s.client())
                .unwrap();
            list.lines()
                .filter(|l| l.contains(&format!(" cmd={command} ")))
                .count()
        })
        .sum()
}

fn connections_received(shards: &[Redis]) -> i64 {
    shards
        .iter()
        .map(|s| info_field(s, "stats", "total_connections_received"))
        .sum()
}

#[test]
fn multi_exec_on_one_shard_with_raw_bytes() {
    let (_shards, port, _proxy) = three_shards("s", TAGS);
    let mut r = Raw::connect(port);
    r.roundtrip(&command(&[b"MULTI"]), b"+OK\r\n");
    r.roundtrip(&command(&[b"SET", b"{t}a", b"1"]), b"+QUEUED\r\n");
    r.roundtrip(&command(&[b"INCR", b"{t}a"]), b"+QUEUED\r\n");
    r.roundtrip(&command(&[b"MGET", b"{t}a", b"{t}b"]), b"+QUEUED\r\n");
    r.roundtrip(&command(&[b"PING"]), b"+QUEUED\r\n");
    r.roundtrip(
        &command(&[b"EXEC"]),
        b"*4\r\n+OK\r\n:2\r\n*2\r\n$1\r\n2\r\n$-1\r\n+PONG\r\n",
    );
    // Errors a single Redis gives.
    r.roundtrip(&command(&[b"EXEC"]), b"-ERR EXEC without MULTI\r\n");
    r.roundtrip(&command(&[b"DISCARD"]), b"-ERR DISCARD without MULTI\r\n");
    r.roundtrip(&command(&[b"MULTI"]), b"+OK\r\n");
    r.roundtrip(
        &command(&[b"MULTI"]),
        b"-ERR MULTI calls can not be nested\r\n",
    );
    r.roundtrip(
        &command(&[b"WATCH", b"{t}a"]),
        b"-ERR WATCH inside MULTI is not allowed\r\n",
    );
    r.roundtrip(&command(&[b"SET", b"{t}a", b"9"]), b"+QUEUED\r\n");
    r.roundtrip(&command(&[b"DISCARD"]), b"+OK\r\n");
    r.roundtrip(&command(&[b"GET", b"{t}a"]), b"$1\r\n2\r\n");
    // A command the server refuses at queue time aborts EXEC, as in Redis.
    r.roundtrip(&command(&[b"MULTI"]), b"+OK\r\n");
    r.roundtrip(&command(&[b"SET", b"{t}a", b"5"]), b"+QUEUED\r\n");
    r.roundtrip(
        &command(&[b"NOSUCH"]),
        b"-ERR unknown command 'NOSUCH', with args beginning with: \r\n",
    );
    r.roundtrip(
        &command(&[b"EXEC"]),
        b"-EXECABORT Transaction discarded because of previous errors.\r\n",
    );
    r.roundtrip(&command(&[b"GET", b"{t}a"]), b"$1\r\n2\r\n");
}

#[test]
fn keys_of_another_shard_abort_the_transaction() {
    let (_shards, port, proxy) = three_shards("s", TAGS);
    let mut c = connect(port);
    let (a, b) = keys_on_two_shards(&proxy, &mut c);
    let mut r = Raw::connect(port);
    r.roundtrip(&command(&[b"MULTI"]), b"+OK\r\n");
    r.roundtrip(&command(&[b"INCR", a.as_bytes()]), b"+QUEUED\r\n");
    r.roundtrip(
        &command(&[b"INCR", b.as_bytes()]),
        b"-CROSSSLOT Keys in request don't hash to the shard of the transaction (command 'incr'); use a hash tag\r\n",
    );
    r.roundtrip(
        &command(&[b"EXEC"]),
        b"-EXECABORT Transaction discarded because of previous errors.\r\n",
    );
    assert_eq!(c.get::<_, i64>(&a).unwrap(), 0, "nothing ran");
    // Keyspace commands have no place in a transaction.
    r.roundtrip(&command(&[b"MULTI"]), b"+OK\r\n");
    r.roundtrip(
        &command(&[b"DBSIZE"]),
        b"-ERR 'DBSIZE' cannot run inside a transaction through the proxy\r\n",
    );
    r.roundtrip(&command(&[b"DISCARD"]), b"+OK\r\n");
}

#[test]
fn watch_aborts_on_a_concurrent_change_and_pipelines_work() {
    let (shards, port, proxy) = three_shards("s", TAGS);
    // Health checks have opened their connections.
    proxy.wait_ready(true);
    let mut c = connect(port);
    let mut other = connect(port);
    let _: () = c.set("{w}balance", 10).unwrap();
    // Untouched: EXEC runs.
    let _: () = redis::cmd("WATCH").arg("{w}balance").query(&mut c).unwrap();
    let result: Value = redis::pipe()
        .atomic()
        .incr("{w}balance", 5)
        .get("{w}balance")
        .query(&mut c)
        .unwrap();
    assert_eq!(
        format!("{result:?}"),
        format!(
            "{:?}",
            Value::Array(vec![Value::Int(15), Value::BulkString(b"15".to_vec())])
        )
    );
    // Changed by another client between WATCH and EXEC: EXEC returns nil, nothing runs.
    let _: () = redis::cmd("WATCH").arg("{w}balance").query(&mut c).unwrap();
    let _: () = other.set("{w}balance", 100).unwrap();
    let result: Option<(i64,)> = redis::pipe()
        .atomic()
        .incr("{w}balance", 1)
        .query(&mut c)
        .unwrap();
    assert_eq!(result, None);
    assert_eq!(other.get::<_, i64>("{w}balance").unwrap(), 100);
    // UNWATCH and DISCARD after WATCH give the connection back; 100 transactions reuse it.
    let _: () = redis::cmd("WATCH").arg("{w}balance").query(&mut c).unwrap();
    let _: () = redis::cmd("UNWATCH").query(&mut c).unwrap();
    let _: () = redis::cmd("WATCH").arg("{w}balance").query(&mut c).unwrap();
    let _: () = redis::cmd("MULTI").query(&mut c).unwrap();
    let _: () = redis::cmd("DISCARD").query(&mut c).unwrap();
    let before = connections_received(&shards);
    for _ in 0..100 {
        let _: (i64,) = redis::pipe()
            .atomic()
            .incr("{w}n", 1)
            .query(&mut c)
            .unwrap();
    }
    // Asking opens one connection per shard, counted in each answer.
    let asking = shards.len() as i64;
    assert_eq!(
        connections_received(&shards) - before - asking,
        0,
        "new backend connections for 100 transactions"
    );
    assert_eq!(other.get::<_, i64>("{w}n").unwrap(), 100);
}

#[test]
fn a_client_that_leaves_while_watching_closes_its_connection() {
    let (shards, port, _proxy) = three_shards("s", TAGS);
    let mut r = Raw::connect(port);
    r.roundtrip(&command(&[b"WATCH", b"{x}k"]), b"+OK\r\n");
    assert_eq!(connections_last_running(&shards, "watch"), 1);
    drop(r);
    wait_until("watch connection closed", Duration::from_secs(10), || {
        connections_last_running(&shards, "watch") == 0
    });
}

#[test]
fn redis_py_lock_stock_script_transactions_and_pubsub_under_concurrency() {
    let (_shards, port, _proxy) = three_shards("s", TAGS);
    assert_eq!(python("concurrency.py", port).len(), 5);
}
