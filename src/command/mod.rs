//! The Redis command table: for each command it routes, where its keys are, whether it writes,
//! and how the proxy handles it.

mod table;

pub use table::TABLE;

use crate::protocol::resp::{Request, parse_int};

/// How the proxy handles a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Routed to the shard of its keys; several keys must share one shard.
    Keyed,
    /// Keys split by shard and the replies merged in key order.
    Split(Merge),
    /// Scripts and functions: the keys are the `numkeys` arguments after argument 2, and must
    /// share one shard.
    Script(ScriptCall),
    /// A command over the whole keyspace or every node, each handled on its own terms.
    Keyspace(Fanout),
    /// MULTI, EXEC, DISCARD, WATCH, UNWATCH.
    Transaction(TxCommand),
    /// SUBSCRIBE and its kin, PUBLISH, SPUBLISH, PUBSUB.
    PubSub(PubSubCommand),
    /// Waits on the backend until data comes or its timeout passes: sent on a connection
    /// reserved for the client while it waits.
    Blocking(BlockTimeout),
    /// Answered by the proxy itself.
    Local(LocalCommand),
}

/// What kind of work a request asks for, as `ringproxy_client_commands_total` counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Reads one key, or keys on one shard.
    Read,
    /// Writes one key, or keys on one shard.
    Write,
    /// Keys split by shard (MGET, MSET, DEL…).
    MultiKey,
    Script,
    /// Over every shard or node (SCAN, KEYS, DBSIZE, FLUSHALL…).
    Keyspace,
    Transaction,
    PubSub,
    Blocking,
    /// Answered by the proxy (PING, AUTH, HELLO, INFO…).
    Connection,
    /// A command the proxy does not know, or refuses.
    Unknown,
}

impl Class {
    pub const ALL: [Class; 10] = [
        Class::Read,
        Class::Write,
        Class::MultiKey,
        Class::Script,
        Class::Keyspace,
        Class::Transaction,
        Class::PubSub,
        Class::Blocking,
        Class::Connection,
        Class::Unknown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Class::Read => "read",
            Class::Write => "write",
            Class::MultiKey => "multi_key",
            Class::Script => "script",
            Class::Keyspace => "keyspace",
            Class::Transaction => "transaction",
            Class::PubSub => "pubsub",
            Class::Blocking => "blocking",
            Class::Connection => "connection",
            Class::Unknown => "unknown",
        }
    }
}

/// Requests counted by class, as [`Class::ALL`] orders them, to be added to the metrics at once.
#[derive(Debug, Default)]
pub struct ClassCounts(pub [u64; Class::ALL.len()]);

impl ClassCounts {
    pub fn count(&mut self, class: Class) {
        self.0[class as usize] += 1;
    }
}

/// How a script names what it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScriptCall {
    /// EVAL, EVAL_RO: the script's body.
    Eval,
    /// EVALSHA, EVALSHA_RO: the SHA1 of a script loaded before.
    EvalSha,
    /// FCALL, FCALL_RO: a function of a loaded library.
    Function,
}

/// The transaction commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxCommand {
    Multi,
    Exec,
    Discard,
    Watch,
    Unwatch,
}

/// What kind of channel a subscription names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channels {
    /// SUBSCRIBE: channels by name.
    Named,
    /// PSUBSCRIBE: glob patterns of channels.
    Patterns,
    /// SSUBSCRIBE: shard channels.
    Sharded,
}

/// The Pub/Sub commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PubSubCommand {
    Subscribe(Channels),
    Unsubscribe(Channels),
    /// PUBLISH, SPUBLISH.
    Publish,
    /// PUBSUB CHANNELS, NUMSUB…
    Introspect,
}

/// The commands the proxy answers itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalCommand {
    Auth,
    Client,
    /// CLUSTER, as a cluster pool presents itself.
    Cluster,
    Command,
    Echo,
    Hello,
    Info,
    Ping,
    Quit,
    /// READONLY and READWRITE.
    ReadMode,
    Reset,
    Select,
    SlowLog,
    Time,
}

