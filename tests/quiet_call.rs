//! A participant in a quiet call stays in it: nothing from the relay for
//! longer than a request's answer may take is not a lost relay. Only QUIC's
//! idle timeout, which keep-alives hold off while the relay is there, ends
//! a connection whose relay is gone.

mod support;

use std::time::Duration;

use residency_relay::client::{Client, ClientError};
use residency_relay::forward::CoreConfig;
use residency_relay::wire::control::{ServerMessage, TrackKind};
use support::relay::{PUBLISHER, TestRelay, claims, sign_dev};

#[tokio::test]
async fn a_participant_in_a_quiet_call_stays_and_hears_what_comes_later() {
    let relay = TestRelay::start("ie-dub-1", "127.0.1.3", CoreConfig::default()).await;
    let connect = |who: &str, from: &str| {
        let ticket = sign_dev(&claims("ie-dub-1", who, PUBLISHER));
        let (quic, fingerprint) = (relay.quic, relay.fingerprint.clone());
        let from = format!("{from}:0").parse().unwrap();
        async move {
            Client::connect(from, quic, &fingerprint, &ticket)
                .await
                .unwrap()
        }
    };
    let mut quiet = connect("quiet", "127.0.0.4").await;
    // Nobody says anything for longer than an answer may take (10 s): the
    // wait for the next event is still going when we stop it.
    let waited = tokio::time::timeout(Duration::from_secs(12), quiet.next_event()).await;
    match waited {
        Err(_) => {}
        Ok(Err(ClientError::Timeout)) => panic!("a quiet call was taken for a lost relay"),
        Ok(other) => panic!("unexpected: {other:?}"),
    }
    // Still in the call: someone who comes and publishes is heard.
    let mut later = connect("later", "127.0.0.5").await;
    let track = later.publish(TrackKind::Audio, "opus", None).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, quiet.next_event()).await {
            Ok(Ok(ServerMessage::TrackPublished(info))) if info.track == track => break,
            Ok(Ok(_)) => {}
            other => panic!("the quiet participant did not hear the new track: {other:?}"),
        }
    }
    later.leave().await;
    quiet.leave().await;
}
