//! The command table against a real redis-server's `COMMAND INFO`: every command the proxy
//! routes has the server's write flag and key positions, so none is routed by the wrong argument
//! or to the wrong node, and an arity that admits what the server admits.

mod common;

use common::Redis;
use redis::Value;
use ringproxy::command::{Kind, Movable, TABLE, UNSUPPORTED, lookup, markdown};
use ringproxy::protocol::resp::Request;

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

/// Whether the server flags the entry `movablekeys`.
fn movable(v: &Value) -> bool {
    let Value::Array(fields) = v else {
        return false;
    };
    match &fields[2] {
        Value::Array(f) | Value::Set(f) => f.iter().any(|f| match f {
            Value::SimpleString(s) => s == "movablekeys",
            Value::BulkString(b) => b == b"movablekeys",
            _ => false,
        }),
        _ => false,
    }
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
    for cmd in TABLE.iter().filter(|c| !matches!(c.kind, Kind::Local(_))) {
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
        if cmd.movable != Movable::None || matches!(cmd.kind, Kind::Script(_)) {
            assert!(
                movable(entry),
                "{}: the server has no movable keys",
                cmd.name
            );
            if cmd.first_key > 0 {
                assert_eq!(
                    (cmd.first_key as i64, cmd.last_key as i64),
                    (first, last),
                    "{}",
                    cmd.name
                );
            }
        } else if matches!(
            cmd.kind,
            Kind::Keyspace(_) | Kind::Transaction(_) | Kind::PubSub(_)
        ) && cmd.first_key == 0
        {
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

#[test]
fn every_server_command_is_served_or_refused_with_a_reason() {
    let server = Redis::start();
    let mut conn = server.client();
    let names: Vec<String> = redis::cmd("COMMAND").arg("LIST").query(&mut conn).unwrap();
    let mut missing = Vec::new();
    for name in names.iter().filter(|n| !n.contains('|')) {
        let upper = name.to_uppercase();
        let served = TABLE.iter().any(|c| c.name == upper);
        let refused = UNSUPPORTED.iter().any(|(n, _)| *n == upper);
        assert!(!(served && refused), "{upper} is both served and refused");
        if !served && !refused {
            missing.push(upper);
        }
    }
    assert!(
        missing.is_empty(),
        "neither served nor refused: {missing:?}"
    );
    // Commands of a Valkey 8 server that a Redis 7.0 one does not have.
    let newer = ["COMMANDLOG", "WAITAOF"];
    for (name, why) in UNSUPPORTED {
        assert!(
            names.iter().any(|n| n.eq_ignore_ascii_case(name)) || newer.contains(name),
            "{name} is not a command"
        );
        assert!(!why.is_empty());
    }
}

/// The proxy's keys of `args`, as argument values.
fn proxy_keys(args: &[&str]) -> Vec<String> {
    let req = Request::from_args(args.iter().map(|a| a.as_bytes()));
    let cmd = lookup(args[0].as_bytes()).unwrap();
    cmd.key_positions(req.argc())
        .chain(cmd.movable_keys(&req))
        .map(|i| args[i].to_string())
        .collect()
}

#[test]
fn movable_keys_are_where_the_server_finds_them() {
    let server = Redis::start();
    let mut conn = server.client();
    let cases: &[&[&str]] = &[
        &["ZUNION", "2", "a", "b", "WEIGHTS", "1", "2"],
        &["ZINTER", "3", "a", "b", "c"],
        &["ZDIFF", "1", "a", "WITHSCORES"],
        &["ZINTERCARD", "2", "a", "b", "LIMIT", "5"],
        &["SINTERCARD", "2", "a", "b"],
        &["LMPOP", "2", "a", "b", "LEFT", "COUNT", "3"],
        &["ZMPOP", "1", "a", "MIN"],
        &["ZUNIONSTORE", "dest", "2", "a", "b", "AGGREGATE", "SUM"],
        &["ZINTERSTORE", "dest", "1", "a"],
        &["ZDIFFSTORE", "dest", "2", "a", "b"],
        &["XREAD", "COUNT", "2", "STREAMS", "s1", "s2", "0", "0"],
        &["XREAD", "STREAMS", "s1", "$"],
        &[
            "XREADGROUP",
            "GROUP",
            "g",
            "c",
            "COUNT",
            "1",
            "STREAMS",
            "s1",
            "s2",
            ">",
            ">",
        ],
        &["XREADGROUP", "GROUP", "STREAMS", "c", "STREAMS", "s1", ">"],
        &["SORT", "list"],
        &[
            "SORT", "list", "BY", "STORE", "LIMIT", "0", "10", "GET", "#", "STORE", "dest",
        ],
        &["SORT", "list", "ALPHA", "STORE", "dest"],
        &["GEORADIUS", "geo", "0", "0", "10", "km"],
        &["GEORADIUS", "geo", "0", "0", "10", "km", "STORE", "dest"],
        &[
            "GEORADIUS",
            "geo",
            "0",
            "0",
            "10",
            "km",
            "STOREDIST",
            "dist",
        ],
        &["GEORADIUSBYMEMBER", "geo", "m", "10", "km", "STORE", "dest"],
        &[
            "GEORADIUS",
            "geo",
            "0",
            "0",
            "10",
            "km",
            "STORE",
            "STORE",
            "dest",
        ],
    ];
    for args in cases {
        let server_keys: Vec<String> = redis::cmd("COMMAND")
            .arg("GETKEYS")
            .arg(*args)
            .query(&mut conn)
            .unwrap();
        assert_eq!(proxy_keys(args), server_keys, "{args:?}");
    }
}

#[test]
fn the_manual_lists_the_commands_of_the_table() {
    let manual =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/commands.md")).unwrap();
    let lists = markdown();
    assert!(
        manual.contains(&lists),
        "docs/commands.md must hold the command lists as `ringproxy --commands` prints them:\n{lists}"
    );
}
