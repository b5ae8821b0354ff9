use std::sync::Arc;

use super::*;
use crate::backend::{Completion, Token};
use crate::topology::Client;

fn client(id: u64) -> Arc<Client> {
    Arc::new(Client::new(id, 0, None, None, 0))
}

fn tracker(to: &Arc<Client>, bcast: Option<&[&str]>, noloop: bool) -> Tracker {
    Tracker {
        to: to.clone(),
        own: false,
        bcast: bcast.map(|p| p.iter().map(|p| Bytes::from(p.to_string())).collect()),
        noloop,
    }
}

/// What `client` was told, each as the keys' array ("" for every key).
fn told(client: &Client) -> Vec<String> {
    let mut taken: Vec<Completion> = Vec::new();
    client.inbox().take(&mut taken);
    taken
        .into_iter()
        .map(|c| {
            assert_eq!(c.token, Token::Invalidate);
            String::from_utf8(c.result.unwrap().to_vec()).unwrap()
        })
        .collect()
}

#[test]
fn a_reader_is_told_once_per_read() {
    let table = ClientTracking::default();
    let (a, b) = (client(1), client(2));
    table.start(1, tracker(&a, None, false));
    table.start(2, tracker(&b, None, false));
    table.read(1, b"k");
    table.read(1, b"k");
    table.heard(&[b"k"]);
    table.heard(&[b"k"]);
    assert_eq!(told(&a), ["*1\r\n$1\r\nk\r\n"]);
    assert!(told(&b).is_empty(), "never read k");
    // Stopped: nothing more, though it read the key.
    table.read(1, b"k");
    table.stop(1);
    table.heard(&[b"k"]);
    assert!(told(&a).is_empty());
    assert_eq!(
        table.tracking.load(Ordering::Relaxed),
        1,
        "client 2 still tracks"
    );
}

#[test]
fn a_noloop_writer_is_not_told_of_its_own_writes() {
    let table = ClientTracking::default();
    let (a, b) = (client(1), client(2));
    table.start(1, tracker(&a, None, true));
    table.start(2, tracker(&b, None, false));
    for id in [1, 2] {
        table.read(id, b"k");
    }
    table.changed(b"k", 1);
    assert!(told(&a).is_empty());
    assert_eq!(told(&b), ["*1\r\n$1\r\nk\r\n"]);
    // Without NOLOOP, a writer is told like any reader.
    table.read(2, b"k");
    table.changed(b"k", 2);
    assert_eq!(told(&b).len(), 1);
}

#[test]
fn bcast_clients_hear_the_servers_changes_under_their_prefixes() {
    let table = ClientTracking::default();
    let (a, every) = (client(1), client(2));
    let mut broadcast = table.broadcast();
    assert!(!*broadcast.borrow_and_update());
    table.start(1, tracker(&a, Some(&["user:", "cfg:"]), false));
    table.start(2, tracker(&every, Some(&[]), false));
    assert!(broadcast.has_changed().unwrap() && *broadcast.borrow_and_update());
    table.broadcast_heard(&[b"user:1", b"other", b"cfg:1", b"user:2"]);
    // A read key's change, heard by the listener, is not theirs: it comes again as a broadcast.
    table.heard(&[b"user:9"]);
    // A write through the proxy: the server's change will say it.
    table.changed(b"cfg:1", 9);
    // One message per prefix, with the keys under it, as a server sends them.
    assert_eq!(
        told(&a),
        [
            "*2\r\n$6\r\nuser:1\r\n$6\r\nuser:2\r\n",
            "*1\r\n$5\r\ncfg:1\r\n"
        ]
    );
    assert_eq!(told(&every).len(), 1);
    table.stop(1);
    table.stop(2);
    assert!(!*broadcast.borrow_and_update());
}

#[test]
fn everyone_is_told_when_every_key_may_have_changed() {
    let table = ClientTracking::default();
    let (a, b) = (client(1), client(2));
    table.start(1, tracker(&a, None, false));
    table.start(2, tracker(&b, Some(&[]), false));
    table.read(1, b"k");
    table.all_changed();
    assert_eq!(told(&a), [""]);
    assert_eq!(told(&b), [""]);
    // What was tracked is forgotten with it.
    table.changed(b"k", 3);
    assert!(told(&a).is_empty());
    // A read the server does not track is told at once.
    table.tell(1, b"x");
    assert_eq!(told(&a), ["*1\r\n$1\r\nx\r\n"]);
}

#[test]
fn a_writer_tracking_on_its_own_connection_is_told_by_the_caller() {
    let table = ClientTracking::default();
    let (a, b) = (client(1), client(2));
    table.start(
        1,
        Tracker {
            own: true,
            ..tracker(&a, None, false)
        },
    );
    table.start(2, tracker(&b, None, false));
    for id in [1, 2] {
        table.read(id, b"k");
    }
    // The writer is told right after its reply, by its session: not through its inbox.
    assert!(table.changed(b"k", 1));
    assert!(told(&a).is_empty());
    assert_eq!(told(&b).len(), 1);
    assert!(table.tracks_own(1) && !table.tracks_own(2));
    // Another's write reaches it through its inbox, as any change.
    table.read(1, b"k");
    assert!(!table.changed(b"k", 2));
    assert_eq!(told(&a).len(), 1);
}
