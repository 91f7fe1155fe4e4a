//! Loading and validating settings: every bad input fails with the file, the
//! key path and the reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

use std::time::Duration;

use cachette_settings::{ByteSize, Settings, TierKind, Timeout};

fn err(text: &str) -> String {
    Settings::from_toml_str("caches.toml", text)
        .unwrap_err()
        .to_string()
}

#[test]
fn no_caches_means_one_memory_only_default() {
    let settings = Settings::from_toml_str("caches.toml", "").unwrap();
    assert_eq!(settings.caches.len(), 1);
    let default = &settings.caches["default"];
    assert_eq!(default.tiers(), vec![TierKind::Memory]);
    assert_eq!(default.timeout, Timeout::After(Duration::from_secs(300)));
    assert_eq!(default.version, 1);
}

#[test]
fn values_are_read_as_people_write_them() {
    let settings = Settings::from_toml_str(
        "caches.toml",
        r#"
        [redis.main]
        sentinels = ["redis://10.0.0.5:26379"]
        service = "mymaster"
        local = "127.0.0.1:6379"
        master_timeout = "250ms"

        [caches.default]
        backend = "redis"
        timeout = "none"

        [caches.sessions]
        tiers = ["memory", "master"]
        timeout = 0
        version = 3
        key_prefix = "s"
        [caches.sessions.memory]
        max_bytes = "16MiB"
        max_ttl = 30

        [caches.pages]
        timeout = "1h 30m"
        "#,
    )
    .unwrap();
    assert_eq!(
        settings.caches["default"].tiers(),
        vec![TierKind::Local, TierKind::Master]
    );
    assert_eq!(settings.caches["default"].timeout, Timeout::Never);
    assert_eq!(settings.caches["default"].redis.as_deref(), Some("main"));
    let sessions = &settings.caches["sessions"];
    assert_eq!(sessions.timeout, Timeout::After(Duration::ZERO));
    assert_eq!(
        sessions.memory_settings().max_bytes,
        ByteSize(16 * 1024 * 1024)
    );
    assert_eq!(
        sessions.memory_settings().max_ttl.unwrap().0,
        Duration::from_secs(30)
    );
    assert_eq!(
        settings.caches["pages"].timeout,
        Timeout::After(Duration::from_secs(5400))
    );
    assert_eq!(settings.caches["pages"].tiers(), vec![TierKind::Memory]);
    assert_eq!(
        settings.redis["main"].master_timeout.unwrap().0,
        Duration::from_millis(250)
    );
}

#[test]
fn unknown_keys_name_the_key() {
    assert_eq!(
        err("[caches.default]\ntimeuot = 5"),
        "caches.toml: caches.default.timeuot: unknown field: found `timeuot`, expected `one of `tiers`, `backend`, `redis`, `timeout`, `key_prefix`, `version`, `key_function`, `namespace`, `memory`, `journal`, `http`, `fleet_coalescing`, `fill_lease``"
    );
    let e = err("[caches.default.memory]\nmax_byte = 5");
    assert!(
        e.starts_with("caches.toml: caches.default.memory.max_byte: unknown field"),
        "{e}"
    );
    let e = err("[cache.default]\ntimeout = 5");
    assert!(e.starts_with("caches.toml: cache: unknown field"), "{e}");
}

#[test]
fn wrong_types_name_the_key_and_the_reason() {
    let e = err("[caches.default]\ntimeout = \"soon\"");
    assert!(
        e.starts_with("caches.toml: caches.default.timeout: "),
        "{e}"
    );
    assert!(e.contains("`soon` is not a duration"), "{e}");
    let e = err("[caches.default]\ntimeout = -5");
    assert!(
        e.contains("caches.default.timeout") && e.contains("cannot be negative"),
        "{e}"
    );
    let e = err("[caches.default]\nversion = \"two\"");
    assert!(
        e.starts_with("caches.toml: caches.default.version: invalid type"),
        "{e}"
    );
    let e = err("[caches.default.memory]\nmax_bytes = \"lots\"");
    assert!(
        e.contains("caches.default.memory.max_bytes") && e.contains("not a size"),
        "{e}"
    );
    let e = err("[caches.default]\ntiers = [\"disk\"]");
    assert!(e.starts_with("caches.toml: caches.default.tiers"), "{e}");
}

