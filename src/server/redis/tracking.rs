//! CLIENT TRACKING for the proxy's own clients, as a server offers it: the client's mode (ON or
//! OFF, REDIRECT, BCAST with PREFIX, OPTIN or OPTOUT with CLIENT CACHING, NOLOOP), CLIENT
//! TRACKINGINFO and GETREDIR, which reads are tracked, and the invalidation messages as the
//! client's protocol carries them (a RESP3 push, or on RESP2 a message of the
//! `__redis__:invalidate` channel to the client it redirects to).
//!
//! The pool keeps which client read which key (`cache::clients`); the proxy hears the keys'
//! changes from the servers (the near cache's tracking) and from the writes it passes on.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::context::{Local, TrackingMode as Mode, exact, ok};
use super::route;
use crate::backend::Mailbox;
use crate::cache::clients::{ClientTracking, Tracker};
use crate::command::{Command, Kind};
use crate::protocol::resp::{Request, encode, parse_int};
use crate::server::error::ClientError;
use crate::server::plan::{Plan, Waiting};
use crate::server::session::Context;
use crate::topology::PoolState;

/// CLIENT TRACKING ON|OFF [REDIRECT id] [BCAST] [PREFIX p]… [OPTIN] [OPTOUT] [NOLOOP].
pub(super) fn tracking(cx: Local<'_>, state: &PoolState, req: &Request) -> Plan {
    let Some(table) = &cx.pool.client_tracking else {
        return exact(
            "ERR client tracking through this proxy needs the pool's near_cache: only there does it hear its servers' invalidations",
        );
    };
    let on = match &req.arg(2).to_ascii_uppercase()[..] {
        b"ON" => true,
        b"OFF" => false,
        _ => return exact("ERR syntax error"),
    };
    let mut asked = Mode::default();
    let mut i = 3;
    while i < req.argc() {
        let has_value = i + 1 < req.argc();
        match &req.arg(i).to_ascii_uppercase()[..] {
            b"REDIRECT" if has_value => {
                i += 1;
                match parse_int(req.arg(i)) {
                    Some(id) => asked.redirect = id as u64,
                    None => return Plan::Fail(ClientError::NotAnInteger),
                }
            }
            b"PREFIX" if has_value => {
                i += 1;
                asked.prefixes.push(Bytes::copy_from_slice(req.arg(i)));
            }
            b"BCAST" => asked.bcast = true,
            b"OPTIN" => asked.optin = true,
            b"OPTOUT" => asked.optout = true,
            b"NOLOOP" => asked.noloop = true,
            _ => return exact("ERR syntax error"),
        }
        i += 1;
    }
    if !on {
        table.stop(cx.listing.id);
        cx.client.tracking = None;
        return ok();
    }
    let current = cx.client.tracking.as_deref();
    if let Err(e) = check(current, &asked) {
        return exact(&e);
    }
    let to: Arc<dyn Mailbox> = match asked.redirect {
        0 => cx.listing.clone(),
        id => match cx.pool.clients.get(id) {
            Some(client) => client,
            None => return exact("ERR The client ID you want redirect to does not exist"),
        },
    };
    // Turned on again: the prefixes add up; the rest is as now asked.
    let mut prefixes = current.map(|m| m.prefixes.clone()).unwrap_or_default();
    prefixes.extend(asked.prefixes);
    let mode = Mode {
        prefixes,
        caching: None,
        ..asked
    };
    start(table, cx.listing.id, &mode, to);
    let bcast = mode.bcast;
    cx.client.tracking = Some(Box::new(mode));
    match bcast {
        true => broadcasting(state, cx.pool.config.timeout),
        false => ok(),
    }
}

/// OK once every node whose listener is connected hears every key's changes (its broadcast
/// connection confirmed), so that none made after the reply goes unheard (a node that connects
/// later tells its clients that everything may have changed); at most `limit` later.
fn broadcasting(state: &PoolState, limit: Duration) -> Plan {
    let nodes = state.shards.iter().flat_map(|s| s.nodes.iter());
    let waits: Vec<_> = nodes
        .filter(|n| n.tracking_ready().is_some())
        .filter_map(|n| n.broadcasting())
        .filter(|on| !*on.borrow())
        .collect();
    if waits.is_empty() {
        return ok();
    }
    Plan::Later(Waiting(Box::pin(async move {
        let all = async {
            for mut on in waits {
                let _ = on.wait_for(|on| *on).await;
            }
        };
        let _ = tokio::time::timeout(limit, all).await;
        Bytes::from_static(b"+OK\r\n")
    })))
}

/// What Redis refuses of CLIENT TRACKING ON, with its words.
fn check(current: Option<&Mode>, asked: &Mode) -> Result<(), String> {
    if !asked.prefixes.is_empty() && !asked.bcast {
        return Err("ERR PREFIX option requires BCAST mode to be enabled".into());
    }
    if let Some(current) = current {
        if current.bcast != asked.bcast {
            return Err("ERR You can't switch BCAST mode on/off before disabling tracking for this client, and then re-enabling it with a different mode.".into());
        }
        if (current.optin, current.optout) != (asked.optin, asked.optout) {
            return Err("ERR You can't switch OPTIN/OPTOUT mode before disabling tracking for this client, and then re-enabling it with a different mode.".into());
        }
    }
    if asked.optin && asked.optout {
        return Err("ERR You can't specify both OPTIN mode and OPTOUT mode".into());
    }
    if asked.bcast && (asked.optin || asked.optout) {
        return Err("ERR OPTIN and OPTOUT are not compatible with BCAST".into());
    }
    let existing = current.map(|m| &m.prefixes[..]).unwrap_or_default();
    for (n, p) in asked.prefixes.iter().enumerate() {
        let overlaps = |q: &Bytes| p.starts_with(q) || q.starts_with(p);
        if let Some(q) = existing.iter().find(|q| overlaps(q)) {
            return Err(format!(
                "ERR Prefix '{}' overlaps with an existing prefix '{}'. Prefixes for a single client must not overlap.",
                String::from_utf8_lossy(p),
                String::from_utf8_lossy(q)
            ));
        }
        if let Some(q) = asked.prefixes[n + 1..].iter().find(|q| overlaps(q)) {
            return Err(format!(
                "ERR Prefix '{}' overlaps with another provided prefix '{}'. Prefixes for a single client must not overlap.",
                String::from_utf8_lossy(p),
                String::from_utf8_lossy(q)
            ));
        }
    }
    Ok(())
}

