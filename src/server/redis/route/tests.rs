use super::*;
use crate::command::{Kind, lookup};
use crate::protocol::resp::RequestParser;
use crate::server::plan::testing::{key_on, request, three_shards};
use proptest::prelude::*;

fn cmd(name: &str) -> &'static Command {
    lookup(name.as_bytes()).unwrap()
}

fn target(plan: &Plan) -> Target {
    match plan {
        Plan::Forward(part) | Plan::Reserved { part, .. } | Plan::Resend { part, .. } => {
            part.target
        }
        other => panic!("one target expected: {other:?}"),
    }
}

#[test]
fn keyed_commands_go_to_their_shard_writes_to_the_master() {
    let state = three_shards(1, false);
    let k = key_on(&state, 2, "k");
    let plan = keyed(
        &state,
        cmd("SET"),
        &request(&["SET", &k, "v"]),
        ReadFrom::Master,
    );
    assert_eq!(
        target(&plan),
        Target::Shard {
            shard: 2,
            write: true
        }
    );
    let plan = keyed(&state, cmd("GET"), &request(&["GET", &k]), ReadFrom::Master);
    assert_eq!(
        target(&plan),
        Target::Shard {
            shard: 2,
            write: false
        }
    );
}

#[test]
fn reads_may_move_to_another_node_of_their_shard_and_writes_never() {
    let state = three_shards(1, false);
    let k = key_on(&state, 0, "k");
    let get = request(&["GET", &k]);
    for read_from in [ReadFrom::Master, ReadFrom::ReplicaPreferred] {
        let plan = keyed(&state, cmd("GET"), &get, read_from);
        assert!(matches!(
            plan,
            Plan::Resend {
                retries: 1,
                when: ResendWhen::NodeFails,
                ..
            }
        ));
    }
    // `replica` keeps reads off the master; a shard without replicas has nowhere to go.
    let plan = keyed(&state, cmd("GET"), &get, ReadFrom::Replica);
    assert!(matches!(plan, Plan::Forward(_)));
    let alone = three_shards(0, false);
    let plan = keyed(&alone, cmd("GET"), &get, ReadFrom::Master);
    assert!(matches!(plan, Plan::Forward(_)));
    let plan = keyed(
        &state,
        cmd("INCR"),
        &request(&["INCR", &k]),
        ReadFrom::Master,
    );
    assert!(matches!(plan, Plan::Forward(_)));
}

#[test]
fn keys_on_two_shards_are_refused_and_hash_tags_bring_them_together() {
    let state = three_shards(0, false);
    let (a, b) = (key_on(&state, 0, "a"), key_on(&state, 1, "b"));
    let plan = keyed(
        &state,
        cmd("RENAME"),
        &request(&["RENAME", &a, &b]),
        ReadFrom::Master,
    );
    assert!(matches!(plan, Plan::Fail(ClientError::CrossShard(c)) if c == "rename"));
    let plan = keyed(
        &state,
        cmd("RENAME"),
        &request(&["RENAME", &format!("{{{a}}}x"), &format!("{{{a}}}y")]),
        ReadFrom::Master,
    );
    assert_eq!(
        target(&plan),
        Target::Shard {
            shard: 0,
            write: true
        }
    );
}

#[test]
fn split_commands_send_each_shard_its_keys_in_order() {
    let state = three_shards(0, false);
    let (a, b, c) = (
        key_on(&state, 0, "a"),
        key_on(&state, 1, "b"),
        key_on(&state, 0, "c"),
    );
    let plan = split(
        &state,
        cmd("MSET"),
        Merge::Same,
        &request(&["MSET", &a, "1", &b, "2", &c, "3"]),
        8,
    );
    let Plan::Gather(parts, _) = plan else {
        panic!("split");
    };
    assert_eq!(parts.len(), 2);
    assert_eq!(
        parts[0].target,
        Target::Shard {
            shard: 0,
            write: true
        }
    );
    let mut want = BytesMut::new();
    encode::command(
        &mut want,
        ["MSET", &a, "1", &c, "3"].iter().map(|s| s.as_bytes()),
    );
    assert_eq!(parts[0].payload, want);
    // Keys on one shard: the request as it is.
    let plan = split(
        &state,
        cmd("MGET"),
        Merge::Values,
        &request(&["MGET", &a, &c]),
        8,
    );
    assert!(matches!(plan, Plan::Forward(_)));
}

