//! Which URLs the service may fetch (`allow_urls = true`): http, https and rtsp only; a
//! host on the allow-list when there is one; and, unless listed, never an address of
//! this machine or its networks (loopback, private, link-local, unique-local, CGNAT,
//! multicast, unspecified) nor the service's own port — the server-side request
//! forgery a service on a device network must not offer. Every address the host
//! resolves to is checked.
//!
//! What this cannot see: FFmpeg resolves the name again when it connects (a DNS answer
//! that changes in between is not checked), and it follows HTTP redirects itself. An
//! allow-list of trusted hosts is the complete answer; the address rules are the default.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// A URL's parts that the rules look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

const SCHEMES: [(&str, u16); 3] = [("http", 80), ("https", 443), ("rtsp", 554)];

impl Target {
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url.split_once("://").ok_or("not a URL")?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = SCHEMES
            .iter()
            .find(|(s, _)| *s == scheme)
            .map(|(_, p)| *p)
            .ok_or_else(|| format!("scheme {scheme:?}: only http, https and rtsp"))?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
        let (host, port) = split_host_port(authority)?;
        Ok(Self { scheme, host, port: port.unwrap_or(default_port) })
    }
}

pub(crate) fn split_host_port(authority: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, rest) = v6.split_once(']').ok_or("unclosed [ in the host")?;
        (h, rest.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    let port = port.map(|p| p.parse::<u16>().map_err(|_| format!("bad port {p:?}"))).transpose()?;
    Ok((host.to_ascii_lowercase(), port))
}

/// One `allowed_url_hosts` entry: `host`, `host:port`, `scheme://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    scheme: Option<String>,
    host: String,
    port: Option<u16>,
}

impl AllowedHost {
    pub fn parse(entry: &str) -> Result<Self, String> {
        let (scheme, rest) = match entry.split_once("://") {
            Some((s, r)) => (Some(s.to_ascii_lowercase()), r),
            None => (None, entry),
        };
        if let Some(s) = &scheme {
            if !SCHEMES.iter().any(|(k, _)| k == s) {
                return Err(format!("scheme {s:?}: only http, https and rtsp"));
            }
        }
        let (host, port) = split_host_port(rest.trim_end_matches('/'))?;
        Ok(Self { scheme, host, port })
    }

    fn matches(&self, t: &Target) -> bool {
        self.host == t.host
            && self.port.is_none_or(|p| p == t.port)
            && self.scheme.as_deref().is_none_or(|s| s == t.scheme)
    }
}

/// Addresses of this machine or its private networks.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal_v4(v4);
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
                || v6 == Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1)
        }
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT 100.64.0.0/10
}

/// The rules, configured once.
#[derive(Debug, Clone)]
pub struct UrlPolicy {
    allowed: Vec<AllowedHost>,
    own: SocketAddr,
}

impl UrlPolicy {
    pub fn new(entries: &[String], own: SocketAddr) -> Self {
        Self { allowed: entries.iter().filter_map(|e| AllowedHost::parse(e).ok()).collect(), own }
    }

    /// Check `url`, resolving its host (bounded in time). The error says why not.
    pub async fn check(&self, url: &str) -> Result<(), String> {
        let target = Target::parse(url)?;
        if self.allowed.iter().any(|a| a.matches(&target)) {
            return Ok(());
        }
        if !self.allowed.is_empty() {
            return Err(format!("{} is not in allowed_url_hosts", target.host));
        }
        let addrs: Vec<SocketAddr> = match target.host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, target.port)],
            Err(_) => {
                let lookup = tokio::net::lookup_host((target.host.as_str(), target.port));
                match tokio::time::timeout(Duration::from_secs(5), lookup).await {
                    Ok(Ok(a)) => a.collect(),
                    Ok(Err(e)) => return Err(format!("cannot resolve {}: {e}", target.host)),
                    Err(_) => return Err(format!("resolving {} timed out", target.host)),
                }
            }
        };
        if addrs.is_empty() {
            return Err(format!("{} resolves to no address", target.host));
        }
        for a in &addrs {
            if is_internal(a.ip()) {
                return Err(format!(
                    "{} is an internal address ({}); list the host in allowed_url_hosts",
                    target.host,
                    a.ip()
                ));
            }
            if a.port() == self.own.port() && (self.own.ip().is_unspecified() || a.ip() == self.own.ip()) {
                return Err("the URL names this service".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_entries_parse() {
        let t = Target::parse("HTTP://user:pw@Example.com:8080/a?b").unwrap();
        assert_eq!((t.scheme.as_str(), t.host.as_str(), t.port), ("http", "example.com", 8080));
        assert_eq!(Target::parse("rtsp://[::1]/live").unwrap().port, 554);
        assert!(Target::parse("file:///etc/passwd").is_err());
        assert!(Target::parse("gopher://x").is_err());
        let e = AllowedHost::parse("https://cams.local:8443").unwrap();
        assert!(e.matches(&Target::parse("https://cams.local:8443/x").unwrap()));
        assert!(!e.matches(&Target::parse("http://cams.local:8443/x").unwrap()));
        assert!(AllowedHost::parse("cams.local").unwrap().matches(&Target::parse("rtsp://cams.local/x").unwrap()));
    }

    #[test]
    fn internal_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }
}
