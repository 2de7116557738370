//! The NATS fan-out against the real NATS at `MISSIVE_TEST_NATS_URL`: two
//! fan-out instances stand for two nodes. Each test uses a subject prefix of
//! its own so parallel tests cannot wake each other.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod services;

use std::time::Duration;

use missive_server::fanout::nats::NatsFanOut;
use missive_server::fanout::{FanOut, Subscription};
use missive_server::storage::{DeviceAddress, StoredEnvelope};

const DEADLINE: Duration = Duration::from_secs(10);

fn device(account: i64, device: u32) -> DeviceAddress {
    DeviceAddress { account, device }
}

async fn nodes() -> Option<(NatsFanOut, NatsFanOut, String)> {
    let url = services::service_url("MISSIVE_TEST_NATS_URL")?;
    let prefix = services::unique("missive_test");
    let a = NatsFanOut::connect(&url, &prefix).await.unwrap();
    let b = NatsFanOut::connect(&url, &prefix).await.unwrap();
    Some((a, b, prefix))
}

/// Publishes from `from` until `subscription` wakes (the subscription may
/// reach the NATS server after the first publish).
async fn publish_until_woken(
    from: &NatsFanOut,
    target: DeviceAddress,
    subscription: &mut Subscription,
) {
    tokio::time::timeout(DEADLINE, async {
        loop {
            from.publish(&[target]).await;
            if tokio::time::timeout(Duration::from_millis(200), subscription.woken())
                .await
                .is_ok()
            {
                return;
            }
        }
    })
    .await
    .expect("no wake-up crossed NATS");
}

#[tokio::test]
async fn a_wake_up_published_on_one_node_reaches_the_stream_on_the_other() {
    let Some((a, b, prefix)) = nodes().await else {
        return;
    };
    let bob = device(7, 1);
    let carol = device(7, 2);
    let mut bob_on_b = b.subscribe(bob).await.unwrap();
    let mut carol_on_b = b.subscribe(carol).await.unwrap();
    assert_eq!(b.subscribed_devices(), 2);
    assert_eq!(a.subscribed_devices(), 0);
    publish_until_woken(&a, bob, &mut bob_on_b).await;

    // Subjects carry numeric ids only, never usernames.
    assert_eq!(a.subject(bob), format!("{prefix}.wake.7.1"));

    // Carol's stream was not woken by Bob's wake-ups: publish once more for
    // Bob, wait for it, then Carol must still have nothing pending.
    a.publish(&[bob]).await;
    tokio::time::timeout(DEADLINE, bob_on_b.woken())
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), carol_on_b.woken())
            .await
            .is_err(),
        "another device's wake-up woke carol"
    );
    publish_until_woken(&a, carol, &mut carol_on_b).await;

    // Closing the last stream of a device ends its NATS subscription.
    drop(bob_on_b);
    assert_eq!(b.subscribed_devices(), 1);
    drop(carol_on_b);
    assert_eq!(b.subscribed_devices(), 0);
}

#[tokio::test]
async fn streams_on_the_publishing_node_wake_without_a_round_trip_and_share_a_subscription() {
    let Some((a, _b, _prefix)) = nodes().await else {
        return;
    };
    let dave = device(9, 1);
    let mut first = a.subscribe(dave).await.unwrap();
    let mut second = a.subscribe(dave).await.unwrap();
    assert_eq!(
        a.subscribed_devices(),
        1,
        "one NATS subscription per device"
    );
    a.publish(&[dave]).await;
    tokio::time::timeout(DEADLINE, first.woken()).await.unwrap();
    tokio::time::timeout(DEADLINE, second.woken())
        .await
        .unwrap();
    drop(first);
    assert_eq!(a.subscribed_devices(), 1, "the second stream still listens");
    drop(second);
    assert_eq!(a.subscribed_devices(), 0);
}

fn online(content: &[u8]) -> StoredEnvelope {
    StoredEnvelope {
        id: 0,
        sender: "alice".into(),
        sender_device: 1,
        kind: 2,
        content: content.to_vec(),
        message_id: vec![1; 16],
        server_timestamp_ms: 5,
        expires_at_ms: None,
        franking_commitment: vec![2; 32],
        franking_tag: vec![3; 44],
    }
}

