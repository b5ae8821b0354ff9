//! The Redis side of a session: each RESP request is matched once against the command table
//! and handed, with the pool's current snapshot, to the routing function of its kind (`route`,
//! `keyspace`, `local`, `transaction`, `pubsub`), which decides without I/O; this module
//! carries out what they decide and holds the client's reserved WATCH connection and
//! subscriber connections.

mod cached;
mod client;
mod cluster;
mod context;
mod info;
mod keyspace;
mod local;
mod merge;
mod pubsub;
mod route;
mod subscribers;
mod tracking;
mod transaction;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::backend::{Node, NodeId, Profile, Reserved, Topic};
use crate::cache::NearCache;
use crate::command::{
    self, Class, ClassCounts, Command, Fanout, Kind, LocalCommand, PubSubCommand,
};
use crate::metrics::CloseReason;
use crate::protocol::resp::{Request, RequestParser};
use crate::server::error::ClientError;
use crate::server::plan::Plan;
use crate::server::session::{Context, Frontend};
use crate::server::timing::Recorded;
use crate::slowlog::{self, Slow};
use crate::topology::{Client, Pool, PoolState, Second};
use context::{ClientState, Local, Replies};
use pubsub::{Change, PubSub, Routed};
use subscribers::Subscribers;
use transaction::{Conn, Step, Transaction};

/// A Redis client's parser and what the proxy remembers about it.
pub(super) struct Resp {
    parser: RequestParser,
    client: ClientState,
    /// Allocated when the client starts a transaction or subscribes, dropped once it is in
    /// neither: most clients never are, and an idle client's memory counts.
    modes: Option<Box<Modes>>,
}

/// A client's transaction and subscriptions.
#[derive(Default)]
struct Modes {
    tx: Transaction,
    pubsub: PubSub,
    /// The connection WATCH reserved on its shard's master, kept until the transaction ends.
    watch: Option<(Arc<Node>, Reserved)>,
    subscribers: Subscribers,
    /// Subscriptions not confirmed yet by every shard: the request's number, and what it
    /// added, taken back if a server refuses it.
    unconfirmed: Vec<(u64, Topic, Vec<Bytes>)>,
    /// Keys written by the transaction queued (`None`: every key), for the near cache.
    written: Vec<Option<Bytes>>,
}

impl Modes {
    fn is_empty(&self) -> bool {
        self.tx.is_idle()
            && !self.pubsub.active()
            && self.watch.is_none()
            && self.subscribers.is_empty()
    }
}

impl Resp {
    fn modes(&mut self) -> &mut Modes {
        self.modes.get_or_insert_default()
    }

    fn in_multi(&self) -> bool {
        self.modes.as_ref().is_some_and(|m| m.tx.in_multi())
    }

    fn subscribed(&self) -> bool {
        self.modes.as_ref().is_some_and(|m| m.pubsub.active())
    }

    fn watching(&self) -> bool {
        self.modes.as_ref().is_some_and(|m| m.watch.is_some())
    }

    /// Lets go of the modes once the client is in none.
    fn settle(&mut self) {
        if self.modes.as_ref().is_some_and(|m| m.is_empty()) {
            self.modes = None;
        }
    }
}

impl Frontend for Resp {
    fn new(pool: &Pool) -> Resp {
        let open = pool.config.redis.users.is_empty();
        Resp {
            parser: RequestParser::default(),
            client: ClientState::new(open),
            modes: None,
        }
    }

