//! CLIENT, about the proxy's own clients (never the backends' connections): the client's name,
//! id and reply mode; LIST and INFO in Redis's line format from the pool's list of clients;
//! KILL, which the pool signals to the client's session; UNBLOCK, passed on to the server the
//! client's blocking command waits on, for that connection.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};

use super::context::{Local, Replies, exact, ok, valid_name};
use super::tracking;
use crate::config::Listen;
use crate::protocol::resp::{Request, encode, parse_int};
use crate::server::error::ClientError;
use crate::server::plan::{Part, Plan, Target};
use crate::topology::{Client, Pool, PoolState, Second};

fn integer(n: i64) -> Plan {
    let mut b = BytesMut::new();
    encode::integer(&mut b, n);
    Plan::Reply(b.freeze())
}

pub(super) fn run(cx: Local<'_>, state: &PoolState, req: &Request) -> Plan {
    let sub = req.arg(1).to_ascii_uppercase();
    match (&sub[..], req.argc()) {
        (b"SETNAME", 3) => {
            if !valid_name(req.arg(2)) {
                return exact(
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                );
            }
            // A copy, not a slice of the request, which would keep the read buffer alive.
            cx.listing
                .set_name((!req.arg(2).is_empty()).then(|| Arc::from(req.arg(2))));
            ok()
        }
        (b"GETNAME", 2) => {
            let mut b = BytesMut::new();
            match &cx.listing.name() {
                Some(n) => encode::bulk(&mut b, n),
                None => encode::null(&mut b, cx.client.resp3),
            }
            Plan::Reply(b.freeze())
        }
        // Library name and version: accepted, as a server does, and not needed by the proxy.
        (b"SETINFO", 4) => ok(),
        (b"REPLY", 3) => {
            cx.client.replies = match &req.arg(2).to_ascii_uppercase()[..] {
                b"ON" => Replies::On,
                b"OFF" => Replies::Off,
                b"SKIP" => Replies::SkipNext,
                _ => return exact("ERR syntax error"),
            };
            ok()
        }
        (b"ID", 2) => integer(cx.listing.id as i64),
        (b"INFO", 2) => bulk_lines(cx.pool, std::slice::from_ref(cx.listing)),
        (b"LIST", _) => list(cx.pool, req),
        (b"KILL", 3) => match find_by_addr(cx.pool, req.arg(2)) {
            Some(client) => {
                client.kill();
                ok()
            }
            None => exact("ERR No such client"),
        },
        (b"KILL", n) if n > 3 => kill(&cx, req),
        (b"UNBLOCK", 3 | 4) => unblock(cx.pool, state, req),
        // The proxy's clients are not evicted, and touch no keys themselves: accepted, as a
        // server accepts them, with nothing to change.
        (b"NO-EVICT" | b"NO-TOUCH", 3) => match &req.arg(2).to_ascii_uppercase()[..] {
            b"ON" | b"OFF" => ok(),
            _ => exact("ERR syntax error"),
        },
        (b"TRACKING", n) if n >= 3 => tracking::tracking(cx, state, req),
        (b"CACHING", 3) => tracking::caching(cx, req),
        (b"TRACKINGINFO", 2) => tracking::info(cx),
        (b"GETREDIR", 2) => integer(tracking::redirect(cx.client.tracking.as_deref())),
        (b"HELP", 2) => help(),
        (
            b"SETNAME" | b"GETNAME" | b"SETINFO" | b"ID" | b"INFO" | b"KILL" | b"UNBLOCK"
            | b"NO-EVICT" | b"NO-TOUCH" | b"GETREDIR" | b"HELP" | b"REPLY" | b"TRACKING"
            | b"CACHING" | b"TRACKINGINFO",
            _,
        ) => {
            let shown = String::from_utf8_lossy(&sub).to_lowercase();
            Plan::Fail(ClientError::WrongArity(format!("client|{shown}")))
        }
        _ => Plan::Fail(ClientError::Unsupported {
            command: format!("CLIENT {}", String::from_utf8_lossy(&sub)),
            why: "".into(),
        }),
    }
}

/// The kinds of client CLIENT LIST and KILL tell apart: the proxy's are normal or pubsub.
fn client_type(name: &[u8]) -> Result<Option<bool>, String> {
    match &name.to_ascii_lowercase()[..] {
        b"normal" => Ok(Some(false)),
        b"pubsub" => Ok(Some(true)),
        // No replica or master connects to a proxy.
        b"master" | b"replica" | b"slave" => Ok(None),
        _ => Err(format!(
            "ERR Unknown client type '{}'",
            String::from_utf8_lossy(name)
        )),
    }
}

