//! A participant that survives its relay: joins through the router, and
//! when the relay goes away (it failed, shut down or is being drained)
//! rejoins through the router — which sends it to another relay of the same
//! jurisdiction, never one abroad — reconnects and publishes its tracks
//! again. Kicked, ended or refused, it stops.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::join::{self, Credential, JoinError, Joined};
use super::{Client, ClientError};
use crate::wire::close_code;
use crate::wire::control::TrackKind;
use crate::wire::datagram::TrackId;

/// Why a session could not (re)join.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Join(#[from] JoinError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the participant was removed or the conference ended")]
    Removed,
    #[error("no relay could take the participant before the deadline: {0}")]
    GaveUp(String),
}

/// One participant's presence in a conference.
#[derive(Debug)]
pub struct Session {
    router: String,
    conference: String,
    display_name: String,
    bind: IpAddr,
    /// The current relay and ticket.
    pub joined: Joined,
    client: Client,
    /// Tracks it publishes (kind, codec), republished after a move.
    published: Vec<(TrackKind, String)>,
    /// How many times it moved to another relay.
    pub moves: u32,
}

impl Session {
    /// Joins and connects.
    pub async fn join(
        router: &str,
        conference: &str,
        credential: &Credential,
        display_name: &str,
        bind: IpAddr,
    ) -> Result<Session, SessionError> {
        let joined = join::join(
            router,
            conference,
            credential,
            display_name,
            Some(bind),
            Duration::from_secs(600),
        )
        .await?;
        let client = connect(&joined, bind).await?;
        Ok(Session {
            router: router.to_owned(),
            conference: conference.to_owned(),
            display_name: display_name.to_owned(),
            bind,
            joined,
            client,
            published: Vec::new(),
            moves: 0,
        })
    }

    /// The connection to the current relay.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Publishes a track, remembered so that a move publishes it again.
    pub async fn publish(&mut self, kind: TrackKind, codec: &str) -> Result<TrackId, SessionError> {
        let track = self.client.publish(kind, codec, None).await?;
        self.published.push((kind, codec.to_owned()));
        Ok(track)
    }

    /// Whether the relay connection ended in a way a move can mend (not a
    /// kick, the end of the conference or this side leaving).
    pub fn movable(&self) -> bool {
        !matches!(
            self.client.close_code().map(|c| c as u32),
            Some(close_code::KICKED | close_code::CONFERENCE_ENDED | close_code::NORMAL)
        )
    }

    /// The relay went away: rejoin through the router, excluding that
    /// relay, until one takes the participant or `patience` runs out.
    /// Returns the ids of the tracks published again, in publish order.
    pub async fn recover(&mut self, patience: Duration) -> Result<Vec<TrackId>, SessionError> {
        if !self.movable() {
            return Err(SessionError::Removed);
        }
        let deadline = tokio::time::Instant::now() + patience;
        let failed = self.joined.relay_id.clone();
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            let credential = Credential::Rejoin {
                participant_id: self.joined.participant_id.clone(),
                token: self.joined.rejoin_token.clone().unwrap_or_default(),
                failed_relay: Some(failed.clone()),
            };
            match join::join(
                &self.router,
                &self.conference,
                &credential,
                &self.display_name,
                Some(self.bind),
                Duration::from_secs(10),
            )
            .await
            {
                Ok(joined) => {
                    // The router rotated the token: keep the new one even if
                    // this connection attempt fails.
                    self.joined.rejoin_token = joined.rejoin_token.clone();
                    let connected = connect(&joined, self.bind).await;
                    match connected {
                        Ok(client) => {
                            self.client = client;
                            self.joined = joined;
                            self.moves += 1;
                            let mut tracks = Vec::new();
                            for (kind, codec) in &self.published {
                                tracks.push(self.client.publish(*kind, codec, None).await?);
                            }
                            return Ok(tracks);
                        }
                        Err(e) => last = e.to_string(),
                    }
                }
                // Kicked, banned or ended meanwhile: no point retrying.
                Err(JoinError::Refused {
                    status: 403 | 410, ..
                }) => {
                    return Err(SessionError::Removed);
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(SessionError::GaveUp(last))
    }

    /// Leaves the conference.
    pub async fn leave(self) {
        self.client.leave().await;
    }
}

async fn connect(joined: &Joined, bind: IpAddr) -> Result<Client, ClientError> {
    Client::connect(
        SocketAddr::new(bind, 0),
        joined.quic_addr,
        &joined.cert_sha256,
        &joined.ticket,
    )
    .await
}
