//! Control messages over a QUIC stream: participants' control streams,
//! over either transport, and cascade links share this framing
//! ([`crate::wire::control`]).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::wire::control::{self, ControlError, Decoder};

/// Reads until one whole control message is decoded (client control
/// streams, over either transport, and cascade links share the framing).
pub(super) async fn read_message<M, R>(
    recv: &mut R,
    decoder: &mut Decoder,
) -> Result<Option<M>, ControlError>
where
    M: for<'de> serde::Deserialize<'de> + control::Labels,
    R: AsyncRead + Unpin,
{
    let mut buf = [0u8; 4096];
    loop {
        if let Some(m) = decoder.next_message::<M>()? {
            return Ok(Some(m));
        }
        match recv.read(&mut buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => decoder.push(&buf[..n]),
        }
    }
}

/// Writes one control message as a frame.
pub(super) async fn write_message<M: serde::Serialize, W: AsyncWrite + Unpin>(
    send: &mut W,
    message: &M,
) -> Result<(), ()> {
    let mut frame = Vec::new();
    control::encode(message, &mut frame).map_err(|_| ())?;
    send.write_all(&frame).await.map_err(|_| ())
}