    fn handle_input(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> bool {
        self.handle_batch(cx, buf)
    }

    fn subscriber_lost(&mut self, cx: &mut Context<'_>) {
        if let Some(modes) = self.modes.as_deref_mut() {
            modes
                .subscribers
                .rehome(cx, &modes.pubsub, self.client.resp3);
        }
    }

    fn subscription_dropped(&mut self, cx: &mut Context<'_>, from: NodeId, notice: &[u8]) {
        if let Some(modes) = self.modes.as_deref_mut() {
            (modes.subscribers).follow(cx, &modes.pubsub, (from, notice), self.client.resp3);
        }
    }

    fn refused(&mut self, seq: u64) {
        let Some(modes) = self.modes.as_deref_mut() else {
            return;
        };
        let Some(at) = modes.unconfirmed.iter().position(|(s, ..)| *s == seq) else {
            return;
        };
        let (_, topic, names) = modes.unconfirmed.swap_remove(at);
        modes.pubsub.refused(topic, &names);
        if !modes.pubsub.active() {
            modes.subscribers.clear();
        }
        self.settle();
    }

    fn log_slow(&self, pool: &Pool, listing: &Client, request: Recorded, took: Duration) {
        let mut frame = BytesMut::from(&request.frame[..]);
        let Ok(Some(req)) =
            RequestParser::default().parse(&mut frame, &pool.config.clients.requests, true)
        else {
            return;
        };
        let args: Vec<&[u8]> = (0..req.argc()).map(|i| req.arg(i)).collect();
        let Some(args) = slowlog::redacted(&args) else {
            return;
        };
        pool.slowlog.record(Slow {
            took,
            args: &args,
            // Redis shows a Unix socket's clients as `path:0`.
            client: match listing.addr {
                Some(peer) => peer.to_string(),
                None => format!("{}:0", pool.applied().listen),
            },
            name: (listing.name().as_deref())
                .map(Bytes::copy_from_slice)
                .unwrap_or_default(),
            shard: match request.shard {
                None => String::new(),
                Some((name, 0)) => name.to_string(),
                Some((name, more)) => format!("{name}+{more}"),
            },
            backend: request.backend,
        });
    }

    fn is_mid_request(&self, buf: &BytesMut) -> bool {
        self.parser.is_mid_request(buf)
    }

    fn is_listening(&self) -> bool {
        self.subscribed()
    }

    fn hears_pushes(&self) -> bool {
        self.subscribed() || self.client.tracking.is_some()
    }

    fn wants(&self, message: &[u8]) -> bool {
        self.modes.as_ref().is_some_and(|m| m.pubsub.wants(message))
    }

    fn invalidated(&mut self, cx: &mut Context<'_>, changed: &[u8]) {
        let resp3 = self.client.resp3;
        if let Some(message) = tracking::message(changed, resp3, self.subscribed()) {
            cx.out.push_message(message);
        }
    }

    fn profile(&self) -> Profile {
        Profile {
            db: self.client.db,
            resp3: self.client.resp3,
        }
    }
}

impl Resp {
    /// Parses and dispatches every complete request in `buf`. Returns true when the session must
    /// close after the queued replies (QUIT, malformed input).
    fn handle_batch(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> bool {
        let state = cx.pool.state();
        let mut counts = ClassCounts::default();
        let mut last = None;
        let closing = loop {
            // The rest waits in `buf` until there is room for more requests.
            if !cx.has_room() {
                break false;
            }
            // AUTH (or HELLO … AUTH) lifts the bound on unauthenticated requests.
            let authenticated = self.client.authenticated;
            match (self.parser).parse(buf, &cx.pool.config.clients.requests, authenticated) {
                Ok(Some(req)) => {
                    let cmd = command::lookup(req.arg(0));
                    counts.count(cmd.map_or(Class::Unknown, Command::class));
                    last = cmd.or(last);
                    if cmd.is_some_and(|c| c.kind == Kind::Local(LocalCommand::Client)) {
                        // CLIENT LIST and INFO show the client as it is now.
                        self.publish_facts(cx.listing, last);
                    }
                    cx.record(req.frame());
                    if self.dispatch(cx, &state, req, cmd) {
                        break true;
                    }
                }
                Ok(None) => break false,
                Err(e) => {
                    cx.out.error(ClientError::Protocol(e.to_string()));
                    break true;
                }
            }
        };
        cx.pool.metrics.count_requests(&counts);
        self.settle();
        self.publish_facts(cx.listing, last);
        closing
    }

    /// Tells the pool's list of clients what this client is now (CLIENT LIST), once per batch
    /// of requests; `last` is the last command read.
    fn publish_facts(&self, listing: &Client, last: Option<&'static Command>) {
        let mut facts = listing.facts();
        facts.db = self.client.db;
        facts.resp3 = self.client.resp3;
        let modes = self.modes.as_deref();
        facts.update_rare(|rare| {
            rare.subscriptions = modes.map_or([0; 3], |m| m.pubsub.counts());
            rare.multi = modes.and_then(|m| m.tx.queued());
        });
        if let Some(last) = last {
            facts.last_command = Some(last);
        }
        facts.last_active = Second::now();
    }

    /// Routes one request, of command `cmd` (`None`: one the proxy does not know), and drops
    /// its reply if the client said CLIENT REPLY OFF or SKIP. Returns true for QUIT.
    fn dispatch(
        &mut self,
        cx: &mut Context<'_>,
        state: &PoolState,
        req: Request,
        cmd: Option<&Command>,
    ) -> bool {
        let first = cx.out.next_seq();
        let replies = self.client.replies;
        // CLIENT REPLY, and RESET, which turns replies on again.
        let is_reply = cmd.is_some_and(|c| c.kind == Kind::Local(LocalCommand::Reset))
            || is_client_about_next(cmd, &req, b"REPLY");
        if !is_reply && replies == Replies::SkipNext {
            self.client.replies = Replies::On;
        }
        // Subscription confirmations are pushes, like the messages: Redis sends them whatever
        // CLIENT REPLY says.
        let pushes = cmd.is_some_and(|c| {
            matches!(
                c.kind,
                Kind::PubSub(PubSubCommand::Subscribe(_) | PubSubCommand::Unsubscribe(_))
            )
        });
        let caching = is_client_about_next(cmd, &req, b"CACHING");
        let quit = self.carry_out(cx, state, req, cmd);
        if let (Some(mode), false) = (&mut self.client.tracking, caching) {
            mode.command_done();
        }
        // As Redis: CLIENT REPLY OFF and SKIP are not answered themselves, ON is.
        let muted = match is_reply {
            true => self.client.replies != Replies::On,
            false => replies != Replies::On && !pushes,
        };
        if muted {
            cx.out.mute_from(first);
        }
        quit
    }

    /// Carries out one request. Returns true for QUIT.
    fn carry_out(
        &mut self,
        cx: &mut Context<'_>,
        state: &PoolState,
        req: Request,
        cmd: Option<&Command>,
    ) -> bool {
        let name = req.arg(0);
        let is = |which| cmd.is_some_and(|c| c.kind == Kind::Local(which));
        let quit = is(LocalCommand::Quit);
        // As Redis, RESET is carried out at once inside MULTI (and before AUTH, and while
        // subscribed).
        if self.in_multi() && !quit && !is(LocalCommand::Reset) {
            let mut own = cached::OwnChanges::new();
            if let (Some(cache), Some(cmd)) = (&cx.pool.near_cache, cmd) {
                let to = written_to(cx, cache);
                let pending = &mut self.modes().written;
                own = cached::queued(&to, cx.out, pending, (cmd, &req));
            }
            let step = transaction::queue(&mut self.modes().tx, state, cmd, &req);
            self.transaction_step(cx, state, step);
            own.iter().for_each(|changed| self.invalidated(cx, changed));
            return false;
        }
        let plan = match self.check(name, cmd, &req) {
            Err(e) => Plan::Fail(e),
            Ok(cmd) => match cmd.kind {
                Kind::Local(which) => {
                    if which == LocalCommand::Reset {
                        // What RESET leaves beyond the client's own state: MULTI, WATCH (its
                        // reserved connection closes), every subscription.
                        self.modes = None;
                    }
                    let (subscribed, watching) = (self.subscribed(), self.watching());
                    let cx = Local {
                        client: &mut self.client,
                        pool: cx.pool,
                        listing: cx.listing,
                        subscribed,
                        watching,
                    };
                    local::run(cx, state, which, &req)
                }
                _ if !self.client.authenticated => Plan::Fail(ClientError::NoAuth),
                Kind::Keyed => route::keyed(state, cmd, &req, cx.pool.config.read_from),
                Kind::Split(merge) => {
                    let depth = cx.pool.config.max_reply_depth;
                    route::split(state, cmd, merge, &req, depth)
                }
                Kind::Script(call) => route::script(state, &cx.pool.scripts, cmd, call, &req),
                Kind::Keyspace(fanout) => {
                    let (config, scripts) = (&cx.pool.config, &cx.pool.scripts);
                    let plan = keyspace::route(state, config, scripts, fanout, &req);
                    // A CONFIG SET sent to the servers sets the proxy's slow log too.
                    let is_set = req.argc() > 3 && req.arg(1).eq_ignore_ascii_case(b"SET");
                    if fanout == Fanout::Config && is_set && matches!(plan, Plan::Gather(..)) {
                        for i in (2..req.argc() - 1).step_by(2) {
                            cx.pool.slowlog.configure(req.arg(i), req.arg(i + 1));
                        }
                    }
                    plan
                }
                Kind::Blocking(at) => route::blocking(state, cmd, &req, at),
                Kind::Transaction(which) => {
                    let step = transaction::run(&mut self.modes().tx, state, cmd, which, &req);
                    self.transaction_step(cx, state, step);
                    return false;
                }
                Kind::PubSub(which) => match pubsub::route(state, &cx.pool.config, which, &req) {
                    Routed::Plan(plan) => plan,
                    Routed::Change { topic, subscribe } => {
                        let resp3 = self.client.resp3;
                        let subscriptions = &mut self.modes().pubsub;
                        let change =
                            pubsub::change(subscriptions, state, topic, subscribe, &req, resp3);
                        self.change_subscriptions(cx, state, change);
                        return false;
                    }
                },
            },
        };
        // What follows leaves a refused request as it is.
        let failed = plan_failed(&plan);
        let cmd = cmd.filter(|_| !failed);
        if let Some(cmd) = cmd.filter(|c| matches!(c.kind, Kind::Keyed | Kind::Split(_))) {
            let keys = || route::key_args(cmd, &req);
            cx.pool.hot_keys.count(cx.worker(), keys, cx.now());
        }
        let tracks = self.client.tracking.is_some();
        // The client is told of a key if its server does not track the read after all.
        let reader = (self.client.tracking.as_ref())
            .filter(|mode| mode.tracks_read())
            .map(|_| cx.listing.id);
        let (plan, tracked) = match (&cx.pool.near_cache, cmd) {
            (Some(cache), Some(cmd)) => match cmd.name {
                "MGET" => {
                    let mget = cached::mget(cx, (cache, state), &req, (self.profile(), reader));
                    mget.unwrap_or((plan, false))
                }
                _ => {
                    let plan = cached::read(cache, (cmd, &req), plan, reader);
                    let tracked = tracks && cached::tracked(&plan, state, cache);
                    (plan, tracked)
                }
            },
            _ => (plan, false),
        };
        if let (Some(mode), Some(cmd)) = (&self.client.tracking, cmd) {
            tracking::read(cx, mode, (cmd, &req), tracked);
        }
        let mut own = cached::OwnChanges::new();
        if let (Some(cache), Some(cmd)) = (&cx.pool.near_cache, cmd) {
            own = cached::written(&written_to(cx, cache), cx.out, cmd, &req);
        }
        cx.execute(state, plan, self.profile());
        // A client that tracks what it writes hears of it right after the reply, as from a
        // server.
        own.iter().for_each(|changed| self.invalidated(cx, changed));
        // A client guessing passwords is closed once its error reply is written.
        let max = cx.pool.config.redis.auth_max_failures;
        let guessing = max > 0 && self.client.auth_failures >= max;
        if guessing && !quit {
            cx.pool.metrics.closed(CloseReason::AuthFailures);
        }
        quit || guessing
    }

    /// The command `name` names, if the client may run it now.
    fn check<'c>(
        &self,
        name: &[u8],
        cmd: Option<&'c Command>,
        req: &Request,
    ) -> Result<&'c Command, ClientError> {
        let Some(cmd) = cmd else {
            if !self.client.authenticated {
                return Err(ClientError::NoAuth);
            }
            let shown = String::from_utf8_lossy(name).to_string();
            return Err(match command::unsupported_reason(name) {
                Some(why) => ClientError::Unsupported {
                    command: shown,
                    why: why.into(),
                },
                None => ClientError::unknown_command(name, req.args().skip(1)),
            });
        };
        if !cmd.arity_ok(req.argc()) {
            return Err(ClientError::WrongArity(cmd.name.to_ascii_lowercase()));
        }
        let allowed_while_subscribed = matches!(
            cmd.kind,
            Kind::PubSub(PubSubCommand::Subscribe(_) | PubSubCommand::Unsubscribe(_))
                | Kind::Local(LocalCommand::Ping | LocalCommand::Quit | LocalCommand::Reset)
        );
        if self.subscribed() && !self.client.resp3 && !allowed_while_subscribed {
            return Err(ClientError::Exact(format!(
                "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
                cmd.name.to_ascii_lowercase()
            ).into()));
        }
        Ok(cmd)
    }

