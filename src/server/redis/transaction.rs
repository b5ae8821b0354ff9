//! MULTI / EXEC / DISCARD / WATCH / UNWATCH, decided without I/O. A transaction is pinned to
//! one shard: the shard of its first key (or of its WATCH); in a cluster pool, to that key's
//! slot, as on a cluster node. The proxy queues the commands
//! itself, answering `+QUEUED`, and at EXEC sends MULTI, the commands and EXEC in one write on
//! a backend connection reserved for the client, given back once EXEC is answered. WATCH
//! reserves that connection early and keeps it until EXEC, DISCARD or UNWATCH.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::route::{CROSSSLOT, shard_of_keys};
use crate::command::{Command, Kind, LocalCommand, TxCommand};
use crate::protocol::resp::{Request, encode, parse_int};
use crate::server::error::ClientError;
use crate::server::plan::Plan;
use crate::topology::PoolState;

/// A client's open transaction, if any.
#[derive(Debug, Default)]
pub(super) struct Transaction {
    /// Where every key must map to, once a key or WATCH chose it.
    pin: Option<Pin>,
    /// Between MULTI and EXEC / DISCARD: the queued requests.
    queued: Option<Vec<Bytes>>,
    /// A command was refused while queueing: EXEC aborts.
    aborted: bool,
    /// WATCH holds a connection to the shard's master.
    watching: bool,
}

impl Transaction {
    pub(super) fn in_multi(&self) -> bool {
        self.queued.is_some()
    }

    /// Neither in MULTI nor watching, nor bound to a shard.
    pub(super) fn is_idle(&self) -> bool {
        !self.in_multi() && !self.watching && self.pin.is_none()
    }

    /// In MULTI: how many commands are queued.
    pub(super) fn queued(&self) -> Option<u32> {
        let queued = self.queued.as_ref()?;
        Some(u32::try_from(queued.len()).unwrap_or(u32::MAX))
    }
}

/// Where a transaction's keys must be.
#[derive(Debug, PartialEq, Eq)]
enum Pin {
    /// On the shard of that name (a ring pool).
    Shard(Arc<str>),
    /// In that slot (a cluster pool: wherever the slot is served when EXEC comes).
    Slot(u16),
}

impl Pin {
    /// Where `key` is, or `None` when no shard serves it.
    fn of<N>(state: &PoolState<N>, key: &[u8]) -> Option<Pin> {
        let (group, shard) = state.group_for(key)?;
        Some(match state.slots() {
            Some(_) => Pin::Slot(group as u16),
            None => Pin::Shard(state.shards[shard].name.clone()),
        })
    }

    /// The shard (an index in `state`) it is on now.
    fn shard<N>(&self, state: &PoolState<N>) -> Option<usize> {
        match self {
            Pin::Shard(name) => state.shards.iter().position(|s| s.name == *name),
            Pin::Slot(slot) => state.slots()?.owner(*slot),
        }
    }

    /// The error of a key elsewhere: a cluster node's words in a cluster pool.
    fn elsewhere(&self, command: &str) -> ClientError {
        match self {
            Pin::Shard(_) => ClientError::CrossShardTransaction(command.to_ascii_lowercase()),
            Pin::Slot(_) => ClientError::Exact(CROSSSLOT.into()),
        }
    }
}

/// Which connection a step of a transaction goes on.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Conn {
    /// The one WATCH holds.
    Watching,
    /// A new reserved connection to the master of shard `0`.
    Master(usize),
}

/// What a transaction command asks of the client's pinned connection.
#[derive(Debug)]
pub(super) enum Step {
    /// Nothing to send: answer with the plan.
    Plan(Plan),
    /// Let go of the WATCH connection (closing it unwatches) and answer with the plan.
    Abandon(Plan),
    /// Send `requests` on `conn`, answered by the last one's reply; `keep`: hold the
    /// connection afterwards (WATCH), else give it back once the reply is written.
    Send {
        conn: Conn,
        requests: Vec<Bytes>,
        keep: bool,
    },
}

const EXECABORT: &str = "EXECABORT Transaction discarded because of previous errors.";

/// A transaction command outside MULTI.
pub(super) fn run<N>(
    tx: &mut Transaction,
    state: &PoolState<N>,
    cmd: &Command,
    which: TxCommand,
    req: &Request,
) -> Step {
    let fail = |text: &'static str| Step::Plan(Plan::Fail(ClientError::Exact(text.into())));
    match which {
        TxCommand::Multi => {
            tx.queued = Some(Vec::new());
            Step::Plan(Plan::Reply(Bytes::from_static(b"+OK\r\n")))
        }
        TxCommand::Exec => fail("ERR EXEC without MULTI"),
        TxCommand::Discard => fail("ERR DISCARD without MULTI"),
        TxCommand::Watch => watch(tx, state, cmd, req),
        TxCommand::Unwatch => {
            tx.pin = None;
            match std::mem::take(&mut tx.watching) {
                true => Step::Send {
                    conn: Conn::Watching,
                    requests: vec![req.frame().clone()],
                    keep: false,
                },
                false => Step::Plan(Plan::Reply(Bytes::from_static(b"+OK\r\n"))),
            }
        }
    }
}

