//! The HTTPS server of the external metrics API: TLS with optional client certificates verified
//! against the front-proxy CA, then per request authenticate -> authorize -> answer.
//!
//! I/O edge: accepts connections, reads the serving certificate files ([`ServingCertificate`]),
//! keeps the front proxy's settings current ([`FrontProxyTrust`]) and calls the [`Authorizer`] and
//! the [`LagCache`]; the routes, documents, selector and authentication rules are the pure `api`
//! and `auth` modules. A connection without a verified front-proxy certificate gets 401 for every
//! request; one with a certificate from another CA fails the TLS handshake.

use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use orderpipe_api::contract::metrics::CONSUMER_LAG;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::api::{self, Route};
use super::auth::{RequestHeaderConfig, authenticate};
use super::delegation::{Authorizer, Decision, request_header_config};
use crate::lag::{LagCache, LagSource, StageKey};
use crate::metrics::Metrics;

/// A client that opens a connection and never finishes the handshake is dropped after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the TLS settings could not be built. Names the input; never prints key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: no PEM certificate in it")]
    NoCertificate { what: &'static str },
    #[error("{what}: {source}")]
    Pem {
        what: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the front-proxy CA: {0}")]
    Roots(#[source] rustls::Error),
    #[error("the front-proxy client certificate verifier: {0}")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    #[error("the serving certificate and key: {0}")]
    Serving(#[source] rustls::Error),
}

fn certificates(pem: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { what, source })?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate { what });
    }
    Ok(certificates)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The serving certificate from `tls.crt` and `tls.key` in a directory (a mounted
/// kubernetes.io/tls Secret), re-read by [`reload`](Self::reload): cert-manager renews the Secret,
/// the kubelet updates the files, and new handshakes get the new certificate without a restart.
#[derive(Debug)]
pub struct ServingCertificate {
    dir: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    /// The files' contents, to notice a change.
    pem: (Vec<u8>, Vec<u8>),
    key: Arc<CertifiedKey>,
}

impl ServingCertificate {
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let provider = provider();
        let loaded = Self::read(dir, &provider)?;
        Ok(Self {
            dir: dir.to_owned(),
            provider,
            current: RwLock::new(loaded),
        })
    }

    fn read(dir: &Path, provider: &CryptoProvider) -> Result<Loaded, TlsError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| TlsError::Read { path, source })
        };
        let (certificate_pem, key_pem) = (read("tls.crt")?, read("tls.key")?);
        let chain = certificates(&certificate_pem, "the serving certificate")?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| TlsError::Pem {
            what: "the serving key",
            source,
        })?;
        let key = CertifiedKey::from_der(chain, key, provider).map_err(TlsError::Serving)?;
        Ok(Loaded {
            pem: (certificate_pem, key_pem),
            key: Arc::new(key),
        })
    }

    /// Re-reads the files; `Ok(true)` when they changed and the new certificate is in use. On an
    /// error (a half-written renewal) the certificate in use stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let loaded = Self::read(&self.dir, &self.provider)?;
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if current.pem == loaded.pem {
            return Ok(false);
        }
        *current = loaded;
        Ok(true)
    }

    /// Reloads every `every` until `shutdown`.
    pub async fn reload_periodically(
        self: Arc<Self>,
        every: Duration,
        shutdown: CancellationToken,
    ) {
        refresh_every(every, shutdown, "serving certificate", || {
            let certificate = Arc::clone(&self);
            async move {
                let reload = tokio::task::spawn_blocking(move || certificate.reload());
                let reloaded = reload.await.map_err(|error| error.to_string())?;
                reloaded.map_err(|error| error.to_string())
            }
        })
        .await;
    }
}

impl ResolvesServerCert for ServingCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        Some(Arc::clone(&current.key))
    }
}

