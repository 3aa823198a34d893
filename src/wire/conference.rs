//! Conference ids, as routers make them and relays read them:
//! `<jurisdiction>-<26 base32 characters>` (128 random bits). Any router or
//! relay can tell a conference's jurisdiction from its id alone.

/// The jurisdiction part of a conference id, if it is well formed.
pub fn jurisdiction_of(conference_id: &str) -> Option<&str> {
    let (j, rest) = conference_id.split_once('-')?;
    let well_formed = !j.is_empty()
        && j.len() <= 64
        && j.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && rest.len() == 26
        && rest
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b));
    well_formed.then_some(j)
}