/// Where a blocking command's timeout is, in seconds (0: wait forever).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockTimeout {
    /// The last argument (BLPOP, BLMOVE…).
    Last,
    /// Argument 1 (BLMPOP, BZMPOP).
    First,
}

/// The commands that reach every shard (or one chosen by a cursor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fanout {
    /// SCAN: one shard at a time, the shard encoded in the cursor.
    Scan,
    /// KEYS: every shard, if the pool allows it.
    Keys,
    /// DBSIZE: every shard, summed.
    DbSize,
    /// RANDOMKEY: a key from some shard that has one.
    RandomKey,
    /// FLUSHDB, FLUSHALL: every shard, if the pool allows it.
    Flush,
    /// SCRIPT LOAD / EXISTS / FLUSH: every node, so EVALSHA works wherever its keys land.
    Script,
    /// FUNCTION LOAD / DELETE / FLUSH / RESTORE: every master (replicas get them by replication).
    Function,
    /// CONFIG GET from the first master; SET and RESETSTAT on every node, if the pool allows.
    Config,
}

/// How the per-shard replies of a split command become one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merge {
    /// MGET: the values, in key order.
    Values,
    /// DEL, UNLINK, EXISTS, TOUCH, DBSIZE: the sum of the counts.
    Sum,
    /// MSET, FLUSHDB, SCRIPT LOAD…: the first shard's reply, when no shard gave an error.
    Same,
    /// KEYS: every shard's array, one after another.
    Concat,
    /// RANDOMKEY: a reply that is not nil, the first from a shard picked at random.
    FirstNonNil,
    /// SCRIPT EXISTS: 1 at a position only where every node said 1.
    AllOf,
    /// PUBSUB NUMSUB: `[channel, count, …]` with the counts summed.
    PairSums,
    /// PUBSUB NUMPAT: the largest count.
    Max,
}

#[derive(Debug)]
pub struct Command {
    /// Upper case, as the table is sorted.
    pub name: &'static str,
    /// Redis' arity: N means exactly N arguments (name included), -N at least N.
    pub arity: i32,
    pub write: bool,
    pub kind: Kind,
    /// Key positions as in Redis' COMMAND: first, last (negative counts from the end), step.
    pub first_key: usize,
    pub last_key: isize,
    pub key_step: usize,
    /// More keys that only the arguments tell (COMMAND's `movablekeys`).
    pub movable: Movable,
}

impl Command {
    pub fn class(&self) -> Class {
        match self.kind {
            Kind::Keyed if self.write => Class::Write,
            Kind::Keyed => Class::Read,
            Kind::Split(_) => Class::MultiKey,
            Kind::Script(_) => Class::Script,
            Kind::Keyspace(_) => Class::Keyspace,
            Kind::Transaction(_) => Class::Transaction,
            Kind::PubSub(_) => Class::PubSub,
            Kind::Blocking(_) => Class::Blocking,
            Kind::Local(_) => Class::Connection,
        }
    }
}

/// Where the keys of a command with `movablekeys` are, beyond its COMMAND range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Movable {
    None,
    /// A count at `count_at`, then that many keys (ZUNION, SINTERCARD, LMPOP, ZUNIONSTORE…).
    Counted {
        count_at: usize,
    },
    /// After the `STREAMS` keyword, searched from `from`: the first half of the rest (XREAD,
    /// XREADGROUP).
    Streams {
        from: usize,
    },
    /// SORT: the argument after `STORE`, skipping BY / GET patterns and LIMIT's numbers.
    SortStore,
    /// GEORADIUS…: the argument after `STORE` or `STOREDIST`, searched from `from`.
    GeoStore {
        from: usize,
    },
}