    /// Carries out a transaction step on the client's pinned connection.
    fn transaction_step(&mut self, cx: &mut Context<'_>, state: &PoolState, step: Step) {
        let (conn, requests, keep) = match step {
            Step::Plan(plan) => return cx.execute(state, plan, self.profile()),
            Step::Abandon(plan) => {
                // Closing the WATCH connection unwatches.
                self.modes().watch = None;
                return cx.execute(state, plan, self.profile());
            }
            Step::Send {
                conn,
                requests,
                keep,
            } => (conn, requests, keep),
        };
        let (node, reserved) = match (self.modes().watch.take(), conn) {
            (Some(held), _) => held,
            (None, Conn::Master(shard)) => {
                let master = state.shards[shard].master().clone();
                let reserved = master.reserve(cx.worker(), self.profile());
                (master, reserved)
            }
            (None, Conn::Watching) => return cx.out.error(ClientError::NoNodeAnswered),
        };
        let parts = requests.len();
        cx.send_in_order(&reserved, requests, merge::last(parts));
        if keep {
            self.modes().watch = Some((node, reserved));
        } else {
            cx.hold_for_next(node, reserved);
        }
    }

    /// Applies a change of subscriptions to the subscriber connections, one per shard. The
    /// client's confirmations wait until every shard has confirmed its part.
    fn change_subscriptions(
        &mut self,
        cx: &mut Context<'_>,
        state: &PoolState,
        mut change: Change,
    ) {
        let (seq, answered) = (cx.out.next_seq(), cx.out.first_unanswered());
        let resp3 = self.client.resp3;
        let modes = self.modes();
        let parts = modes.subscribers.change(cx, state, &mut change, resp3);
        if !modes.pubsub.active() {
            // Nothing left: the subscriber connections close once they have confirmed.
            modes.subscribers.clear();
        }
        modes.unconfirmed.retain(|(seq, ..)| *seq >= answered);
        if parts > 0 && !change.added.is_empty() {
            modes.unconfirmed.push((seq, change.topic, change.added));
        }
        match parts {
            0 => cx.out.ready(change.reply),
            _ => cx.out.gathering(merge::confirmed(parts, change.reply)),
        }
    }
}

/// Whether the request is `CLIENT <sub> <one argument>` (REPLY, CACHING: about the next
/// command).
fn is_client_about_next(cmd: Option<&Command>, req: &Request, sub: &[u8]) -> bool {
    cmd.is_some_and(|c| c.kind == Kind::Local(LocalCommand::Client))
        && req.argc() == 3
        && req.arg(1).eq_ignore_ascii_case(sub)
}

/// Where a write of this client's through the proxy is invalidated.
fn written_to<'a>(cx: &Context<'a>, cache: &'a NearCache) -> cached::Written<'a> {
    cached::Written {
        cache,
        clients: cx.pool.client_tracking.as_deref(),
        writer: cx.listing.id,
    }
}

/// Whether the proxy answers `plan` with an error, before any backend sees the request.
fn plan_failed(plan: &Plan) -> bool {
    matches!(plan, Plan::Fail(_) | Plan::FailAfter(..))
}

#[cfg(test)]
mod tests;
