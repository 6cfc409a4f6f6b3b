//! A workspace's egress allowlist: the hosts and ports its tasks may reach through their
//! sandbox's proxy. Parsed once where it is set (the API) and again where it is enforced (the
//! worker), so both agree on what a rule means.

use std::fmt;
use std::net::IpAddr;

/// The most rules one workspace may list.
pub const MAX_EGRESS_RULES: usize = 256;

/// One allowed destination: `host:port`, `*.domain:port`, `1.2.3.4:port` or `[::1]:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRule {
    host: RuleHost,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum RuleHost {
    /// A DNS name, lowercase, without a trailing dot.
    Name(String),
    /// `*.suffix`: any name below `suffix`, not `suffix` itself.
    Below(String),
    Address(IpAddr),
}

impl EgressRule {
    /// Parses one rule, with a message that says what to fix.
    pub fn parse(rule: &str) -> Result<EgressRule, String> {
        let complain = |why: &str| {
            format!(
                "egress rule {rule:?}: {why}; write host:port, *.domain:port, an IPv4 address with a port, or [IPv6]:port"
            )
        };
        let (host, port) = rule
            .rsplit_once(':')
            .ok_or_else(|| complain("it has no port"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| complain("the port must be a number from 1 to 65535"))?;
        let host = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            match inner.parse::<IpAddr>() {
                Ok(ip @ IpAddr::V6(_)) => RuleHost::Address(ip),
                _ => return Err(complain("the part in brackets is not an IPv6 address")),
            }
        } else if let Ok(ip) = host.parse::<IpAddr>() {
            match ip {
                IpAddr::V4(_) => RuleHost::Address(ip),
                IpAddr::V6(_) => return Err(complain("an IPv6 address goes in brackets")),
            }
        } else if let Some(suffix) = host.strip_prefix("*.") {
            let suffix = dns_name(suffix).map_err(|why| complain(&why))?;
            if !suffix.contains('.') {
                return Err(complain(
                    "a wildcard must stand below a registered domain (*.example.org), not a top-level one",
                ));
            }
            RuleHost::Below(suffix)
        } else {
            RuleHost::Name(dns_name(host).map_err(|why| complain(&why))?)
        };
        Ok(EgressRule { host, port })
    }

    /// Whether a request for `host:port` (as a client wrote it) is allowed by this rule. A host
    /// that is an address matches only a rule naming that address, never a name rule.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        if port != self.port {
            return false;
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&host);
        if let Ok(address) = bare.parse::<IpAddr>() {
            return self.host == RuleHost::Address(address);
        }
        match &self.host {
            RuleHost::Address(_) => false,
            RuleHost::Name(name) => host == *name,
            RuleHost::Below(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }

    /// The address the rule names, if it names one rather than a DNS name.
    pub fn address(&self) -> Option<IpAddr> {
        match self.host {
            RuleHost::Address(ip) => Some(ip),
            _ => None,
        }
    }
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            RuleHost::Name(name) => write!(f, "{name}:{}", self.port),
            RuleHost::Below(suffix) => write!(f, "*.{suffix}:{}", self.port),
            RuleHost::Address(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            RuleHost::Address(ip) => write!(f, "{ip}:{}", self.port),
        }
    }
}

/// A DNS name, lowercased: letters, digits and hyphens in dot-separated labels.
fn dns_name(name: &str) -> Result<String, String> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() || name.len() > 253 {
        return Err("the host name is empty or longer than 253 characters".to_owned());
    }
    for label in name.split('.') {
        let fine = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !fine {
            return Err(format!(
                "{label:?} is not a DNS label (letters, digits and inner hyphens, at most 63)"
            ));
        }
    }
    // A name whose last label is a number would read as (part of) an address.
    if name
        .rsplit('.')
        .next()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(
            "a host name's last label cannot be a number; write an address as 1.2.3.4".to_owned(),
        );
    }
    Ok(name)
}

/// Parses a whole allowlist: every rule valid, none repeated, at most `MAX_EGRESS_RULES`.
pub fn parse_allowlist(rules: &[String]) -> Result<Vec<EgressRule>, String> {
    if rules.len() > MAX_EGRESS_RULES {
        return Err(format!(
            "{} egress rules, more than the {MAX_EGRESS_RULES} a workspace may have; use *.domain:port rules",
            rules.len()
        ));
    }
    let mut parsed: Vec<EgressRule> = Vec::with_capacity(rules.len());
    for rule in rules {
        let rule = EgressRule::parse(rule)?;
        if parsed.contains(&rule) {
            return Err(format!("egress rule {rule} is listed twice"));
        }
        parsed.push(rule);
    }
    Ok(parsed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_their_host_and_port_only() {
        let name = EgressRule::parse("PyPI.org:443").unwrap();
        assert!(name.allows("pypi.org", 443));
        assert!(name.allows("PYPI.ORG.", 443));
        assert!(!name.allows("pypi.org", 80));
        assert!(!name.allows("evil-pypi.org", 443));
        assert!(!name.allows("pypi.org.evil.com", 443));

        let below = EgressRule::parse("*.example.org:443").unwrap();
        assert!(below.allows("files.example.org", 443));
        assert!(below.allows("a.b.example.org", 443));
        assert!(!below.allows("example.org", 443));
        assert!(!below.allows("badexample.org", 443));
        assert!(!below.allows(".example.org", 443));

        let v4 = EgressRule::parse("127.0.0.1:8080").unwrap();
        assert!(v4.allows("127.0.0.1", 8080) && v4.address().is_some());
        assert!(!v4.allows("localhost", 8080));
        assert!(name.address().is_none());
        // An address never matches a name rule, whatever the rule's suffix.
        let numeric_tail = EgressRule::parse("*.example.org:80").unwrap();
        assert!(!numeric_tail.allows("10.0.0.1", 80));
        let v6 = EgressRule::parse("[::1]:9000").unwrap();
        assert!(v6.allows("[::1]", 9000) && v6.allows("[0:0::1]", 9000));
        assert_eq!(v6.to_string(), "[::1]:9000");
        assert_eq!(below.to_string(), "*.example.org:443");
    }

    #[test]
    fn malformed_rules_say_what_to_write() {
        for bad in [
            "pypi.org",
            "pypi.org:0",
            "pypi.org:70000",
            "pypi.org:https",
            "*:443",
            "*.:443",
            "a..b:443",
            "-a.org:443",
            "a_b.org:443",
            "::1:443",
            "[pypi.org]:443",
            "*.com:443",
            "*.0.1:80",
            "10.0.0.300:80",
            "http://pypi.org:443",
            "",
        ] {
            let err = EgressRule::parse(bad).unwrap_err();
            assert!(err.contains("host:port"), "{bad}: {err}");
        }
        let twice = parse_allowlist(&["a.org:1".to_owned(), "A.org:1".to_owned()]).unwrap_err();
        assert!(twice.contains("twice"), "{twice}");
        let many: Vec<String> = (1..=300).map(|p| format!("a.org:{p}")).collect();
        assert!(parse_allowlist(&many).unwrap_err().contains("256"));
    }
}
