//! A relay flooded with QUIC Initial packets whose source address is
//! forged (here: sent from the victim's loopback address and never
//! answered). Such packets must not count against the address's connection
//! limit: neither a participant at that address nor a peer relay's cascade
//! link may be locked out.

mod support;

use std::net::SocketAddr;

use residency_relay::client::initials;
use residency_relay::wire::control::TrackKind;
use support::cluster::{Cluster, hear, open_conference, sample, session};

fn quic_addr(c: &Cluster, relay: &str) -> SocketAddr {
    c.policy.relay(c.policy.relay_idx(relay).unwrap()).quic_addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_initials_lock_out_neither_a_participant_nor_a_cascade_link() {
    let mut c = Cluster::new(|t| format!("{t}\n[limits]\nrelay_connections_per_address = 50\n"));
    c.start("de-fra-router", &["de-fra-1", "ie-dub-1"]).await;
    let router = c.url("de-fra-router");
    let (fra, dub) = (quic_addr(&c, "de-fra-1"), quic_addr(&c, "ie-dub-1"));

    // 200 one-way Initials "from" the German participant's address to
    // Frankfurt, and "from" Frankfurt's relay address to Dublin.
    initials::send_from(
        "127.0.0.2:0".parse().unwrap(),
        fra,
        &initials::initials(fra, 200).unwrap(),
    )
    .unwrap();
    initials::send_from(
        SocketAddr::new(fra.ip(), 0),
        dub,
        &initials::initials(dub, 200).unwrap(),
    )
    .unwrap();

    // The German (Frankfurt) and the Irish participant (Dublin) are in one
    // call over the Frankfurt → Dublin link.
    let conf = open_conference(&router, "eu").await;
    let mut german = session(&router, &conf, "german", "127.0.0.2").await;
    let mut irish = session(&router, &conf, "irish", "127.0.0.4").await;
    assert_eq!(german.joined.relay_id, "de-fra-1");
    assert_eq!(irish.joined.relay_id, "ie-dub-1");
    let track = german
        .client()
        .publish(TrackKind::Audio, "opus", None)
        .await
        .unwrap();
    hear(&mut german, &mut irish, track, &mut false).await;

    // Past the unproven-handshake threshold the relays asked for a Retry,
    // which a forged source never answers.
    for relay in ["de-fra-1", "ie-dub-1"] {
        let text = c.relay_metrics(relay).await;
        assert!(
            sample(&text, "rr_relay_address_validations_total") >= 100.0,
            "{relay}: {text}"
        );
    }
    german.leave().await;
    irish.leave().await;
    c.shutdown().await;
}