#[test]
fn unreachable_combinations_are_refused() {
    assert_eq!(
        err("[caches.default]\ntiers = [\"local\"]"),
        "caches.toml: caches.default.tiers: `local` needs `master` after it (the local replica replicates a master)"
    );
    assert_eq!(
        err("[caches.default]\ntiers = [\"memory\", \"master\"]"),
        "caches.toml: caches.default.tiers: Redis tiers need a `[redis.<name>]` topology, and there is none"
    );
    let redis = "[redis.main]\nurl = \"redis://127.0.0.1:6379\"\n";
    assert_eq!(
        err(&format!(
            "{redis}[caches.default]\ntiers = [\"memory\", \"local\", \"master\"]"
        )),
        "caches.toml: caches.default.tiers: `local` is listed but `[redis.main]` has no `local` replica"
    );
    assert!(
        err(&format!(
            "{redis}[caches.default]\ntiers = [\"master\", \"memory\"]"
        ))
        .contains("order memory, local, master")
    );
    assert!(
        err(&format!(
            "{redis}[caches.default]\ntiers = [\"memory\", \"memory\"]"
        ))
        .contains("no tier may repeat")
    );
    assert_eq!(
        err(&format!(
            "{redis}[caches.default]\ntiers = [\"memory\"]\n[caches.default.journal]\npath = \"j\""
        )),
        "caches.toml: caches.default.journal: the journal records master writes: it needs the `master` tier"
    );
    assert_eq!(
        err(&format!(
            "{redis}[caches.default]\ntiers = [\"master\"]\nredis = \"other\""
        )),
        "caches.toml: caches.default.redis: no topology `[redis.other]` (known: main)"
    );
    assert_eq!(
        err("[caches.default]\ntiers = [\"memory\"]\nbackend = \"memory\""),
        "caches.toml: caches.default.backend: `tiers` and `backend` are exclusive: set only one"
    );
    assert_eq!(
        err("[redis.main]\nsentinels = [\"redis://h:26379\"]"),
        "caches.toml: redis.main.service: Sentinel needs the service name (`sentinel monitor <service> ...`)"
    );
    assert_eq!(
        err("[redis.main]\ndb = 1"),
        "caches.toml: redis.main: set one of `url` (one Redis), `master` (+ `local`), `sentinels` (+ `service`), `cluster` (seed nodes) or `peers` (+ `self`)"
    );
    assert_eq!(
        err("[redis.main]\nurl = \"http://h\""),
        "caches.toml: redis.main.url: `http://h` is not a redis:// or rediss:// URL"
    );
    assert_eq!(
        err("[caches.default]\nbackend = \"dummy\"\n[caches.default.memory]\nmax_bytes = 1"),
        "caches.toml: caches.default.memory: memory options without the `memory` tier"
    );
}

#[test]
fn files_and_environment_overrides() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "caches.toml",
            "[caches.default]\ntimeout = \"5m\"\n[caches.pages]\ntimeout = 30\n",
        )?;
        jail.set_env("CACHETTE__CACHES__DEFAULT__TIMEOUT", "60");
        jail.set_env("CACHETTE__CACHES__PAGES__KEY_PREFIX", "p");
        let settings = Settings::load("caches.toml").unwrap();
        assert_eq!(
            settings.caches["default"].timeout,
            Timeout::After(Duration::from_secs(60))
        );
        assert_eq!(settings.caches["pages"].key_prefix, "p");
        assert_eq!(
            settings.caches["pages"].timeout,
            Timeout::After(Duration::from_secs(30))
        );

        jail.set_env("CACHETTE__CACHES__DEFAULT__TIMEOUT", "later");
        let e = Settings::load("caches.toml").unwrap_err();
        assert_eq!(e.key, "caches.default.timeout");
        assert_eq!(e.source_name, "environment", "{e}");

        let e = Settings::load("missing.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "missing.toml: (file): the file does not exist"
        );
        jail.create_file("bad.toml", "[caches.default\n")?;
        let e = Settings::load("bad.toml").unwrap_err();
        assert!(e.to_string().starts_with("bad.toml: "), "{e}");
        Ok(())
    });
}

