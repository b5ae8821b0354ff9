//! The scripts clients loaded through a pool, kept so that an EVALSHA reaching a node that lost
//! them (a restart) can load the script there again and run.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;

/// SCRIPT LOAD requests by the SHA1 of their script (lower-case hex). Read without a lock by
/// every EVALSHA; replaced whole by SCRIPT LOAD and SCRIPT FLUSH, which are rare.
#[derive(Debug, Default)]
pub struct Scripts {
    loads: ArcSwap<HashMap<[u8; 40], Bytes>>,
}

/// A SHA1 in lower-case hex, if `sha` is one in any case.
fn key(sha: &[u8]) -> Option<[u8; 40]> {
    let key: [u8; 40] = sha.try_into().ok()?;
    key.iter()
        .all(u8::is_ascii_hexdigit)
        .then(|| key.map(|c| c.to_ascii_lowercase()))
}

impl Scripts {
    /// Remembers `load`, the SCRIPT LOAD request of the script whose SHA1 is `sha`.
    pub fn remember(&self, sha: &[u8], load: Bytes) {
        if let Some(key) = key(sha) {
            self.loads.rcu(|loads| {
                let mut loads = HashMap::clone(loads);
                loads.insert(key, load.clone());
                loads
            });
        }
    }

    /// SCRIPT FLUSH: every script is gone.
    pub fn forget_all(&self) {
        self.loads.store(Arc::default());
    }

    /// The SCRIPT LOAD request for the script `sha`, if a client loaded it.
    pub fn load_request(&self, sha: &[u8]) -> Option<Bytes> {
        self.loads.load().get(&key(sha)?).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_found_by_their_sha_in_any_case() {
        let scripts = Scripts::default();
        let sha = b"E0E1F9FABFC9D4800C877A703B823AC0578FF8DB";
        scripts.remember(sha, Bytes::from_static(b"load"));
        assert_eq!(
            scripts.load_request(&sha.to_ascii_lowercase()),
            Some(Bytes::from_static(b"load"))
        );
        assert_eq!(scripts.load_request(b"e0e1"), None);
        scripts.forget_all();
        assert_eq!(scripts.load_request(sha), None);
    }
}
