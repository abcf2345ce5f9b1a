//! Where a pipeline may make the operator and its workers connect: the hosts of
//! `spec.kafka.bootstrapServers` (the operator's admin client and every worker dial them) and of
//! notify webhook URLs (the notify workers POST there, with the auth Secret).
//!
//! Two rules, both judged on the addresses a host resolves to:
//! - link-local and cloud-metadata addresses are always refused: their services hand out the
//!   node's cloud credentials. Admission already refuses them written literally
//!   (`orderpipe_api::v1alpha1` hosts rules); a *name* that resolves into them is only seen here;
//! - with an operator-wide allow-list (`--allowed-hosts`), a host must match it: by name (exact,
//!   or a `*.suffix`), or with every address it resolves to inside one of its CIDRs.
//!
//! [`judge`] is pure; [`Resolver`] is the I/O edge (the system resolver, as librdkafka and the
//! worker's HTTP client use), whose answers serve for [`Resolver::TTL`] so a reconcile does not
//! wait on DNS every time. A name that resolves differently for the operator and later for a
//! worker (DNS rebinding) is not caught: the allow-list by name is the stronger form.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use orderpipe_api::OrderPipeline;

use crate::ttl_cache::TtlCache;

/// One entry of `--allowed-hosts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowedHost {
    /// `10.0.0.0/8`, `fd00::/8`: any address inside.
    Net(IpNet),
    /// `*.kafka.svc.cluster.local`: any name ending in `.kafka.svc.cluster.local`.
    Suffix(String),
    /// `kafka.example.com`: that name.
    Name(String),
}

impl FromStr for AllowedHost {
    type Err = String;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err("an empty entry".into());
        }
        if entry.contains('/') {
            return entry
                .parse()
                .map(Self::Net)
                .map_err(|error| format!("{entry:?} is not a CIDR: {error}"));
        }
        if let Ok(ip) = entry.parse::<IpAddr>() {
            return Ok(Self::Net(IpNet::from(ip)));
        }
        match entry.strip_prefix("*.") {
            Some(suffix) if !suffix.is_empty() && !suffix.contains('*') => {
                Ok(Self::Suffix(format!(".{}", suffix.to_ascii_lowercase())))
            }
            _ if entry.contains('*') => Err(format!(
                "{entry:?}: a wildcard is only allowed as a leading `*.`"
            )),
            _ => Ok(Self::Name(entry.to_ascii_lowercase())),
        }
    }
}

/// The operator's allow-list; empty allows every host that is not refused outright.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList(pub Vec<AllowedHost>);

impl AllowList {
    fn admits_name(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.0.iter().any(|entry| match entry {
            AllowedHost::Name(name) => *name == host,
            AllowedHost::Suffix(suffix) => host.ends_with(suffix.as_str()),
            AllowedHost::Net(_) => false,
        })
    }

    fn admits_address(&self, address: IpAddr) -> bool {
        self.0
            .iter()
            .any(|entry| matches!(entry, AllowedHost::Net(net) if net.contains(&address)))
    }
}

/// Whether `address` is link-local or a cloud metadata service: 169.254.0.0/16, fe80::/10, AWS's
/// fd00:ec2::254, and the IPv4-mapped form of the first.
pub fn is_forbidden(address: IpAddr) -> bool {
    const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
    let link_local_v4 = |v4: Ipv4Addr| v4.is_link_local();
    match address {
        IpAddr::V4(v4) => link_local_v4(v4),
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6 == AWS_METADATA_V6
                || v6.to_ipv4_mapped().is_some_and(link_local_v4)
        }
    }
}

