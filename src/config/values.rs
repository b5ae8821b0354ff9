//! Configuration values that check themselves as they are read, so a bad one is reported at its
//! own line and column.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, de};

use crate::keyword::keywords;
use crate::placement::{Distribution, HashFn};

/// Implements `Deserialize` through `FromStr`, turning its message into a located serde error.
macro_rules! deserialize_from_str {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(de::Error::custom)
            }
        }
    )*};
}

deserialize_from_str!(
    Address,
    Listen,
    Protocol,
    ReadFrom,
    Failover,
    HashTag,
    HashFn,
    Distribution
);

/// `host:port`, kept as written: the host may be a name resolved when connecting.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Address {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for Address {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("bad address '{s}' (expected host:port)");
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let valid_host = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
        let port: u16 = port.parse().map_err(|_| bad())?;
        if !valid_host || port == 0 {
            return Err(bad());
        }
        Ok(Address {
            host: host.to_string(),
            port,
        })
    }
}

keywords! {
    pub enum Protocol ("protocol") {
        Redis = "redis",
        Memcache = "memcache",
    }
}

/// Where a pool listens: a TCP address, or a Unix socket with the permissions of its file
/// (twemproxy's `listen: /var/run/nutcracker.sock 0666`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Listen {
    Tcp(Address),
    Unix {
        path: std::path::PathBuf,
        /// The socket file's permission bits; without them, what the umask leaves.
        mode: Option<u32>,
    },
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp(addr) => addr.fmt(f),
            Listen::Unix { path, mode: None } => write!(f, "{}", path.display()),
            Listen::Unix {
                path,
                mode: Some(mode),
            } => write!(f, "{} {mode:04o}", path.display()),
        }
    }
}

impl FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if !s.starts_with('/') {
            return s.parse().map(Listen::Tcp).map_err(|_| {
                format!("bad listen address '{s}' (expected host:port, or /path/to.sock [mode])")
            });
        }
        let mut words = s.split_whitespace();
        let path = words.next().unwrap_or_default().into();
        let mode = match (words.next(), words.next()) {
            (None, _) => None,
            (Some(mode), None) => match u32::from_str_radix(mode, 8) {
                Ok(mode) if mode <= 0o777 => Some(mode),
                _ => {
                    return Err(format!(
                        "bad socket permissions '{mode}' (expected octal, like 0666)"
                    ));
                }
            },
            _ => {
                return Err(format!(
                    "bad listen address '{s}' (expected /path/to.sock [mode])"
                ));
            }
        };
        Ok(Listen::Unix { path, mode })
    }
}

keywords! {
    /// Where read commands go.
    pub enum ReadFrom ("read_from") {
        Master = "master",
        Replica = "replica",
        /// A replica while one is up, else the master.
        ReplicaPreferred = "replica_preferred",
    }
}

keywords! {
    /// What happens to a server that keeps failing.
    pub enum Failover ("failover") {
        /// Its keys get error replies until it returns.
        None = "none",
        /// It leaves the ring for the retry timeout and its keys rehash to the others
        /// (twemproxy's `auto_eject_hosts`).
        Eject = "eject",
        /// A replica of its shard is promoted in its place (Redis).
        Promote = "promote",
        /// Redis Sentinel decides which node is master; writes follow what it says.
        Sentinel = "sentinel",
    }
}

/// Two characters that enclose the hashed part of a key, like `{}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashTag(pub [u8; 2]);

impl fmt::Display for HashTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}{}\"", char::from(self.0[0]), char::from(self.0[1]))
    }
}

impl FromStr for HashTag {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.as_bytes() {
            &[open, close] => Ok(HashTag([open, close])),
            _ => Err(format!(
                "hash_tag '{s}' must be exactly two characters, like \"{{}}\""
            )),
        }
    }
}

/// A server weight: a whole number from 1.
pub fn parse_weight(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(0) => Err("weight must be at least 1".to_string()),
        Ok(w) => Ok(w),
        Err(_) => Err(format!("bad weight '{s}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listen_address_is_tcp_or_a_unix_socket_with_its_permissions() {
        assert_eq!(
            "127.0.0.1:6380".parse::<Listen>().unwrap(),
            Listen::Tcp("127.0.0.1:6380".parse().unwrap())
        );
        let unix: Listen = "/tmp/n.sock 0666".parse().unwrap();
        assert_eq!(
            unix,
            Listen::Unix {
                path: "/tmp/n.sock".into(),
                mode: Some(0o666)
            }
        );
        assert_eq!(unix.to_string(), "/tmp/n.sock 0666");
        assert_eq!(
            "/tmp/n.sock".parse::<Listen>().unwrap().to_string(),
            "/tmp/n.sock"
        );
        for bad in ["/tmp/n.sock 999", "/tmp/n.sock 0666 x", "nowhere"] {
            assert!(bad.parse::<Listen>().is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(
            "127.0.0.1:6379".parse::<Address>().unwrap().to_string(),
            "127.0.0.1:6379"
        );
        assert_eq!("[::1]:6379".parse::<Address>().unwrap().host, "::1");
        assert_eq!("localhost:1".parse::<Address>().unwrap().port, 1);
        for bad in [
            "", "6379", "host:", ":6379", "a b:1", "h:0", "h:70000", "h:x",
        ] {
            assert!(bad.parse::<Address>().is_err(), "{bad}");
        }
    }

    #[test]
    fn enums_and_tags() {
        assert_eq!(
            "replica_preferred".parse::<ReadFrom>(),
            Ok(ReadFrom::ReplicaPreferred)
        );
        assert_eq!("eject".parse::<Failover>(), Ok(Failover::Eject));
        assert_eq!("promote".parse::<Failover>(), Ok(Failover::Promote));
        assert!(
            "sentinels"
                .parse::<Failover>()
                .unwrap_err()
                .contains("expected one of: none, eject, promote, sentinel")
        );
        assert_eq!("{}".parse::<HashTag>(), Ok(HashTag(*b"{}")));
        assert!("{".parse::<HashTag>().is_err());
        assert_eq!(parse_weight("3"), Ok(3));
        assert!(parse_weight("0").is_err());
    }
}
