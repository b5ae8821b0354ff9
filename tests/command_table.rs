//! The command table against a real redis-server's `COMMAND INFO`: every command the proxy
//! routes has the server's write flag and key positions, so none is routed by the wrong argument
//! or to the wrong node, and an arity that admits what the server admits.

mod common;

use common::Redis;
use redis::Value;
use ringproxy::command::{Kind, TABLE};

/// (name, arity, write, first key, last key, step) as the server reports it.
fn spec(v: &Value) -> (String, i64, bool, i64, i64, i64) {
    let Value::Array(fields) = v else {
        panic!("not an entry: {v:?}")
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).to_string(),
        Value::SimpleString(s) => s.clone(),
        other => panic!("not a string: {other:?}"),
    };
    let int = |v: &Value| match v {
        Value::Int(n) => *n,
        other => panic!("not an integer: {other:?}"),
    };
    let flags = match &fields[2] {
        Value::Array(f) | Value::Set(f) => f.iter().map(text).collect::<Vec<_>>(),
        other => panic!("flags: {other:?}"),
    };
    (
        text(&fields[0]),
        int(&fields[1]),
        flags.iter().any(|f| f == "write"),
        int(&fields[3]),
        int(&fields[4]),
        int(&fields[5]),
    )
}

/// For a container command (OBJECT, XINFO, XGROUP), the key position its subcommands share.
fn subcommand_first_key(v: &Value) -> Option<i64> {
    let Value::Array(fields) = v else { return None };
    let Some(Value::Array(subs)) = fields.get(9) else {
        return None;
    };
    let firsts: Vec<i64> = subs
        .iter()
        .map(spec)
        .map(|s| s.3)
        .filter(|&f| f > 0)
        .collect();
    assert!(
        firsts.windows(2).all(|w| w[0] == w[1]),
        "subcommands disagree: {firsts:?}"
    );
    firsts.first().copied()
}

#[test]
fn every_routed_command_matches_the_server() {
    let server = Redis::start();
    let mut conn = server.client();
    let mut checked = 0;
    for cmd in TABLE.iter().filter(|c| c.kind != Kind::Local) {
        let reply: Value = redis::cmd("COMMAND")
            .arg("INFO")
            .arg(cmd.name)
            .query(&mut conn)
            .unwrap();
        let Value::Array(entries) = reply else {
            panic!("{reply:?}")
        };
        let entry = &entries[0];
        assert_ne!(
            entry,
            &Value::Nil,
            "{} is not a command of this server",
            cmd.name
        );
        let (name, arity, write, first, last, step) = spec(entry);
        assert_eq!(name.to_uppercase(), cmd.name);
        // The proxy's arity admits every argument count the server admits (a newer server may
        // take more: ZRANK … WITHSCORE came in 7.2).
        let admits = if arity > 0 {
            cmd.arity_ok(arity as usize)
        } else {
            cmd.arity < 0 && i64::from(cmd.arity) >= arity
        };
        assert!(
            admits,
            "{} arity: proxy {} server {arity}",
            cmd.name, cmd.arity
        );
        if let Kind::Script | Kind::Keyspace(_) = cmd.kind {
            // Scripts declare their keys in numkeys; keyspace commands take none.
            assert_eq!(first, 0, "{} keys", cmd.name);
        } else if first == 0 {
            // A container: the keys are where its subcommands say.
            assert_eq!(
                Some(cmd.first_key as i64),
                subcommand_first_key(entry),
                "{} subcommand key",
                cmd.name
            );
        } else {
            assert_eq!(cmd.write, write, "{} write flag", cmd.name);
            assert_eq!(
                (
                    cmd.first_key as i64,
                    cmd.last_key as i64,
                    cmd.key_step as i64
                ),
                (first, last, step),
                "{} keys",
                cmd.name
            );
        }
        checked += 1;
    }
    assert!(checked > 140, "{checked} commands checked");
}
