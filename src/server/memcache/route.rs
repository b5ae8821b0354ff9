//! Where a memcache request goes, decided without I/O: single-key commands to their shard (or,
//! on a replicated shard, writes to every node and reads to the first node in service with a
//! move to the next if it fails), multi-key gets split by shard, and the commands that reach
//! every node.

use bytes::{Bytes, BytesMut};

use super::merge;
use crate::protocol::ReplyKind;
use crate::protocol::memcache::{ReplyShape, Request, Verb};
use crate::server::error::ClientError;
use crate::server::outbox::{Quiet, ResendWhen};
use crate::server::plan::{Part, Plan, Target, parts_by_shard};
use crate::topology::{PoolState, Shard};

/// What memcached leaves out for `verb` sent quietly (`noreply`, meta `q`); meta commands
/// still show their failures.
pub(super) fn quiet(verb: Verb) -> Quiet {
    let hides: fn(&[u8]) -> bool = match verb {
        Verb::MetaGet => |r| Verb::MetaGet.quiet_hides(r),
        Verb::MetaSet => |r| Verb::MetaSet.quiet_hides(r),
        Verb::MetaDelete => |r| Verb::MetaDelete.quiet_hides(r),
        Verb::MetaArithmetic => |r| Verb::MetaArithmetic.quiet_hides(r),
        _ => |_| true,
    };
    Quiet {
        hides,
        shows_failures: verb.is_meta(),
    }
}

/// A single-key command whose ring key is `key`.
pub(super) fn keyed<N>(state: &PoolState<N>, req: &Request, key: &[u8]) -> Plan {
    let Some(s) = state.shard_for(key) else {
        return Plan::Fail(ClientError::NoServer);
    };
    let kind = ReplyKind::Memcache(req.verb.reply_shape());
    let quiet = req.is_quiet().then(|| quiet(req.verb));
    let shard = &state.shards[s];
    let write = req.verb.is_write();
    if shard.replicated && write {
        return replicate(s, shard, req, kind, quiet);
    }
    let part = Part {
        target: Target::Shard { shard: s, write },
        payload: req.forwarded(),
        kind,
    };
    match (shard.replicated, quiet) {
        (true, _) => failover_read(shard, part, quiet),
        (false, Some(quiet)) => Plan::Quiet(part, quiet),
        (false, None) => Plan::Forward(part),
    }
}

/// A read on a replicated shard: to the node `read_from` prefers among those in service, and
/// on to the next if that node fails.
fn failover_read<N>(shard: &Shard<N>, part: Part, quiet: Option<Quiet>) -> Plan {
    Plan::Resend {
        part,
        retries: shard.nodes.len() - 1,
        when: ResendWhen::NodeFails,
        quiet,
    }
}

/// A write to a replicated shard goes to the master and every replica; the client gets the
/// master's reply, or a replica's when the master fails. A compare-and-swap cannot be repeated
/// on replicas (their CAS values differ), so there the key is deleted instead.
fn replicate<N>(
    s: usize,
    shard: &Shard<N>,
    req: &Request,
    kind: ReplyKind,
    quiet: Option<Quiet>,
) -> Plan {
    let payload = req.forwarded();
    let invalidation = invalidation(req);
    let nodes = shard.nodes.len();
    // The master first: its reply is the one the client gets while it answers.
    let order = std::iter::once(shard.master).chain((0..nodes).filter(|&i| i != shard.master));
    let parts = order
        .enumerate()
        .map(|(part, node)| {
            let target = Target::Node { shard: s, node };
            match &invalidation {
                Some((delete, verb)) if part > 0 => Part {
                    target,
                    payload: delete.clone(),
                    kind: ReplyKind::Memcache(verb.reply_shape()),
                },
                _ => Part {
                    target,
                    payload: payload.clone(),
                    kind,
                },
            }
        })
        .collect();
    let candidates = if invalidation.is_some() { 1 } else { nodes };
    Plan::Gather(parts, merge::first_answer(nodes, candidates, quiet))
}

/// What a replica gets instead of a compare-and-swap: the key's deletion, and its verb.
fn invalidation(req: &Request) -> Option<(Bytes, Verb)> {
    let key = req.token(1)?;
    let (delete, verb) = match req.verb {
        Verb::Cas => ([&b"delete "[..], key, b"\r\n"].concat(), Verb::Delete),
        Verb::MetaSet if req.tokens().skip(3).any(|t| t.starts_with(b"C")) => {
            let base64 = req.tokens().skip(3).any(|t| t == b"b");
            let md = [&b"md "[..], key, if base64 { b" b\r\n" } else { b"\r\n" }];
            (md.concat(), Verb::MetaDelete)
        }
        _ => return None,
    };
    Some((Bytes::from(delete), verb))
}

