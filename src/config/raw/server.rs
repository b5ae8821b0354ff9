//! A pool's server entries as serde reads them: twemproxy's `host:port:weight [name]` string,
//! or a map with replicas; and the count of connections per server.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::super::values::parse_weight;
use super::super::{Address, ServerConfig};

/// A count of connections: at least 1.
pub(super) struct Connections(pub(super) usize);

impl<'de> Deserialize<'de> for Connections {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u32::deserialize(d)? {
            0 => Err(de::Error::custom("server_connections must be at least 1")),
            n => Ok(Connections(n as usize)),
        }
    }
}

/// A server entry: twemproxy's `host:port:weight [name]` string, or a map with replicas.
pub(in crate::config) struct Server {
    name: Option<String>,
    /// The address part as written, for the ring identity of unnamed servers.
    written: String,
    weight: u32,
    /// `None`: left to Sentinel to name.
    master: Option<Address>,
    replicas: Vec<Address>,
}

impl Server {
    pub(in crate::config) fn has_name(&self) -> bool {
        self.name.is_some()
    }

    pub(in crate::config) fn into_server_config(self) -> ServerConfig {
        let identity = match &self.name {
            Some(n) => n.clone(),
            None => match &self.master {
                Some(m) if m.port == 11211 => m.host.clone(),
                _ => self.written.clone(),
            },
        };
        ServerConfig {
            name: self.name.unwrap_or_else(|| self.written.clone()),
            identity,
            weight: self.weight,
            master: self.master,
            replicas: self.replicas,
        }
    }

    fn parse_short(s: &str) -> Result<Server, String> {
        let mut words = s.split_whitespace();
        let addr_weight = words.next().ok_or("empty server entry")?;
        let name = words.next().map(str::to_string);
        if words.next().is_some() {
            return Err(format!(
                "bad server '{s}' (expected \"host:port:weight [name]\")"
            ));
        }
        let (addr, weight) = addr_weight
            .rsplit_once(':')
            .filter(|(a, _)| a.contains(':'))
            .ok_or_else(|| format!("bad server '{s}' (expected \"host:port:weight [name]\")"))?;
        Ok(Server {
            name,
            written: addr.to_string(),
            weight: parse_weight(weight)?,
            master: Some(addr.parse()?),
            replicas: Vec::new(),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerMap {
    name: Option<String>,
    weight: Option<u32>,
    master: Option<String>,
    #[serde(default)]
    replicas: Vec<Address>,
}

impl<'de> Deserialize<'de> for Server {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ServerVisitor;
        impl<'de> Visitor<'de> for ServerVisitor {
            type Value = Server;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "\"host:port:weight [name]\" or a map with name, weight, master, replicas",
                )
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Server, E> {
                Server::parse_short(s).map_err(E::custom)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Server, A::Error> {
                let m = ServerMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let weight = match m.weight {
                    Some(0) => return Err(de::Error::custom("weight must be at least 1")),
                    w => w.unwrap_or(1),
                };
                Ok(Server {
                    name: m.name,
                    master: m
                        .master
                        .as_deref()
                        .map(str::parse)
                        .transpose()
                        .map_err(de::Error::custom)?,
                    written: m.master.unwrap_or_default(),
                    weight,
                    replicas: m.replicas,
                })
            }
        }
        d.deserialize_any(ServerVisitor)
    }
}

#[cfg(test)]
impl Server {
    pub(in crate::config) fn parse_short_for_test(s: &str) -> ServerConfig {
        Server::parse_short(s).unwrap().into_server_config()
    }
}
