//! What logs may show of a person: wrapping types whose `Display` keeps
//! only a prefix. Client addresses show their /24 (IPv4) or /48 (IPv6)
//! network unless the operator enabled full addresses for the conference's
//! jurisdiction (`[logging] full_addresses`); display names show their first
//! character and length; participant ids their first six characters.

use std::fmt;
use std::net::IpAddr;

/// A client address as logs show it.
#[derive(Debug, Clone, Copy)]
pub struct Addr {
    ip: IpAddr,
    full: bool,
}

impl Addr {
    /// `full`: the operator allows full addresses in this jurisdiction's logs.
    pub fn new(ip: IpAddr, full: bool) -> Self {
        Addr {
            ip: ip.to_canonical(),
            full,
        }
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.full {
            return write!(f, "{}", self.ip);
        }
        match self.ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                write!(f, "{}.{}.{}.0/24", o[0], o[1], o[2])
            }
            IpAddr::V6(v6) => {
                let mut o = v6.octets();
                o[6..].fill(0);
                write!(f, "{}/48", std::net::Ipv6Addr::from(o))
            }
        }
    }
}

/// A display name as logs show it: first character and length.
#[derive(Debug, Clone, Copy)]
pub struct Name<'a>(pub &'a str);

impl fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.chars().next() {
            Some(c) => write!(f, "{c}…({} chars)", self.0.chars().count()),
            None => Ok(()),
        }
    }
}

/// A participant id as logs show it: its first six characters.
#[derive(Debug, Clone, Copy)]
pub struct Id<'a>(pub &'a str);

impl fmt::Display for Id<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix: String = self.0.chars().take(6).collect();
        write!(f, "{prefix}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_prefixes_are_shown() {
        let v4: IpAddr = "203.0.113.77".parse().unwrap();
        assert_eq!(Addr::new(v4, false).to_string(), "203.0.113.0/24");
        assert_eq!(Addr::new(v4, true).to_string(), "203.0.113.77");
        let v6: IpAddr = "2001:db8:abcd:12:1:2:3:4".parse().unwrap();
        assert_eq!(Addr::new(v6, false).to_string(), "2001:db8:abcd::/48");
        let mapped: IpAddr = "::ffff:198.51.100.9".parse().unwrap();
        assert_eq!(Addr::new(mapped, false).to_string(), "198.51.100.0/24");
        assert_eq!(Name("Alice Secretname").to_string(), "A…(16 chars)");
        assert_eq!(Name("").to_string(), "");
        assert_eq!(Id("p-abcdefghijklmnop").to_string(), "p-abcd…");
    }
}