impl Command {
    /// Whether `argc` arguments (name included) fit the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        let counted = if self.arity >= 0 {
            argc == self.arity as usize
        } else {
            argc >= self.arity.unsigned_abs() as usize
        };
        // Keys with values to the end (MSET k v k v): as Redis, only whole pairs.
        let whole = self.key_step < 2 || self.last_key != -1;
        counted && (whole || (argc - self.first_key).is_multiple_of(self.key_step))
    }

    /// Whether the command may change data. Scripts are run on masters unless they are the
    /// read-only variants (`*_RO`), whatever COMMAND says of them.
    pub fn writes(&self) -> bool {
        match self.kind {
            Kind::Script(_) => !self.name.ends_with("_RO"),
            _ => self.write,
        }
    }

    /// The positions of the keys only the arguments of `req` tell (see [`Movable`]); for a
    /// command without such keys, none, and nothing is allocated.
    pub fn movable_keys(&self, req: &Request) -> Vec<usize> {
        let argc = req.argc();
        let is = |i: usize, word: &[u8]| req.arg(i).eq_ignore_ascii_case(word);
        match self.movable {
            Movable::None => Vec::new(),
            Movable::Counted { count_at } if count_at < argc => {
                let n = parse_int(req.arg(count_at)).map_or(0, |n| n.max(0) as usize);
                (count_at + 1..(count_at + 1).saturating_add(n).min(argc)).collect()
            }
            Movable::Counted { .. } => Vec::new(),
            Movable::Streams { from } => match (from..argc).find(|&i| is(i, b"STREAMS")) {
                Some(at) => (at + 1..at + 1 + (argc - at - 1) / 2).collect(),
                None => Vec::new(),
            },
            Movable::SortStore => {
                let mut store = None;
                let mut i = 2;
                while i < argc {
                    if is(i, b"LIMIT") {
                        i += 2;
                    } else if is(i, b"GET") || is(i, b"BY") {
                        i += 1;
                    } else if is(i, b"STORE") && i + 1 < argc {
                        store = Some(i + 1);
                        i += 1;
                    }
                    i += 1;
                }
                store.into_iter().collect()
            }
            Movable::GeoStore { from } => {
                let mut store = None;
                let mut i = from;
                while i + 1 < argc {
                    if is(i, b"STORE") || is(i, b"STOREDIST") {
                        store = Some(i + 1);
                        i += 1;
                    }
                    i += 1;
                }
                store.into_iter().collect()
            }
        }
    }

    /// The argument positions of the keys in a request of `argc` arguments.
    pub fn key_positions(&self, argc: usize) -> impl Iterator<Item = usize> + use<> {
        let last = if self.last_key < 0 {
            argc as isize + self.last_key
        } else {
            self.last_key.min(argc as isize - 1)
        };
        let (first, step) = (self.first_key, self.key_step.max(1));
        let end = if self.first_key == 0 {
            0
        } else {
            (last + 1).max(0) as usize
        };
        (first..end).step_by(step)
    }
}

/// Redis commands the proxy does not serve, and why. Every command of a Redis 7 or Valkey 8
/// server is either in [`TABLE`] or here (a test checks it against a real server).
pub static UNSUPPORTED: &[(&str, &str)] = &[
    ("ACL", ADMIN),
    ("ASKING", CLUSTER),
    ("BGREWRITEAOF", ADMIN),
    ("BGSAVE", ADMIN),
    (
        "COMMANDLOG",
        "a node's own log of its commands (Valkey); the proxy keeps its SLOWLOG",
    ),
    ("DEBUG", ADMIN),
    ("FAILOVER", ADMIN),
    ("LASTSAVE", ADMIN),
    ("LATENCY", ADMIN),
    ("LOLWUT", ONE_SERVER),
    ("MIGRATE", CLUSTER),
    ("MODULE", ADMIN),
    ("MONITOR", ADMIN),
    ("MOVE", DATABASES),
    ("PFDEBUG", ADMIN),
    ("PFSELFTEST", ADMIN),
    ("PSYNC", ADMIN),
    ("REPLCONF", ADMIN),
    ("REPLICAOF", ADMIN),
    ("RESTORE-ASKING", CLUSTER),
    ("ROLE", ADMIN),
    ("SAVE", ADMIN),
    ("SHUTDOWN", ADMIN),
    ("SLAVEOF", ADMIN),
    ("SWAPDB", DATABASES),
    ("SYNC", ADMIN),
    ("WAIT", ONE_CONNECTION),
    ("WAITAOF", ONE_CONNECTION),
];

