//! A pool's record of slow requests, read with `SLOWLOG GET | LEN | RESET` as Redis's own:
//! requests that took longer than `slowlog_slower_than_us` from being read to being answered,
//! newest first, at most `slowlog_max_len`. Only slow requests take its lock.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};

use crate::protocol::resp::encode;

/// Redis keeps at most this many arguments of a command…
const MAX_ARGS: usize = 32;
/// …and this many bytes of each.
const MAX_ARG_BYTES: usize = 128;

/// One slow request.
#[derive(Clone, Debug)]
pub struct SlowEntry {
    pub id: u64,
    /// When it was logged, in seconds since the epoch.
    pub at: u64,
    /// From being read to being answered.
    pub took: Duration,
    /// Its arguments, shortened as Redis shortens them.
    pub args: Vec<Bytes>,
    /// The client's `ip:port`.
    pub client: String,
    /// The client's CLIENT SETNAME name.
    pub name: Bytes,
    /// The shard it went to, with `+N` for N more; empty when the proxy answered it.
    pub shard: String,
    /// The longest time one of its backend requests took.
    pub backend: Duration,
}

/// What is known of a slow request when it is answered.
pub struct Slow<'a> {
    pub took: Duration,
    pub args: &'a [&'a [u8]],
    pub client: String,
    pub name: Bytes,
    pub shard: String,
    pub backend: Duration,
}

/// Its settings can change while it serves (CONFIG SET `slowlog-log-slower-than` and
/// `slowlog-max-len`, passed on to the servers, set the proxy's own log too).
#[derive(Debug)]
pub struct SlowLog {
    /// Requests at least this many microseconds slow are logged; negative: none are.
    slower_than_us: AtomicI64,
    max_len: AtomicUsize,
    entries: Mutex<Log>,
}

#[derive(Debug, Default)]
struct Log {
    /// Newest first.
    entries: VecDeque<SlowEntry>,
    next_id: u64,
}

impl SlowLog {
    /// A log of requests slower than `slower_than_us` (negative: none), of at most `max_len`.
    pub fn new(slower_than_us: i64, max_len: usize) -> SlowLog {
        SlowLog {
            slower_than_us: AtomicI64::new(slower_than_us),
            max_len: AtomicUsize::new(max_len),
            entries: Mutex::default(),
        }
    }

    /// Whether any request may be logged.
    pub fn is_on(&self) -> bool {
        self.slower_than_us.load(Ordering::Relaxed) >= 0
    }

    /// Whether a request that took `took` is logged.
    pub fn is_slow(&self, took: Duration) -> bool {
        u64::try_from(self.slower_than_us.load(Ordering::Relaxed))
            .is_ok_and(|us| took >= Duration::from_micros(us))
    }

    /// Takes a server setting that also governs this log (`slowlog-log-slower-than`,
    /// `slowlog-max-len`); others, and values that are not integers, are left alone.
    pub fn configure(&self, parameter: &[u8], value: &[u8]) {
        let Some(n) = std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
        else {
            return;
        };
        match &parameter.to_ascii_lowercase()[..] {
            b"slowlog-log-slower-than" => self.slower_than_us.store(n, Ordering::Relaxed),
            b"slowlog-max-len" => {
                let max_len = usize::try_from(n).unwrap_or(0);
                self.max_len.store(max_len, Ordering::Relaxed);
                self.lock().entries.truncate(max_len);
            }
            _ => {}
        }
    }

    pub fn record(&self, slow: Slow<'_>) {
        let max_len = self.max_len.load(Ordering::Relaxed);
        if max_len == 0 {
            return;
        }
        let mut args: Vec<Bytes> = slow
            .args
            .iter()
            .take(MAX_ARGS)
            .map(|a| shortened(a))
            .collect();
        if slow.args.len() > MAX_ARGS {
            let more = slow.args.len() - MAX_ARGS + 1;
            args[MAX_ARGS - 1] = Bytes::from(format!("... ({more} more arguments)"));
        }
        let at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut log = self.lock();
        let id = log.next_id;
        log.next_id += 1;
        log.entries.push_front(SlowEntry {
            id,
            at,
            took: slow.took,
            args,
            client: slow.client,
            name: slow.name,
            shard: slow.shard,
            backend: slow.backend,
        });
        log.entries.truncate(max_len);
    }

