//! Redis Cluster placement: a key's slot (CRC-16/XMODEM of its hash tag, or of the whole key,
//! modulo 16,384) and the map from slots to the shards that own them, built from the
//! cluster's agreed slot map.

/// How many slots a Redis Cluster has.
pub const SLOTS: usize = 16_384;

/// The part of `key` the cluster hashes: the text between the first `{` and the first `}`
/// after it when that is not empty, else the whole key (the cluster specification's rule).
pub fn hashed_part(key: &[u8]) -> &[u8] {
    let Some(open) = memchr::memchr(b'{', key) else {
        return key;
    };
    match memchr::memchr(b'}', &key[open + 1..]) {
        Some(len) if len > 0 => &key[open + 1..open + 1 + len],
        _ => key,
    }
}

/// The slot of `key`.
pub fn slot(key: &[u8]) -> u16 {
    super::hash::crc16(hashed_part(key)) as u16 & (SLOTS as u16 - 1)
}

/// Which shard (an index in the pool's shards) owns each slot, and which slots are read from
/// their master whatever `read_from` says.
#[derive(Clone, PartialEq, Eq)]
pub struct SlotMap {
    owners: Box<[u16]>,
    /// How many slots each shard owns, by shard index: kept as slots are assigned, so that
    /// whether a shard owns any is not a scan of every slot.
    counts: Vec<u32>,
    /// Slots a node redirected a request of lately: they may be migrating, and a replica of
    /// the source answers nil for a key already moved (it does not know of the migration).
    unsettled: Box<[bool]>,
}

/// A slot no shard owns.
const UNOWNED: u16 = u16::MAX;

impl std::fmt::Debug for SlotMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SlotMap({} of {SLOTS} slots owned)", self.owned())
    }
}

impl Default for SlotMap {
    fn default() -> SlotMap {
        SlotMap {
            owners: vec![UNOWNED; SLOTS].into_boxed_slice(),
            counts: Vec::new(),
            unsettled: vec![false; SLOTS].into_boxed_slice(),
        }
    }
}

impl SlotMap {
    /// Gives slots `first..=last` to shard `shard`.
    pub fn assign(&mut self, first: u16, last: u16, shard: usize) {
        let last = usize::from(last).min(SLOTS - 1);
        let owner = u16::try_from(shard).unwrap_or(UNOWNED);
        if owner != UNOWNED && self.counts.len() <= shard {
            self.counts.resize(shard + 1, 0);
        }
        for slot in &mut self.owners[usize::from(first).min(SLOTS)..=last] {
            if let Some(before) = self.counts.get_mut(usize::from(*slot)) {
                *before -= 1;
            }
            if let Some(after) = self.counts.get_mut(usize::from(owner)) {
                *after += 1;
            }
            *slot = owner;
        }
    }

    /// The shard owning `slot`, if one does.
    pub fn owner(&self, slot: u16) -> Option<usize> {
        match self.owners.get(usize::from(slot)) {
            Some(&UNOWNED) | None => None,
            Some(&owner) => Some(usize::from(owner)),
        }
    }

    /// The shard owning `key`'s slot, if one does.
    pub fn shard_for(&self, key: &[u8]) -> Option<usize> {
        self.owner(slot(key))
    }

    /// How many slots have an owner.
    pub fn owned(&self) -> usize {
        self.counts.iter().map(|&n| n as usize).sum()
    }

    /// Whether every slot has an owner: every key can be served.
    pub fn covers_all(&self) -> bool {
        self.owned() == SLOTS
    }

    /// Marks `slot` as unsettled or settled; returns whether that changed it.
    pub fn set_unsettled(&mut self, slot: u16, unsettled: bool) -> bool {
        match self.unsettled.get_mut(usize::from(slot)) {
            Some(mark) if *mark != unsettled => {
                *mark = unsettled;
                true
            }
            _ => false,
        }
    }

    /// Whether a read of `slot` goes to its master whatever `read_from` says: it may be
    /// migrating.
    pub fn reads_master(&self, slot: u16) -> bool {
        self.unsettled
            .get(usize::from(slot))
            .copied()
            .unwrap_or(false)
    }

    /// Whether shard `shard` owns at least one slot.
    pub fn owns_any(&self, shard: usize) -> bool {
        self.counts.get(shard).is_some_and(|&n| n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn slots_match_cluster_keyslot() {
        // What `CLUSTER KEYSLOT` answers on redis-server 7.0.
        for (key, expected) in [
            ("foo", 12182),
            ("bar", 5061),
            ("hello", 866),
            ("", 0),
            ("{user1000}.following", 3443),
            ("{user1000}.followers", 3443),
            ("user1000", 3443),
            ("foo{}{bar}", 8363),
            ("foo{{bar}}zap", 4015),
            ("foo{bar}{zap}", 5061),
        ] {
            assert_eq!(slot(key.as_bytes()), expected, "{key}");
        }
    }

    #[test]
    fn a_map_routes_assigned_slots_only() {
        let mut map = SlotMap::default();
        assert_eq!(map.shard_for(b"foo"), None);
        map.assign(0, 8191, 0);
        map.assign(8192, 16383, 1);
        assert!(map.covers_all());
        assert_eq!(map.shard_for(b"bar"), Some(0));
        assert_eq!(map.shard_for(b"foo"), Some(1));
        map.assign(12182, 12182, 2);
        assert_eq!(map.shard_for(b"foo"), Some(2));
        assert!(map.owns_any(2));
        assert_eq!(map.owned(), SLOTS);
        map.assign(0, 8191, 2);
        assert!(!map.owns_any(0) && map.owns_any(1));
        assert_eq!(map.owned(), SLOTS);
        // A slot on the move is read from its master; only a change is reported.
        assert!(!map.reads_master(slot(b"foo")));
        assert!(map.set_unsettled(12182, true));
        assert!(!map.set_unsettled(12182, true));
        assert!(map.reads_master(slot(b"foo")) && map.reads_master(slot(b"{foo}x")));
        assert!(!map.reads_master(slot(b"bar")));
        assert!(map.set_unsettled(12182, false));
        assert!(!map.reads_master(slot(b"foo")));
    }

    proptest! {
        /// The low bits of twemproxy's unmasked CRC-16 are CRC-16/XMODEM's.
        #[test]
        fn slots_are_crc16_xmodem(key in proptest::collection::vec(any::<u8>(), 0..64)) {
            let xmodem = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);
            let key: Vec<u8> = key.into_iter().filter(|&b| b != b'{').collect();
            prop_assert_eq!(slot(&key), xmodem.checksum(&key) & 0x3fff);
        }

        #[test]
        fn a_hash_tag_decides_the_slot(prefix in ".*", tag in "[^{}]+", suffix in ".*") {
            let prefix: String = prefix.chars().filter(|&c| c != '{').collect();
            let key = format!("{prefix}{{{tag}}}{suffix}");
            prop_assert_eq!(slot(key.as_bytes()), slot(tag.as_bytes()));
            prop_assert!(usize::from(slot(key.as_bytes())) < SLOTS);
        }
    }
}
