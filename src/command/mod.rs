//! The Redis command table: for each command it routes, where its keys are, whether it writes,
//! and how the proxy handles it.

mod table;

pub use table::TABLE;

/// How the proxy handles a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Routed to the shard of its keys; several keys must share one shard.
    Keyed,
    /// Keys split by shard and the replies merged in key order.
    Split(Merge),
    /// Scripts and functions: the keys are the `numkeys` arguments after argument 2, and must
    /// share one shard.
    Script,
    /// A command over the whole keyspace or every node, each handled on its own terms.
    Keyspace(Fanout),
    /// Answered by the proxy itself.
    Local,
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
    /// RANDOMKEY: the first reply that is not nil.
    FirstNonNil,
    /// SCRIPT EXISTS: 1 at a position only where every node said 1.
    AllOf,
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
}

impl Command {
    /// Whether `argc` arguments (name included) fit the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        if self.arity >= 0 {
            argc == self.arity as usize
        } else {
            argc >= self.arity.unsigned_abs() as usize
        }
    }

    /// Whether the command may change data. Scripts are run on masters unless they are the
    /// read-only variants (`*_RO`), whatever COMMAND says of them.
    pub fn writes(&self) -> bool {
        match self.kind {
            Kind::Script => !self.name.ends_with("_RO"),
            _ => self.write,
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
    }
}
