//! The fixtures against the real binaries: each test starts its own servers
//! and relies on nothing left running.

use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tenantmeter_testkit::{RedisCluster, RedisServer, free_port, wait_until};

async fn connect(server: &RedisServer) -> anyhow::Result<MultiplexedConnection> {
    Ok(server.client()?.get_multiplexed_async_connection().await?)
}

async fn set(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    value: &str,
) -> anyhow::Result<()> {
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

async fn get(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
) -> anyhow::Result<Option<String>> {
    Ok(redis::cmd("GET").arg(key).query_async(conn).await?)
}

#[tokio::test]
async fn server_sets_and_gets_and_survives_a_restart() -> anyhow::Result<()> {
    let mut server = RedisServer::start().await?;
    assert_eq!(
        server.url(),
        format!("redis://127.0.0.1:{}/", server.port())
    );
    let port = server.port();
    let pid = server.pid();

    let mut conn = connect(&server).await?;
    set(&mut conn, "tenant:a", "42").await?;
    assert_eq!(get(&mut conn, "tenant:a").await?.as_deref(), Some("42"));

    server.restart().await?;
    assert_eq!(server.port(), port, "restart keeps the port");
    assert_ne!(server.pid(), pid, "restart runs a new process");

    // The old connection died with the old process; a new one works, and
    // without AOF the data did not survive.
    let mut conn = connect(&server).await?;
    assert_eq!(get(&mut conn, "tenant:a").await?, None);
    set(&mut conn, "tenant:a", "43").await?;
    assert_eq!(get(&mut conn, "tenant:a").await?.as_deref(), Some("43"));
    server.stop().await
}

#[tokio::test]
async fn aof_keeps_data_across_a_restart() -> anyhow::Result<()> {
    let mut server = RedisServer::builder().aof(true).start().await?;
    let mut conn = connect(&server).await?;
    set(&mut conn, "{t:a}balance", "100").await?;

    server.restart().await?;

    let mut conn = connect(&server).await?;
    assert_eq!(
        get(&mut conn, "{t:a}balance").await?.as_deref(),
        Some("100"),
        "log:\n{}",
        server.log_contents()
    );
    Ok(())
}

#[tokio::test]
async fn a_killed_server_is_down_until_started_again() -> anyhow::Result<()> {
    let mut server = RedisServer::start().await?;
    server.kill().await?;
    assert_eq!(server.pid(), None);

    let client = server.client()?;
    assert!(
        client.get_multiplexed_async_connection().await.is_err(),
        "nothing should answer while the server is down"
    );
    assert!(
        server.kill().await.is_ok(),
        "killing a dead server is a no-op"
    );

    server.start_again().await?;
    assert!(server.start_again().await.is_err(), "already running");
    let mut conn = connect(&server).await?;
    set(&mut conn, "k", "v").await?;
    assert_eq!(get(&mut conn, "k").await?.as_deref(), Some("v"));
    Ok(())
}

#[tokio::test]
async fn two_servers_at_once_get_different_ports_and_data() -> anyhow::Result<()> {
    let (first, second) = tokio::join!(RedisServer::start(), RedisServer::start());
    let (first, second) = (first?, second?);
    assert_ne!(first.port(), second.port());
    assert_ne!(first.data_dir(), second.data_dir());

    let mut a = connect(&first).await?;
    let mut b = connect(&second).await?;
    set(&mut a, "only-in-first", "1").await?;
    assert_eq!(get(&mut b, "only-in-first").await?, None);
    Ok(())
}

#[tokio::test]
async fn dropping_a_server_kills_it_and_frees_its_port() -> anyhow::Result<()> {
    let server = RedisServer::start().await?;
    let port = server.port();
    let dir = server.data_dir().to_owned();
    drop(server);

    // Drop waits for the exit, so the port is free at once, no polling.
    TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
    assert!(!dir.exists(), "the data directory is removed");
    Ok(())
}

#[tokio::test]
async fn stopping_a_server_frees_its_port() -> anyhow::Result<()> {
    let server = RedisServer::start().await?;
    let port = server.port();
    server.stop().await?;
    TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
    Ok(())
}

#[tokio::test]
async fn extra_config_is_applied() -> anyhow::Result<()> {
    let server = RedisServer::builder()
        .config("maxmemory", "1mb")
        .start()
        .await?;
    let mut conn = connect(&server).await?;
    let reply: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory")
        .query_async(&mut conn)
        .await?;
    assert_eq!(reply, ["maxmemory", "1048576"]);
    Ok(())
}

#[tokio::test]
async fn a_bad_config_fails_fast_and_quotes_the_log() -> anyhow::Result<()> {
    let started = tokio::time::Instant::now();
    let error = RedisServer::builder()
        .config("no-such-directive", "1")
        .start()
        .await
        .unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("no-such-directive"), "{message}");
    // It exits at once; we must notice that, not wait out the ready timeout.
    assert!(started.elapsed() < Duration::from_secs(9), "{message}");
    Ok(())
}

