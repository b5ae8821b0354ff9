//! The narrow seam between a session and its frontend: the [`Context`] a frontend sees while
//! it handles input (the pool, the client's entry in the pool's list, the replies owed, room
//! for more, and the carrying out of plans), never the session itself.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::plans::Held;
use crate::backend::Mailbox;
use crate::server::outbox::Outbox;
use crate::server::timing::Recorded;
use crate::topology::{Client, Pool};

/// Until a client's first reply shows how large its replies are, each request in flight is
/// taken to be owed this share of `max_client_output_bytes`: a first pipeline of GETs of large
/// values does not have the node make a gigabyte of replies at once.
const FIRST_REPLIES: usize = 16;

/// What a frontend sees of its session while it handles input.
pub(in crate::server) struct Context<'s> {
    pub pool: &'s Arc<Pool>,
    /// The client in the pool's list.
    pub listing: &'s Arc<Client>,
    /// The replies owed to the client, in request order.
    pub out: &'s mut Outbox,
    pub(super) carrier: &'s mut Carrier,
}

/// What carries out a session's plans keeps: what it keeps of the requests not answered yet.
#[derive(Default)]
pub(super) struct Carrier {
    /// Allocated on first use and dropped when a burst ends with it empty: an idle client
    /// holds none.
    pub(super) in_flight: Option<Box<InFlight>>,
}

/// What a session keeps of the requests it has not answered yet, and of their reading.
pub(super) struct InFlight {
    /// Reserved connections; dropped with the session, they close.
    pub(super) held: Vec<Held>,
    /// Requests kept in case they turn out slow (when the pool keeps a slow log and the
    /// frontend records them).
    pub(super) recorded: VecDeque<Recorded>,
    /// When the requests being handled were read: a cluster's parts are bounded from then.
    pub(super) read_at: Instant,
    /// Reads the near cache answered and did not, not yet counted in its metrics.
    pub(super) cache_reads: [u32; 2],
}

impl Carrier {
    pub(super) fn in_flight_mut(&mut self) -> &mut InFlight {
        self.in_flight.get_or_insert_with(|| {
            Box::new(InFlight {
                held: Vec::new(),
                recorded: VecDeque::new(),
                read_at: Instant::now(),
                cache_reads: [0; 2],
            })
        })
    }

    /// The requests kept in case they turn out slow, if any are.
    pub(super) fn recorded(&mut self) -> Option<&mut VecDeque<Recorded>> {
        self.in_flight.as_mut().map(|f| &mut f.recorded)
    }

    /// Whether a blocking command of the client's waits for its reply. As on one server,
    /// nothing the client sent after it is carried out until it is answered: pipelined
    /// blocking commands run one at a time, in order, each on the one reserved connection.
    pub(super) fn is_blocked(&self) -> bool {
        (self.in_flight.as_ref()).is_some_and(|f| f.held.iter().any(|h| h.is_blocked()))
    }

    /// Whether the session holds reserved connections.
    pub(super) fn holds_any(&self) -> bool {
        self.in_flight.as_ref().is_some_and(|f| !f.held.is_empty())
    }
}

impl Context<'_> {
    /// Keeps `frame`, the request about to be carried out, until it is answered, in case it
    /// turns out slow.
    pub(in crate::server) fn record(&mut self, frame: &Bytes) {
        if self.pool.slowlog.is_on() {
            let seq = self.out.next_seq();
            self.carrier.in_flight_mut().recorded.push_back(Recorded {
                seq,
                frame: frame.clone(),
                shard: None,
                backend: Duration::ZERO,
            });
        }
    }

    /// Whether the client may have more requests sent: fewer than `max_pipeline` in flight
    /// (a request that timed out counts until its node has answered it), no blocking command
    /// waiting, no request redirected by a cluster node still unanswered, and its unread replies together with those its requests in flight are expected
    /// to bring no more than `max_client_output_bytes`. Requests read beyond that wait
    /// unparsed, so what a client can make the proxy and its backends hold is bounded.
    pub(in crate::server) fn has_room(&self) -> bool {
        let c = &self.pool.config.clients;
        let in_flight = self.out.pending() + self.listing.inbox().late();
        if in_flight >= c.max_pipeline || self.carrier.is_blocked() || self.out.behind_redirects() {
            return false;
        }
        let owed = self.out.owed();
        if in_flight == 0 {
            return owed <= c.max_output_bytes;
        }
        let each = (self.out.typical_reply()).unwrap_or(c.max_output_bytes / FIRST_REPLIES);
        owed + in_flight.saturating_mul(each) <= c.max_output_bytes
    }

    /// A read looked up in the near cache: answered from it (`hit`) or not.
    pub(in crate::server) fn cache_read(&mut self, hit: bool) {
        self.carrier.in_flight_mut().cache_reads[usize::from(!hit)] += 1;
    }

    /// When the requests being handled were read.
    pub(in crate::server) fn now(&self) -> Instant {
        (self.carrier.in_flight.as_ref()).map_or_else(Instant::now, |f| f.read_at)
    }

    /// The worker thread the session runs on.
    pub(in crate::server) fn worker(&self) -> usize {
        self.listing.worker as usize
    }
}