    /// The `count` newest entries (all of them when `None`).
    pub fn newest(&self, count: Option<usize>) -> Vec<SlowEntry> {
        let log = self.lock();
        let n = count.unwrap_or(log.entries.len());
        log.entries.iter().take(n).cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn reset(&self) {
        self.lock().entries.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What Redis shows instead of a secret.
const REDACTED: &[u8] = b"(redacted)";

/// Settings whose values are secrets.
const SECRET_SETTINGS: [&[u8]; 5] = [
    b"requirepass",
    b"masterauth",
    b"masteruser",
    b"tls-key-file-pass",
    b"tls-client-key-file-pass",
];

/// A request's arguments as the log may keep them, as Redis keeps them: `None` for AUTH, never
/// logged; otherwise with every secret argument replaced by `(redacted)` (HELLO's AUTH, ACL
/// SETUSER's rules, MIGRATE's AUTH and AUTH2, CONFIG SET of a password).
pub fn redacted<'a>(args: &[&'a [u8]]) -> Option<Vec<&'a [u8]>> {
    let is = |i: usize, word: &str| {
        args.get(i)
            .is_some_and(|a| a.eq_ignore_ascii_case(word.as_bytes()))
    };
    if is(0, "AUTH") {
        return None;
    }
    let mut out = args.to_vec();
    let mut hide = |from: usize, n: usize| {
        for arg in out.iter_mut().skip(from).take(n) {
            *arg = REDACTED;
        }
    };
    if is(0, "HELLO") {
        if let Some(at) = (2..args.len()).find(|&i| is(i, "AUTH")) {
            hide(at + 1, 2);
        }
    } else if is(0, "ACL") && is(1, "SETUSER") {
        hide(3, usize::MAX);
    } else if is(0, "MIGRATE") {
        for i in 6..args.len() {
            if is(i, "KEYS") {
                break;
            } else if is(i, "AUTH") {
                hide(i + 1, 1);
            } else if is(i, "AUTH2") {
                hide(i + 1, 2);
            }
        }
    } else if is(0, "CONFIG") && is(1, "SET") {
        for i in (2..args.len()).step_by(2) {
            if SECRET_SETTINGS
                .iter()
                .any(|s| args[i].eq_ignore_ascii_case(s))
            {
                hide(i + 1, 1);
            }
        }
    }
    Some(out)
}

/// An argument as Redis's SLOWLOG keeps it: at most 128 bytes, then how many more there were.
fn shortened(arg: &[u8]) -> Bytes {
    if arg.len() <= MAX_ARG_BYTES {
        return Bytes::copy_from_slice(arg);
    }
    let mut b = BytesMut::from(&arg[..MAX_ARG_BYTES]);
    b.extend_from_slice(format!("... ({} more bytes)", arg.len() - MAX_ARG_BYTES).as_bytes());
    b.freeze()
}

