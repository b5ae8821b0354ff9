//! Sending again what asks for it, in order: a failed read to the next node of its shard, an
//! EVALSHA to its node after loading the script there, and a cluster's part wherever its node
//! redirects it (MOVED, ASK, TRYAGAIN, CLUSTERDOWN), within the request's deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::Context;
use crate::backend::{BackendError, Failure, Job, Mailbox, Node, Token};
use crate::config::Address;
use crate::metrics::{RedirectKind, RefreshCause};
use crate::protocol::resp::{Limits, RequestParser, encode};
use crate::server::error::ClientError;
use crate::server::outbox::{Blocking, PREAMBLE, Resend, Retry};
use crate::topology::PoolState;
use crate::topology::cluster::Redirect;

/// What is sent before a request an ASK redirected, on the same connection.
const ASKING: &[u8] = b"*1\r\n$6\r\nASKING\r\n";

/// How long a part waits for the cluster to be asked about a node it was redirected to that
/// the proxy does not know.
const UNKNOWN_NODE_WAIT: Duration = Duration::from_millis(20);

/// What becomes of a part to send again.
enum Next {
    /// Sent to this node, after what is given (a SCRIPT LOAD, an ASKING).
    To(Arc<Node>, Option<Bytes>),
    /// Answered already: with an error (its deadline passed, its shard left), or meanwhile.
    Done,
    /// It waits until then, and the parts after it behind it.
    Wait(Instant),
}

impl Context<'_> {
    /// Sends again, in order, every part that asks for it and is due. The node is found in
    /// the pool's current state.
    pub(in crate::server::session) fn resend(&mut self) {
        let state = self.pool.state();
        let now = Instant::now();
        while let Some(retry) = self.out.take_retry(now) {
            let (seq, part) = (retry.seq, retry.part);
            let next = match &retry.how {
                Resend::Redirect(redirect) => {
                    let waited = retry.not_before.is_some();
                    self.follow(&state, (seq, part), redirect, waited, now)
                }
                Resend::NextNode | Resend::After(_) => self.within_shard(&state, &retry),
            };
            let (node, first) = match next {
                Next::To(node, first) => (node, first),
                Next::Done => continue,
                Next::Wait(at) => {
                    self.wake_at(at);
                    self.out.defer(retry, at);
                    return;
                }
            };
            let Some(sent) = self.out.sent_at(seq, part) else {
                continue;
            };
            sent.node = node.id();
            let (job, profile) = ((sent.payload.clone(), sent.kind), sent.profile);
            if let Some(blocking) = sent.blocking {
                // Its timeout is in its arguments: the new node is given what is left of it.
                let limits = &self.pool.config.clients.requests;
                let (payload, wait) = what_is_left(&job.0, &blocking, now, limits);
                let job = Job {
                    payload,
                    kind: job.1,
                    reply_to: self.reply_to(Token::Reply { seq, part }),
                    timeout: None,
                };
                self.block_again(seq, node, (first, job), wait, profile);
                continue;
            }
            if let Some(first) = first {
                let reply_to = self.reply_to(Token::Reply {
                    seq,
                    part: PREAMBLE,
                });
                self.send_job_to(&node, (first, job.1), reply_to, profile);
            }
            let reply_to = self.reply_to(Token::Reply { seq, part });
            self.send_job_to(&node, job, reply_to, profile);
        }
    }

    /// A failed read to the next node of its shard, or an EVALSHA to its node after its
    /// SCRIPT LOAD; a shard that left the pool fails the request.
    fn within_shard(&mut self, state: &PoolState, retry: &Retry) -> Next {
        let Some(sent) = self.out.sent_at(retry.seq, retry.part) else {
            return Next::Done;
        };
        let name = sent.shard.clone().unwrap_or_default();
        let shard = state.shard_named(&name);
        let Some((shard, last)) = shard.and_then(|s| Some((s, s.index_of(sent.node)?))) else {
            self.out.fail(retry.seq, ClientError::ShardLeft(name));
            return Next::Done;
        };
        sent.retries_left -= 1;
        match &retry.how {
            Resend::After(first) => Next::To(shard.nodes[last].clone(), Some(first.clone())),
            _ => Next::To(shard.nodes[shard.retry_index(last)].clone(), None),
        }
    }

    /// Where part `part` of request `seq` goes after `redirect` (`waited`: it has waited its
    /// backoff already). A MOVED is told to the pool, whose routing follows at once.
    fn follow(
        &mut self,
        state: &PoolState,
        (seq, part): (u64, usize),
        redirect: &Redirect,
        waited: bool,
        now: Instant,
    ) -> Next {
        let cluster = self.pool.cluster.as_ref();
        if let Some(cluster) = cluster.filter(|_| !waited) {
            cluster.redirected(match redirect {
                Redirect::Moved { .. } => RedirectKind::Moved,
                Redirect::Ask { .. } => RedirectKind::Ask,
                Redirect::Later => RedirectKind::Later,
            });
        }
        let Some(sent) = self.out.sent_at(seq, part) else {
            return Next::Done;
        };
        let last = state.nodes().find(|n| n.id() == sent.node).cloned();
        let Some(redirects) = &mut sent.redirects else {
            return Next::Done;
        };
        let wait = match waited {
            true => Duration::ZERO,
            false => backoff(redirect, redirects.hops),
        };
        if now + wait > redirects.deadline {
            let node = last.map_or_else(|| "cluster".into(), |n| n.label().clone());
            let failure = Failure::Timeout(self.pool.config.timeout);
            let error = ClientError::Backend(BackendError { node, failure });
            self.out.fail(seq, error);
            return Next::Done;
        }
        if !waited {
            redirects.hops += 1;
        }
        if !wait.is_zero() {
            return Next::Wait(now + wait);
        }
        let (to, first) = match redirect {
            Redirect::Later => {
                return match last {
                    Some(node) => Next::To(node, None),
                    None => {
                        let gone = ClientError::Refused("the cluster node left the cluster".into());
                        self.out.fail(seq, gone);
                        Next::Done
                    }
                };
            }
            // The pool heard of it as it came in.
            Redirect::Moved { to, .. } => (named(to, last.as_deref()), None),
            Redirect::Ask { to, .. } => {
                (named(to, last.as_deref()), Some(Bytes::from_static(ASKING)))
            }
        };
        match state.nodes().find(|n| n.addr == to) {
            Some(node) => Next::To(node.clone(), first),
            None => {
                // A node the cluster has not been heard to list yet.
                if let Some(cluster) = cluster {
                    cluster.refresh(RefreshCause::UnknownNode);
                }
                Next::Wait(now + UNKNOWN_NODE_WAIT)
            }
        }
    }

    /// Wakes the session at `at`, to send what waits until then.
    fn wake_at(&self, at: Instant) {
        let listing = self.listing.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            listing.inbox().wake();
        });
    }
}