/// A request between MULTI and EXEC: EXEC and DISCARD end the transaction; anything else is
/// checked and queued, or refused and the transaction marked to abort.
pub(super) fn queue<N>(
    tx: &mut Transaction,
    state: &PoolState<N>,
    cmd: Option<&Command>,
    req: &Request,
) -> Step {
    let mut refuse = |e: ClientError| {
        tx.aborted = true;
        Step::Plan(Plan::Fail(e))
    };
    let Some(cmd) = cmd else {
        return refuse(ClientError::unknown_command(req.arg(0), req.args().skip(1)));
    };
    if !cmd.arity_ok(req.argc()) {
        return refuse(ClientError::WrongArity(cmd.name.to_ascii_lowercase()));
    }
    let exact = |text: &'static str| Step::Plan(Plan::Fail(ClientError::Exact(text.into())));
    match cmd.kind {
        Kind::Transaction(TxCommand::Exec) => return exec(tx, state),
        Kind::Transaction(TxCommand::Discard) => return discard(tx),
        Kind::Transaction(TxCommand::Multi) => return exact("ERR MULTI calls can not be nested"),
        Kind::Transaction(TxCommand::Watch) => {
            return exact("ERR WATCH inside MULTI is not allowed");
        }
        Kind::Local(LocalCommand::Ping | LocalCommand::Echo)
        | Kind::Keyed
        | Kind::Split(_)
        | Kind::Script(_)
        | Kind::Blocking(_)
        | Kind::Transaction(TxCommand::Unwatch) => {}
        _ => {
            let name = cmd.name;
            return refuse(ClientError::Refused(
                format!("'{name}' cannot run inside a transaction through the proxy").into(),
            ));
        }
    }
    let mut keys: Vec<usize> = cmd.key_positions(req.argc()).collect();
    keys.extend(cmd.movable_keys(req));
    if let Kind::Script(_) = cmd.kind {
        let declared = parse_int(req.arg(2)).unwrap_or(0).max(0) as usize;
        keys.extend((3..3 + declared).take_while(|&i| i < req.argc()));
    }
    for pos in keys {
        let Some(at) = Pin::of(state, req.arg(pos)) else {
            return refuse(ClientError::unplaced(state));
        };
        match &tx.pin {
            Some(pinned) if *pinned != at => return refuse(pinned.elsewhere(cmd.name)),
            _ => tx.pin = Some(at),
        }
    }
    if let Some(queued) = &mut tx.queued {
        queued.push(req.frame().clone());
    }
    Step::Plan(Plan::Reply(Bytes::from_static(b"+QUEUED\r\n")))
}

/// WATCH: on a connection reserved on the keys' shard, kept until the transaction ends.
fn watch<N>(tx: &mut Transaction, state: &PoolState<N>, cmd: &Command, req: &Request) -> Step {
    let shard = match shard_of_keys(state, cmd, cmd.key_positions(req.argc()), req) {
        Ok(shard) => shard,
        Err(e) => return Step::Plan(Plan::Fail(e)),
    };
    let Some(at) = Pin::of(state, req.arg(1)) else {
        return Step::Plan(Plan::Fail(ClientError::unplaced(state)));
    };
    if let Some(pinned) = &tx.pin
        && *pinned != at
    {
        let elsewhere = match pinned {
            Pin::Shard(_) => ClientError::CrossShardWatch,
            Pin::Slot(_) => ClientError::Exact(CROSSSLOT.into()),
        };
        return Step::Plan(Plan::Fail(elsewhere));
    }
    tx.pin = Some(at);
    let conn = match tx.watching {
        true => Conn::Watching,
        false => Conn::Master(shard),
    };
    tx.watching = true;
    Step::Send {
        conn,
        requests: vec![req.frame().clone()],
        keep: true,
    }
}

/// EXEC: the queued commands between MULTI and EXEC, in one write on the reserved connection;
/// the client gets EXEC's reply.
fn exec<N>(tx: &mut Transaction, state: &PoolState<N>) -> Step {
    let tx = std::mem::take(tx);
    if tx.aborted {
        return Step::Abandon(Plan::Fail(ClientError::Exact(EXECABORT.into())));
    }
    let conn = match tx.watching {
        true => Conn::Watching,
        false => {
            let shard = match &tx.pin {
                Some(pin) => pin.shard(state),
                None => state.shard_for(b""),
            };
            match shard {
                Some(shard) => Conn::Master(shard),
                None => return Step::Plan(Plan::Fail(ClientError::unplaced(state))),
            }
        }
    };
    let mut requests = vec![command(b"MULTI")];
    requests.extend(tx.queued.unwrap_or_default());
    requests.push(command(b"EXEC"));
    Step::Send {
        conn,
        requests,
        keep: false,
    }
}