#[test]
fn blocking_commands_reserve_a_connection_for_their_timeout() {
    let state = three_shards(0, false);
    let q = key_on(&state, 1, "q");
    let plan = blocking(
        &state,
        cmd("BLPOP"),
        &request(&["BLPOP", &q, "1.5"]),
        BlockTimeout::Last,
    );
    assert!(
        matches!(plan, Plan::Reserved { wait: Some(w), .. } if w == Duration::from_millis(1500))
    );
    let plan = blocking(
        &state,
        cmd("BLPOP"),
        &request(&["BLPOP", &q, "0"]),
        BlockTimeout::Last,
    );
    assert!(matches!(plan, Plan::Reserved { wait: None, .. }));
    let plan = keyed(
        &state,
        cmd("XREAD"),
        &request(&["XREAD", "BLOCK", "250", "STREAMS", &q, "$"]),
        ReadFrom::Master,
    );
    assert!(
        matches!(plan, Plan::Reserved { wait: Some(w), .. } if w == Duration::from_millis(250))
    );
    assert_eq!(
        target(&plan),
        Target::Shard {
            shard: 1,
            write: false
        }
    );
}

#[test]
fn scripts_go_to_the_shard_of_their_declared_keys() {
    let state = three_shards(1, false);
    let scripts = Scripts::default();
    let k = key_on(&state, 1, "k");
    let run =
        |name: &str, call, args: &[&str]| script(&state, &scripts, cmd(name), call, &request(args));
    let plan = run("EVAL", ScriptCall::Eval, &["EVAL", "return 1", "1", &k]);
    assert_eq!(
        target(&plan),
        Target::Shard {
            shard: 1,
            write: true
        }
    );
    let plan = run("EVAL", ScriptCall::Eval, &["EVAL", "x", "2", &k]);
    assert!(matches!(plan, Plan::Fail(ClientError::Exact(_))));
    // An EVALSHA of a script the pool does not know goes as it is.
    let sha = "e0e1f9fabfc9d4800c877a703b823ac0578ff8db";
    let plan = run(
        "EVALSHA_RO",
        ScriptCall::EvalSha,
        &["EVALSHA_RO", sha, "1", &k],
    );
    assert!(matches!(plan, Plan::Forward(_)));
    // One it knows is loaded again where NOSCRIPT says it was lost, then run there.
    scripts.remember(sha.as_bytes(), bytes::Bytes::from_static(b"load"));
    let plan = run(
        "EVALSHA_RO",
        ScriptCall::EvalSha,
        &["EVALSHA_RO", sha, "1", &k],
    );
    assert_eq!(
        target(&plan),
        Target::Shard {
            shard: 1,
            write: false
        }
    );
    match plan {
        Plan::Resend {
            retries: 1,
            when: ResendWhen::Answered { prefix, first },
            ..
        } => assert_eq!((prefix, &first[..]), (&b"-NOSCRIPT"[..], &b"load"[..])),
        other => panic!("{other:?}"),
    }
}

#[test]
fn sort_patterns_must_share_the_key_hash_tag() {
    let state = three_shards(0, false);
    let sort = |args: &[&str]| keyed(&state, cmd(args[0]), &request(args), ReadFrom::Master);
    for ok in [
        &["SORT", "{u}list"][..],
        &[
            "SORT",
            "{u}list",
            "BY",
            "{u}w_*",
            "GET",
            "#",
            "GET",
            "{u}o_*->name",
        ],
        &[
            "SORT", "{u}list", "BY", "nosort", "LIMIT", "0", "10", "STORE", "{u}out",
        ],
        &[
            "SORT_RO",
            "{u}list",
            "BY",
            "{u}w_*->weight",
            "GET",
            "constant",
        ],
    ] {
        assert!(matches!(sort(ok), Plan::Forward(_)), "{ok:?}");
    }
    for refused in [
        &["SORT", "list", "BY", "w_*"][..],
        &["SORT", "{u}list", "BY", "{v}w_*"],
        &["SORT", "{u}list", "GET", "w_*"],
        &["SORT", "{u}list", "GET", "{u*}w"],
        &["SORT_RO", "{u}list", "GET", "{v}o_*->f"],
    ] {
        match sort(refused) {
            Plan::Fail(e) => assert!(e.to_string().contains("hash tag"), "{e}"),
            other => panic!("{refused:?}: {other:?}"),
        }
    }
}

