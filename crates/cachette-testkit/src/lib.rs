//! Real Redis for tests: `redis-server` (masters and replicas, and Redis
//! Cluster nodes) and `redis-sentinel` processes on free loopback ports,
//! each in its own temporary directory, killed (SIGKILL) when dropped.
//!
//! The binaries must be on `PATH` (`apt-get install redis-server
//! redis-sentinel`); the project's test command installs them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// Sends one inline command and returns the raw reply (for readiness checks
/// without a client library).
pub fn raw_command(port: u16, command: &str) -> Option<String> {
    raw_command_auth(port, None, command)
}

/// Like [`raw_command`], after `READONLY` (a cluster replica answers reads
/// of its slots on such a connection instead of redirecting them).
pub fn raw_command_readonly(port: u16, command: &str) -> Option<String> {
    raw_command_after(port, Some("READONLY"), command)
}

/// Like [`raw_command`], after `AUTH password` when one is given.
pub fn raw_command_auth(port: u16, password: Option<&str>, command: &str) -> Option<String> {
    raw_command_after(
        port,
        password.map(|p| format!("AUTH {p}")).as_deref(),
        command,
    )
}

/// Sends `first` (if any, its one-line reply skipped), then `command`.
fn raw_command_after(port: u16, first: Option<&str>, command: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().ok()?,
        Duration::from_millis(200),
    )
    .ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    let before = first.map(|c| format!("{c}\r\n")).unwrap_or_default();
    stream
        .write_all(format!("{before}{command}\r\n").as_bytes())
        .ok()?;
    let mut reader = BufReader::new(stream);
    if first.is_some() {
        let mut ok = String::new();
        reader.read_line(&mut ok).ok()?;
    }
    let mut first = String::new();
    reader.read_line(&mut first).ok()?;
    if let Some(len) = first.strip_prefix('$') {
        let len: i64 = len.trim().parse().ok()?;
        if len < 0 {
            return Some(String::new());
        }
        let mut body = vec![0u8; usize::try_from(len).ok()? + 2];
        reader.read_exact(&mut body).ok()?;
        body.truncate(body.len() - 2);
        return String::from_utf8(body).ok();
    }
    Some(first.trim_end().to_owned())
}

fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} was not ready within {timeout:?}");
}

