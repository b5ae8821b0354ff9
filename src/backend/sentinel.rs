//! Talking to one Redis Sentinel: which node it names master of a monitored master name, that
//! master's replicas, and its `+switch-master` announcements.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use super::opening::{connect, read_reply};
use super::{ConnSettings, Failure, flat_fields, within};
use crate::config::{Address, BackendAuth, Protocol};
use crate::net::Stream;
use crate::protocol::ReplyKind;
use crate::protocol::resp::encode;

/// What a Sentinel says of one master name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    pub master: Address,
    /// The replicas it knows and does not think down or disconnected.
    pub replicas: Vec<Address>,
}

/// One Sentinel's address and how to talk to it.
#[derive(Clone, Debug)]
pub struct SentinelClient {
    settings: Arc<ConnSettings>,
}

impl SentinelClient {
    pub fn new(addr: Address, auth: Option<&BackendAuth>, timeout: Duration) -> SentinelClient {
        let mut handshake = BytesMut::new();
        if let Some(auth) = auth {
            let mut args = vec![&b"AUTH"[..]];
            args.extend(auth.username.as_deref().map(str::as_bytes));
            args.push(auth.password.as_bytes());
            encode::command(&mut handshake, args.into_iter());
        }
        SentinelClient {
            settings: Arc::new(ConnSettings {
                addr,
                protocol: Protocol::Redis,
                timeout,
                handshake_replies: usize::from(auth.is_some()),
                handshake: handshake.freeze(),
                preconnect: false,
                max_reply_depth: 8,
                tls: None,
            }),
        }
    }

    pub fn addr(&self) -> &Address {
        &self.settings.addr
    }

    /// `SENTINEL get-master-addr-by-name` and `SENTINEL replicas` for `name`, within the
    /// timeout; `None` when the Sentinel does not monitor `name`.
    pub async fn lookup(&self, name: &str) -> Result<Option<Named>, Failure> {
        let asked = async {
            let stream = connect(&self.settings)
                .await
                .map_err(Failure::Unreachable)?;
            let mut request = BytesMut::new();
            let name = name.as_bytes();
            encode::command(
                &mut request,
                [&b"SENTINEL"[..], b"get-master-addr-by-name", name].into_iter(),
            );
            encode::command(
                &mut request,
                [&b"SENTINEL"[..], b"replicas", name].into_iter(),
            );
            stream.write_all(&request).await?;
            let mut buf = BytesMut::new();
            let master = self.read(&stream, &mut buf).await?;
            let replicas = self.read(&stream, &mut buf).await?;
            Ok(parse_master(&master).map(|master| Named {
                master,
                replicas: parse_replicas(&replicas),
            }))
        };
        within(self.settings.timeout, asked).await
    }

    /// Subscribes to `+switch-master` and hands each announcement (master name, new master)
    /// to `switched` until the connection fails, which it returns.
    pub async fn watch(&self, mut switched: impl FnMut(&str, Address)) -> Failure {
        let watched = async {
            let stream = connect(&self.settings)
                .await
                .map_err(Failure::Unreachable)?;
            stream
                .write_all(b"*2\r\n$9\r\nSUBSCRIBE\r\n$14\r\n+switch-master\r\n")
                .await?;
            let mut buf = BytesMut::new();
            loop {
                let message = self.read(&stream, &mut buf).await?;
                if let Some((name, master)) = parse_switch(&message) {
                    switched(name, master);
                }
            }
        };
        match watched.await {
            Ok(()) => Failure::Closed,
            Err(failure) => failure,
        }
    }

    async fn read(&self, stream: &Stream, buf: &mut BytesMut) -> Result<BytesMut, Failure> {
        read_reply(stream, buf, &self.settings, ReplyKind::Resp).await
    }
}

fn address(host: &[u8], port: &[u8]) -> Option<Address> {
    Some(Address {
        host: std::str::from_utf8(host).ok()?.to_string(),
        port: std::str::from_utf8(port).ok()?.parse().ok()?,
    })
}

/// `*2 $ip $port`, or a nil array for a name the Sentinel does not monitor.
fn parse_master(reply: &[u8]) -> Option<Address> {
    let mut fields = flat_fields(reply);
    address(fields.next()?, fields.next()?)
}

/// An array of replicas, each a flat list of field/value pairs (`name`, `ip`, `port`,
/// `flags`, …): those not flagged down or disconnected.
fn parse_replicas(reply: &[u8]) -> Vec<Address> {
    let fields: Vec<&[u8]> = flat_fields(reply).collect();
    let mut replicas = Vec::new();
    let (mut ip, mut port, mut healthy) = (None, None, true);
    let mut finish = |ip: &mut Option<&[u8]>, port: &mut Option<&[u8]>, healthy: bool| {
        if let (Some(ip), Some(port)) = (ip.take(), port.take())
            && healthy
            && let Some(addr) = address(ip, port)
        {
            replicas.push(addr);
        }
    };
    for pair in fields.chunks(2) {
        match pair {
            [b"name", _] => {
                finish(&mut ip, &mut port, healthy);
                healthy = true;
            }
            [b"ip", value] => ip = Some(value),
            [b"port", value] => port = Some(value),
            [b"flags", flags] => {
                healthy = !flags
                    .split(|&b| b == b',')
                    .any(|f| matches!(f, b"s_down" | b"o_down" | b"disconnected"));
            }
            _ => {}
        }
    }
    finish(&mut ip, &mut port, healthy);
    replicas
}

/// `message +switch-master "<name> <old ip> <old port> <new ip> <new port>"`.
fn parse_switch(reply: &[u8]) -> Option<(&str, Address)> {
    let mut fields = flat_fields(reply);
    if fields.next()? != b"message" || fields.next()? != b"+switch-master" {
        return None;
    }
    let text = std::str::from_utf8(fields.next()?).ok()?;
    let words: Vec<&str> = text.split(' ').collect();
    match words[..] {
        [name, _, _, ip, port] => Some((name, address(ip.as_bytes(), port.as_bytes())?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Address {
        s.parse().unwrap()
    }

    #[test]
    fn masters_replicas_and_switches() {
        let master = b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n7000\r\n";
        assert_eq!(parse_master(master), Some(addr("127.0.0.1:7000")));
        assert_eq!(parse_master(b"*-1\r\n"), None);
        let replicas = b"*2\r\n*6\r\n$4\r\nname\r\n$14\r\n127.0.0.1:7001\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n$4\r\nport\r\n$4\r\n7001\r\n*8\r\n$4\r\nname\r\n$14\r\n127.0.0.1:7002\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n$4\r\nport\r\n$4\r\n7002\r\n$5\r\nflags\r\n$12\r\ns_down,slave\r\n";
        assert_eq!(parse_replicas(replicas), vec![addr("127.0.0.1:7001")]);
        assert_eq!(parse_replicas(b"*0\r\n"), Vec::<Address>::new());
        let switch = b"*3\r\n$7\r\nmessage\r\n$14\r\n+switch-master\r\n$35\r\none 127.0.0.1 7000 127.0.0.1 7001\r\n";
        assert_eq!(parse_switch(switch), Some(("one", addr("127.0.0.1:7001"))));
        let confirmation = b"*3\r\n$9\r\nsubscribe\r\n$14\r\n+switch-master\r\n:1\r\n";
        assert_eq!(parse_switch(confirmation), None);
    }
}