impl SlowEntry {
    /// The entry as SLOWLOG GET shows it: Redis's six fields (id, time, microseconds,
    /// arguments, client address, client name), then the shard and the backend's
    /// microseconds, which clients reading six fields pass over.
    pub fn encode(&self, b: &mut BytesMut) {
        encode::array(b, 8);
        encode::integer(b, self.id as i64);
        encode::integer(b, self.at as i64);
        encode::integer(b, micros(self.took));
        encode::command(b, self.args.iter().map(|a| &a[..]));
        encode::bulk(b, self.client.as_bytes());
        encode::bulk(b, &self.name);
        encode::bulk(b, self.shard.as_bytes());
        encode::integer(b, micros(self.backend));
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact(line: &str) -> Option<String> {
        let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
        let kept = redacted(&args)?;
        Some(
            kept.iter()
                .map(|a| String::from_utf8_lossy(a))
                .collect::<Vec<_>>()
                .join(" "),
        )
    }

    #[test]
    fn secrets_are_redacted_as_redis_redacts_them() {
        assert_eq!(redact("AUTH ops ops-secret"), None);
        assert_eq!(redact("auth secret"), None);
        assert_eq!(
            redact("HELLO 3 AUTH ops s3cret SETNAME x").as_deref(),
            Some("HELLO 3 AUTH (redacted) (redacted) SETNAME x")
        );
        assert_eq!(
            redact("acl setuser bob on >pw ~*").as_deref(),
            Some("acl setuser bob (redacted) (redacted) (redacted)")
        );
        assert_eq!(
            redact("MIGRATE h 1 k 0 10 COPY AUTH pw").as_deref(),
            Some("MIGRATE h 1 k 0 10 COPY AUTH (redacted)")
        );
        assert_eq!(
            redact("MIGRATE h 1 \"\" 0 10 AUTH2 u pw KEYS AUTH b").as_deref(),
            Some("MIGRATE h 1 \"\" 0 10 AUTH2 (redacted) (redacted) KEYS AUTH b")
        );
        assert_eq!(
            redact("CONFIG SET maxmemory 1 REQUIREPASS pw masterauth x").as_deref(),
            Some("CONFIG SET maxmemory 1 REQUIREPASS (redacted) masterauth (redacted)")
        );
        assert_eq!(redact("GET AUTH").as_deref(), Some("GET AUTH"));
    }

    fn slow<'a>(args: &'a [&'a [u8]], ms: u64) -> Slow<'a> {
        Slow {
            took: Duration::from_millis(ms),
            args,
            client: "127.0.0.1:5000".into(),
            name: Bytes::new(),
            shard: "a".into(),
            backend: Duration::from_millis(ms / 2),
        }
    }

    #[test]
    fn keeps_the_newest_entries_up_to_its_length() {
        let log = SlowLog::new(10_000, 2);
        assert!(!log.is_slow(Duration::from_micros(9_999)));
        assert!(log.is_slow(Duration::from_micros(10_000)));
        for n in 0..3u64 {
            log.record(slow(&[b"GET", b"k"], 20 + n));
        }
        let newest = log.newest(None);
        assert_eq!(newest.iter().map(|e| e.id).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(log.newest(Some(1))[0].took, Duration::from_millis(22));
        log.reset();
        assert_eq!(log.len(), 0);
        assert!(!SlowLog::new(-1, 128).is_slow(Duration::MAX));
    }

    #[test]
    fn config_set_of_its_settings_takes_effect_at_once() {
        let log = SlowLog::new(-1, 5);
        assert!(!log.is_on());
        log.configure(b"SLOWLOG-LOG-SLOWER-THAN", b"0");
        assert!(log.is_on() && log.is_slow(Duration::ZERO));
        for n in 0..4 {
            log.record(slow(&[b"GET", b"k"], n));
        }
        log.configure(b"slowlog-max-len", b"2");
        assert_eq!(log.len(), 2);
        log.configure(b"slowlog-max-len", b"many");
        log.configure(b"maxmemory", b"10");
        assert_eq!(log.len(), 2);
    }

    #[test]
    fn arguments_are_shortened_as_redis_shortens_them() {
        let long = [b'x'; 200];
        let many: Vec<&[u8]> = std::iter::once(&b"MSET"[..])
            .chain(std::iter::repeat_n(&long[..], 40))
            .collect();
        let log = SlowLog::new(0, 10);
        log.record(slow(&many, 1));
        let args = &log.newest(None)[0].args;
        assert_eq!(args.len(), 32);
        assert!(args[1].ends_with(b"... (72 more bytes)"));
        assert_eq!(args[1].len(), 128 + "... (72 more bytes)".len());
        assert_eq!(&args[31][..], b"... (10 more arguments)");
    }
}