fn is_pubsub(client: &Client) -> bool {
    client.facts().rare().subscriptions.iter().any(|&n| n > 0)
}

/// CLIENT LIST [TYPE type] [ID id …].
fn list(pool: &Pool, req: &Request) -> Plan {
    let mut clients = pool.clients.list();
    match (
        req.argc(),
        req.argc() > 3 && req.arg(2).eq_ignore_ascii_case(b"ID"),
    ) {
        (2, _) => {}
        (4, _) if req.arg(2).eq_ignore_ascii_case(b"TYPE") => match client_type(req.arg(3)) {
            Ok(Some(pubsub)) => clients.retain(|c| is_pubsub(c) == pubsub),
            Ok(None) => clients.clear(),
            Err(why) => return exact(&why),
        },
        (_, true) => {
            let mut ids = Vec::new();
            for i in 3..req.argc() {
                match parse_int(req.arg(i)).filter(|&id| id > 0) {
                    Some(id) => ids.push(id as u64),
                    None => return exact("ERR Invalid client ID"),
                }
            }
            clients.retain(|c| ids.contains(&c.id));
        }
        _ => return exact("ERR syntax error"),
    }
    bulk_lines(pool, &clients)
}

fn bulk_lines(pool: &Pool, clients: &[Arc<Client>]) -> Plan {
    let now = Second::now();
    let mut text = String::new();
    for client in clients {
        line(&mut text, pool, client, now);
    }
    let mut b = BytesMut::new();
    encode::bulk(&mut b, text.as_bytes());
    Plan::Reply(b.freeze())
}

/// The client's address as Redis shows it: `ip:port`, or `path:0` on a Unix socket.
fn shown_addr(pool: &Pool, addr: Option<std::net::SocketAddr>) -> String {
    match (addr, &pool.config.listen) {
        (Some(addr), _) => addr.to_string(),
        (None, Listen::Unix { path, .. }) => format!("{}:0", path.display()),
        (None, listen) => listen.to_string(),
    }
}

/// One client in Redis 7's CLIENT LIST format. Memory fields are 0: the proxy does not count
/// them per client.
fn line(out: &mut String, pool: &Pool, client: &Client, now: Second) {
    let facts = client.facts().clone();
    let rare = facts.rare();
    let blocked = rare.blocked_on.is_some();
    let [sub, psub, ssub] = rare.subscriptions;
    let mut flags = String::new();
    if blocked {
        flags.push('b');
    }
    if sub + psub + ssub > 0 {
        flags.push('P');
    }
    if rare.multi.is_some() {
        flags.push('x');
    }
    if client.addr.is_none() {
        flags.push('U');
    }
    if flags.is_empty() {
        flags.push('N');
    }
    let name = rare
        .name
        .as_deref()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    let cmd = facts
        .last_command
        .map_or_else(|| "NULL".to_string(), |c| c.name.to_ascii_lowercase());
    let _ = writeln!(
        out,
        "id={} addr={} laddr={} fd={} name={name} age={} idle={} flags={flags} db={} sub={sub} \
         psub={psub} ssub={ssub} multi={} qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 \
         obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={cmd} user={} redir=-1 resp={}",
        client.id,
        shown_addr(pool, client.addr),
        shown_addr(pool, client.laddr),
        client.fd,
        client.since.until(now),
        facts.last_active.until(now),
        facts.db,
        rare.multi.map_or(-1, |n| n as i64),
        rare.user.as_deref().unwrap_or("default"),
        if facts.resp3 { 3 } else { 2 },
    );
}

fn find_by_addr(pool: &Pool, addr: &[u8]) -> Option<Arc<Client>> {
    let addr = String::from_utf8_lossy(addr);
    pool.clients
        .list()
        .into_iter()
        .find(|c| shown_addr(pool, c.addr) == addr)
}

