//! A pool's clients, as CLIENT LIST and CLIENT INFO show them, and what the pool asks of them:
//! to leave once answered (shutdown, a reload that replaced the pool) or to close now (CLIENT
//! KILL). Each session refreshes its own entry once per batch
//! of requests it reads, under the entry's own lock: nothing here is on a request's path, and
//! the pool-wide lock is taken when a client comes and goes, or is listed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use crate::backend::{Inbox, Mailbox, Node};
use crate::command::Command;

/// One client of the pool.
#[derive(Debug)]
pub struct Client {
    pub id: u64,
    /// Its address, and the proxy's end of the connection (none on a Unix socket).
    pub addr: Option<SocketAddr>,
    pub laddr: Option<SocketAddr>,
    /// The connection's file descriptor.
    pub fd: i32,
    /// The worker thread that serves the client: its requests use that worker's backend
    /// connections.
    pub worker: u32,
    pub since: Second,
    facts: Mutex<Facts>,
    signals: AtomicU8,
    /// The session's inbox: its replies arrive here, and the pool's requests wake it here.
    /// Kept in the entry, so an idle client's inbox is no allocation of its own.
    inbox: Inbox,
    /// Killed: no longer listed, though its session may not have ended yet.
    killed: AtomicBool,
}

/// Where a client's blocking command waits: the node, and the server's id of the reserved
/// connection (0 until it is connected), to which CLIENT UNBLOCK is passed on.
#[derive(Clone, Debug)]
pub struct BlockedOn {
    pub node: Arc<Node>,
    pub connection: Arc<AtomicU64>,
}

/// What a client's session last said of it.
#[derive(Clone, Debug)]
pub struct Facts {
    pub db: u16,
    pub resp3: bool,
    /// The last command read (none before any).
    pub last_command: Option<&'static Command>,
    pub last_active: Second,
    /// What few clients have, boxed so that the entry of a client without any stays small.
    rare: Option<Box<RareFacts>>,
}

/// What a client's session last said of it that most clients never have.
#[derive(Clone, Debug)]
pub struct RareFacts {
    pub name: Option<Arc<[u8]>>,
    /// The user it authenticated as, unless `default`.
    pub user: Option<Arc<str>>,
    /// Subscriptions: channels, patterns, shard channels.
    pub subscriptions: [u32; 3],
    /// In MULTI: the commands queued.
    pub multi: Option<u32>,
    /// The connection a blocking command of the client's waits on, while it does.
    pub blocked_on: Option<BlockedOn>,
}

/// A client's rare facts while it has none.
const NO_RARE_FACTS: RareFacts = RareFacts {
    name: None,
    user: None,
    subscriptions: [0; 3],
    multi: None,
    blocked_on: None,
};

impl RareFacts {
    fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.user.is_none()
            && self.subscriptions == [0; 3]
            && self.multi.is_none()
            && self.blocked_on.is_none()
    }
}

impl Facts {
    pub fn rare(&self) -> &RareFacts {
        self.rare.as_deref().unwrap_or(&NO_RARE_FACTS)
    }

    /// Changes the rare facts, boxing them only while any is set.
    pub fn update_rare(&mut self, update: impl FnOnce(&mut RareFacts)) {
        match &mut self.rare {
            Some(rare) => {
                update(rare);
                if rare.is_empty() {
                    self.rare = None;
                }
            }
            None => {
                let mut rare = NO_RARE_FACTS;
                update(&mut rare);
                if !rare.is_empty() {
                    self.rare = Some(Box::new(rare));
                }
            }
        }
    }
}

/// A moment to the second, counted from when the proxy first read its clock: 4 bytes where an
/// `Instant` takes 16, in every client's entry. CLIENT LIST's age and idle are whole seconds,
/// as Redis counts them.
#[derive(Clone, Copy, Debug)]
pub struct Second(u32);

impl Second {
    pub fn now() -> Second {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        let elapsed = ORIGIN.get_or_init(Instant::now).elapsed().as_secs();
        Second(u32::try_from(elapsed).unwrap_or(u32::MAX))
    }

    /// Whole seconds from `self` to `later` (0 if `later` is earlier).
    pub fn until(self, later: Second) -> u64 {
        u64::from(later.0.saturating_sub(self.0))
    }
}

/// What the pool asked of a client since it last looked: any of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Signals(u8);

impl Signals {
    const LEAVE: u8 = 1;
    const KILL: u8 = 2;

    /// Leave once what is in flight is answered.
    pub fn leave(self) -> bool {
        self.0 & Self::LEAVE != 0
    }

    /// Close now.
    pub fn kill(self) -> bool {
        self.0 & Self::KILL != 0
    }
}

impl Client {
    pub fn new(
        id: u64,
        worker: usize,
        addr: Option<SocketAddr>,
        laddr: Option<SocketAddr>,
        fd: i32,
    ) -> Client {
        let now = Second::now();
        Client {
            id,
            addr,
            laddr,
            fd,
            worker: worker as u32,
            since: now,
            facts: Mutex::new(Facts {
                db: 0,
                resp3: false,
                last_command: None,
                last_active: now,
                rare: None,
            }),
            signals: AtomicU8::new(0),
            inbox: Inbox::default(),
            killed: AtomicBool::new(false),
        }
    }