#[test]
fn namespaces_where_one_is_a_prefix_of_another_are_refused() {
    let redis = "[redis.main]\nurl = \"redis://127.0.0.1:6379\"\n";
    assert_eq!(
        err(&format!(
            "{redis}[caches.shop]\nbackend = \"redis\"\nnamespace = \"shop\"\n[caches.orders]\nbackend = \"redis\"\nnamespace = \"shop2\""
        )),
        "caches.toml: caches.orders.namespace: `shop2` starts with `shop`, the namespace of cache `shop` on the same Redis: clearing `shop` would remove this cache's keys; choose namespaces where none is a prefix of another (end them with `:`)"
    );
    // Derived from aliases: `cachette:a:` is a prefix of `cachette:a:b:`.
    assert!(
        err(&format!(
            "{redis}[caches.a]\nbackend = \"redis\"\n[caches.\"a:b\"]\nbackend = \"redis\""
        ))
        .starts_with(
            "caches.toml: caches.a:b.namespace: `cachette:a:b:` starts with `cachette:a:`"
        )
    );
    assert!(
        err(&format!(
            "{redis}[caches.a]\nbackend = \"redis\"\nnamespace = \"\""
        ))
        .contains("caches.a.namespace: must not be empty")
    );
    // Two aliases over one store (Django's pattern), and prefixes on
    // different Redis servers, are fine.
    let two = format!(
        "{redis}[redis.other]\nurl = \"redis://127.0.0.1:6380\"\n\
         [caches.default]\nbackend = \"redis\"\nredis = \"main\"\nnamespace = \"app:\"\n\
         [caches.v2]\nbackend = \"redis\"\nredis = \"main\"\nnamespace = \"app:\"\n\
         [caches.elsewhere]\nbackend = \"redis\"\nredis = \"other\"\nnamespace = \"app:x:\""
    );
    assert!(Settings::from_toml_str("caches.toml", &two).is_ok());
}

#[test]
fn key_headers_must_be_field_names() {
    assert_eq!(
        err("[caches.default.http]\nkey_headers = [\"x-tenant\", \"bad header\"]"),
        "caches.toml: caches.default.http.key_headers: `bad header` is not a header field name"
    );
    assert!(
        Settings::from_toml_str(
            "caches.toml",
            "[caches.default.http]\nkey_headers = [\"x-tenant\"]"
        )
        .is_ok()
    );
}

#[test]
fn a_cluster_topology_is_read_and_checked() {
    let settings = Settings::from_toml_str(
        "caches.toml",
        r#"
        [redis.main]
        cluster = ["redis://10.0.0.5:7000", "10.0.0.6:7000"]
        local_replica = "10.0.0.7"

        [caches.default]
        backend = "redis"
        "#,
    )
    .unwrap();
    let main = &settings.redis["main"];
    assert_eq!(main.cluster.as_ref().unwrap().len(), 2);
    assert_eq!(main.local.as_deref(), Some("10.0.0.7"));
    assert_eq!(
        settings.caches["default"].tiers(),
        vec![TierKind::Local, TierKind::Master]
    );

    assert_eq!(
        err("[redis.main]\ncluster = []"),
        "caches.toml: redis.main.cluster: at least one seed node is needed"
    );
    assert_eq!(
        err("[redis.main]\ncluster = [\"redis://h\"]"),
        "caches.toml: redis.main.cluster: `redis://h` is not host:port or a redis:// URL with a port"
    );
    assert_eq!(
        err("[redis.main]\ncluster = [\"h:7000\"]\ndb = 2"),
        "caches.toml: redis.main.db: a Redis Cluster has only database 0"
    );
    assert_eq!(
        err("[redis.main]\ncluster = [\"h:7000\"]\nlocal = \"h:x\""),
        "caches.toml: redis.main.local: `h:x` is not a host or host:port of this node's replicas"
    );
    assert_eq!(
        err("[redis.main]\ncluster = [\"h:7000\"]\nurl = \"redis://h:1\""),
        "caches.toml: redis.main: `url`, `master`, `sentinels`, `cluster` and `peers` are exclusive: set only one"
    );
    let braces = err(
        "[redis.main]\ncluster = [\"h:7000\"]\n[caches.default]\nbackend = \"redis\"\nnamespace = \"app{1}:\"",
    );
    assert!(
        braces
            .starts_with("caches.toml: caches.default.namespace: `app{1}:` is on a Redis Cluster"),
        "{braces}"
    );
}

