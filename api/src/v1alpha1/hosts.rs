//! The hosts no pipeline may name: link-local and cloud-metadata addresses, whose services hand
//! out the node's cloud credentials. Owns the CEL expressions of the admission rules on bootstrap
//! servers and webhook URLs, built from one pattern so both refuse the same hosts.
//!
//! Literal addresses and names only: a name that merely resolves to such an address cannot be seen
//! at admission and is the operator's to refuse. Holds expressions, not types.

/// The forbidden hosts as a CEL `matches` pattern, unanchored, for a case-insensitive match:
/// 169.254.0.0/16 (169.254.169.254 included), `metadata.google.internal`, fe80::/10 (first hextet
/// fe80 to febf, zone included), AWS's fd00:ec2::254 in its zero-compressed and spelled-out forms,
/// and IPv4-mapped 169.254.0.0/16. A macro so `concat!` can splice it into the rules.
macro_rules! forbidden_host {
    () => {
        concat!(
            r"(169\\.254\\.[0-9]{1,3}\\.[0-9]{1,3}",
            r"|metadata\\.google\\.internal\\.?",
            r"|\\[fe[89ab][0-9a-f]:[^\\]]*\\]",
            r"|\\[fd00:0{0,1}ec2:[0:]*254\\]",
            r"|\\[::ffff:169\\.254\\.[0-9.]+\\])",
        )
    };
}

/// `spec.kafka.bootstrapServers`: no entry's host (before the `:port`) is a forbidden host.
pub(super) const BOOTSTRAP_SERVERS_RULE: &str = concat!(
    "self.bootstrapServers.all(s, !s.matches('(?i)^",
    forbidden_host!(),
    ":[0-9]+$'))",
);

/// `notify.webhook.url`: the URL's host (after the scheme and any userinfo, before a port, path,
/// query or fragment) is not a forbidden host.
pub(super) const WEBHOOK_URL_RULE: &str = concat!(
    "!self.url.matches('(?i)^https?://([^/?#]*@)?",
    forbidden_host!(),
    "([:/?#]|$)')",
);