/// TLS for the API: the serving certificate, and client certificates verified against the
/// front-proxy CA but not required, so a request without one gets a clear 401 rather than a
/// handshake failure. HTTP/1.1 only.
fn tls_config(
    serving: Arc<ServingCertificate>,
    front_proxy_ca_pem: &[u8],
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    for ca in certificates(front_proxy_ca_pem, "the front-proxy CA")? {
        roots.add(ca).map_err(TlsError::Roots)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(TlsError::Verifier)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Serving)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(serving);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The front proxy's settings and the TLS settings that trust its CA, replaced together when
/// kube-apiserver publishes new ones (a rotated front-proxy CA, other allowed names): each
/// connection is authenticated with the settings of the moment it was accepted.
#[derive(Debug)]
pub struct FrontProxyTrust {
    serving: Arc<ServingCertificate>,
    current: RwLock<Trusted>,
}

#[derive(Clone, Debug)]
struct Trusted {
    front_proxy: Arc<RequestHeaderConfig>,
    tls: Arc<rustls::ServerConfig>,
}

impl FrontProxyTrust {
    pub fn new(
        serving: Arc<ServingCertificate>,
        front_proxy: RequestHeaderConfig,
    ) -> Result<Self, TlsError> {
        let trusted = Self::trusted(&serving, front_proxy)?;
        Ok(Self {
            serving,
            current: RwLock::new(trusted),
        })
    }

    fn trusted(
        serving: &Arc<ServingCertificate>,
        front_proxy: RequestHeaderConfig,
    ) -> Result<Trusted, TlsError> {
        let tls = tls_config(Arc::clone(serving), front_proxy.client_ca_pem.as_bytes())?;
        Ok(Trusted {
            front_proxy: Arc::new(front_proxy),
            tls: Arc::new(tls),
        })
    }

    fn current(&self) -> Trusted {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Uses `front_proxy` from now on; `Ok(false)` when nothing changed. Settings whose CA does
    /// not parse are refused and the current ones stay.
    pub fn update(&self, front_proxy: RequestHeaderConfig) -> Result<bool, TlsError> {
        if *self.current().front_proxy == front_proxy {
            return Ok(false);
        }
        let trusted = Self::trusted(&self.serving, front_proxy)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = trusted;
        Ok(true)
    }

    /// Re-reads the front proxy's settings every `every` until `shutdown`.
    pub async fn refresh_periodically(
        self: Arc<Self>,
        client: kube::Client,
        every: Duration,
        shutdown: CancellationToken,
    ) {
        refresh_every(every, shutdown, "front-proxy settings", || {
            let (trust, client) = (Arc::clone(&self), client.clone());
            async move {
                let front_proxy = request_header_config(&client).await?;
                trust.update(front_proxy).map_err(|error| error.to_string())
            }
        })
        .await;
    }
}

/// Runs `refresh` every `every` until `shutdown`, logging when it put something new in use
/// (`Ok(true)`) and when it failed (what is in use stays).
async fn refresh_every<F, R>(
    every: Duration,
    shutdown: CancellationToken,
    what: &'static str,
    mut refresh: F,
) where
    F: FnMut() -> R,
    R: Future<Output = Result<bool, String>>,
{
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return,
        }
        match refresh().await {
            Ok(true) => tracing::info!("external metrics API: new {what} in use"),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, "external metrics API: keeping the current {what}");
            }
        }
    }
}

/// The common name of a (verified) certificate, `None` when it has none.
fn common_name(certificate: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).ok()?;
    let name = parsed.subject().iter_common_name().next()?.as_str().ok()?;
    Some(name.to_owned())
}

/// What answers the requests.
pub struct MetricsApi<S: LagSource, A: Authorizer> {
    pub lag: Arc<LagCache<S>>,
    pub authorizer: A,
    pub metrics: Arc<Metrics>,
}

impl<S: LagSource, A: Authorizer> std::fmt::Debug for MetricsApi<S, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsApi").finish_non_exhaustive()
    }
}

impl<S: LagSource, A: Authorizer> MetricsApi<S, A> {
    async fn respond(
        &self,
        front_proxy: &RequestHeaderConfig,
        common_name: Option<&str>,
        request: &Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let (code, body) = self
            .answer(
                front_proxy,
                common_name,
                request.method(),
                request.uri(),
                request.headers(),
            )
            .await;
        self.metrics.metrics_api_request(code);
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = code;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response
    }

