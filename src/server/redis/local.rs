//! Commands the proxy answers itself: the connection handshake of standard clients (HELLO, AUTH,
//! SELECT, CLIENT SETNAME/SETINFO, PING, ECHO, COMMAND, INFO) and QUIT. Decided without I/O:
//! INFO's backend sections are a plan like any other.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::context::{ClientState, Local, ok, valid_name};
use crate::command::{LocalCommand, TABLE};
use crate::protocol::resp::{Request, encode, parse_int};
use crate::server::error::ClientError;
use crate::server::plan::{Part, Plan, Target};
use crate::topology::{Pool, PoolState};

/// The version HELLO reports until a backend has said its own.
const SERVED_REDIS_VERSION: &str = "7.0.0";

fn bulk(value: &[u8]) -> Plan {
    let mut b = BytesMut::new();
    encode::bulk(&mut b, value);
    Plan::Reply(b.freeze())
}

/// The plan of a local command (QUIT: its +OK; the caller closes the connection).
pub(super) fn run(cx: Local<'_>, state: &PoolState, which: LocalCommand, req: &Request) -> Plan {
    let allowed_before_auth = matches!(
        which,
        LocalCommand::Auth | LocalCommand::Hello | LocalCommand::Quit | LocalCommand::Reset
    );
    if !allowed_before_auth && !cx.client.authenticated {
        return Plan::Fail(ClientError::NoAuth);
    }
    match which {
        LocalCommand::Ping => ping(&cx, req),
        LocalCommand::Echo => bulk(req.arg(1)),
        LocalCommand::Quit => ok(),
        LocalCommand::Select => select(cx, req),
        LocalCommand::Auth => auth(cx, req),
        LocalCommand::Hello => hello(cx, state, req),
        LocalCommand::Client => super::client::run(cx, state, req),
        LocalCommand::Cluster => super::cluster::run(&cx, state, req),
        LocalCommand::ReadMode => super::cluster::read_mode(state),
        LocalCommand::Command => command(cx.client.resp3, state, req),
        LocalCommand::Info => super::info::route(cx.pool, state, req),
        LocalCommand::SlowLog => slowlog(cx.pool, req),
        LocalCommand::Time => time(),
        LocalCommand::Reset => reset(cx),
    }
}

/// SELECT: the client's requests go on the backend connections of that database from now on.
fn select(cx: Local<'_>, req: &Request) -> Plan {
    let Some(db) = parse_int(req.arg(1)) else {
        return Plan::Fail(ClientError::NotAnInteger);
    };
    if cx.watching && i64::from(cx.client.db) != db {
        return Plan::Fail(ClientError::Refused(
            "SELECT of another database while keys are watched: UNWATCH first".into(),
        ));
    }
    match u16::try_from(db) {
        Ok(db) if db < cx.pool.config.redis.databases => {
            cx.client.db = db;
            ok()
        }
        _ => Plan::Fail(ClientError::Exact("ERR DB index is out of range".into())),
    }
}

/// RESET, for the client's own state: RESP2, no name, and unauthenticated again if the pool
/// needs AUTH (as Redis logs the client in as `default`). Failed AUTHs still count.
fn reset(cx: Local<'_>) -> Plan {
    let failures = cx.client.auth_failures;
    if let Some(tracking) = &cx.pool.client_tracking {
        tracking.stop(cx.listing.id);
    }
    *cx.client = ClientState::new(cx.pool.config.redis.users.is_empty());
    cx.client.auth_failures = failures;
    cx.listing.set_name(None);
    cx.listing.set_user("default");
    Plan::Reply(Bytes::from_static(b"+RESET\r\n"))
}

/// TIME: the proxy's clock (the shards' clocks may differ; this one is the client's to see).
fn time() -> Plan {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut b = BytesMut::new();
    encode::array(&mut b, 2);
    encode::bulk(&mut b, now.as_secs().to_string().as_bytes());
    encode::bulk(&mut b, now.subsec_micros().to_string().as_bytes());
    Plan::Reply(b.freeze())
}