/// Requests of every command the router places by key, with arguments that are keys of
/// any shard (hash tags too), numbers or words, as many as the command's arity allows.
fn routed_request() -> impl Strategy<Value = (&'static Command, Vec<Vec<u8>>)> {
    let routed: Vec<&'static Command> = crate::command::TABLE
        .iter()
        .filter(|c| {
            matches!(
                c.kind,
                Kind::Keyed | Kind::Split(_) | Kind::Blocking(_) | Kind::Script(_)
            )
        })
        .collect();
    let arg = prop_oneof![
        "[a-z]{1,6}".prop_map(String::into_bytes),
        "\\{[a-c]{0,2}\\}[a-z]{0,3}".prop_map(String::into_bytes),
        (0u32..20).prop_map(|n| n.to_string().into_bytes()),
        prop::sample::select(vec!["STREAMS", "BLOCK", "KEYS", "STORE", "0", "-1"])
            .prop_map(|w| w.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..8),
    ];
    (
        prop::sample::select(routed),
        prop::collection::vec(arg, 0..12),
    )
        .prop_map(|(cmd, mut args)| {
            // As the session checks before routing.
            if cmd.arity > 0 {
                args.truncate(cmd.arity as usize - 1);
            }
            while !cmd.arity_ok(args.len() + 1) {
                args.push(b"k".to_vec());
            }
            (cmd, args)
        })
}

fn parts(plan: &Plan) -> Vec<&Part> {
    match plan {
        Plan::Reply(_) | Plan::Fail(_) | Plan::FailAfter(..) | Plan::Later(_) => Vec::new(),
        Plan::Forward(part)
        | Plan::Quiet(part, _)
        | Plan::Resend { part, .. }
        | Plan::Cached { part, .. }
        | Plan::Reserved { part, .. } => vec![part],
        Plan::Gather(parts, _) | Plan::Aside(parts, _) => parts.iter().collect(),
    }
}

/// The `step` arguments from `at`, as one value.
fn group(req: &Request, at: usize, step: usize) -> Vec<u8> {
    (at..at + step)
        .flat_map(|i| [req.arg(i), b"\0"].concat())
        .collect()
}

proptest! {
    /// Whatever the arguments: no panic; a request sent whole is sent byte for byte; a
    /// split one becomes well-formed requests, one per shard, each with only that shard's
    /// keys, together every key group exactly once and no bigger than the request plus a
    /// header per part.
    #[test]
    fn the_router_sends_every_key_to_its_shard_once(req in routed_request()) {
        let (cmd, args) = req;
        let mut all: Vec<&[u8]> = vec![cmd.name.as_bytes()];
        all.extend(args.iter().map(Vec::as_slice));
        let mut buf = BytesMut::new();
        encode::command(&mut buf, all.iter().copied());
        let req = RequestParser::default().parse(&mut buf, &Default::default(), true).unwrap().unwrap();
        let state = three_shards(1, false);
        let scripts = Scripts::default();
        let plan = match cmd.kind {
            Kind::Keyed => keyed(&state, cmd, &req, ReadFrom::Master),
            Kind::Split(merge) => split(&state, cmd, merge, &req, 128),
            Kind::Blocking(at) => blocking(&state, cmd, &req, at),
            Kind::Script(call) => script(&state, &scripts, cmd, call, &req),
            _ => unreachable!(),
        };
        let parts = parts(&plan);
        if let [part] = parts[..] {
            prop_assert_eq!(&part.payload, req.frame());
        }
        if let (Kind::Split(_), Plan::Gather(..)) = (cmd.kind, &plan) {
            let step = cmd.key_step.max(1);
            let mut sent: Vec<Vec<u8>> = Vec::new();
            let mut bytes = 0;
            for part in &parts {
                let mut payload = BytesMut::from(&part.payload[..]);
                let sub = RequestParser::default()
                    .parse(&mut payload, &Default::default(), true)
                    .unwrap()
                    .unwrap();
                prop_assert!(payload.is_empty());
                prop_assert_eq!(sub.arg(0), req.arg(0));
                prop_assert_eq!((sub.argc() - 1) % step, 0);
                for group in (1..sub.argc()).step_by(step) {
                    prop_assert_eq!(state.shard_for(sub.arg(group)), Some(part.target.shard()));
                }
                bytes += part.payload.len();
                sent.extend((1..sub.argc()).step_by(step).map(|g| group(&sub, g, step)));
            }
            let mut asked: Vec<Vec<u8>> = cmd
                .key_positions(req.argc())
                .map(|pos| group(&req, pos, step))
                .collect();
            asked.sort();
            sent.sort();
            prop_assert_eq!(asked, sent);
            prop_assert!(bytes <= req.frame().len() + parts.len() * (16 + cmd.name.len()));
        }
    }
}
