//! Where deliveries may go. A webhook URL is chosen by a tenant admin, but the request leaves
//! from inside the data center, so an unchecked URL would let that admin reach internal
//! services (server-side request forgery). Rules:
//!
//! - `https` only, except to hosts the operator allowed with `--webhook-allow-hosts` (then
//!   `http` too: an internal CRM, or loopback in tests);
//! - no user name or password in the URL, no fragment, at most [`MAX_URL_LEN`] bytes;
//! - the host must not be, or resolve to, a loopback, private, link-local, shared,
//!   documentation or otherwise non-public address — unless it is an allowed host. This is
//!   checked when the webhook is registered (IP literals) and again at every connection
//!   ([`GuardedResolver`], so a name that later resolves elsewhere — DNS rebinding — is caught
//!   at the moment it matters);
//! - redirects are never followed (the client is built that way in [`super::deliver`]).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

/// Longest webhook URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Why a URL may not be a webhook target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("not a valid URL: {0}")]
    NotAUrl(String),
    #[error("the URL is longer than {MAX_URL_LEN} bytes")]
    TooLong,
    #[error("the URL must use https (http only to hosts the server operator allowed with --webhook-allow-hosts)")]
    Scheme,
    #[error("the URL must not contain a user name or password")]
    Credentials,
    #[error("the URL must not contain a fragment (#…)")]
    Fragment,
    #[error("the URL has no host")]
    NoHost,
    #[error("{0} is not a public address (loopback, private, link-local or reserved); the server operator can allow the host with --webhook-allow-hosts")]
    NotPublic(IpAddr),
}

/// The operator's rules for webhook targets. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct TargetPolicy {
    /// Hosts (names or IP literals, lower case) that may use http and internal addresses.
    allowed: Arc<HashSet<String>>,
}

impl TargetPolicy {
    /// Nothing allowed beyond public https targets.
    pub fn strict() -> TargetPolicy {
        TargetPolicy::default()
    }

    /// Also allows `hosts` (as given to `--webhook-allow-hosts`: names or IP literals, IPv6 in
    /// brackets or not).
    pub fn allowing(hosts: impl IntoIterator<Item = String>) -> TargetPolicy {
        let allowed = hosts
            .into_iter()
            .map(|h| normalize_host(h.trim()))
            .filter(|h| !h.is_empty())
            .collect();
        TargetPolicy {
            allowed: Arc::new(allowed),
        }
    }

    /// Whether the operator allowed `host`.
    pub fn is_allowed(&self, host: &str) -> bool {
        self.allowed.contains(&normalize_host(host))
    }

    /// Checks a URL against every rule that can be checked without DNS.
    pub fn check(&self, url: &str) -> Result<Url, TargetError> {
        if url.len() > MAX_URL_LEN {
            return Err(TargetError::TooLong);
        }
        let parsed = Url::parse(url).map_err(|e| TargetError::NotAUrl(e.to_string()))?;
        let host = parsed.host_str().ok_or(TargetError::NoHost)?;
        let allowed = self.is_allowed(host);
        match parsed.scheme() {
            "https" => {}
            "http" if allowed => {}
            _ => return Err(TargetError::Scheme),
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(TargetError::Credentials);
        }
        if parsed.fragment().is_some() {
            return Err(TargetError::Fragment);
        }
        if let Some(ip) = ip_literal(&parsed) {
            if !allowed && !is_public(ip) {
                return Err(TargetError::NotPublic(ip));
            }
        }
        Ok(parsed)
    }
}

fn normalize_host(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

fn ip_literal(url: &Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        url::Host::Domain(_) => None,
    }
}

/// Whether `ip` is an ordinary public unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        // shared address space (carrier-grade NAT), 100.64.0.0/10
        || (a == 100 && (64..128).contains(&b))
        // IETF protocol assignments, 192.0.0.0/24
        || (a == 192 && b == 0 && c == 0)
        // benchmarking, 198.18.0.0/15
        || (a == 198 && (b == 18 || b == 19))
        // reserved, 240.0.0.0/4
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // unique local fc00::/7
        || (first & 0xfe00) == 0xfc00
        // link-local fe80::/10
        || (first & 0xffc0) == 0xfe80
        // documentation 2001:db8::/32
        || (first == 0x2001 && ip.segments()[1] == 0x0db8)
        // IPv4-compatible and other ::/96 forms, NAT64 64:ff9b::/96 (may reach internal v4)
        || ip.segments()[..6].iter().all(|&s| s == 0)
        || (first == 0x0064 && ip.segments()[1] == 0xff9b))
}