/// Issue 16: an online-only envelope travels as data to the node holding
/// the device's stream, exactly once per stream (also on the publishing
/// node), and only to that device.
#[tokio::test]
async fn online_envelopes_cross_nodes_as_data_once_per_stream() {
    let Some((a, b, _prefix)) = nodes().await else {
        return;
    };
    let frank = device(13, 1);
    let other = device(13, 2);
    let mut on_b = b.subscribe(frank).await.unwrap();
    let mut on_a = a.subscribe(frank).await.unwrap();
    let mut other_on_b = b.subscribe(other).await.unwrap();
    // The subscriptions may reach the NATS server after a first publish.
    let delivered = tokio::time::timeout(DEADLINE, async {
        let mut n = 0u8;
        loop {
            n += 1;
            a.deliver_online(vec![(frank, online(&[n]))]).await;
            if tokio::time::timeout(Duration::from_millis(200), on_b.woken())
                .await
                .is_ok()
            {
                return n;
            }
        }
    })
    .await
    .expect("no online envelope crossed NATS");
    let handed = on_b.take();
    assert!(!handed.reread, "an online envelope asked for a re-read");
    let last = handed.online.last().expect("woken without the envelope");
    assert_eq!(last, &online(&[delivered]));
    // One more, now that both nodes listen: each stream gets it once.
    a.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = (on_a.take(), on_b.take());
    a.deliver_online(vec![(frank, online(b"once"))]).await;
    tokio::time::timeout(DEADLINE, on_a.woken()).await.unwrap();
    tokio::time::timeout(DEADLINE, on_b.woken()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for sub in [&on_a, &on_b] {
        let contents: Vec<Vec<u8>> = sub.take().online.into_iter().map(|e| e.content).collect();
        assert_eq!(contents, [b"once".to_vec()]);
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), other_on_b.woken())
            .await
            .is_err(),
        "another device got frank's envelope"
    );
    assert!(other_on_b.take().online.is_empty());
}

#[tokio::test]
async fn bad_urls_and_prefixes_are_refused_with_a_sentence() {
    let Some(url) = services::service_url("MISSIVE_TEST_NATS_URL") else {
        return;
    };
    let error = NatsFanOut::connect(&url, "a.>").await.err().unwrap();
    assert!(error.to_string().contains("subject prefix"), "{error}");
    // Nothing listens on port 1.
    let error = NatsFanOut::connect("nats://127.0.0.1:1", "missive")
        .await
        .err()
        .unwrap();
    assert!(
        error.to_string().contains("cannot connect to NATS"),
        "{error}"
    );
}

/// A NATS server of our own (the `nats-server` binary) that the test can stop
/// and start again, to see streams catch up after a reconnect.
struct PrivateNats {
    child: std::process::Child,
}

impl PrivateNats {
    fn start(port: u16) -> Option<Self> {
        let child = std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        Some(Self { child })
    }

    async fn wait_listening(port: u16) {
        tokio::time::timeout(DEADLINE, async {
            while tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("nats-server did not start");
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn every_local_stream_catches_up_when_nats_comes_back() {
    // Runs where NATS tests run, with a server of its own it can restart.
    if services::service_url("MISSIVE_TEST_NATS_URL").is_none() {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let Some(server) = PrivateNats::start(port) else {
        println!("skipped: the nats-server binary is not on PATH");
        return;
    };
    PrivateNats::wait_listening(port).await;
    let fanout = NatsFanOut::connect(&format!("nats://127.0.0.1:{port}"), "missive")
        .await
        .unwrap();
    let erin = device(11, 1);
    let mut stream = fanout.subscribe(erin).await.unwrap();
    // Forget a wake-up left from the first connection, if any.
    let _ = tokio::time::timeout(Duration::from_millis(300), stream.woken()).await;

    drop(server);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _server = PrivateNats::start(port).unwrap();
    PrivateNats::wait_listening(port).await;
    // Nobody publishes: only the reconnect can wake the stream.
    tokio::time::timeout(Duration::from_secs(30), stream.woken())
        .await
        .expect("the stream was not woken after NATS came back");
}
