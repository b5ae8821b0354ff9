use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse("test.yml", text)
}

fn error_of(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

const FULL: &str = "admin:
  listen: 127.0.0.1:9191
pools:
  main:
    listen: 127.0.0.1:6380
    protocol: redis
    hash: fnv1a_64
    distribution: ketama
    hash_tag: \"{}\"
    timeout_ms: 250
    server_connections: 2
    read_from: replica_preferred
    failover: eject
    health_check: { interval_ms: 100, timeout_ms: 50, failures: 2, successes: 2 }
    servers:
      - name: shard-a
        weight: 1
        master: 127.0.0.1:7000
        replicas: [127.0.0.1:7100]
      - 127.0.0.1:7001:2 shard-b
      - 127.0.0.1:7002:1
";

#[test]
fn full_schema() {
    let c = parse(FULL).unwrap();
    assert_eq!(
        c.admin_listen.as_ref().unwrap().to_string(),
        "127.0.0.1:9191"
    );
    let p = &c.pools[0];
    assert_eq!(p.name, "main");
    assert_eq!(p.hash_tag, Some(HashTag(*b"{}")));
    assert_eq!(p.timeout, Duration::from_millis(250));
    assert_eq!(p.server_connections, 2);
    assert_eq!(p.read_from, ReadFrom::ReplicaPreferred);
    assert_eq!(p.failover.kind(), Failover::Eject);
    assert_eq!(p.health_check.failures, 2);
    assert_eq!(p.health_check.successes, 2);
    let ids: Vec<&str> = p.servers.iter().map(|s| s.identity.as_str()).collect();
    assert_eq!(ids, ["shard-a", "shard-b", "127.0.0.1:7002"]);
    assert_eq!(p.servers[0].replicas[0].to_string(), "127.0.0.1:7100");
    assert_eq!(p.servers[1].weight, 2);
    assert!(
        c.summary()
            .contains("server shard-b weight 2 master 127.0.0.1:7001")
    );
}

/// A twemproxy file using every key it has for a redis pool.
const TWEMPROXY_REDIS: &str = "alpha:
  listen: 127.0.0.1:22121
  hash: fnv1a_64
  hash_tag: \"{}\"
  distribution: ketama
  auto_eject_hosts: true
  redis: true
  redis_auth: secret
  redis_db: 2
  server_retry_timeout: 2000
  server_failure_limit: 1
  timeout: 400
  backlog: 1024
  preconnect: true
  server_connections: 1
  client_connections: 100
  tcpkeepalive: true
  reuseport: false
  servers:
   - 127.0.0.1:6379:1 server1
   - 127.0.0.1:6380:1
";

#[test]
fn twemproxy_redis_pool_as_is() {
    let c = parse(TWEMPROXY_REDIS).unwrap();
    let p = &c.pools[0];
    let eject = FailoverMode::Eject {
        failure_limit: 1,
        retry_timeout: Duration::from_millis(2000),
    };
    assert_eq!(p.failover, eject);
    assert_eq!(
        p.redis.users,
        [ClientUser {
            name: "default".to_string(),
            password: "secret".to_string()
        }]
    );
    assert_eq!(p.redis.backend_auth.as_ref().unwrap().password, "secret");
    assert_eq!(p.redis.db, 2);
    assert_eq!(p.timeout, Duration::from_millis(400));
    assert_eq!(
        (p.clients.backlog, p.clients.max_connections, p.preconnect),
        (1024, Some(100), true)
    );
    assert_eq!(p.hash_tag, Some(HashTag(*b"{}")));
    assert_eq!(p.servers[0].identity, "server1");
    assert_eq!(p.servers[1].identity, "127.0.0.1:6380");
}

#[test]
fn twemproxy_pool_without_redis_is_memcache() {
    let text = format!(
        "{TWEMPROXY_REDIS}mc:\n  listen: 127.0.0.1:22122\n  auto_eject_hosts: true\n  servers:\n   - 127.0.0.1:11211:1\n"
    );
    let config = parse(&text).unwrap();
    let mc = config.pools.iter().find(|p| p.name == "mc").unwrap();
    assert_eq!(mc.protocol, Protocol::Memcache);
    assert_eq!(mc.failover.kind(), Failover::Eject);
    assert_eq!(mc.servers[0].identity, "127.0.0.1");
    assert_eq!(mc.memcache.item_size_max, 1024 * 1024);
    assert!(!mc.allow_flush && !mc.memcache.reject_past_exptime);
}

#[test]
fn memcache_settings() {
    let text = "pools:\n  mc:\n    listen: 127.0.0.1:22122\n    protocol: memcache\n    item_size_max: 2048\n    allow_flush: true\n    reject_past_exptime: true\n    servers:\n      - { name: a, master: 127.0.0.1:11211, replicas: [127.0.0.1:11212] }\n";
    let mc = &parse(text).unwrap().pools[0];
    assert_eq!(
        (
            mc.memcache.item_size_max,
            mc.allow_flush,
            mc.memcache.reject_past_exptime
        ),
        (2048, true, true)
    );
    assert_eq!(mc.servers[0].replicas.len(), 1);
}

#[test]
fn settings_of_the_other_protocol_are_refused() {
    let pool = |protocol: &str, body: &str| {
        format!(
            "pools:\n  p:\n    listen: 127.0.0.1:6380\n    protocol: {protocol}\n{body}    servers: [127.0.0.1:7000:1]\n"
        )
    };
    let cases = [
        (
            pool("memcache", "    auth: { password: x }\n"),
            "pool 'p': auth and users are for redis pools",
        ),
        (
            pool("memcache", "    backend_auth: { password: x }\n"),
            "pool 'p': backend_auth is for redis pools",
        ),
        (
            pool("memcache", "    db: 2\n"),
            "pool 'p': db is for redis pools",
        ),
        (
            pool("memcache", "    kill_busy_scripts_after_ms: 5000\n"),
            "pool 'p': kill_busy_scripts_after_ms is for redis pools",
        ),
        (
            pool("memcache", "    databases: 4\n"),
            "pool 'p': databases is for redis pools",
        ),
        (
            pool("redis", "    databases: 0\n"),
            "databases must be at least 1",
        ),
        (
            pool("redis", "    item_size_max: 10\n"),
            "pool 'p': item_size_max and reject_past_exptime are for memcache pools",
        ),
        (
            pool("redis", "    reject_past_exptime: true\n"),
            "are for memcache pools",
        ),
        (
            pool("memcache", "    near_cache: {}\n"),
            "pool 'p': near_cache is for redis pools: memcached cannot tell the proxy when a key changes",
        ),
        (
            pool("redis", "    near_cache: { max_bytes: 1000 }\n"),
            "near_cache: max_bytes must be at least 1048576",
        ),
        (
            pool("redis", "    near_cache: { max_ttl_ms: 0 }\n"),
            "near_cache: max_ttl_ms must be at least 1",
        ),
        (
            pool("redis", "    announce_version: latest\n"),
            "announce_version must be a version such as 7.4.0, not 'latest'",
        ),
        (
            pool("memcache", "    announce_version: \"7.4.0\"\n"),
            "announce_version is for redis pools",
        ),
        (
            pool("redis", "    near_cache: { keys: [\"\"] }\n"),
            "near_cache: keys: an empty pattern matches no key",
        ),
    ];
    for (text, want) in cases {
        let err = error_of(&text);
        assert!(err.contains(want), "want {want:?} in {err:?}");
        assert!(err.starts_with("test.yml:3:"), "{err}");
    }
}

#[test]
fn memcache_port_identity_is_the_host() {
    let s = raw::Server::parse_short_for_test("10.0.0.1:11211:1");
    assert_eq!(s.identity, "10.0.0.1");
}

#[test]
fn mistakes_are_located() {
    let pool = |body: &str| format!("pools:\n  p:\n    listen: 127.0.0.1:6380\n{body}");
    let cases: Vec<(String, &str)> = vec![
        (pool("    servers: [127.0.0.1:7000:1]\n    colour: red\n"), "test.yml:5:5: unknown field `colour`"),
        (pool("    hash: sha1\n    servers: [127.0.0.1:7000:1]\n"), "test.yml:4:11: unknown hash 'sha1'"),
        (pool("    servers:\n      - 127.0.0.1:7000:0\n"), "test.yml:5:9: weight must be at least 1"),
        (pool("    servers:\n      - nohost\n"), "test.yml:5:9: bad server 'nohost'"),
        (pool("    servers:\n      - { master: 'x:y' }\n"), "bad address 'x:y'"),
        (pool("    servers:\n      - 127.0.0.1:7000:1 a\n      - 127.0.0.1:7001:1 a\n"), "test.yml:6:9: duplicate server name 'a'"),
        (pool("    hash_tag: \"{\"\n    servers: [127.0.0.1:7000:1]\n"), "must be exactly two characters"),
        (pool("    failover: sentinel\n    servers: [127.0.0.1:7000:1 a]\n"), "failover: sentinel needs sentinels"),
        (pool("    failover: sentinel\n    sentinels: [127.0.0.1:26379]\n    servers: [127.0.0.1:7000:1]\n"), "test.yml:6:15: server '127.0.0.1:7000' needs a name"),
        (pool("    sentinels: [127.0.0.1:26379]\n    servers: [127.0.0.1:7000:1 a]\n"), "sentinels and sentinel_auth are for failover: sentinel"),
        (pool("    servers:\n      - { name: a }\n"), "server 'a' needs a master"),
        (pool("    protocol: memcache\n    failover: promote\n    servers: [127.0.0.1:7000:1]\n"), "failover: promote and sentinel are for redis pools"),
        (pool("    servers: []\n"), "has no servers"),
        (pool("    read_from: replica\n    servers: [127.0.0.1:7000:1]\n"), "has no replicas"),
        ("pools:\n  p:\n    listen: 127.0.0.1:6380\n".to_string(), "test.yml:3:5: pool 'p' has no servers (give servers, or cluster"),
        (pool("    cluster: { seeds: [127.0.0.1:7000] }\n    servers: [127.0.0.1:7000:1]\n"), "pool 'p': servers is not for a cluster pool: the cluster places keys"),
        (pool("    cluster: { seeds: [127.0.0.1:7000] }\n    hash_tag: \"{}\"\n"), "hash_tag is not for a cluster pool"),
        (pool("    cluster: { seeds: [127.0.0.1:7000] }\n    failover: promote\n"), "failover is not for a cluster pool"),
        (pool("    cluster: { seeds: [] }\n"), "cluster needs seeds"),
        (pool("    cluster: { seeds: [127.0.0.1:7000] }\n    databases: 4\n"), "a Redis Cluster has database 0 only"),
        (pool("    cluster: { seeds: [127.0.0.1:7000] }\n    protocol: memcache\n"), "cluster is for redis pools"),
        (pool("    cluster: { seeds: [127.0.0.1:7000], refresh: 5 }\n"), "unknown field `refresh`"),
        (
            "pools:\n  a:\n    listen: 127.0.0.1:6380\n    servers: [127.0.0.1:7000:1]\n  b:\n    listen: 127.0.0.1:6380\n    servers: [127.0.0.1:7000:1]\n".to_string(),
            "test.yml:6:13: listen address 127.0.0.1:6380 is already used by a",
        ),
        ("pools:\n  a:\n    listen: nowhere\n    servers: [127.0.0.1:7000:1]\n".to_string(), "test.yml:3:13: bad listen address 'nowhere'"),
        ("pools: {}\n".to_string(), "no pools are configured"),
        (pool("    tls: { cert: /nonexistent/server.pem, key: k.pem }\n    servers: [127.0.0.1:7000:1]\n"), "test.yml:3:5: tls: /nonexistent/server.pem: No such file"),
        (pool("    tls: { cert: c.pem }\n    servers: [127.0.0.1:7000:1]\n"), "missing field `key`"),
        (pool("    backend_tls: { ca: /nonexistent/ca.pem }\n    servers: [127.0.0.1:7000:1]\n"), "backend_tls: /nonexistent/ca.pem: No such file"),
        (pool("    backend_tls: { ca: ca.pem, server_name: 'not a name' }\n    servers: [127.0.0.1:7000:1]\n"), "backend_tls: server_name 'not a name'"),
        (pool("    tls: { cert: /dev/null, key: /dev/null }\n    servers: [127.0.0.1:7000:1]\n"), "tls: /dev/null: no PEM certificate in it"),
        ("pools:\n  p:\n    listen: /tmp/p.sock\n    tls: { cert: c.pem, key: k.pem }\n    servers: [127.0.0.1:7000:1]\n".to_string(), "tls needs a TCP listen address"),
        ("alpha:\n  listen: 127.0.0.1:1\n  redis: true\n  timeout: 400ms\n  servers: [127.0.0.1:7000:1]\n".to_string(), "test.yml:4:12: '400ms' is not a whole number of milliseconds: write 400"),
        (pool("    timeout_ms: 2s\n    servers: [127.0.0.1:7000:1]\n"), "'2s' is not a whole number of milliseconds: write 2000"),
        ("alpha:\n  listen: 127.0.0.1:1\n  redis: true\n  servers: [127.0.0.1:7000:1]\n  nope: 1\n".to_string(), "test.yml:5:3: unknown field `nope`"),
        (pool("    auth_max_failures: 70000\n    servers: [127.0.0.1:7000:1]\n"), "test.yml:4:24: invalid u16"),
        (pool("    limits: { max_client_output_bytes: 2000, max_client_output_hard_bytes: 1000 }\n    servers: [127.0.0.1:7000:1]\n"), "max_client_output_hard_bytes must be at least max_client_output_bytes"),
    ];
    for (text, want) in cases {
        let err = error_of(&text);
        assert!(err.contains(want), "want {want:?} in {err:?} for\n{text}");
    }
}

#[test]
fn client_users_with_passwords_from_the_environment() {
    // PATH is set wherever tests run (setting a variable here would need unsafe code).
    let from_env = std::env::var("PATH").unwrap();
    let text = "pools:\n  p:\n    listen: 127.0.0.1:6380\n    auth: { password: pool-pass }\n    users:\n      - { name: app, password: app-pass }\n      - { name: ops, password_env: PATH }\n    servers: [127.0.0.1:7000:1]\n";
    let p = &parse(text).unwrap().pools[0];
    let users: Vec<(&str, &str)> = p
        .redis
        .users
        .iter()
        .map(|u| (u.name.as_str(), u.password.as_str()))
        .collect();
    assert_eq!(
        users,
        [
            ("default", "pool-pass"),
            ("app", "app-pass"),
            ("ops", from_env.as_str())
        ]
    );
    assert!(
        !format!("{p:?}").contains("app-pass"),
        "passwords stay out of debug output"
    );
    let twice = "pools:\n  p:\n    listen: 127.0.0.1:6380\n    users: [{ name: a, password: x }, { name: a, password: y }]\n    servers: [127.0.0.1:7000:1]\n";
    assert!(error_of(twice).contains("user 'a' is given twice"));
    let unset = "pools:\n  p:\n    listen: 127.0.0.1:6380\n    users: [{ name: a, password_env: RINGPROXY_TEST_UNSET_VARIABLE }]\n    servers: [127.0.0.1:7000:1]\n";
    assert!(
        error_of(unset)
            .contains("user 'a': environment variable RINGPROXY_TEST_UNSET_VARIABLE is not set")
    );
}

#[test]
fn sentinel_pools_may_leave_masters_to_sentinel() {
    let text = "pools:\n  p:\n    listen: 127.0.0.1:6380\n    failover: sentinel\n    sentinels: [127.0.0.1:26379, 127.0.0.1:26380]\n    sentinel_auth: { password: s }\n    servers:\n      - { name: one }\n      - { name: two, master: 127.0.0.1:7001 }\n";
    let config = Config::parse("test.yml", text).unwrap();
    let p = &config.pools[0];
    let FailoverMode::Sentinel { sentinels, auth } = &p.failover else {
        panic!("{:?}", p.failover);
    };
    assert_eq!(sentinels.len(), 2);
    assert_eq!(auth.as_ref().unwrap().password, "s");
    assert_eq!(p.servers[0].master, None);
    assert_eq!(p.servers[1].master, Some("127.0.0.1:7001".parse().unwrap()));
}

#[test]
fn the_admin_token_is_read_and_never_shown() {
    let text = "admin: { listen: 127.0.0.1:9191, token: t0ken }\npools:\n  p:\n    listen: 127.0.0.1:6380\n    servers: [127.0.0.1:7000:1]\n";
    let config = Config::parse("test.yml", text).unwrap();
    assert_eq!(config.admin_token, Some(AdminToken("t0ken".into())));
    assert!(!format!("{config:?}").contains("t0ken"));
    let both = "admin: { listen: 127.0.0.1:9191, token: a, token_env: B }\npools:\n  p:\n    listen: 127.0.0.1:6380\n    servers: [127.0.0.1:7000:1]\n";
    assert!(error_of(both).contains("admin token: give the value or the _env variable, not both"));
}

#[test]
fn the_hard_output_limit_is_never_under_the_soft_one() {
    let pool = |limits: &str| {
        let text = format!(
            "pools:\n  p:\n    listen: 127.0.0.1:6380\n{limits}    servers: [127.0.0.1:7000:1]\n"
        );
        let c = parse(&text).unwrap().pools.remove(0);
        (c.clients.max_output_bytes, c.clients.max_output_hard_bytes)
    };
    assert_eq!(pool(""), (16 << 20, 64 << 20));
    let raised = "    limits: { max_client_output_bytes: 134217728 }\n";
    assert_eq!(pool(raised), (128 << 20, 128 << 20));
    let both =
        "    limits: { max_client_output_bytes: 1000, max_client_output_hard_bytes: 5000 }\n";
    assert_eq!(pool(both), (1000, 5000));
}

#[test]
fn a_cluster_pool_takes_seeds_and_a_refresh_interval() {
    let text = "pools:\n  c:\n    listen: 127.0.0.1:6380\n    read_from: replica_preferred\n    cluster:\n      seeds: [127.0.0.1:7000, 127.0.0.1:7001]\n      refresh_ms: 2000\n      announce: 10.0.0.1:6380\n";
    let p = &parse(text).unwrap().pools[0];
    let cluster = p.cluster.as_ref().unwrap();
    assert_eq!(cluster.seeds.len(), 2);
    assert_eq!(cluster.refresh, Duration::from_millis(2000));
    assert_eq!(cluster.announce, Some("10.0.0.1:6380".parse().unwrap()));
    assert!(p.servers.is_empty());
    let defaults =
        "pools:\n  c:\n    listen: 127.0.0.1:6380\n    cluster: { seeds: [127.0.0.1:7000] }\n";
    let p = &parse(defaults).unwrap().pools[0];
    assert_eq!(p.cluster.as_ref().unwrap().refresh, DEFAULT_CLUSTER_REFRESH);
}

#[test]
fn a_near_cache_takes_its_defaults_in_any_redis_pool() {
    let text = "pools:\n  p:\n    listen: 127.0.0.1:6380\n    near_cache: {}\n    servers: [127.0.0.1:7000:1]\n";
    let cache = parse(text).unwrap().pools[0].near_cache.clone().unwrap();
    assert_eq!(cache.max_bytes, 256 * 1024 * 1024);
    assert_eq!(cache.max_ttl, Duration::from_secs(60));
    assert!(cache.keys.is_empty());
    assert!(!cache.hot_only);
    let keys = text.replace(
        "{}",
        "{ max_bytes: 2097152, max_ttl_ms: 500, keys: [\"user:*\"], hot_only: true }",
    );
    let cache = parse(&keys).unwrap().pools[0].near_cache.clone().unwrap();
    assert_eq!(
        (cache.max_bytes, cache.max_ttl),
        (2097152, Duration::from_millis(500))
    );
    assert_eq!(cache.keys, ["user:*"]);
    assert!(cache.hot_only);
    let cluster = "pools:\n  p:\n    listen: 127.0.0.1:6380\n    near_cache: {}\n    cluster: { seeds: [127.0.0.1:7000] }\n";
    assert!(parse(cluster).unwrap().pools[0].near_cache.is_some());
}

#[test]
fn workers_is_a_count_of_at_least_one() {
    let pool = "pools:\n  p:\n    listen: 127.0.0.1:6380\n    servers: [127.0.0.1:7000:1]\n";
    assert_eq!(parse(pool).unwrap().workers, None);
    assert_eq!(
        parse(&format!("workers: 3\n{pool}")).unwrap().workers,
        Some(3)
    );
    let e = error_of(&format!("workers: 0\n{pool}"));
    assert!(e.contains("workers must be at least 1"), "{e}");
}