fn start(table: &ClientTracking, id: u64, mode: &Mode, to: Arc<dyn Mailbox>) {
    let tracker = Tracker {
        to,
        own: mode.redirect == 0,
        bcast: mode.bcast.then(|| mode.prefixes.clone()),
        noloop: mode.noloop,
    };
    table.start(id, tracker);
}

/// CLIENT CACHING YES|NO: whether the next command's reads are tracked, in OPTIN or OPTOUT.
pub(super) fn caching(cx: Local<'_>, req: &Request) -> Plan {
    let Some(mode) = cx
        .client
        .tracking
        .as_deref_mut()
        .filter(|m| m.optin || m.optout)
    else {
        return exact(
            "ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled",
        );
    };
    match &req.arg(2).to_ascii_uppercase()[..] {
        b"YES" if mode.optin => mode.caching = Some(true),
        b"YES" => {
            return exact(
                "ERR CLIENT CACHING YES is only valid when tracking is enabled in OPTIN mode.",
            );
        }
        b"NO" if mode.optout => mode.caching = Some(false),
        b"NO" => {
            return exact(
                "ERR CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.",
            );
        }
        _ => return exact("ERR syntax error"),
    }
    ok()
}

/// CLIENT TRACKINGINFO: the flags, the redirect and the prefixes, as a server lists them.
pub(super) fn info(cx: Local<'_>) -> Plan {
    let mode = cx.client.tracking.as_deref();
    let mut flags: Vec<&str> = Vec::new();
    match mode {
        None => flags.push("off"),
        Some(m) => {
            flags.push("on");
            let set = [
                (m.bcast, "bcast"),
                (m.optin, "optin"),
                (m.optout, "optout"),
                (m.caching == Some(true), "caching-yes"),
                (m.caching == Some(false), "caching-no"),
                (m.noloop, "noloop"),
            ];
            flags.extend(set.iter().filter(|(on, _)| *on).map(|(_, name)| *name));
        }
    }
    let mut b = BytesMut::new();
    encode::map(&mut b, 3, cx.client.resp3);
    encode::bulk(&mut b, b"flags");
    encode::set(&mut b, flags.len(), cx.client.resp3);
    flags
        .iter()
        .for_each(|f| encode::bulk(&mut b, f.as_bytes()));
    encode::bulk(&mut b, b"redirect");
    encode::integer(&mut b, redirect(mode));
    encode::bulk(&mut b, b"prefixes");
    let prefixes = mode.map(|m| &m.prefixes[..]).unwrap_or_default();
    encode::array(&mut b, prefixes.len());
    prefixes.iter().for_each(|p| encode::bulk(&mut b, p));
    Plan::Reply(b.freeze())
}

/// CLIENT GETREDIR: the client invalidations go to, 0 for itself, -1 when not tracking.
pub(super) fn redirect(mode: Option<&Mode>) -> i64 {
    mode.map_or(-1, |m| m.redirect as i64)
}

/// A read by a client whose mode `mode` tracks it: each of its keys is tracked for the
/// client, or, if the read is not tracked by its server (`tracked`), the client is told at
/// once, after the reply, that the keys changed, so that it keeps nothing it would never hear
/// about.
pub(super) fn read(cx: &Context<'_>, mode: &Mode, (cmd, req): (&Command, &Request), tracked: bool) {
    let reads = !cmd.writes() && matches!(cmd.kind, Kind::Keyed | Kind::Split(_));
    let Some(table) = cx
        .pool
        .client_tracking
        .as_deref()
        .filter(|_| reads && mode.tracks_read())
    else {
        return;
    };
    for key in route::key_args(cmd, req) {
        match tracked {
            true => table.read(cx.listing.id, key),
            false => table.tell(cx.listing.id, key),
        }
    }
}

/// An invalidation as a client sees it: a push in RESP3; on RESP2, a message of the
/// `__redis__:invalidate` channel, to a client that subscribed (a client others redirect
/// to); else nothing, as a RESP2 connection cannot carry it. `changed` is an array of the
/// keys, or empty when every key may have changed.
pub(super) fn message(changed: &[u8], resp3: bool, subscribed: bool) -> Option<Bytes> {
    let (head, null): (&[u8], &[u8]) = match (resp3, subscribed) {
        (true, _) => (b">2\r\n$10\r\ninvalidate\r\n", b"_\r\n"),
        (false, true) => (
            b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n",
            b"$-1\r\n",
        ),
        (false, false) => return None,
    };
    let keys = if changed.is_empty() { null } else { changed };
    let mut b = BytesMut::with_capacity(head.len() + keys.len());
    b.extend_from_slice(head);
    b.extend_from_slice(keys);
    Some(b.freeze())
}

#[cfg(test)]
mod tests;