/// CLIENT KILL with filters: the number of clients closed.
fn kill(cx: &Local<'_>, req: &Request) -> Plan {
    if !req.argc().is_multiple_of(2) {
        return exact("ERR syntax error");
    }
    let mut clients = cx.pool.clients.list();
    let mut skip_me = true;
    for i in (2..req.argc()).step_by(2) {
        let value = req.arg(i + 1);
        let text = String::from_utf8_lossy(value);
        match &req.arg(i).to_ascii_uppercase()[..] {
            b"ID" => match parse_int(value).filter(|&id| id > 0) {
                Some(id) => clients.retain(|c| c.id == id as u64),
                None => return exact("ERR client-id should be greater than 0"),
            },
            b"ADDR" => clients.retain(|c| shown_addr(cx.pool, c.addr) == text),
            b"LADDR" => clients.retain(|c| shown_addr(cx.pool, c.laddr) == text),
            b"TYPE" => match client_type(value) {
                Ok(Some(pubsub)) => clients.retain(|c| is_pubsub(c) == pubsub),
                Ok(None) => clients.clear(),
                Err(why) => return exact(&why),
            },
            b"USER" => clients.retain(|c| *c.user() == *text),
            b"SKIPME" => match &value.to_ascii_lowercase()[..] {
                b"yes" => skip_me = true,
                b"no" => skip_me = false,
                _ => return exact("ERR syntax error"),
            },
            b"MAXAGE" => match parse_int(value) {
                Some(age) => {
                    let now = Second::now();
                    clients.retain(|c| c.since.until(now) as i64 >= age);
                }
                None => return exact("ERR syntax error"),
            },
            _ => return exact("ERR syntax error"),
        }
    }
    if skip_me {
        clients.retain(|c| c.id != cx.listing.id);
    }
    clients.iter().for_each(|c| c.kill());
    integer(clients.len() as i64)
}

/// CLIENT UNBLOCK id [TIMEOUT|ERROR]: passed on, for the connection the client's blocking
/// command waits on, to its server, which answers 1 if it was waiting there (and answers the
/// command as its timeout or error would) or 0.
fn unblock(pool: &Pool, state: &PoolState, req: &Request) -> Plan {
    let Some(id) = parse_int(req.arg(2)) else {
        return Plan::Fail(ClientError::NotAnInteger);
    };
    let how: &[u8] = match req.argc() {
        3 => b"TIMEOUT",
        _ => match &req.arg(3).to_ascii_uppercase()[..] {
            b"TIMEOUT" => b"TIMEOUT",
            b"ERROR" => b"ERROR",
            _ => return exact("ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR"),
        },
    };
    let waiting = u64::try_from(id)
        .ok()
        .and_then(|id| pool.clients.get(id))
        .and_then(|client| client.blocked_on());
    let on = waiting.and_then(|on| {
        let connection = on.connection.load(Ordering::Relaxed);
        let target = state.shards.iter().enumerate().find_map(|(shard, s)| {
            let node = s.index_of(on.node.id())?;
            Some(Target::Node { shard, node })
        });
        Some((target?, connection)).filter(|&(_, connection)| connection != 0)
    });
    let Some((target, connection)) = on else {
        return integer(0);
    };
    let mut payload = BytesMut::new();
    let connection = connection.to_string();
    let args = [&b"CLIENT"[..], b"UNBLOCK", connection.as_bytes(), how];
    encode::command(&mut payload, args.into_iter());
    Plan::Forward(Part::resp(target, payload.freeze()))
}

fn help() -> Plan {
    let lines = [
        "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are (about ringproxy's own clients):",
        "CACHING (YES|NO)",
        "GETNAME",
        "GETREDIR",
        "ID",
        "INFO",
        "KILL <ip:port>",
        "KILL <option> <value> [<option> <value> [...]]: ID, ADDR, LADDR, TYPE, USER, SKIPME, MAXAGE",
        "LIST [TYPE (NORMAL|MASTER|REPLICA|PUBSUB)] [ID <id> [<id> ...]]",
        "NO-EVICT (ON|OFF)",
        "NO-TOUCH (ON|OFF)",
        "REPLY (ON|OFF|SKIP)",
        "SETINFO <option> <value>",
        "SETNAME <name>",
        "TRACKING (ON|OFF) [REDIRECT <id>] [BCAST] [PREFIX <prefix> [...]] [OPTIN] [OPTOUT] [NOLOOP]",
        "TRACKINGINFO",
        "UNBLOCK <clientid> [TIMEOUT|ERROR]",
        "HELP",
    ];
    let mut b = BytesMut::new();
    encode::array(&mut b, lines.len());
    lines.iter().for_each(|l| encode::simple(&mut b, l));
    Plan::Reply(Bytes::from(b))
}
