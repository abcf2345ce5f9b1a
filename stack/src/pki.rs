//! The stack's certificates and keys, generated in pure Rust (rcgen) on every fresh start: a CA,
//! the apiserver's serving certificate, one client certificate per identity (admin in
//! `system:masters`, the controller-manager and the scheduler under their RBAC-bootstrapped
//! user names), the aggregation layer's front-proxy CA and client certificate, and the
//! service-account signing key pair. Writes PEM files into the stack's
//! `pki/` directory; must not reuse keys across stacks or touch anything outside that directory.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::error::{Result, StackError};

/// First address of the service range: the apiserver's `kubernetes` Service IP, so in-cluster
/// style clients that dial it would still verify the certificate.
pub const SERVICE_CLUSTER_IP_RANGE: &str = "10.96.0.0/12";
const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// The front proxy's CN, the one name in `--requestheader-allowed-names`.
pub const FRONT_PROXY_CLIENT_CN: &str = "front-proxy-client";

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Every file the control plane needs.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca: CertFiles,
    pub apiserver: CertFiles,
    pub admin: CertFiles,
    pub controller_manager: CertFiles,
    pub scheduler: CertFiles,
    /// The aggregation layer's own CA (`--requestheader-client-ca-file`): aggregated API servers
    /// trust the user headers only from a client certificate of this CA. Separate from `ca`, as
    /// kubeadm does, so no ordinary client certificate can assert another user to them.
    pub front_proxy_ca: CertFiles,
    /// The apiserver's client certificate towards aggregated API servers
    /// (`--proxy-client-cert-file`), CN [`FRONT_PROXY_CLIENT_CN`].
    pub front_proxy_client: CertFiles,
    /// Signs service-account tokens (apiserver `--service-account-signing-key-file`,
    /// controller-manager `--service-account-private-key-file`).
    pub service_account_key: PathBuf,
    /// Verifies them (apiserver `--service-account-key-file`).
    pub service_account_pub: PathBuf,
}

impl Pki {
    /// Generates a fresh PKI into `dir`.
    pub fn generate(dir: &Path) -> Result<Pki> {
        fs::create_dir_all(dir).map_err(|e| StackError::io("creating", dir, e))?;

        let (ca, issuer) = certificate_authority(dir, "ca", "orderpipe-e2e-ca", "CA")?;

        let mut serving = leaf("kube-apiserver", None, ExtendedKeyUsagePurpose::ServerAuth);
        serving.subject_alt_names = apiserver_sans()?;
        let apiserver = sign(dir, "apiserver", "apiserver serving", serving, &issuer)?;

        let client =
            |cn: &str, org: Option<&str>| leaf(cn, org, ExtendedKeyUsagePurpose::ClientAuth);
        let admin = sign(
            dir,
            "admin",
            "admin client",
            client("orderpipe-e2e-admin", Some("system:masters")),
            &issuer,
        )?;
        let controller_manager = sign(
            dir,
            "kube-controller-manager",
            "controller-manager client",
            client("system:kube-controller-manager", None),
            &issuer,
        )?;
        let scheduler = sign(
            dir,
            "kube-scheduler",
            "scheduler client",
            client("system:kube-scheduler", None),
            &issuer,
        )?;

        let (front_proxy_ca, front_proxy_issuer) = certificate_authority(
            dir,
            "front-proxy-ca",
            "orderpipe-e2e-front-proxy-ca",
            "front-proxy CA",
        )?;
        let front_proxy_client = sign(
            dir,
            "front-proxy-client",
            "front-proxy client",
            client(FRONT_PROXY_CLIENT_CN, None),
            &front_proxy_issuer,
        )?;

        let sa = key("service-account")?;
        let service_account_key = dir.join("sa.key");
        let service_account_pub = dir.join("sa.pub");
        write(&service_account_key, &sa.serialize_pem())?;
        write(&service_account_pub, &sa.public_key_pem())?;

        Ok(Pki {
            ca,
            apiserver,
            admin,
            controller_manager,
            scheduler,
            front_proxy_ca,
            front_proxy_client,
            service_account_key,
            service_account_pub,
        })
    }
}

/// The Kafka broker's TLS files: its own CA ([`KafkaTls::CA_FILE`], which clients trust) and a PEM
/// keystore (the broker's unencrypted PKCS#8 key followed by its certificate), which Kafka reads
/// with `ssl.keystore.type=PEM`.
#[derive(Debug, Clone)]
pub struct KafkaTls {
    pub keystore: PathBuf,
}

impl KafkaTls {
    pub const CA_FILE: &str = "ca.crt";