/// SLOWLOG GET [count] | LEN | RESET | HELP, from the pool's own record of slow requests.
fn slowlog(pool: &Pool, req: &Request) -> Plan {
    let sub = req.arg(1).to_ascii_uppercase();
    let mut b = BytesMut::new();
    match (&sub[..], req.argc()) {
        (b"GET", 2 | 3) => {
            let count = match req.argc() {
                2 => Some(10),
                _ => match parse_int(req.arg(2)) {
                    Some(-1) => None,
                    Some(n) if n >= 0 => Some(n as usize),
                    _ => {
                        return Plan::Fail(ClientError::Exact(
                            "ERR count should be greater than or equal to -1".into(),
                        ));
                    }
                },
            };
            let entries = pool.slowlog.newest(count);
            encode::array(&mut b, entries.len());
            for entry in &entries {
                entry.encode(&mut b);
            }
        }
        (b"LEN", 2) => encode::integer(&mut b, pool.slowlog.len() as i64),
        (b"RESET", 2) => {
            pool.slowlog.reset();
            return ok();
        }
        (b"HELP", 2) => {
            let lines = [
                "SLOWLOG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "GET [<count>]",
                "    Return top <count> entries from the slowlog (default: 10, -1 mean all).",
                "    Entries are made of:",
                "    id, timestamp, time in microseconds, arguments array, client IP and port,",
                "    client name, and (ringproxy) the shard and the backend's microseconds",
                "LEN",
                "    Return the length of the slowlog.",
                "RESET",
                "    Reset the slowlog.",
                "HELP",
                "    Prints this help.",
            ];
            encode::array(&mut b, lines.len());
            for line in lines {
                encode::simple(&mut b, line);
            }
        }
        _ => {
            return Plan::Fail(ClientError::Exact(
                format!(
                    "ERR unknown subcommand or wrong number of arguments for '{}'. Try SLOWLOG HELP.",
                    String::from_utf8_lossy(req.arg(1))
                )
                .into(),
            ));
        }
    }
    Plan::Reply(b.freeze())
}

fn ping(cx: &Local<'_>, req: &Request) -> Plan {
    if cx.subscribed && !cx.client.resp3 {
        // In RESP2 subscribed mode PING answers as a message would.
        let mut b = BytesMut::new();
        encode::array(&mut b, 2);
        encode::bulk(&mut b, b"pong");
        encode::bulk(&mut b, if req.argc() > 1 { req.arg(1) } else { b"" });
        return Plan::Reply(b.freeze());
    }
    match req.argc() {
        1 => Plan::Reply(Bytes::from_static(b"+PONG\r\n")),
        2 => bulk(req.arg(1)),
        _ => Plan::Fail(ClientError::WrongArity("ping".into())),
    }
}

/// Checks a username/password pair against the pool's users (the pool password is user
/// `default`), comparing every password in full so the time taken tells nothing.
/// A wrong pair is refused with how long its error waits: as long as failures from the
/// client's address have earned.
fn check_password(cx: &mut Local<'_>, user: &[u8], password: &[u8]) -> Result<(), Duration> {
    let ok = cx
        .pool
        .config
        .redis
        .users
        .iter()
        .filter(|u| u.name.as_bytes() == user)
        .fold(false, |ok, u| {
            ok | crate::config::same_secret(u.password.as_bytes(), password)
        });
    if !ok {
        cx.client.auth_failures = cx.client.auth_failures.saturating_add(1);
        let users = &cx.pool.config.redis.users;
        let known = users.iter().find(|u| u.name.as_bytes() == user);
        let shown = known.map_or("unknown", |u| u.name.as_str());
        return Err(cx.pool.metrics.auth_failures.failed(shown, cx.listing.addr));
    }
    cx.client.authenticated = true;
    cx.listing.set_user(&String::from_utf8_lossy(user));
    Ok(())
}

fn auth(mut cx: Local<'_>, req: &Request) -> Plan {
    if req.argc() > 3 {
        return Plan::Fail(ClientError::WrongArity("auth".into()));
    }
    if cx.pool.config.redis.users.is_empty() {
        return Plan::Fail(ClientError::Exact("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?".into()));
    }
    let (user, password) = if req.argc() == 3 {
        (req.arg(1), req.arg(2))
    } else {
        (&b"default"[..], req.arg(1))
    };
    match check_password(&mut cx, user, password) {
        Ok(()) => ok(),
        Err(wait) => Plan::FailAfter(ClientError::WrongPass, wait),
    }
}

