//! The HTTP proxy over real loopback sockets, in front of real hyper backends.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use hyper::StatusCode;
use lb::{Algorithm, Balancer, Config, Endpoint, EndpointState, HashKey, Health, HttpOptions};
use support::{Backend, client, get, http_proxy, request, send, wait_for};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

async fn backends(names: &[&str]) -> Vec<Backend> {
    let mut all = Vec::new();
    for name in names {
        all.push(Backend::start(name).await);
    }
    all
}

fn endpoints(backends: &[Backend]) -> Vec<Endpoint> {
    backends.iter().map(Backend::endpoint).collect()
}

fn config(algorithm: Algorithm) -> Config {
    Config {
        algorithm,
        ..Config::default()
    }
}

/// Sends `n` GETs one after another and counts the answers by backend name.
async fn spread(proxy: std::net::SocketAddr, n: usize) -> HashMap<String, usize> {
    let client = client();
    let mut seen = HashMap::new();
    for _ in 0..n {
        let answer = get(&client, proxy, "/").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        *seen.entry(answer.body).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly() {
    let b = backends(&["a", "b", "c"]).await;
    let balancer = Balancer::new(Config::default(), &endpoints(&b));
    let proxy = http_proxy(balancer, HttpOptions::default()).await;
    let seen = spread(proxy, 300).await;
    for name in ["a", "b", "c"] {
        let n = seen.get(name).copied().unwrap_or(0);
        assert!((95..=105).contains(&n), "{seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_follows_the_weights() {
    let b = backends(&["light", "heavy"]).await;
    let mut set = endpoints(&b);
    set[1].weight = 3;
    let balancer = Balancer::new(config(Algorithm::WeightedRoundRobin), &set);
    let proxy = http_proxy(balancer, HttpOptions::default()).await;
    let seen = spread(proxy, 400).await;
    assert!((290..=310).contains(&seen["heavy"]), "{seen:?}");
    assert!((90..=110).contains(&seen["light"]), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_prefers_the_idle_backend() {
    let b = backends(&["slow", "idle"]).await;
    let balancer = Balancer::new(config(Algorithm::LeastConnections), &endpoints(&b));
    let proxy = http_proxy(Arc::clone(&balancer), HttpOptions::default()).await;
    // One request held by the slow backend: it has one in flight, the other none.
    let client = client();
    let held = loop {
        let c = client.clone();
        let held = tokio::spawn(async move { get(&c, proxy, "/hold").await });
        wait_for("the held request to land", || b[0].hits() + b[1].hits() > 0).await;
        if b[0].hits() == 1 {
            break held;
        }
        // It went to the idle one, which held it too: let it go and try again.
        b[1].release();
        held.await.unwrap();
        b[1].hits.store(0, SeqCst);
    };
    let seen = spread(proxy, 100).await;
    assert_eq!(seen.get("idle"), Some(&100), "{seen:?}");
    assert_eq!(b[0].hits(), 1);
    b[0].release();
    assert_eq!(held.await.unwrap().body, "slow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_is_sticky_and_moves_few_keys_when_a_backend_leaves() {
    let names = ["a", "b", "c", "d"];
    let b = backends(&names).await;
    let key = HashKey::Header("x-user".parse().unwrap());
    let balancer = Balancer::new(config(Algorithm::ConsistentHash(key)), &endpoints(&b));
    let proxy = http_proxy(Arc::clone(&balancer), HttpOptions::default()).await;
    let client = client();
    let owner = |user: usize| {
        let client = client.clone();
        async move {
            let mut req = request("GET", proxy, "/");
            req.headers_mut()
                .insert("x-user", format!("user-{user}").parse().unwrap());
            send(&client, req).await.body
        }
    };
    let users = 400;
    let mut before = Vec::new();
    for user in 0..users {
        let first = owner(user).await;
        for _ in 0..2 {
            assert_eq!(owner(user).await, first, "user {user} moved");
        }
        before.push(first);
    }
    for name in names {
        let share = before.iter().filter(|o| *o == name).count();
        assert!(
            (60..=140).contains(&share),
            "{name} owns {share} of {users}"
        );
    }

    // "d" leaves: its users move, nearly all the others stay (Maglev trades a little
    // disruption for its even spread: the unit tests bound it for more set sizes).
    balancer.update(&endpoints(&b[..3]));
    let (mut moved_from_d, mut moved_from_others) = (0, 0);
    for (user, was) in before.iter().enumerate() {
        let now = owner(user).await;
        assert_ne!(now, "d");
        if was == "d" {
            moved_from_d += 1;
        } else if &now != was {
            moved_from_others += 1;
        }
        assert_eq!(owner(user).await, now, "user {user} is sticky again");
    }
    let of_d = before.iter().filter(|o| *o == "d").count();
    assert_eq!(moved_from_d, of_d);
    assert!(
        moved_from_others <= users * 3 / 100,
        "{moved_from_others} of {users} moved needlessly"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_costs_no_failed_request() {
    let mut b = backends(&["a", "b", "c"]).await;
    let config = Config {
        // Short, so the dead backend is tried again (and ejected again) during the test.
        outlier: lb::Outlier {
            base: Duration::from_millis(100),
            max: Duration::from_millis(400),
            ..lb::Outlier::default()
        },
        ..Config::default()
    };
    let balancer = Balancer::new(config, &endpoints(&b));
    let proxy = http_proxy(Arc::clone(&balancer), HttpOptions::default()).await;
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut load = Vec::new();
    for _ in 0..8 {
        let (done, failed, stop) = (Arc::clone(&done), Arc::clone(&failed), Arc::clone(&stop));
        load.push(tokio::spawn(async move {
            let client = client();
            loop {
                let answer = tokio::select! {
                    answer = client.request(request("GET", proxy, "/")) => answer,
                    () = stop.notified() => return,
                };
                match answer {
                    Ok(a) if a.status() == StatusCode::OK => {}
                    other => {
                        eprintln!("failed: {other:?}");
                        failed.fetch_add(1, SeqCst);
                    }
                }
                done.fetch_add(1, SeqCst);
            }
        }));
    }
    wait_for("a steady load", || done.load(SeqCst) >= 300).await;
    let killed = b.remove(0);
    let killed_at = tokio::time::Instant::now();
    killed.kill().await;
    let before = done.load(SeqCst);
    wait_for("load after the kill", || {
        done.load(SeqCst) >= before + 1_500
    })
    .await;
    wait_for("time past a few ejections", || {
        killed_at.elapsed() > Duration::from_secs(1)
    })
    .await;
    stop.notify_waiters();
    for task in load {
        // A task between requests misses the notification: stop it the hard way.
        task.abort();
    }
    assert_eq!(
        failed.load(SeqCst),
        0,
        "failed requests of {}",
        done.load(SeqCst)
    );
    let s = balancer.snapshot();
    let dead = s.endpoint("a").unwrap();
    assert!(dead.counters.ejections >= 2, "{dead:?}");
    assert!(s.listener.retries >= 1, "{s:?}");
    assert_eq!(s.listener.errors, 0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_backend_gets_its_client_a_502_and_the_others_keep_serving() {
    let good = Backend::start("good").await;
    let (garbage, _task) = support::garbage().await;
    let set = vec![Endpoint::ready("garbage", garbage), good.endpoint()];
    let balancer = Balancer::new(Config::default(), &set);
    let proxy = http_proxy(Arc::clone(&balancer), HttpOptions::default()).await;
    let client = client();

    // A POST reached the garbage backend (the first in turn): not sent again, a 502.
    let answer = send(&client, request("POST", proxy, "/")).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    // It is ejected; everything else goes to the good one.
    for _ in 0..20 {
        let answer = send(&client, request("POST", proxy, "/")).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, "good");
    }
    let s = balancer.snapshot();
    assert_eq!(s.endpoint("garbage").unwrap().health, Health::Ejected);
    assert_eq!(s.listener.errors, 1);

    // A GET that meets garbage is sent again to the good one.
    let balancer = Balancer::new(Config::default(), &set);
    let proxy = http_proxy(Arc::clone(&balancer), HttpOptions::default()).await;
    let answer = get(&client, proxy, "/").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "good")
    );
    let s = balancer.snapshot();
    assert_eq!(s.listener.retries, 1);
    assert_eq!(s.endpoint("garbage").unwrap().counters.errors, 1);
    assert_eq!(s.endpoint("good").unwrap().counters.retries, 1);

    // With only garbage left, a 502, and the listener keeps answering.
    balancer.update(&set[..1]);
    for _ in 0..3 {
        assert_eq!(
            get(&client, proxy, "/").await.status,
            StatusCode::BAD_GATEWAY
        );
    }
    balancer.update(&set[1..]);
    assert_eq!(get(&client, proxy, "/").await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_retried_for_idempotent_requests_only() {
    let unavailable = Backend::answering("unavailable", StatusCode::SERVICE_UNAVAILABLE).await;
    let good = Backend::start("good").await;
    let set = vec![unavailable.endpoint(), good.endpoint()];
    let client = client();

    let balancer = Balancer::new(Config::default(), &set);
    let proxy = http_proxy(Arc::clone(&balancer), HttpOptions::default()).await;
    let answer = get(&client, proxy, "/").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "good")
    );

    // A POST is not sent twice: the endpoint's own 503 reaches the client.
    let balancer = Balancer::new(Config::default(), &set);
    let proxy = http_proxy(Arc::clone(&balancer), HttpOptions::default()).await;
    let answer = send(&client, request("POST", proxy, "/")).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );

    // With no other endpoint to try, the endpoint's 503 beats a 502 of the proxy's own.
    balancer.update(&set[..1]);
    let answer = get(&client, proxy, "/").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );
    assert_eq!(balancer.snapshot().listener.errors, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_never_reached_a_backend_is_sent_to_another() {
    let good = Backend::start("good").await;
    let set = vec![
        Endpoint::ready("dead", support::dead_addr().await),
        good.endpoint(),
    ];
    let balancer = Balancer::new(Config::default(), &set);
    let proxy = http_proxy(Arc::clone(&balancer), HttpOptions::default()).await;
    let client = client();
    let mut req = request("POST", proxy, "/");
    *req.body_mut() = http_body_util::Full::new(bytes::Bytes::from_static(b"0123456789"));
    let answer = send(&client, req).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "good")
    );
    assert_eq!(answer.headers["seen-body-len"], "10");
    assert_eq!(
        balancer.snapshot().endpoint("dead").unwrap().health,
        Health::Ejected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_learn_who_the_client_is() {
    let b = Backend::start("a").await;
    let balancer = Balancer::new(Config::default(), &[b.endpoint()]);
    let proxy = http_proxy(balancer, HttpOptions::default()).await;
    let client = client();
    let mut req = request("GET", proxy, "/");
    req.headers_mut()
        .insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
    let answer = send(&client, req).await;
    assert_eq!(
        answer.headers["seen-x-forwarded-for"],
        "203.0.113.9, 127.0.0.1"
    );
    assert_eq!(answer.headers["seen-forwarded"], "for=127.0.0.1;proto=http");
    assert_eq!(answer.headers["seen-x-forwarded-proto"], "http");
    assert_eq!(answer.headers["seen-host"], proxy.to_string().as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_backend_gets_nothing_new_and_finishes_what_it_has() {
    let b = backends(&["leaving", "staying"]).await;
    let balancer = Balancer::new(Config::default(), &endpoints(&b));
    let proxy = http_proxy(Arc::clone(&balancer), HttpOptions::default()).await;
    let client = client();
    // Round robin's first pick is the first endpoint: this request is held by "leaving".
    let held = {
        let client = client.clone();
        tokio::spawn(async move { get(&client, proxy, "/hold").await })
    };
    wait_for("the held request", || b[0].hits() == 1).await;
    b[1].release();

    let mut set = endpoints(&b);
    set[0].state = EndpointState::Draining;
    balancer.update(&set);
    let s = balancer.snapshot();
    let leaving = s.endpoint("leaving").unwrap();
    assert_eq!(
        (leaving.health, leaving.counters.in_flight),
        (Health::Draining, 1)
    );

    let seen = spread(proxy, 30).await;
    assert_eq!(seen.get("staying"), Some(&30), "{seen:?}");
    b[0].release();
    let answer = held.await.unwrap();
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "leaving")
    );
    wait_for("the drained endpoint to have nothing in flight", || {
        balancer
            .snapshot()
            .endpoint("leaving")
            .unwrap()
            .counters
            .in_flight
            == 0
    })
    .await;
}

/// Reads until the server closes the connection; `false` if it is still open at the deadline.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_loris_is_cut_off_while_others_are_served() {
    let b = Backend::start("a").await;
    let balancer = Balancer::new(Config::default(), &[b.endpoint()]);
    let options = HttpOptions {
        header_read_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(500),
        ..HttpOptions::default()
    };
    let proxy = http_proxy(balancer, options).await;

    // A head trickled a header line at a time, never finished.
    let mut loris = TcpStream::connect(proxy).await.unwrap();
    loris
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        for i in 0.. {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if loris
                .write_all(format!("x-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return (i, loris);
            }
            if i > 1_000 {
                return (i, loris);
            }
        }
        unreachable!()
    });
    // A body trickled the same way after a complete head.
    let mut slow_body = TcpStream::connect(proxy).await.unwrap();
    slow_body
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nabc")
        .await
        .unwrap();

    assert_eq!(get(&client(), proxy, "/").await.status, StatusCode::OK);
    let (lines, mut loris) = trickle.await.unwrap();
    assert!(lines < 1_000, "the trickled head was never cut off");
    assert!(closed_within(&mut loris, support::PATIENCE).await);
    assert!(closed_within(&mut slow_body, support::PATIENCE).await);
    assert_eq!(get(&client(), proxy, "/").await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_refused() {
    let b = Backend::start("a").await;
    let balancer = Balancer::new(Config::default(), &[b.endpoint()]);
    let options = HttpOptions {
        max_connections: 2,
        ..HttpOptions::default()
    };
    let proxy = http_proxy(balancer, options).await;
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        // A request answered: the connection holds its slot for sure.
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        open.push(s);
    }
    let mut third = TcpStream::connect(proxy).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(support::PATIENCE, third.read_to_end(&mut answer)).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 503"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    drop(open);
}