/// The keys of get / gets / gat / gats.
pub(super) fn get_keys(req: &Request) -> impl Iterator<Item = &[u8]> {
    req.tokens().skip(first_get_key(req))
}

/// Where the keys of get / gets / gat / gats start among its tokens.
fn first_get_key(req: &Request) -> usize {
    match req.verb {
        Verb::Gat | Verb::Gats => 2,
        _ => 1,
    }
}

/// get / gets / gat / gats: one request per shard with that shard's keys, merged in key order.
pub(super) fn get<N>(state: &PoolState<N>, req: &Request) -> Plan {
    let first_key = first_get_key(req);
    let mut keys = get_keys(req);
    if let (Some(key), None) = (keys.next(), keys.next()) {
        // The common single-key get: nothing to group.
        return match state.shard_for(key) {
            Some(s) => get_from(state, s, req),
            None => Plan::Fail(ClientError::NoServer),
        };
    }
    let (key_parts, part_shards) = match parts_by_shard(state, get_keys(req)) {
        Ok(grouped) => grouped,
        Err(e) => return Plan::Fail(e),
    };
    match part_shards[..] {
        // `gat 10` with no key: memcached answers END.
        [] => Plan::Reply(Bytes::from_static(b"END\r\n")),
        [(_, s)] => get_from(state, s, req),
        _ => {
            let kind = ReplyKind::Memcache(ReplyShape::Values);
            let head: Vec<&[u8]> = req.tokens().take(first_key).collect();
            let mut payloads = BytesMut::with_capacity(req.line().len() + 32 * part_shards.len());
            let mut ends = Vec::with_capacity(part_shards.len());
            for part in 0..part_shards.len() as u32 {
                payloads.extend_from_slice(&head.join(&b' '));
                for (key, _) in req
                    .tokens()
                    .skip(first_key)
                    .zip(&key_parts)
                    .filter(|(_, p)| **p == part)
                {
                    payloads.extend_from_slice(b" ");
                    payloads.extend_from_slice(key);
                }
                payloads.extend_from_slice(b"\r\n");
                ends.push(payloads.len());
            }
            let payloads = payloads.freeze();
            let mut start = 0;
            let mut parts = Vec::with_capacity(part_shards.len());
            for (&(_, s), &end) in part_shards.iter().zip(&ends) {
                parts.push(Part {
                    target: Target::Shard {
                        shard: s,
                        write: false,
                    },
                    payload: payloads.slice(start..end),
                    kind,
                });
                start = end;
            }
            let line = req.frame().slice(..req.line().len());
            let gather = merge::values(line, first_key, key_parts, part_shards.len());
            Plan::Gather(parts, gather)
        }
    }
}

/// A get whose keys all live on shard `s`: forwarded as it is.
fn get_from<N>(state: &PoolState<N>, s: usize, req: &Request) -> Plan {
    let part = Part {
        target: Target::Shard {
            shard: s,
            write: false,
        },
        payload: req.frame().clone(),
        kind: ReplyKind::Memcache(ReplyShape::Values),
    };
    match state.shards[s].replicated {
        true => failover_read(&state.shards[s], part, None),
        false => Plan::Forward(part),
    }
}

/// Every node of every shard, as targets.
fn every_node<N>(state: &PoolState<N>) -> impl Iterator<Item = Target> + '_ {
    state
        .shards
        .iter()
        .enumerate()
        .flat_map(|(shard, s)| (0..s.nodes.len()).map(move |node| Target::Node { shard, node }))
}

/// `flush_all` empties every node, if the pool allows a command that reaches them all.
pub(super) fn flush_all<N>(state: &PoolState<N>, allowed: bool, req: &Request) -> Option<Plan> {
    if !allowed {
        let refusal = ClientError::Refused(
            "flush_all would empty every server; the pool needs allow_flush: true".into(),
        );
        return (!req.is_quiet()).then_some(Plan::Fail(refusal));
    }
    let payload = req.forwarded();
    let kind = ReplyKind::Memcache(req.verb.reply_shape());
    let parts: Vec<Part> = every_node(state)
        .map(|target| Part {
            target,
            payload: payload.clone(),
            kind,
        })
        .collect();
    let quiet = req.is_quiet().then(|| quiet(req.verb));
    let gather = merge::broadcast(parts.len(), quiet);
    Some(Plan::Gather(parts, gather))
}