const ONE_CONNECTION: &str =
    "it counts one connection's writes; the proxy's backend connections are shared";

const ADMIN: &str = "server administration: connect to the server itself";
const CLUSTER: &str = "Redis Cluster and migration commands address one server, not the pool";
const DATABASES: &str =
    "it names a database by the server's numbering, which the proxy does not rewrite";
const ONE_SERVER: &str = "the answer of one server; ask the server itself";

/// Why the proxy does not serve `name`, if it is a Redis command it knows of.
pub fn unsupported_reason(name: &[u8]) -> Option<&'static str> {
    UNSUPPORTED
        .iter()
        .find(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name))
        .map(|(_, why)| *why)
}

/// The command lists of docs/commands.md, made from the table: what is served anywhere, what needs its
/// keys on one shard, what reaches every shard, what the proxy answers, and what it refuses.
pub fn markdown() -> String {
    let names = |pick: &dyn Fn(&Command) -> bool| {
        let list: Vec<&str> = TABLE.iter().filter(|c| pick(c)).map(|c| c.name).collect();
        list.join(", ")
    };
    let keyed = |c: &Command| matches!(c.kind, Kind::Keyed | Kind::Blocking(_));
    let multi_key = |c: &Command| {
        matches!(c.kind, Kind::Script(_))
            || (keyed(c) && (c.movable != Movable::None || c.last_key != c.first_key as isize))
    };
    let mut out = String::new();
    out.push_str(&format!(
        "- **Served, routed by key**: {}.\n",
        names(&|c| keyed(c) && !multi_key(c))
    ));
    out.push_str(&format!(
        "- **Split by shard and merged in key order**: {}.\n",
        names(&|c| matches!(c.kind, Kind::Split(_)))
    ));
    out.push_str(&format!(
        "- **Served when all keys share one shard** (else `-CROSSSLOT`): {}.\n",
        names(&multi_key)
    ));
    out.push_str(&format!(
        "- **Blocking, each on a connection reserved while it waits**: {}.\n",
        names(&|c| matches!(c.kind, Kind::Blocking(_)))
    ));
    out.push_str(&format!(
        "- **Transactions, pinned to the shard of their first key**: {}.\n",
        names(&|c| matches!(c.kind, Kind::Transaction(_)))
    ));
    out.push_str(&format!(
        "- **Pub/Sub, a channel on the shard its name hashes to**: {}.\n",
        names(&|c| matches!(c.kind, Kind::PubSub(_)))
    ));
    out.push_str(&format!(
        "- **Every shard or node**: {}.\n",
        names(&|c| matches!(c.kind, Kind::Keyspace(_)))
    ));
    out.push_str(&format!(
        "- **Answered by the proxy**: {}.\n",
        names(&|c| matches!(c.kind, Kind::Local(_)))
    ));
    let mut reasons: Vec<&str> = UNSUPPORTED.iter().map(|(_, why)| *why).collect();
    reasons.sort_unstable();
    reasons.dedup();
    for why in reasons {
        let list: Vec<&str> = UNSUPPORTED
            .iter()
            .filter(|(_, w)| *w == why)
            .map(|(n, _)| *n)
            .collect();
        out.push_str(&format!("- **Refused** ({why}): {}.\n", list.join(", ")));
    }
    out
}

/// Slots in the lookup index: a power of two well above the table's size, so probes are short.
const INDEX_SLOTS: usize = 1024;

/// FNV-1a over the upper-cased name: the lookup index's hash.
fn name_hash(name: &[u8]) -> usize {
    name.iter().fold(0x811c_9dc5_u32, |h, &c| {
        (h ^ u32::from(c.to_ascii_uppercase())).wrapping_mul(0x0100_0193)
    }) as usize
}