/// DNS for the delivery client: resolves as the system does, then keeps only addresses the
/// policy allows for that host. A name with no allowed address fails to connect, naming why.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: TargetPolicy,
}

impl GuardedResolver {
    pub fn new(policy: TargetPolicy) -> GuardedResolver {
        GuardedResolver { policy }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        let allowed = self.policy.is_allowed(&host);
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let usable: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| allowed || is_public(a.ip()))
                .collect();
            if usable.is_empty() {
                let shown: Vec<String> = found.iter().map(|a| a.ip().to_string()).collect();
                return Err(format!(
                    "{host} resolves only to addresses that are not public ({}); the server operator can allow the host with --webhook-allow-hosts",
                    shown.join(", ")
                )
                .into());
            }
            Ok(Box::new(usable.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_to_public_hosts_only_by_default() {
        let strict = TargetPolicy::strict();
        assert!(strict
            .check("https://crm.example.com/hooks/backlight")
            .is_ok());
        assert!(strict.check("https://93.184.216.34:8443/x").is_ok());
        for (url, error) in [
            ("http://crm.example.com/", TargetError::Scheme),
            ("ftp://crm.example.com/", TargetError::Scheme),
            ("https://user:pw@crm.example.com/", TargetError::Credentials),
            ("https://crm.example.com/#x", TargetError::Fragment),
            (
                "https://127.0.0.1/",
                TargetError::NotPublic("127.0.0.1".parse().unwrap()),
            ),
            (
                "https://169.254.169.254/latest/meta-data",
                TargetError::NotPublic("169.254.169.254".parse().unwrap()),
            ),
            (
                "https://10.1.2.3/",
                TargetError::NotPublic("10.1.2.3".parse().unwrap()),
            ),
            (
                "https://[::1]/",
                TargetError::NotPublic("::1".parse().unwrap()),
            ),
            (
                "https://[::ffff:192.168.0.1]/",
                TargetError::NotPublic("::ffff:192.168.0.1".parse().unwrap()),
            ),
            (
                "https://[fd00::1]/",
                TargetError::NotPublic("fd00::1".parse().unwrap()),
            ),
        ] {
            assert_eq!(strict.check(url).unwrap_err(), error, "{url}");
        }
        assert!(matches!(
            strict.check("not a url"),
            Err(TargetError::NotAUrl(_))
        ));
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(strict.check(&long).unwrap_err(), TargetError::TooLong);
    }

    #[test]
    fn allowed_hosts_may_use_http_and_internal_addresses() {
        let policy =
            TargetPolicy::allowing(["127.0.0.1".into(), "CRM.internal.".into(), "[::1]".into()]);
        assert!(policy.check("http://127.0.0.1:9999/hook").is_ok());
        assert!(policy.check("http://crm.internal/hook").is_ok());
        assert!(policy.check("http://[::1]:80/").is_ok());
        assert_eq!(
            policy.check("http://127.0.0.2/").unwrap_err(),
            TargetError::Scheme
        );
    }

    #[test]
    fn public_address_classification() {
        for ip in ["8.8.8.8", "93.184.216.34", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "0.0.0.0",
            "100.64.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "fe80::1",
            "64:ff9b::a00:1",
            "::",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn the_resolver_drops_internal_addresses_unless_allowed() {
        use std::str::FromStr;
        let strict = GuardedResolver::new(TargetPolicy::strict());
        let name = Name::from_str("localhost").unwrap();
        let error = match strict.resolve(name).await {
            Ok(_) => panic!("localhost resolved under a strict policy"),
            Err(e) => e.to_string(),
        };
        assert!(error.contains("not public"), "{error}");
        let allowing = GuardedResolver::new(TargetPolicy::allowing(["localhost".into()]));
        let addrs: Vec<SocketAddr> = allowing
            .resolve(Name::from_str("localhost").unwrap())
            .await
            .unwrap()
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }
}