#[test]
fn a_fleet_of_peers_is_read_and_checked() {
    let settings = Settings::from_toml_str(
        "caches.toml",
        r#"
        [redis.fleet]
        peers = ["redis://10.0.0.5:6379", "redis://10.0.0.6:6379", "redis://10.0.0.7:6379"]
        self = "redis://10.0.0.6:6379"
        replicate_max_bytes = "256 KiB"
        replicate_queue = 100

        [caches.default]
        backend = "redis"
        journal = { path = "/var/lib/cachette/default.journal" }

        [caches.pages]
        tiers = ["memory", "local"]
        journal = { path = "/var/lib/cachette/pages.journal" }
        "#,
    )
    .unwrap();
    assert_eq!(settings.caches["default"].tiers(), vec![TierKind::Local]);
    assert_eq!(
        settings.caches["pages"].tiers(),
        vec![TierKind::Memory, TierKind::Local]
    );
    assert_eq!(settings.redis["fleet"].replicate_queue, Some(100));

    let peers = "[redis.fleet]\npeers = [\"redis://a:1\", \"redis://b:1\"]\n";
    let with = |rest: &str| err(&format!("{peers}{rest}"));
    assert_eq!(
        err("[redis.fleet]\npeers = [\"redis://a:1\", \"redis://b:1\"]"),
        "caches.toml: redis.fleet.self: a fleet of peers needs `self`: which of `peers` is this node's Redis"
    );
    assert_eq!(
        with("self = \"redis://c:1\""),
        "caches.toml: redis.fleet.self: `redis://c:1` is not one of `peers` (redis://a:1, redis://b:1), nor a unix:///path socket"
    );
    assert!(
        Settings::from_toml_str(
            "caches.toml",
            &format!("{peers}self = \"unix:///run/redis.sock\"")
        )
        .is_ok(),
        "a unix socket for this node"
    );
    assert_eq!(
        err("[redis.fleet]\npeers = [\"redis://a:1\"]\nself = \"redis://a:1\""),
        "caches.toml: redis.fleet.peers: a fleet of peers lists every node's Redis: at least two"
    );
    assert_eq!(
        err("[redis.fleet]\npeers = [\"redis://a:1\", \"a:2\"]\nself = \"redis://a:1\""),
        "caches.toml: redis.fleet.peers: `a:2` is not a redis:// or rediss:// URL with host and port"
    );
    assert_eq!(
        err(
            "[redis.fleet]\npeers = [\"redis://a:1\", \"redis://u:p@a:1/0\"]\nself = \"redis://a:1\""
        ),
        "caches.toml: redis.fleet.peers: `redis://u:p@a:1/0` is listed twice"
    );
    assert_eq!(
        err("[redis.main]\nurl = \"redis://a:1\"\nself = \"redis://a:1\""),
        "caches.toml: redis.main.self: is only used with `peers`"
    );
    assert_eq!(
        with("self = \"redis://a:1\"\n[caches.default]\ntiers = [\"memory\", \"local\"]"),
        "caches.toml: caches.default.journal: a cache on a fleet of peers needs a journal: it keeps the invalidations a peer could not take until it answers again (and this node's own writes its Redis could not take)"
    );
    assert_eq!(
        with("self = \"redis://a:1\"\n[caches.default]\ntiers = [\"memory\", \"master\"]"),
        "caches.toml: caches.default.tiers: `[redis.fleet]` is a fleet of peers, which has no master: list `local` (this node's Redis) instead"
    );
    assert_eq!(
        with("self = \"redis://a:1\"\nreplicate_concurrency = 0"),
        "caches.toml: redis.fleet.replicate_concurrency: must be at least 1"
    );
}