/// Open-addressing index from name hash to table position, built on first use.
static INDEX: std::sync::LazyLock<Box<[u16; INDEX_SLOTS]>> = std::sync::LazyLock::new(|| {
    let mut index = Box::new([u16::MAX; INDEX_SLOTS]);
    for (i, c) in TABLE.iter().enumerate() {
        let mut slot = name_hash(c.name.as_bytes()) % INDEX_SLOTS;
        while index[slot] != u16::MAX {
            slot = (slot + 1) % INDEX_SLOTS;
        }
        index[slot] = i as u16;
    }
    index
});

/// Looks a command up by name, in any letter case, without allocating: one hash, usually one
/// comparison.
pub fn lookup(name: &[u8]) -> Option<&'static Command> {
    let mut slot = name_hash(name) % INDEX_SLOTS;
    loop {
        let command = TABLE.get(usize::from(INDEX[slot]))?;
        if command.name.as_bytes().eq_ignore_ascii_case(name) {
            return Some(command);
        }
        slot = (slot + 1) % INDEX_SLOTS;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Commands after which a server sends more or fewer replies than one per request
        /// (CLIENT REPLY, MONITOR, SUBSCRIBE, HELLO's protocol switch, replication) are never
        /// forwarded as they are on a connection shared by many clients, in any letter case.
        #[test]
        fn reply_count_changers_are_never_forwarded_as_they_are(
            name in proptest::sample::select(&[
                "CLIENT", "MONITOR", "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE",
                "PUNSUBSCRIBE", "SUNSUBSCRIBE", "HELLO", "RESET", "QUIT", "SYNC", "PSYNC",
                "REPLCONF", "SELECT", "AUTH", "READONLY", "READWRITE", "SHUTDOWN", "DEBUG",
            ][..]),
            upper in proptest::collection::vec(proptest::bool::ANY, 12),
        ) {
            let cased: Vec<u8> = name.bytes().zip(&upper)
                .map(|(b, &up)| if up { b } else { b.to_ascii_lowercase() })
                .collect();
            if let Some(command) = lookup(&cased) {
                proptest::prop_assert!(
                    matches!(command.kind, Kind::Local(_) | Kind::PubSub(_)),
                    "{} is {:?}", name, command.kind
                );
            }
        }
    }

    #[test]
    fn table_is_sorted_and_unique() {
        assert!(TABLE.len() < INDEX_SLOTS / 2);
        for w in TABLE.windows(2) {
            assert!(w[0].name < w[1].name, "{} then {}", w[0].name, w[1].name);
        }
    }

    #[test]
    fn lookup_ignores_case() {
        assert_eq!(lookup(b"get").unwrap().name, "GET");
        assert_eq!(lookup(b"MgEt").unwrap().kind, Kind::Split(Merge::Values));
        assert!(lookup(b"nosuchcommand").is_none());
        assert!(lookup(b"").is_none());
        for c in TABLE {
            assert_eq!(
                lookup(c.name.to_ascii_lowercase().as_bytes()).unwrap().name,
                c.name
            );
        }
        assert!(lookup(b"averyveryverylongnamethatisnotacommand").is_none());
    }

    #[test]
    fn key_positions() {
        let keys = |name: &[u8], argc| {
            lookup(name)
                .unwrap()
                .key_positions(argc)
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(b"GET", 2), [1]);
        assert_eq!(keys(b"MSET", 5), [1, 3]);
        assert_eq!(keys(b"MGET", 4), [1, 2, 3]);
        assert_eq!(keys(b"RENAME", 3), [1, 2]);
        assert_eq!(keys(b"BITOP", 5), [2, 3, 4]);
        assert_eq!(keys(b"XGROUP", 4), [2]);
        assert_eq!(keys(b"PING", 1), Vec::<usize>::new());
    }

    #[test]
    fn arity() {
        let get = lookup(b"GET").unwrap();
        assert!(get.arity_ok(2) && !get.arity_ok(1) && !get.arity_ok(3));
        let mset = lookup(b"MSET").unwrap();
        assert!(mset.arity_ok(3) && mset.arity_ok(5) && !mset.arity_ok(2));
        // As Redis: `MSET k v k` is refused, not split with a key lacking its value.
        assert!(!mset.arity_ok(4) && !lookup(b"MSETNX").unwrap().arity_ok(6));
    }
}
