//! What a command the proxy answers itself may look at and change: the client's own state
//! (authenticated, RESP3, database, CLIENT REPLY), its entry in the pool's list (its name) and
//! the pool; and the small helpers those commands share.

use std::sync::Arc;

use bytes::Bytes;

use crate::server::error::ClientError;
use crate::server::plan::Plan;
use crate::topology::{Client, Pool};

/// What the proxy remembers about a client.
#[derive(Debug)]
pub(super) struct ClientState {
    pub authenticated: bool,
    /// After HELLO 3: the client reads RESP3 and its backend requests use RESP3 connections.
    pub resp3: bool,
    /// Failed AUTH attempts on this connection (as many as `auth_max_failures` allows).
    pub auth_failures: u16,
    /// CLIENT REPLY: whether replies are sent.
    pub replies: Replies,
    /// The database SELECT chose.
    pub db: u16,
    /// CLIENT TRACKING, while it is on.
    pub tracking: Option<Box<TrackingMode>>,
}

/// What CLIENT REPLY asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Replies {
    On,
    Off,
    /// None for the next command, then on again.
    SkipNext,
}

impl ClientState {
    pub(super) fn new(authenticated: bool) -> ClientState {
        ClientState {
            authenticated,
            resp3: false,
            auth_failures: 0,
            replies: Replies::On,
            db: 0,
            tracking: None,
        }
    }
}

/// How a client tracks, while it does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct TrackingMode {
    /// The client its invalidations go to (0: itself).
    pub(super) redirect: u64,
    pub(super) bcast: bool,
    pub(super) prefixes: Vec<Bytes>,
    pub(super) optin: bool,
    pub(super) optout: bool,
    pub(super) noloop: bool,
    /// CLIENT CACHING YES or NO, for the next command.
    pub(super) caching: Option<bool>,
}

impl TrackingMode {
    /// Whether a read the client makes now is tracked for it (not in BCAST, where its
    /// prefixes are); takes the CLIENT CACHING it said for this command.
    pub(super) fn tracks_read(&self) -> bool {
        !self.bcast
            && match (self.optin, self.optout) {
                (true, _) => self.caching == Some(true),
                (_, true) => self.caching != Some(false),
                _ => true,
            }
    }

    /// A command other than CLIENT CACHING ran: what CLIENT CACHING said is spent.
    pub(super) fn command_done(&mut self) {
        self.caching = None;
    }
}

/// What a local command may look at and change.
pub(super) struct Local<'a> {
    pub client: &'a mut ClientState,
    pub pool: &'a Pool,
    /// The client in the pool's list: its id (CLIENT ID, HELLO), address and name.
    pub listing: &'a Arc<Client>,
    /// Subscribed to Pub/Sub (RESP2 PING answers as a message).
    pub subscribed: bool,
    /// Watching keys (WATCH) on a connection of its current database.
    pub watching: bool,
}

pub(super) fn ok() -> Plan {
    Plan::Reply(Bytes::from_static(b"+OK\r\n"))
}

/// An error reply in the server's own words.
pub(super) fn exact(text: &str) -> Plan {
    Plan::Fail(ClientError::Exact(text.to_string().into()))
}

/// Whether a client name is one Redis accepts: no spaces, newlines or special characters.
pub(super) fn valid_name(name: &[u8]) -> bool {
    name.iter().all(|&c| (b'!'..=b'~').contains(&c))
}