/// `payload`, a blocking command, with its timeout argument made what is left at `now` of the
/// wait it began at `blocking.since` (at least 1 ms: 0 would be for ever); and that wait.
fn what_is_left(
    payload: &Bytes,
    blocking: &Blocking,
    now: Instant,
    limits: &Limits,
) -> (Bytes, Option<Duration>) {
    let (Some(wait), at) = (blocking.wait, blocking.timeout_at) else {
        return (payload.clone(), None);
    };
    let waited = now.saturating_duration_since(blocking.since);
    let left = wait.saturating_sub(waited).max(Duration::from_millis(1));
    let mut frame = BytesMut::from(&payload[..]);
    let Ok(Some(req)) = RequestParser::default().parse(&mut frame, limits, true) else {
        return (payload.clone(), Some(left));
    };
    let value = match at.millis {
        true => left.as_millis().to_string(),
        false => format!("{:.3}", left.as_secs_f64()),
    };
    let args = (0..req.argc()).map(|i| match i == at.index {
        true => value.as_bytes(),
        false => req.arg(i),
    });
    let mut out = BytesMut::with_capacity(payload.len() + 8);
    encode::command(&mut out, args);
    (out.freeze(), Some(left))
}

/// How long a part waits before following `redirect`, its `hops`-th: MOVED and ASK at once the
/// first time (the usual case: one slot moved), then after a backoff that doubles from 5 ms up
/// to 100 ms (a migration can bounce a request between two nodes for a moment); TRYAGAIN and
/// CLUSTERDOWN always after the backoff.
fn backoff(redirect: &Redirect, hops: u32) -> Duration {
    let step = match redirect {
        Redirect::Later => hops + 1,
        Redirect::Moved { .. } | Redirect::Ask { .. } => hops,
    };
    match step {
        0 => Duration::ZERO,
        n => Duration::from_millis((5u64 << (n - 1).min(5)).min(100)),
    }
}

/// The node a redirect names: an empty host is the host of the node that answered.
fn named(to: &Address, answered: Option<&Node>) -> Address {
    match (to.host.is_empty(), answered) {
        (true, Some(node)) => Address {
            host: node.addr.host.clone(),
            port: to.port,
        },
        _ => to.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocking_command_sent_again_waits_what_is_left_of_its_timeout() {
        use crate::server::outbox::TimeoutArg;
        let frame = |args: &[&str]| {
            let mut out = BytesMut::new();
            encode::command(&mut out, args.iter().map(|a| a.as_bytes()));
            out.freeze()
        };
        let since = Instant::now();
        let blocking = |wait: Option<u64>, index: usize, millis: bool| Blocking {
            wait: wait.map(Duration::from_millis),
            since,
            timeout_at: TimeoutArg { index, millis },
        };
        let limits = Limits::default();
        let later = since + Duration::from_millis(600);
        let blpop = frame(&["BLPOP", "a", "b", "2"]);
        let (payload, wait) = what_is_left(&blpop, &blocking(Some(2000), 3, false), later, &limits);
        assert_eq!(payload, frame(&["BLPOP", "a", "b", "1.400"]));
        assert_eq!(wait, Some(Duration::from_millis(1400)));
        let xread = frame(&["XREAD", "BLOCK", "1000", "STREAMS", "s", "$"]);
        let (payload, _) = what_is_left(&xread, &blocking(Some(1000), 2, true), later, &limits);
        assert_eq!(
            payload,
            frame(&["XREAD", "BLOCK", "400", "STREAMS", "s", "$"])
        );
        // Past its timeout: the least wait, not 0, which would be for ever.
        let long_after = since + Duration::from_secs(5);
        let (payload, _) =
            what_is_left(&blpop, &blocking(Some(2000), 3, false), long_after, &limits);
        assert_eq!(payload, frame(&["BLPOP", "a", "b", "0.001"]));
        // Waiting for ever: sent as it was.
        let forever = frame(&["BLPOP", "a", "0"]);
        let (payload, wait) = what_is_left(&forever, &blocking(None, 2, false), later, &limits);
        assert_eq!((payload, wait), (forever, None));
    }

    #[test]
    fn the_backoff_starts_at_the_second_hop_and_stays_bounded() {
        let to = Address {
            host: "h".into(),
            port: 1,
        };
        let moved = Redirect::Moved { slot: 1, to };
        let waits: Vec<u64> = (0..8)
            .map(|h| backoff(&moved, h).as_millis() as u64)
            .collect();
        assert_eq!(waits, [0, 5, 10, 20, 40, 80, 100, 100]);
        assert_eq!(backoff(&Redirect::Later, 0), Duration::from_millis(5));
    }
}