/// DISCARD: the queue is dropped; a WATCH ends with an UNWATCH, whose reply is DISCARD's.
fn discard(tx: &mut Transaction) -> Step {
    match std::mem::take(tx).watching {
        true => Step::Send {
            conn: Conn::Watching,
            requests: vec![command(b"UNWATCH")],
            keep: false,
        },
        false => Step::Plan(Plan::Reply(Bytes::from_static(b"+OK\r\n"))),
    }
}

fn command(name: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    encode::command(&mut b, [name].into_iter());
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::lookup;
    use crate::server::plan::testing::{key_on, request, three_shards};

    fn step(tx: &mut Transaction, state: &PoolState<()>, args: &[&str]) -> Step {
        let req = request(args);
        let cmd = lookup(args[0].as_bytes());
        match (tx.in_multi(), cmd.map(|c| c.kind)) {
            (false, Some(Kind::Transaction(which))) => run(tx, state, cmd.unwrap(), which, &req),
            _ => queue(tx, state, cmd, &req),
        }
    }

    fn replied(step: Step, want: &[u8]) {
        match step {
            Step::Plan(Plan::Reply(r)) => assert_eq!(&r[..], want),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn exec_sends_the_queue_to_the_master_of_the_first_keys_shard() {
        let state = three_shards(1, false);
        let (a, b) = (key_on(&state, 2, "a"), key_on(&state, 2, "b"));
        let mut tx = Transaction::default();
        replied(step(&mut tx, &state, &["MULTI"]), b"+OK\r\n");
        replied(step(&mut tx, &state, &["SET", &a, "1"]), b"+QUEUED\r\n");
        replied(step(&mut tx, &state, &["INCR", &b]), b"+QUEUED\r\n");
        match step(&mut tx, &state, &["EXEC"]) {
            Step::Send {
                conn: Conn::Master(2),
                requests,
                keep: false,
            } => assert_eq!(requests.len(), 4),
            other => panic!("{other:?}"),
        }
        assert!(!tx.in_multi());
    }

    #[test]
    fn a_key_of_another_shard_aborts_the_transaction() {
        let state = three_shards(0, false);
        let (a, b) = (key_on(&state, 0, "a"), key_on(&state, 1, "b"));
        let mut tx = Transaction::default();
        step(&mut tx, &state, &["MULTI"]);
        step(&mut tx, &state, &["SET", &a, "1"]);
        match step(&mut tx, &state, &["SET", &b, "1"]) {
            Step::Plan(Plan::Fail(ClientError::CrossShardTransaction(c))) => assert_eq!(c, "set"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            step(&mut tx, &state, &["EXEC"]),
            Step::Abandon(Plan::Fail(_))
        ));
    }

    #[test]
    fn watch_pins_the_shard_and_keeps_its_connection_until_exec() {
        let state = three_shards(0, false);
        let (a, b) = (key_on(&state, 1, "a"), key_on(&state, 0, "b"));
        let mut tx = Transaction::default();
        assert!(matches!(
            step(&mut tx, &state, &["WATCH", &a]),
            Step::Send {
                conn: Conn::Master(1),
                keep: true,
                ..
            }
        ));
        assert!(matches!(
            step(&mut tx, &state, &["WATCH", &a]),
            Step::Send {
                conn: Conn::Watching,
                keep: true,
                ..
            }
        ));
        assert!(matches!(
            step(&mut tx, &state, &["WATCH", &b]),
            Step::Plan(Plan::Fail(ClientError::CrossShardWatch))
        ));
        step(&mut tx, &state, &["MULTI"]);
        assert!(matches!(
            step(&mut tx, &state, &["EXEC"]),
            Step::Send {
                conn: Conn::Watching,
                keep: false,
                ..
            }
        ));
    }

    #[test]
    fn commands_that_cannot_be_queued_are_refused() {
        let state = three_shards(0, false);
        let mut tx = Transaction::default();
        step(&mut tx, &state, &["MULTI"]);
        assert!(matches!(
            step(&mut tx, &state, &["SUBSCRIBE", "c"]),
            Step::Plan(Plan::Fail(ClientError::Refused(_)))
        ));
        assert!(matches!(
            step(&mut tx, &state, &["MULTI"]),
            Step::Plan(Plan::Fail(ClientError::Exact(_)))
        ));
        replied(step(&mut tx, &state, &["DISCARD"]), b"+OK\r\n");
    }
}
