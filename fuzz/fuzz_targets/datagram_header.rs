//! Media datagrams: the header parser and the payload view take any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use residency_relay::wire::datagram;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = datagram::parse(data) {
        let payload = datagram::payload(data);
        assert_eq!(payload.len() + datagram::HEADER_LEN, data.len());
        // What parses encodes back to the same header bytes.
        let mut out = Vec::new();
        datagram::encode(&header, payload, &mut out);
        assert_eq!(&out[..datagram::HEADER_LEN], &data[..datagram::HEADER_LEN]);
    }
});