#[tokio::test]
async fn cluster_serves_hash_tagged_keys() -> anyhow::Result<()> {
    let cluster = RedisCluster::start().await?;
    let urls = cluster.urls();
    assert_eq!(urls.len(), 3);
    let ports: std::collections::HashSet<_> =
        cluster.nodes().iter().map(RedisServer::port).collect();
    assert_eq!(ports.len(), 3);

    let mut conn = cluster.client()?.get_async_connection().await?;
    set(&mut conn, "{t:a}x", "1").await?;
    set(&mut conn, "{t:b}y", "2").await?;
    assert_eq!(get(&mut conn, "{t:a}x").await?.as_deref(), Some("1"));
    assert_eq!(get(&mut conn, "{t:b}y").await?.as_deref(), Some("2"));

    // Hash tags put a tenant's keys in one slot, so multi-key commands on
    // them work in the cluster.
    redis::cmd("MSET")
        .arg("{t:a}p")
        .arg("3")
        .arg("{t:a}q")
        .arg("4")
        .query_async::<()>(&mut conn)
        .await?;
    let both: Vec<String> = redis::cmd("MGET")
        .arg("{t:a}p")
        .arg("{t:a}q")
        .query_async(&mut conn)
        .await?;
    assert_eq!(both, ["3", "4"]);
    cluster.stop().await
}

#[tokio::test]
async fn a_cluster_with_aof_keeps_its_keys_across_node_restarts() -> anyhow::Result<()> {
    let mut cluster = RedisCluster::builder().aof(true).start().await?;
    let ports: Vec<u16> = cluster.nodes().iter().map(RedisServer::port).collect();
    let keys: Vec<String> = (0..30).map(|i| format!("{{t:{i}}}k")).collect();
    {
        let mut conn = cluster.client()?.get_async_connection().await?;
        for key in &keys {
            set(&mut conn, key, key).await?;
        }
    }
    for index in 0..ports.len() {
        cluster.restart_node(index).await?;
    }
    let after: Vec<u16> = cluster.nodes().iter().map(RedisServer::port).collect();
    assert_eq!(after, ports, "a restarted node must keep its port");

    // Healthy on return: a fresh client is served at once, by every master.
    let mut conn = cluster.client()?.get_async_connection().await?;
    for key in &keys {
        assert_eq!(get(&mut conn, key).await?.as_deref(), Some(key.as_str()));
    }
    for node in cluster.nodes() {
        let keys_here: i64 = redis::cmd("DBSIZE")
            .query_async(&mut connect(node).await?)
            .await?;
        assert!(keys_here > 0, "node on port {} holds no keys", node.port());
    }
    let error = cluster.restart_node(3).await.unwrap_err();
    assert!(error.to_string().contains("only 3 nodes"), "{error:#}");
    cluster.stop().await
}

#[tokio::test]
async fn a_cluster_needs_three_masters() {
    let error = RedisCluster::builder()
        .masters(2)
        .start()
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("at least 3 masters"),
        "{error:#}"
    );
}

#[tokio::test]
async fn wait_until_polls_a_real_port() -> anyhow::Result<()> {
    // Nothing listens on a fresh port, so this must time out; a server
    // started on it is then seen at once.
    let port = free_port()?;
    let open = move || async move {
        tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .is_ok()
    };
    assert!(wait_until(Duration::from_millis(50), open).await.is_err());

    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?;
    wait_until(Duration::from_secs(5), open).await?;
    drop(listener);
    Ok(())
}