fn hello(mut cx: Local<'_>, state: &PoolState, req: &Request) -> Plan {
    let mut resp3 = cx.client.resp3;
    let mut i = 1;
    if req.argc() > 1 {
        match parse_int(req.arg(1)) {
            Some(2) => resp3 = false,
            Some(3) => resp3 = true,
            Some(_) => {
                return Plan::Fail(ClientError::Exact(
                    "NOPROTO unsupported protocol version".into(),
                ));
            }
            None => {
                return Plan::Fail(ClientError::Exact(
                    "ERR Protocol version is not an integer or out of range".into(),
                ));
            }
        }
        i = 2;
    }
    let mut name = None;
    while i < req.argc() {
        let opt = req.arg(i).to_ascii_uppercase();
        if opt == b"AUTH" && i + 2 < req.argc() {
            if let Err(wait) = check_password(&mut cx, req.arg(i + 1), req.arg(i + 2)) {
                return Plan::FailAfter(ClientError::WrongPass, wait);
            }
            i += 3;
        } else if opt == b"SETNAME" && i + 1 < req.argc() {
            if !valid_name(req.arg(i + 1)) {
                return Plan::Fail(ClientError::Exact(
                    "ERR Client names cannot contain spaces, newlines or special characters."
                        .into(),
                ));
            }
            name = Some(Arc::from(req.arg(i + 1)));
            i += 2;
        } else {
            let shown = String::from_utf8_lossy(req.arg(i)).to_string();
            return Plan::Fail(ClientError::Exact(
                format!("ERR Syntax error in HELLO option '{shown}'").into(),
            ));
        }
    }
    if !cx.client.authenticated {
        return Plan::Fail(ClientError::Exact("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time".into()));
    }
    if name.is_some() {
        cx.listing.set_name(name);
    }
    cx.client.resp3 = resp3;
    let id = cx.listing.id as i64;
    let mut b = BytesMut::new();
    encode::map(&mut b, 8, resp3);
    // What the backends run, as INFO says: the first master that said.
    let said = state
        .shards
        .iter()
        .find_map(|s| s.status[s.master].said.as_ref());
    let (server, version) = match &cx.pool.config.redis.announce_version {
        Some(announced) => ("redis", &announced[..]),
        None => (
            said.map_or("redis", |s| &s.server),
            said.map_or(SERVED_REDIS_VERSION, |s| &s.version),
        ),
    };
    for (k, v) in [
        ("server", server),
        ("version", version),
        ("proxy", concat!("ringproxy ", env!("CARGO_PKG_VERSION"))),
    ] {
        encode::bulk(&mut b, k.as_bytes());
        encode::bulk(&mut b, v.as_bytes());
    }
    encode::bulk(&mut b, b"proto");
    encode::integer(&mut b, if resp3 { 3 } else { 2 });
    encode::bulk(&mut b, b"id");
    encode::integer(&mut b, id);
    for (k, v) in [("mode", "standalone"), ("role", "master")] {
        encode::bulk(&mut b, k.as_bytes());
        encode::bulk(&mut b, v.as_bytes());
    }
    encode::bulk(&mut b, b"modules");
    encode::array(&mut b, 0);
    Plan::Reply(b.freeze())
}

/// COMMAND: COUNT from the command table; LIST (with its FILTERBY) as the first shard's master
/// gives it, narrowed to what the proxy serves; the entries (COMMAND, COMMAND INFO) and docs
/// (COMMAND DOCS) of what the proxy serves as that master describes them, so they are the
/// server's own; GETKEYS and GETKEYSANDFLAGS from that master too, which tells a command
/// line's keys from its arguments.
fn command(resp3: bool, state: &PoolState, req: &Request) -> Plan {
    let sub = match req.argc() {
        1 => Vec::new(),
        _ => req.arg(1).to_ascii_uppercase(),
    };
    let mut b = BytesMut::new();
    let asked = || (2..req.argc()).map(|i| req.arg(i));
    let served = || TABLE.iter().map(|c| c.name.as_bytes());
    let first_master = Target::Shard {
        shard: 0,
        write: true,
    };
    let forwarded: Vec<&[u8]> = match &sub[..] {
        b"COUNT" => {
            encode::integer(&mut b, TABLE.len() as i64);
            return Plan::Reply(b.freeze());
        }
        b"LIST" if !state.shards.is_empty() => {
            let part = Part::resp(first_master, req.frame().clone());
            return Plan::Gather(vec![part], super::merge::served_commands());
        }
        // A command the proxy does not serve is asked under a name no server knows, so its
        // place in the reply is nil, as for an unknown command.
        b"" | b"INFO" => [&b"COMMAND"[..], b"INFO"]
            .into_iter()
            .chain(match req.argc() <= 2 {
                true => served().collect::<Vec<_>>(),
                false => asked()
                    .map(|name| match crate::command::lookup(name) {
                        Some(_) => name,
                        None => b"ringproxy-does-not-serve".as_slice(),
                    })
                    .collect(),
            })
            .collect(),
        // Docs of commands not served are left out, as a server leaves out unknown ones.
        b"DOCS" => {
            let names: Vec<&[u8]> = match req.argc() {
                2 => served().collect(),
                _ => asked()
                    .filter(|name| crate::command::lookup(name).is_some())
                    .collect(),
            };
            if names.is_empty() {
                encode::map(&mut b, 0, resp3);
                return Plan::Reply(b.freeze());
            }
            [&b"COMMAND"[..], b"DOCS"]
                .into_iter()
                .chain(names)
                .collect()
        }
        b"GETKEYS" | b"GETKEYSANDFLAGS" => req.args().collect(),
        _ => {
            let shown = String::from_utf8_lossy(&sub).to_string();
            return Plan::Fail(ClientError::Unsupported {
                command: format!("COMMAND {shown}"),
                why: "".into(),
            });
        }
    };
    if state.shards.is_empty() {
        return Plan::Fail(ClientError::NoServer);
    }
    encode::command(&mut b, forwarded.into_iter());
    Plan::Forward(Part::resp(first_master, b.freeze()))
}