/// Why a host may not be dialled; `None` when it may. `resolved` holds every address the host
/// resolved to (empty when it did not resolve).
pub fn judge(allowed: &AllowList, host: &str, resolved: &[IpAddr]) -> Option<String> {
    if let Some(address) = resolved.iter().copied().find(|a| is_forbidden(*a)) {
        return Some(format!(
            "{host} resolves to {address}, a link-local or cloud-metadata address"
        ));
    }
    if allowed.0.is_empty() || allowed.admits_name(host) {
        return None;
    }
    if resolved.is_empty() {
        return Some(format!(
            "{host} is not in the operator's --allowed-hosts by name and does not resolve, so its \
             addresses cannot be checked against the allowed CIDRs"
        ));
    }
    resolved
        .iter()
        .find(|a| !allowed.admits_address(**a))
        .map(|address| format!("{host} ({address}) is not in the operator's --allowed-hosts"))
}

/// Who dials a host of the pipeline.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dialer {
    /// The bootstrap servers: the operator and every stage.
    Kafka,
    /// A notify stage's webhook.
    Webhook { stage: String },
}

/// Every host the pipeline makes someone dial, with its port (for resolution).
pub fn hosts(pipeline: &OrderPipeline) -> Vec<(Dialer, String, u16)> {
    let kafka = pipeline
        .spec
        .kafka
        .bootstrap_servers
        .iter()
        .filter_map(|server| split_host_port(&server.0))
        .map(|(host, port)| (Dialer::Kafka, host, port));
    let webhooks = pipeline.spec.stages.iter().filter_map(|stage| {
        let url: http::Uri = stage.notify.as_ref()?.webhook.url.parse().ok()?;
        let default_port = if url.scheme_str() == Some("https") {
            443
        } else {
            80
        };
        let host = url.host()?.trim_matches(['[', ']']).to_owned();
        let port = url.port_u16().unwrap_or(default_port);
        Some((
            Dialer::Webhook {
                stage: stage.name.clone(),
            },
            host,
            port,
        ))
    });
    kafka.chain(webhooks).collect()
}

/// `host:port` or `[v6]:port`, as admission lets bootstrap servers through.
fn split_host_port(server: &str) -> Option<(String, u16)> {
    let (host, port) = server.rsplit_once(':')?;
    let host = host.trim_matches(['[', ']']);
    Some((host.to_owned(), port.parse().ok()?))
}

/// The refusals of the pipeline's hosts, by who dials them; empty when every host may be dialled.
pub async fn refusals(
    allowed: &AllowList,
    resolver: &Resolver,
    pipeline: &OrderPipeline,
) -> BTreeMap<Dialer, String> {
    let mut refused = BTreeMap::new();
    for (dialer, host, port) in hosts(pipeline) {
        if refused.contains_key(&dialer) {
            continue;
        }
        if let Some(reason) = judge(allowed, &host, &resolver.resolve(&host, port).await) {
            refused.insert(dialer, reason);
        }
    }
    refused
}

/// The system resolver, its answers kept for [`Resolver::TTL`].
#[derive(Debug)]
pub struct Resolver {
    answers: TtlCache<(String, u16), Vec<IpAddr>>,
}

impl Default for Resolver {
    fn default() -> Self {
        Self {
            answers: TtlCache::new(Self::TTL),
        }
    }
}

impl Resolver {
    /// How long an answer is used: a host moved to a refused address is caught within this.
    pub const TTL: Duration = Duration::from_secs(30);

