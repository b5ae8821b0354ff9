//! Merging the replies of a request that was split or fanned out: one reply per part is
//! collected, and when the last arrives the protocol's merger makes the client's reply.

use bytes::Bytes;

use super::error::ClientError;
use crate::backend::BackendError;
use crate::config::Protocol;

/// How the replies of a request's parts become the client's reply. Each protocol has its own.
pub(super) trait Merger: Send {
    /// The client's reply from every part's reply (or failure), in part order.
    fn merge(&mut self, parts: Vec<Result<Bytes, BackendError>>) -> Bytes;

    /// Part `part` is sent again as a request of its own (see `near_cache::plain_read`).
    fn resent(&mut self, _part: usize) {}
}

/// Collects one reply per part; the merged reply is ready when the last arrives.
pub(super) struct Gather {
    parts: Vec<Option<Result<Bytes, BackendError>>>,
    missing: usize,
    merger: Box<dyn Merger>,
}

impl std::fmt::Debug for Gather {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gather")
            .field("parts", &self.parts.len())
            .field("missing", &self.missing)
            .finish_non_exhaustive()
    }
}

impl Gather {
    /// A request of `parts` parts whose replies `merger` merges.
    pub(super) fn new(parts: usize, merger: impl Merger + 'static) -> Gather {
        Gather {
            parts: (0..parts).map(|_| None).collect(),
            missing: parts,
            merger: Box::new(merger),
        }
    }

    /// Part `part` is sent again as a request of its own.
    pub(super) fn resent(&mut self, part: usize) {
        self.merger.resent(part);
    }

    /// Records part `part`; returns the client's reply once every part is in.
    pub(super) fn add(&mut self, part: usize, reply: Result<Bytes, BackendError>) -> Option<Bytes> {
        let slot = self.parts.get_mut(part)?;
        if slot.is_none() {
            self.missing -= 1;
        }
        *slot = Some(reply);
        if self.missing > 0 {
            return None;
        }
        let parts = self.parts.drain(..).flatten().collect();
        Some(self.merger.merge(parts))
    }
}

/// The error reply for a request a backend did not answer.
pub(super) fn failed(protocol: Protocol, e: BackendError) -> Bytes {
    ClientError::Backend(e).render(protocol)
}

/// Named values as several servers report them (Redis's INFO fields, memcached's stats).
pub(super) type Fields = Vec<(String, String)>;

/// `servers`' fields shown as one server's: the first server's, each integer one for which
/// `adds_up` says so summed over all of them, then each of `own` in place of the servers'
/// (or after them).
pub(super) fn as_one_server(
    servers: &[&Fields],
    adds_up: impl Fn(&str) -> bool,
    own: &[(&'static str, String)],
) -> Fields {
    let mut fields = servers.first().map(|f| (*f).clone()).unwrap_or_default();
    for (name, value) in fields.iter_mut() {
        if !adds_up(name) {
            continue;
        }
        let total: Option<i64> = servers
            .iter()
            .map(|f| f.iter().find(|(n, _)| n == name)?.1.parse::<i64>().ok())
            .sum();
        if let Some(total) = total {
            *value = total.to_string();
        }
    }
    for (name, value) in own {
        match fields.iter_mut().find(|(n, _)| n == name) {
            Some(field) => field.1 = value.clone(),
            None => fields.push((name.to_string(), value.clone())),
        }
    }
    fields
}
