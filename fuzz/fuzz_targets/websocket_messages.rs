//! Bytes a participant sends on the relay's WebSocket listener after the
//! upgrade: WebSocket frames read as the relay reads them (server side,
//! the relay's size limits), each binary message through the relay's
//! framing, control bytes through the control-stream decoder and
//! datagrams through the datagram parser. Every input ends in messages or
//! a typed error.
#![no_main]

use std::io::{Cursor, Read, Write};

use libfuzzer_sys::fuzz_target;
use residency_relay::wire::control::{ClientMessage, Decoder};
use residency_relay::wire::{datagram, websocket};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket, WebSocketConfig};

/// The participant's bytes to read; what the relay writes back is dropped.
struct Wire(Cursor<Vec<u8>>);

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let config = WebSocketConfig::default()
        .max_message_size(Some(websocket::MAX_MESSAGE_LEN))
        .max_frame_size(Some(websocket::MAX_MESSAGE_LEN));
    let mut socket =
        WebSocket::from_raw_socket(Wire(Cursor::new(data.to_vec())), Role::Server, Some(config));
    let mut decoder = Decoder::new();
    // A bad frame or message ends the connection, as it does on the relay.
    while let Ok(message) = socket.read() {
        let Message::Binary(bytes) = message else {
            continue;
        };
        match websocket::parse(bytes) {
            Ok(websocket::Inbound::Control(c)) => {
                decoder.push(&c);
                loop {
                    match decoder.next_message::<ClientMessage>() {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => return,
                    }
                }
            }
            Ok(websocket::Inbound::Datagram(d)) => {
                let _ = datagram::parse(&d);
            }
            Err(_) => return,
        }
    }
});