/// `stats backends [group]`: every node's `stats`, each line prefixed with the node's name
/// (`addr(node)` gives its address, for replicas).
pub(super) fn stats_backends<N>(
    state: &PoolState<N>,
    args: impl Iterator<Item = impl AsRef<[u8]>>,
    addr: impl Fn(&N) -> String,
) -> Plan {
    let mut payload = BytesMut::from(&b"stats"[..]);
    for arg in args {
        payload.extend_from_slice(b" ");
        payload.extend_from_slice(arg.as_ref());
    }
    payload.extend_from_slice(b"\r\n");
    let payload = payload.freeze();
    let kind = ReplyKind::Memcache(ReplyShape::Stats);
    let mut names = Vec::new();
    let mut parts = Vec::new();
    for target in every_node(state) {
        let Target::Node { shard, node } = target else {
            continue;
        };
        let s = &state.shards[shard];
        names.push(match node {
            0 => s.name.to_string(),
            _ => format!("{}/{}", s.name, addr(&s.nodes[node])),
        });
        parts.push(Part {
            target,
            payload: payload.clone(),
            kind,
        });
    }
    Plan::Gather(parts, merge::stats(names))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::memcache::{Limits, Parsed, RequestParser, Verb};
    use crate::server::plan::testing::{key_on, three_shards};
    use proptest::prelude::*;

    fn request(line: &str) -> Request {
        let limits = Limits {
            item_size_max: 1 << 20,
            max_get_line: 1 << 16,
        };
        let mut buf = BytesMut::from(line.as_bytes());
        match RequestParser::default().parse(&mut buf, &limits) {
            Ok(Some(Parsed::Request(req))) => req,
            other => panic!("{line:?} did not parse: {other:?}"),
        }
    }

    fn key_plan(state: &PoolState<()>, line: &str) -> Plan {
        let req = request(line);
        let key = req.token(1).unwrap().to_vec();
        keyed(state, &req, &key)
    }

    #[test]
    fn plain_shards_get_one_request_quiet_or_not() {
        let state = three_shards(0, false);
        let k = key_on(&state, 1, "k");
        match key_plan(&state, &format!("set {k} 0 0 1\r\nx\r\n")) {
            Plan::Forward(part) => {
                assert_eq!(
                    part.target,
                    Target::Shard {
                        shard: 1,
                        write: true
                    }
                );
                assert_eq!(part.kind, ReplyKind::Memcache(Verb::Set.reply_shape()));
            }
            other => panic!("{other:?}"),
        }
        match key_plan(&state, &format!("set {k} 0 0 1 noreply\r\nx\r\n")) {
            Plan::Quiet(part, q) => {
                assert!((q.hides)(b"STORED\r\n") && !q.shows_failures);
                assert!(!part.payload.windows(7).any(|w| w == b"noreply"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn replicated_writes_reach_every_node_master_first_and_cas_deletes_on_replicas() {
        let state = three_shards(2, true);
        let k = key_on(&state, 2, "k");
        let Plan::Gather(parts, _) = key_plan(&state, &format!("set {k} 0 0 1\r\nx\r\n")) else {
            panic!("a replicated write is gathered");
        };
        let targets: Vec<Target> = parts.iter().map(|p| p.target).collect();
        assert_eq!(
            targets,
            (0..3)
                .map(|node| Target::Node { shard: 2, node })
                .collect::<Vec<_>>()
        );
        let Plan::Gather(parts, _) = key_plan(&state, &format!("cas {k} 0 0 1 7\r\nx\r\n")) else {
            panic!("a replicated cas is gathered");
        };
        assert!(parts[0].payload.starts_with(b"cas "));
        assert_eq!(&parts[1].payload[..], format!("delete {k}\r\n").as_bytes());
        assert_eq!(&parts[2].payload[..], format!("delete {k}\r\n").as_bytes());
    }

    #[test]
    fn replicated_reads_may_move_to_every_other_node() {
        let state = three_shards(2, true);
        let k = key_on(&state, 0, "k");
        match key_plan(&state, &format!("mg {k} v\r\n")) {
            Plan::Resend { part, retries, .. } => {
                assert_eq!(
                    part.target,
                    Target::Shard {
                        shard: 0,
                        write: false
                    }
                );
                assert_eq!(retries, 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn multi_gets_split_by_shard_and_single_shard_gets_go_whole() {
        let state = three_shards(0, false);
        let (a, b) = (key_on(&state, 0, "a"), key_on(&state, 2, "b"));
        let Plan::Gather(parts, _) = get(&state, &request(&format!("get {a} {b} {a}\r\n"))) else {
            panic!("split");
        };
        assert_eq!(parts.len(), 2);
        assert_eq!(&parts[0].payload[..], format!("get {a} {a}\r\n").as_bytes());
        assert_eq!(&parts[1].payload[..], format!("get {b}\r\n").as_bytes());
        let a2 = key_on(&state, 0, "c");
        match get(&state, &request(&format!("gets {a} {a2}\r\n"))) {
            Plan::Forward(part) => {
                assert_eq!(&part.payload[..], format!("gets {a} {a2}\r\n").as_bytes())
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flush_all_reaches_every_node_only_when_allowed() {
        let state = three_shards(1, true);
        assert!(matches!(
            flush_all(&state, false, &request("flush_all\r\n")),
            Some(Plan::Fail(ClientError::Refused(_)))
        ));
        assert!(flush_all(&state, false, &request("flush_all noreply\r\n")).is_none());
        let Some(Plan::Gather(parts, _)) = flush_all(&state, true, &request("flush_all\r\n"))
        else {
            panic!("allowed");
        };
        assert_eq!(parts.len(), 6);
    }

    proptest! {
        /// Any line memcached would take, of any verb the router places by key: no panic; a
        /// request sent whole is sent byte for byte; a multi-get becomes one get per shard
        /// with only that shard's keys, together every key exactly once.
        #[test]
        fn the_router_sends_every_key_to_its_shard_once(
            verb in prop::sample::select(vec![
                "get", "gets", "gat 10", "gats 0", "set", "add", "cas", "append", "delete",
                "incr", "decr", "touch", "mg", "ms", "md", "ma", "me",
            ]),
            keys in prop::collection::vec("[a-z{}]{1,8}", 1..12),
            tail in prop::sample::select(vec!["", " 0", " 1 0 1", " 0 0 1 noreply", " v f t", " S1 T0 q", " 5"]),
        ) {
            let line = format!("{verb} {}{tail}\r\n", keys.join(" "));
            let mut parser = RequestParser::default();
            let limits = Limits { item_size_max: 1 << 20, max_get_line: 1 << 16 };
            let mut buf = BytesMut::from(line.as_bytes());
            buf.extend_from_slice(b"x\r\n");
            let Ok(Some(Parsed::Request(req))) = parser.parse(&mut buf, &limits) else {
                return Ok(());
            };
            let state = three_shards(0, false);
            let gets = matches!(req.verb, Verb::Get | Verb::Gets | Verb::Gat | Verb::Gats);
            let mut decoded = super::super::Key { buf: [0; crate::protocol::memcache::MAX_KEY_BYTES] };
            let key = super::super::ring_key(&req, &mut decoded).to_vec();
            let plan = if gets { get(&state, &req) } else { keyed(&state, &req, &key) };
            match plan {
                Plan::Forward(part) => {
                    prop_assert_eq!(&part.payload, req.frame());
                    if !gets {
                        prop_assert_eq!(state.shard_for(&key), Some(part.target.shard()));
                    }
                }
                // Sent without its quiet flag, so the proxy sees the reply it drops.
                Plan::Quiet(part, _) => {
                    prop_assert_eq!(state.shard_for(&key), Some(part.target.shard()));
                }
                Plan::Gather(parts, _) => {
                    prop_assert!(gets);
                    let first_key = if matches!(req.verb, Verb::Gat | Verb::Gats) { 2 } else { 1 };
                    let mut sent = Vec::new();
                    for part in &parts {
                        let mut payload = BytesMut::from(&part.payload[..]);
                        let Ok(Some(Parsed::Request(sub))) = parser.parse(&mut payload, &limits) else {
                            panic!("a part does not parse: {:?}", part.payload);
                        };
                        prop_assert!(payload.is_empty());
                        for key in sub.tokens().skip(first_key) {
                            prop_assert_eq!(state.shard_for(key), Some(part.target.shard()));
                            sent.push(key.to_vec());
                        }
                    }
                    let mut asked: Vec<Vec<u8>> = req.tokens().skip(first_key).map(<[u8]>::to_vec).collect();
                    asked.sort();
                    sent.sort();
                    prop_assert_eq!(asked, sent);
                }
                other => prop_assert!(matches!(other, Plan::Reply(_) | Plan::Fail(_)), "{other:?}"),
            }
        }
    }
}