    /// The addresses `host` resolves to; empty when it does not (the dial would fail anyway, and
    /// the client reports that better; such an answer is not kept).
    pub async fn resolve(&self, host: &str, port: u16) -> Vec<IpAddr> {
        if let Ok(address) = host.parse::<IpAddr>() {
            return vec![address];
        }
        let key = (host.to_owned(), port);
        if let Some(addresses) = self.answers.get(&key, Instant::now()) {
            return addresses;
        }
        let addresses: Vec<IpAddr> = tokio::net::lookup_host((host, port))
            .await
            .map(|addresses| addresses.map(|a| a.ip()).collect())
            .unwrap_or_default();
        if !addresses.is_empty() {
            self.answers.insert(key, addresses.clone(), Instant::now());
        }
        addresses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> AllowList {
        AllowList(
            entries
                .iter()
                .map(|e| e.parse().expect("valid entry"))
                .collect(),
        )
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn link_local_and_metadata_addresses_are_refused_whatever_the_allow_list() {
        for address in [
            "169.254.169.254",
            "169.254.0.1",
            "fe80::1",
            "febf::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
        ] {
            for allowed in [list(&[]), list(&["0.0.0.0/0", "::/0", "metadata.evil"])] {
                let reason = judge(&allowed, "metadata.evil", &[ip("10.0.0.1"), ip(address)]);
                assert!(
                    reason
                        .as_deref()
                        .is_some_and(|r| r.contains("link-local or cloud-metadata")),
                    "{address}: {reason:?}"
                );
            }
        }
        for address in [
            "169.253.255.255",
            "169.255.0.1",
            "fec0::1",
            "fd00:ec2::253",
            "10.0.0.1",
        ] {
            assert_eq!(judge(&list(&[]), "h", &[ip(address)]), None, "{address}");
        }
    }

    #[test]
    fn an_allow_list_admits_names_suffixes_and_addresses_inside_its_cidrs() {
        let allowed = list(&["kafka.example.com", "*.kafka.svc", "10.0.0.0/8", "fd00::1"]);
        let admitted = [
            ("kafka.example.com", vec![ip("192.0.2.1")]),
            ("KAFKA.example.com.", vec![]),
            ("b-1.kafka.svc", vec![]),
            ("anything", vec![ip("10.1.2.3"), ip("10.9.9.9")]),
            ("v6", vec![ip("fd00::1")]),
        ];
        for (host, resolved) in admitted {
            assert_eq!(judge(&allowed, host, &resolved), None, "{host}");
        }
        let refused = [
            ("kafka.example.org", vec![ip("192.0.2.1")]),
            ("kafka.svc", vec![]),
            ("mixed", vec![ip("10.1.2.3"), ip("192.0.2.1")]),
            ("unresolved", vec![]),
        ];
        for (host, resolved) in refused {
            let reason = judge(&allowed, host, &resolved).unwrap_or_default();
            assert!(reason.contains("--allowed-hosts"), "{host}: {reason}");
        }
    }

    #[test]
    fn entries_that_are_not_a_cidr_an_address_or_a_name_are_errors() {
        for entry in ["", "10.0.0.0/33", "kafka.*.svc", "*.", "**.svc"] {
            assert!(entry.parse::<AllowedHost>().is_err(), "{entry:?}");
        }
        assert_eq!(
            "10.0.0.7".parse::<AllowedHost>(),
            Ok(AllowedHost::Net("10.0.0.7/32".parse().expect("cidr")))
        );
    }

    #[test]
    fn the_hosts_are_the_bootstrap_servers_and_the_webhooks() {
        let mut pipeline = OrderPipeline::test("shop").bootstrap("kafka-0.kafka:9092");
        pipeline
            .spec
            .kafka
            .bootstrap_servers
            .push(orderpipe_api::v1alpha1::BootstrapServer(
                "[fd00::7]:9093".into(),
            ));
        pipeline.spec.stages[0].notify = Some(orderpipe_api::v1alpha1::NotifySpec {
            webhook: orderpipe_api::v1alpha1::WebhookSpec {
                url: "https://hooks.example.com/orders".into(),
                auth_secret_ref: None,
                timeout: None,
            },
            channel: None,
            retry: None,
        });
        let hosts = hosts(&pipeline);
        let webhook = Dialer::Webhook {
            stage: "validate".into(),
        };
        assert!(hosts.contains(&(Dialer::Kafka, "kafka-0.kafka".into(), 9092)));
        assert!(hosts.contains(&(Dialer::Kafka, "fd00::7".into(), 9093)));
        assert!(hosts.contains(&(webhook, "hooks.example.com".into(), 443)));
    }
}