    /// Generates a fresh CA and a serving certificate for 127.0.0.1 and localhost into `dir`.
    pub fn generate(dir: &Path) -> Result<KafkaTls> {
        fs::create_dir_all(dir).map_err(|e| StackError::io("creating", dir, e))?;
        let ca_key = key("Kafka CA")?;
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = name("orderpipe-e2e-kafka-ca", None);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .map_err(|error| StackError::Pki {
                what: "Kafka CA",
                error,
            })?;
        write(&dir.join(Self::CA_FILE), &ca_cert.pem())?;
        let issuer = Issuer::new(ca_params, ca_key);

        let mut serving = leaf("kafka", None, ExtendedKeyUsagePurpose::ServerAuth);
        serving.subject_alt_names = vec![
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "localhost"
                .to_owned()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|error| StackError::Pki {
                    what: "Kafka serving",
                    error,
                })?,
        ];
        let server_key = key("Kafka serving")?;
        let server_cert =
            serving
                .signed_by(&server_key, &issuer)
                .map_err(|error| StackError::Pki {
                    what: "Kafka serving",
                    error,
                })?;
        let keystore = dir.join("server-keystore.pem");
        write(
            &keystore,
            &format!("{}{}", server_key.serialize_pem(), server_cert.pem()),
        )?;
        Ok(KafkaTls { keystore })
    }
}

/// A serving certificate for `host` signed by a fresh CA, written as `tls.crt`/`tls.key` (the names
/// a Kubernetes TLS Secret mounts) and `ca.crt` into `dir`; returns the CA's PEM, for a client's
/// trust (an APIService's `caBundle`).
pub(crate) fn serving_certificate(dir: &Path, host: &str) -> Result<String> {
    fs::create_dir_all(dir).map_err(|e| StackError::io("creating", dir, e))?;
    let what = "aggregated API serving";
    let (ca, issuer) = certificate_authority(dir, "ca", "orderpipe-e2e-apiservice-ca", what)?;
    let mut params = leaf(host, None, ExtendedKeyUsagePurpose::ServerAuth);
    params.subject_alt_names = vec![SanType::DnsName(
        host.to_owned()
            .try_into()
            .map_err(|error| StackError::Pki { what, error })?,
    )];
    sign(dir, "tls", what, params, &issuer)?;
    fs::read_to_string(&ca.cert).map_err(|e| StackError::io("reading", &ca.cert, e))
}

/// A self-signed CA written as `<stem>.crt`/`<stem>.key`, and its issuer for leaf certificates.
fn certificate_authority(
    dir: &Path,
    stem: &str,
    common_name: &str,
    what: &'static str,
) -> Result<(CertFiles, Issuer<'static, KeyPair>)> {
    let ca_key = key(what)?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = name(common_name, None);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|error| StackError::Pki { what, error })?;
    let files = write_pair(dir, stem, &ca_cert.pem(), &ca_key)?;
    Ok((files, Issuer::new(ca_params, ca_key)))
}

fn apiserver_sans() -> Result<Vec<SanType>> {
    let dns = |name: &str| {
        name.to_owned()
            .try_into()
            .map(SanType::DnsName)
            .map_err(|error| StackError::Pki {
                what: "apiserver serving",
                error,
            })
    };
    Ok(vec![
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SanType::IpAddress(IpAddr::V4(KUBERNETES_SERVICE_IP)),
        dns("localhost")?,
        dns("kubernetes")?,
        dns("kubernetes.default")?,
        dns("kubernetes.default.svc")?,
        dns("kubernetes.default.svc.cluster.local")?,
    ])
}

fn key(what: &'static str) -> Result<KeyPair> {
    KeyPair::generate().map_err(|error| StackError::Pki { what, error })
}

fn name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    dn
}

fn leaf(cn: &str, org: Option<&str>, usage: ExtendedKeyUsagePurpose) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(cn, org);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    params
}

fn sign(
    dir: &Path,
    file_stem: &str,
    what: &'static str,
    params: CertificateParams,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<CertFiles> {
    let key = key(what)?;
    let cert = params
        .signed_by(&key, issuer)
        .map_err(|error| StackError::Pki { what, error })?;
    write_pair(dir, file_stem, &cert.pem(), &key)
}

fn write_pair(dir: &Path, stem: &str, cert_pem: &str, key: &KeyPair) -> Result<CertFiles> {
    let files = CertFiles {
        cert: dir.join(format!("{stem}.crt")),
        key: dir.join(format!("{stem}.key")),
    };
    write(&files.cert, cert_pem)?;
    write(&files.key, &key.serialize_pem())?;
    Ok(files)
}

fn write(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents).map_err(|e| StackError::io("writing", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_every_file_as_pem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::generate(dir.path()).expect("pki");
        for cert in [
            &pki.ca,
            &pki.apiserver,
            &pki.admin,
            &pki.controller_manager,
            &pki.scheduler,
            &pki.front_proxy_ca,
            &pki.front_proxy_client,
        ] {
            let pem = fs::read_to_string(&cert.cert).expect("cert");
            assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
            let key = fs::read_to_string(&cert.key).expect("key");
            assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
        }
        let public = fs::read_to_string(&pki.service_account_pub).expect("pub");
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"), "{public}");
    }

    #[test]
    fn two_stacks_never_share_a_ca() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        let ca_a = fs::read(Pki::generate(a.path()).expect("pki").ca.key).expect("read");
        let ca_b = fs::read(Pki::generate(b.path()).expect("pki").ca.key).expect("read");
        assert_ne!(ca_a, ca_b);
    }
}