    async fn answer(
        &self,
        front_proxy: &RequestHeaderConfig,
        common_name: Option<&str>,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> (StatusCode, Value) {
        let fail = |code: StatusCode, message: &str| (code, api::status(code, message));
        if method != Method::GET {
            return fail(StatusCode::METHOD_NOT_ALLOWED, "only GET is served");
        }
        let user = match authenticate(front_proxy, common_name, headers) {
            Ok(user) => user,
            Err(error) => return fail(StatusCode::UNAUTHORIZED, &error.to_string()),
        };
        // Discovery is the same for every authenticated caller, as kube-apiserver's own
        // (system:discovery); the metric itself is authorized per request.
        let (namespace, metric) = match api::route(uri.path()) {
            Route::Groups => return (StatusCode::OK, api::group_list()),
            Route::Group => return (StatusCode::OK, api::group_document()),
            Route::Resources => return (StatusCode::OK, api::resource_list()),
            Route::Unknown => return fail(StatusCode::NOT_FOUND, "not found"),
            Route::Metric { namespace, metric } => (namespace, metric),
        };
        match self.authorizer.authorize(&user, namespace, metric).await {
            Ok(Decision::Allowed) => {}
            Ok(Decision::Denied(reason)) => {
                let message = format!(
                    "{} cannot list {metric} in API group {} in namespace {namespace}{}",
                    user.name,
                    api::GROUP,
                    if reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {reason}")
                    }
                );
                return fail(StatusCode::FORBIDDEN, &message);
            }
            Err(error) => {
                tracing::warn!(%error, "authorizing an external metrics request");
                return fail(StatusCode::INTERNAL_SERVER_ERROR, &error);
            }
        }
        if metric != CONSUMER_LAG {
            let message = format!("metric {metric} is not served here, only {CONSUMER_LAG}");
            return fail(StatusCode::NOT_FOUND, &message);
        }
        let selector = match api::stage_selector(uri.query()) {
            Ok(selector) => selector,
            Err(message) => return fail(StatusCode::BAD_REQUEST, &message),
        };
        let stage = StageKey {
            namespace: namespace.to_owned(),
            pipeline: selector.pipeline.clone(),
            stage: selector.stage.clone(),
        };
        match self.lag.get(&stage).await {
            Ok(reading) => (
                StatusCode::OK,
                api::value_list(&selector, reading.records, reading.measured_at),
            ),
            Err(error) if error.is_not_found() => fail(StatusCode::NOT_FOUND, &error.to_string()),
            Err(error) => fail(StatusCode::SERVICE_UNAVAILABLE, &error.to_string()),
        }
    }
}

/// Serves the API on `listener` until `shutdown` is cancelled.
pub async fn serve<S: LagSource, A: Authorizer>(
    listener: TcpListener,
    trust: Arc<FrontProxyTrust>,
    api: Arc<MetricsApi<S, A>>,
    shutdown: CancellationToken,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(%error, "accepting an external metrics connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let Trusted { front_proxy, tls } = trust.current();
        let acceptor = TlsAcceptor::from(tls);
        let api = Arc::clone(&api);
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "external metrics TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let common_name = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(<[_]>::first)
                .and_then(common_name);
            let service = service_fn(move |request: Request<Incoming>| {
                let (api, front_proxy) = (Arc::clone(&api), Arc::clone(&front_proxy));
                let common_name = common_name.clone();
                async move {
                    let response = api
                        .respond(&front_proxy, common_name.as_deref(), &request)
                        .await;
                    Ok::<_, Infallible>(response)
                }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, %error, "external metrics connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate and its key, as PEM.
    fn self_signed(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
        let certificate = params.self_signed(&key).expect("certificate");
        (certificate.pem(), key.serialize_pem())
    }

    fn write(dir: &Path, (certificate, key): &(String, String)) {
        std::fs::write(dir.join("tls.crt"), certificate).expect("written");
        std::fs::write(dir.join("tls.key"), key).expect("written");
    }

    fn served(serving: &ServingCertificate) -> CertificateDer<'static> {
        let current = serving.current.read().expect("not poisoned");
        current.key.cert[0].clone()
    }

    #[test]
    fn a_renewed_certificate_is_served_after_reload_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), &self_signed("first.svc"));
        let serving = ServingCertificate::load(dir.path()).expect("loaded");
        let first = served(&serving);
        assert!(!serving.reload().expect("readable"), "unchanged files");

        write(dir.path(), &self_signed("second.svc"));
        assert!(serving.reload().expect("readable"), "renewed");
        let second = served(&serving);
        assert_ne!(first, second);

        // A renewal caught half-written: the key of one certificate with another's certificate.
        let (certificate, _) = self_signed("third.svc");
        std::fs::write(dir.path().join("tls.crt"), certificate).expect("written");
        let error = serving.reload().expect_err("key does not match");
        assert!(error.to_string().contains("serving certificate"), "{error}");
        assert_eq!(served(&serving), second, "the working certificate stays");
    }

    #[test]
    fn missing_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let error = ServingCertificate::load(dir.path()).expect_err("no files");
        assert!(error.to_string().contains("tls.crt"), "{error}");
    }
}