/// One `redis-server` process.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    args: Vec<String>,
    password: Option<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// A standalone master.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A standalone server with extra `--name value` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_on(free_port(), extra)
    }

    /// A server on `port` with extra `--name value` arguments.
    pub fn start_on(port: u16, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--dir",
            dir.path().to_str().expect("utf-8 temp dir"),
            "--logfile",
            "redis.log",
            // A replica's first sync would otherwise wait 5 s for more
            // replicas to join a diskless transfer.
            "--repl-diskless-sync-delay",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let password = extra
            .iter()
            .position(|a| *a == "--requirepass")
            .and_then(|i| extra.get(i + 1))
            .map(|p| p.to_string());
        let mut server = Self {
            port,
            dir,
            args,
            password,
            child: None,
        };
        server.spawn();
        server
    }

    /// A standalone server that accepts only TLS connections, with a fresh
    /// self-signed certificate (made with the `openssl` command). Connect
    /// with `rediss://127.0.0.1:{port}/0#insecure`.
    pub fn start_tls() -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().expect("temp dir");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let made = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl on PATH");
        assert!(made.success(), "openssl made a certificate");
        let path = |p: &std::path::Path| p.to_str().expect("utf-8 path").to_owned();
        let args: Vec<String> = vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            path(&cert),
            "--tls-key-file".into(),
            path(&key),
            "--tls-ca-cert-file".into(),
            path(&cert),
            "--tls-auth-clients".into(),
            "no".into(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            "".into(),
            "--dir".into(),
            path(dir.path()),
            "--logfile".into(),
            "redis.log".into(),
        ];
        let child = Command::new("redis-server")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        wait_until("redis-server over TLS", Duration::from_secs(10), || {
            Command::new("redis-cli")
                .args(["--tls", "--insecure", "-p", &port.to_string(), "PING"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
        });
        Self {
            port,
            dir,
            args,
            password: None,
            child: Some(child),
        }
    }

    /// A replica of `master` that accepts writes (`replica-read-only no`), as
    /// cachette's node-local replica must. Waits until it is in sync.
    pub fn replica_of(master: &RedisServer) -> Self {
        Self::replica_with(master, false)
    }

    /// A replica of `master` with `replica-read-only` as given.
    pub fn replica_with(master: &RedisServer, read_only: bool) -> Self {
        let master_port = master.port.to_string();
        let read_only = if read_only { "yes" } else { "no" };
        let replica = Self::start_with(&[
            "--replicaof",
            "127.0.0.1",
            &master_port,
            "--replica-read-only",
            read_only,
        ]);
        replica.wait_in_sync();
        replica
    }

    /// Waits until this replica's link to its master is up.
    pub fn wait_in_sync(&self) {
        let port = self.port;
        wait_until("replica sync", Duration::from_secs(10), || {
            raw_command(port, "INFO replication")
                .is_some_and(|info| info.contains("master_link_status:up"))
        });
    }

    fn spawn(&mut self) {
        let log = self.dir.path().join("stdout.log");
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(
                std::fs::File::create(&log)
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (apt-get install redis-server)");
        self.child = Some(child);
        let port = self.port;
        let password = self.password.clone();
        wait_until("redis-server", Duration::from_secs(10), || {
            raw_command_auth(port, password.as_deref(), "PING").is_some_and(|r| r == "+PONG")
        });
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis://127.0.0.1:port/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the process with SIGKILL (no shutdown, no save).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Stops the process with SIGSTOP: its connections stay open and
    /// unanswered (a stalled server), until [`Self::resume`].
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Continues a paused process (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
        }
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Runs an inline command and returns the raw reply.
    pub fn command(&self, command: &str) -> Option<String> {
        raw_command_auth(self.port, self.password.as_deref(), command)
    }

    /// The server's directory.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A group of `redis-sentinel` processes monitoring one master.
#[derive(Debug)]
pub struct Sentinels {
    nodes: Vec<RedisSentinel>,
}

#[derive(Debug)]
struct RedisSentinel {
    port: u16,
    _dir: tempfile::TempDir,
    child: Child,
}

impl Sentinels {
    /// Starts `count` sentinels monitoring `master` as `service`, with a quorum
    /// of a majority, `down-after-milliseconds 1000` and `failover-timeout 3000`
    /// so failovers take a few seconds in tests.
    pub fn start(count: usize, master: &RedisServer, service: &str) -> Self {
        let quorum = count / 2 + 1;
        let mut nodes = Vec::with_capacity(count);
        for _ in 0..count {
            let port = free_port();
            let dir = tempfile::tempdir().expect("temp dir");
            let conf = dir.path().join("sentinel.conf");
            let text = format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {dir}\nlogfile sentinel.log\n\
                 sentinel monitor {service} 127.0.0.1 {master} {quorum}\n\
                 sentinel down-after-milliseconds {service} 1000\n\
                 sentinel failover-timeout {service} 3000\n\
                 sentinel parallel-syncs {service} 1\n",
                dir = dir.path().display(),
                master = master.port(),
            );
            std::fs::write(&conf, text).expect("write sentinel.conf");
            let child = Command::new("redis-sentinel")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-sentinel on PATH (apt-get install redis-sentinel)");
            wait_until("redis-sentinel", Duration::from_secs(10), || {
                raw_command(port, "PING").is_some_and(|r| r == "+PONG")
            });
            nodes.push(RedisSentinel {
                port,
                _dir: dir,
                child,
            });
        }
        let sentinels = Self { nodes };
        sentinels.wait_for_master(service, master.port());
        sentinels
    }

    /// Waits until every sentinel names the master on `port` for `service`.
    pub fn wait_for_master(&self, service: &str, port: u16) {
        for node in &self.nodes {
            let node_port = node.port;
            wait_until(
                "sentinel to know the master",
                Duration::from_secs(10),
                || {
                    raw_command(
                        node_port,
                        &format!("SENTINEL get-master-addr-by-name {service}"),
                    )
                    .is_some_and(|r| r.starts_with('*'))
                        && sentinel_master_port(node_port, service) == Some(port)
                },
            );
        }
    }

    /// `redis://127.0.0.1:port` of each sentinel.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The master port the first sentinel reports for `service`.
    pub fn master_port(&self, service: &str) -> Option<u16> {
        sentinel_master_port(self.nodes.first()?.port, service)
    }
}

/// Reads the master port from `SENTINEL get-master-addr-by-name` (a RESP array
/// of two bulk strings) over a raw socket.
fn sentinel_master_port(port: u16, service: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(format!("127.0.0.1:{port}")).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    stream
        .write_all(format!("SENTINEL get-master-addr-by-name {service}\r\n").as_bytes())
        .ok()?;
    let mut reader = BufReader::new(stream);
    let mut lines = Vec::new();
    for _ in 0..5 {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        lines.push(line.trim_end().to_owned());
    }
    // *2, $len, ip, $len, port
    lines.get(4)?.parse().ok()
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
    }
}

/// A small tmpfs mounted on a temporary directory, to make a disk run full
/// for real (ENOSPC), unmounted on drop. Mounting needs root, which the
/// project's test command has; [`Tmpfs::mount`] says `None` otherwise.
#[derive(Debug)]
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` (rounded up to pages), or `None` when this
    /// process may not mount (not root).
    pub fn mount(bytes: u64) -> Option<Self> {
        let dir = tempfile::tempdir().expect("temp dir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(Self { dir })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Writes a file until the filesystem is full; returns its path (remove
    /// it to free the space).
    pub fn fill(&self) -> PathBuf {
        let path = self.dir.path().join("filler");
        let mut file = std::fs::File::create(&path).expect("create the filler");
        let chunk = vec![0xA5u8; 64 * 1024];
        while file
            .write_all(&chunk)
            .and_then(|()| file.sync_all())
            .is_ok()
        {}
        // The last partial chunk, byte-sized pieces, until nothing fits.
        while file
            .write_all(&chunk[..512])
            .and_then(|()| file.sync_all())
            .is_ok()
        {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A TCP proxy on loopback that can turn into a black hole: after
/// [`BlackholeProxy::blackhole`] it stops forwarding in both directions but
/// keeps every connection open (no FIN, no RST), as a network partition or
/// a dead host does. New connections are accepted and hear nothing either.
#[derive(Debug)]
pub struct BlackholeProxy {
    port: u16,
    blackhole: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl BlackholeProxy {
    /// Forwards a free port to `127.0.0.1:target`.
    pub fn start(target: u16) -> Self {
        use std::sync::{Arc, atomic::AtomicBool};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("local addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let blackhole = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (hole, halt) = (blackhole.clone(), stop.clone());
        thread::spawn(move || {
            use std::sync::atomic::Ordering;
            while !halt.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ] {
                    let (Ok(from), Ok(to)) = (from, to) else {
                        continue;
                    };
                    let (hole, halt) = (hole.clone(), halt.clone());
                    thread::spawn(move || pump(from, to, &hole, &halt));
                }
            }
        });
        Self {
            port,
            blackhole,
            stop,
        }
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:{port}/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Stops forwarding, silently, for good.
    pub fn blackhole(&self) {
        self.blackhole
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    hole: &std::sync::atomic::AtomicBool,
    halt: &std::sync::atomic::AtomicBool,
) {
    use std::sync::atomic::Ordering;
    let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = [0u8; 16 * 1024];
    while !halt.load(Ordering::Relaxed) {
        if hole.load(Ordering::Relaxed) {
            // Read nothing, send nothing, close nothing.
            thread::sleep(Duration::from_millis(20));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

impl Drop for BlackholeProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A port that is free, at most 55 535, with port + 10 000 free too: a Redis
/// Cluster node listens on both (the second is its cluster bus).
pub fn free_cluster_port() -> u16 {
    for _ in 0..1000 {
        let port = free_port();
        if port > 55_535 {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair for a cluster node");
}

/// One node of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// The node's id.
    pub id: String,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Whether it is a primary now.
    pub primary: bool,
    /// Whether it is flagged failed.
    pub failed: bool,
    /// The id of its primary, for a replica.
    pub primary_id: Option<String>,
    /// The slot ranges it serves (a primary).
    pub slots: Vec<(u16, u16)>,
}

/// A real Redis Cluster on loopback: `primaries` primaries with
/// `replicas` replicas each, made with `redis-cli --cluster create`,
/// `cluster-node-timeout` 2 s; every node killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    replicas: usize,
}

impl RedisCluster {
    /// Starts the nodes, creates the cluster, and waits until every node
    /// says `cluster_state:ok` and every replica's link is up.
    pub fn start(primaries: usize, replicas: usize) -> Self {
        let count = primaries * (1 + replicas);
        let nodes: Vec<RedisServer> = (0..count)
            .map(|_| {
                RedisServer::start_on(
                    free_cluster_port(),
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                        // A replica may be promoted however far it lags.
                        "--cluster-replica-validity-factor",
                        "0",
                    ],
                )
            })
            .collect();
        let mut args = vec!["--cluster".to_owned(), "create".to_owned()];
        args.extend(nodes.iter().map(RedisServer::addr));
        args.extend([
            "--cluster-replicas".to_owned(),
            replicas.to_string(),
            "--cluster-yes".to_owned(),
        ]);
        let status = Command::new("redis-cli")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli on PATH (apt-get install redis-tools)");
        assert!(status.success(), "redis-cli --cluster create failed");
        let cluster = Self { nodes, replicas };
        cluster.wait_healthy();
        // Redis lists a replica in `CLUSTER SLOTS` only once it has
        // replicated something: write a little to every primary (keys it
        // does not own are refused with MOVED, which is fine), and wait
        // until every node lists every replica.
        for node in &cluster.nodes {
            for i in 0..64 {
                let _ = node.command(&format!("SET testkit:warm:{i} 1"));
            }
        }
        let ports: Vec<u16> = cluster.nodes.iter().map(RedisServer::port).collect();
        let count = cluster.nodes.len();
        wait_until(
            "replicas listed in CLUSTER SLOTS",
            Duration::from_secs(30),
            || {
                ports.iter().all(|port| {
                    Command::new("redis-cli")
                        .args(["-p", &port.to_string(), "CLUSTER", "SLOTS"])
                        .output()
                        .is_ok_and(|out| {
                            String::from_utf8_lossy(&out.stdout)
                                .lines()
                                .filter(|l| l.trim() == "127.0.0.1")
                                .count()
                                == count
                        })
                })
            },
        );
        // Every node's view has the replicas as replicas (gossip spreads
        // the roles after the links are up).
        let ports: Vec<u16> = cluster.nodes.iter().map(RedisServer::port).collect();
        let expected = primaries * replicas;
        wait_until("cluster roles gossiped", Duration::from_secs(30), || {
            ports.iter().all(|port| {
                raw_command(*port, "CLUSTER NODES").is_some_and(|nodes| {
                    nodes
                        .lines()
                        .filter(|line| {
                            line.split_whitespace()
                                .nth(2)
                                .is_some_and(|flags| flags.contains("slave"))
                        })
                        .count()
                        == expected
                })
            })
        });
        cluster
    }

    /// Waits until every running node says `cluster_state:ok`, knows
    /// every node, and every replica's link to its primary is up.
    pub fn wait_healthy(&self) {
        let ports: Vec<u16> = self.nodes.iter().map(RedisServer::port).collect();
        let expected = self.nodes.len();
        wait_until("cluster state ok", Duration::from_secs(30), || {
            ports.iter().all(|port| {
                raw_command(*port, "CLUSTER INFO").is_some_and(|info| {
                    info.contains("cluster_state:ok")
                        && info.contains(&format!("cluster_known_nodes:{expected}"))
                })
            }) && ports.iter().all(|port| {
                raw_command(*port, "INFO replication").is_some_and(|info| {
                    info.contains("role:master") || info.contains("master_link_status:up")
                })
            })
        });
    }

    /// The nodes (primaries and replicas, in creation order).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The nodes, to kill or restart one.
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// Replicas per primary, as created.
    pub fn replicas_per_primary(&self) -> usize {
        self.replicas
    }

    /// `redis://127.0.0.1:port` of every node (seed URLs).
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port()))
            .collect()
    }

    /// `CLUSTER NODES` as one live node sees it (skipping nodes that do
    /// not answer).
    pub fn cluster_nodes(&self) -> Vec<ClusterNode> {
        let listing = self
            .nodes
            .iter()
            .find_map(|n| n.command("CLUSTER NODES").filter(|l| l.contains("myself")));
        let Some(listing) = listing else {
            return Vec::new();
        };
        listing
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let addr = fields.get(1)?;
                let port = addr
                    .split(['@', ','])
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()?;
                let flags = fields.get(2)?;
                let slots = fields
                    .iter()
                    .skip(8)
                    .filter(|f| !f.starts_with('['))
                    .filter_map(|range| {
                        let (start, end) = range.split_once('-').unwrap_or((range, range));
                        Some((start.parse().ok()?, end.parse().ok()?))
                    })
                    .collect();
                Some(ClusterNode {
                    id: fields.first()?.to_string(),
                    port,
                    primary: flags.contains("master"),
                    failed: flags.contains("fail") && !flags.contains("fail?"),
                    primary_id: fields
                        .get(3)
                        .filter(|id| **id != "-")
                        .map(|id| id.to_string()),
                    slots,
                })
            })
            .collect()
    }

    /// The port of the primary serving `slot` now.
    pub fn primary_of_slot(&self, slot: u16) -> Option<u16> {
        self.cluster_nodes()
            .into_iter()
            .find(|n| {
                n.primary && !n.failed && n.slots.iter().any(|(s, e)| (*s..=*e).contains(&slot))
            })
            .map(|n| n.port)
    }

    /// The ports of the replicas of the primary on `port`.
    pub fn replicas_of(&self, port: u16) -> Vec<u16> {
        let nodes = self.cluster_nodes();
        let Some(primary) = nodes.iter().find(|n| n.port == port) else {
            return Vec::new();
        };
        nodes
            .iter()
            .filter(|n| n.primary_id.as_deref() == Some(primary.id.as_str()))
            .map(|n| n.port)
            .collect()
    }

    /// The node on `port`.
    pub fn node_on(&mut self, port: u16) -> Option<&mut RedisServer> {
        self.nodes.iter_mut().find(|n| n.port() == port)
    }

    /// The slot of `key` (asked of a live node: `CLUSTER KEYSLOT`).
    pub fn slot_of(&self, key: &str) -> Option<u16> {
        self.nodes.iter().find_map(|n| {
            n.command(&format!("CLUSTER KEYSLOT {key}"))?
                .trim_start_matches(':')
                .parse()
                .ok()
        })
    }
}