    /// What the session last said; the session updates it through the guard.
    pub fn facts(&self) -> MutexGuard<'_, Facts> {
        self.facts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn signal(&self, bits: u8) {
        self.signals.fetch_or(bits, Ordering::AcqRel);
        self.inbox.wake();
    }

    /// Asks the client to close now (CLIENT KILL).
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Relaxed);
        self.signal(Signals::KILL);
    }

    /// The name the client gave itself (CLIENT SETNAME, HELLO … SETNAME).
    pub fn name(&self) -> Option<Arc<[u8]>> {
        self.facts().rare().name.clone()
    }

    /// Names the client; `None` clears the name (an empty CLIENT SETNAME, RESET).
    pub fn set_name(&self, name: Option<Arc<[u8]>>) {
        self.facts().update_rare(|rare| rare.name = name);
    }

    /// The user the client authenticated as (CLIENT LIST, CLIENT KILL USER).
    pub fn user(&self) -> Arc<str> {
        let user = self.facts().rare().user.clone();
        user.unwrap_or_else(|| Arc::from("default"))
    }

    /// Records the user the client authenticated as.
    pub fn set_user(&self, user: &str) {
        let user = (user != "default").then(|| Arc::from(user));
        self.facts().update_rare(|rare| rare.user = user);
    }

    /// Where the client's blocking command waits, if it is waiting.
    pub fn blocked_on(&self) -> Option<BlockedOn> {
        self.facts().rare().blocked_on.clone()
    }

    /// Notes that a blocking command of the client's waits on `on` (`None`: no longer).
    pub fn set_blocked_on(&self, on: Option<BlockedOn>) {
        self.facts().update_rare(|rare| rare.blocked_on = on);
    }

    /// Takes what the pool asked of the client since the last call (checked when its inbox
    /// wakes it).
    pub fn take_signals(&self) -> Signals {
        Signals(self.signals.swap(0, Ordering::AcqRel))
    }
}

/// Where the client's session is woken: its replies, and the pool's requests.
impl Mailbox for Client {
    fn inbox(&self) -> &Inbox {
        &self.inbox
    }
}

/// Every client of a pool, by id; `None` once the pool has asked its clients to leave.
#[derive(Debug)]
pub struct Clients(Mutex<Option<HashMap<u64, Arc<Client>>>>);

impl Default for Clients {
    fn default() -> Clients {
        Clients(Mutex::new(Some(HashMap::new())))
    }
}

impl Clients {
    fn lock(&self) -> MutexGuard<'_, Option<HashMap<u64, Arc<Client>>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lists a new client; asked to leave at once if the pool has asked its clients to.
    pub fn admit(&self, client: Client) -> Arc<Client> {
        let client = Arc::new(client);
        match self.lock().as_mut() {
            Some(all) => _ = all.insert(client.id, client.clone()),
            None => client.signal(Signals::LEAVE),
        }
        client
    }

    /// Takes a client that has gone off the list.
    pub fn remove(&self, id: u64) {
        if let Some(all) = self.lock().as_mut() {
            all.remove(&id);
        }
    }

    /// Asks every client, present and future, to leave once answered.
    pub fn close_all(&self) {
        for client in self
            .lock()
            .take()
            .into_iter()
            .flat_map(HashMap::into_values)
        {
            client.signal(Signals::LEAVE);
        }
    }

    /// Every client, by id (not those killed).
    pub fn list(&self) -> Vec<Arc<Client>> {
        let mut all: Vec<Arc<Client>> = self
            .lock()
            .iter()
            .flat_map(|all| all.values())
            .filter(|c| !c.killed.load(Ordering::Relaxed))
            .cloned()
            .collect();
        all.sort_by_key(|c| c.id);
        all
    }

    pub fn get(&self, id: u64) -> Option<Arc<Client>> {
        self.lock().as_ref()?.get(&id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn signals_wake_the_inbox_and_are_taken_once() {
        let clients = Clients::default();
        let client = clients.admit(Client::new(7, 0, None, None, -1));
        client.kill();
        client.inbox().wait().await;
        let got = client.take_signals();
        assert!(got.kill() && !got.leave());
        // Taken: nothing more until the pool asks again.
        assert_eq!(client.take_signals(), Signals::default());
        let waiting = tokio::time::timeout(std::time::Duration::ZERO, client.inbox().wait());
        assert!(waiting.await.is_err());
        clients.close_all();
        client.inbox().wait().await;
        assert!(client.take_signals().leave());
        // A client admitted after the pool closed is asked to leave at once.
        let late = clients.admit(Client::new(8, 0, None, None, -1));
        late.inbox().wait().await;
        assert!(late.take_signals().leave());
        assert!(clients.list().is_empty());
    }

    #[test]
    fn clients_are_listed_by_id_until_removed() {
        let clients = Clients::default();
        for id in [5, 2, 9] {
            clients.admit(Client::new(id, 0, None, None, -1));
        }
        clients.remove(5);
        let killed = clients.admit(Client::new(3, 0, None, None, -1));
        killed.kill();
        let ids: Vec<u64> = clients.list().iter().map(|c| c.id).collect();
        assert_eq!(ids, [2, 9]);
        assert!(clients.get(9).is_some() && clients.get(5).is_none());
    }
}
