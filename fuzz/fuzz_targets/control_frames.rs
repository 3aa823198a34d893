//! Control-stream bytes, in the chunks a QUIC stream may deliver them,
//! through the frame decoder for each message type the relay reads or a
//! client reads. Every input ends in messages or a typed error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use residency_relay::wire::control::{ClientMessage, Decoder, ServerMessage};
use residency_relay::wire::link::LinkMessage;

fn drain<M>(data: &[u8], chunk: usize)
where
    M: for<'de> serde::Deserialize<'de> + residency_relay::wire::control::Labels,
{
    let mut decoder = Decoder::new();
    for piece in data.chunks(chunk.max(1)) {
        decoder.push(piece);
        // A decoding error ends the stream, as it ends the connection.
        loop {
            match decoder.next_message::<M>() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(split % 64) + 1;
    drain::<ClientMessage>(rest, chunk);
    drain::<ServerMessage>(rest, chunk);
    drain::<LinkMessage>(rest, chunk);
});