#[test]
fn fleet_coalescing_needs_the_master_and_its_options_are_checked() {
    assert_eq!(
        err("[caches.default]\ntiers = [\"memory\"]\nfleet_coalescing = true"),
        "caches.toml: caches.default.fleet_coalescing: fleet coalescing takes its leases on the Redis master: it needs the `master` tier"
    );
    assert_eq!(
        err(
            "[caches.default]\ntiers = [\"memory\"]\n[caches.default.http]\nfleet_coalescing = true"
        ),
        "caches.toml: caches.default.http.fleet_coalescing: fleet coalescing takes its leases on the Redis master: it needs the `master` tier"
    );
    assert!(
        err("[caches.default]\n[caches.default.http]\nrefresh_ahead = 1.5")
            .starts_with("caches.toml: caches.default.http.refresh_ahead: must be a fraction strictly between 0 and 1")
    );
    let redis = "[redis.main]\nurl = \"redis://127.0.0.1:6379\"\n[caches.default]\ntiers = [\"memory\", \"master\"]\n";
    assert_eq!(
        err(&format!(
            "{redis}[caches.default.http]\nfleet_coalescing = true\nfill_lease = \"10s\""
        )),
        "caches.toml: caches.default.http.fill_lease: must be shorter than lock_timeout (10s): a node that dies holding the lease must lose it before the other nodes stop waiting"
    );
    assert!(
        err(&format!("{redis}fill_lease = \"1ms\""))
            .contains("caches.default.fill_lease: must be at least 10ms")
    );
    let settings = Settings::from_toml_str(
        "caches.toml",
        "[redis.main]\nurl = \"redis://127.0.0.1:6379\"\n[caches.default]\ntiers = [\"memory\", \"master\"]\nfleet_coalescing = true\nfill_lease = \"2s\"\n[caches.default.http]\nfleet_coalescing = true\nfill_lease = \"3s\"\nsoft_timeout = \"150ms\"\nhard_timeout = \"4s\"\nrefresh_ahead = 0.1",
    )
    .unwrap();
    let cache = &settings.caches["default"];
    assert!(cache.fleet_coalescing);
    assert_eq!(cache.fill_lease.unwrap().0, Duration::from_secs(2));
    let http = cache.http.as_ref().unwrap();
    assert_eq!(http.fleet_coalescing, Some(true));
    assert_eq!(http.fill_lease.unwrap().0, Duration::from_secs(3));
    assert_eq!(http.soft_timeout.unwrap().0, Duration::from_millis(150));
    assert_eq!(
        http.origin_timeout.unwrap().0,
        Duration::from_secs(4),
        "hard_timeout is origin_timeout"
    );
    assert_eq!(http.refresh_ahead, Some(0.1));
}

#[test]
fn proxy_upstream_headers_take_values_from_the_environment_and_are_checked() {
    // A variable every test process has (setting one would need `unsafe`).
    let path = std::env::var("PATH").unwrap();
    let settings = Settings::from_toml_str(
        "caches.toml",
        "[proxy.upstream_headers]\nAuthorization = \"Bearer ${PATH}\"\nx-plain = \"v\"\n",
    )
    .unwrap();
    // Kept as written (checked, not expanded: `cachette check` needs no
    // secret), expanded for the proxy.
    assert_eq!(
        settings.proxy.upstream_headers["authorization"].expose(),
        "Bearer ${PATH}"
    );
    let headers: std::collections::BTreeMap<String, String> = settings
        .proxy_upstream_headers()
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.expose().to_owned()))
        .collect();
    assert_eq!(headers["authorization"], format!("Bearer {path}"));
    assert_eq!(headers["x-plain"], "v");
    let unset = Settings::from_toml_str(
        "caches.toml",
        "[proxy.upstream_headers]\nauthorization = \"${CACHETTE_NEVER_SET_12345}\"\n",
    )
    .unwrap();
    assert_eq!(
        unset.proxy_upstream_headers().unwrap_err().to_string(),
        "caches.toml: proxy.upstream_headers.authorization: the environment variable `CACHETTE_NEVER_SET_12345` is not set"
    );
    assert!(
        err("[proxy.upstream_headers]\nAuthorization = \"a\"\nauthorization = \"b\"")
            .contains("given twice")
    );
    assert!(
        !format!("{settings:?}").contains("tok-123"),
        "secrets are not printed"
    );
    assert_eq!(
        err("[proxy.upstream_headers]\nhost = \"x\""),
        "caches.toml: proxy.upstream_headers.host: is set by the proxy itself (connection or framing field)"
    );
    assert_eq!(
        err("[proxy.upstream_headers]\n\"bad name\" = \"x\""),
        "caches.toml: proxy.upstream_headers.bad name: is not a header field name"
    );
    assert_eq!(
        err("[proxy.upstream_headers]\nauthorization = \"${UNCLOSED\""),
        "caches.toml: proxy.upstream_headers.authorization: an unclosed `${` (write `${NAME}`)"
    );
}
