//! The HTTPS server of the external metrics API: TLS with optional client certificates verified
//! against the front-proxy CA, then per request authenticate -> authorize -> answer.
//!
//! I/O edge: accepts connections and calls the [`Authorizer`] and the [`LagCache`]; the routes,
//! documents, selector and authentication rules are the pure `api` and `auth` modules. A
//! connection without a verified front-proxy certificate gets 401 for every request; one with a
//! certificate from another CA fails the TLS handshake.

use std::convert::Infallible;
use std::sync::Arc;
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
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::api::{self, Route};
use super::auth::{RequestHeaderConfig, authenticate};
use super::delegation::{Authorizer, Decision};
use crate::lag::{LagCache, LagSource, StageKey};
use crate::metrics::Metrics;

/// A client that opens a connection and never finishes the handshake is dropped after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the TLS settings could not be built. Names the input; never prints key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
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

/// TLS for the API: the serving certificate (chain) and key, and client certificates verified
/// against the front-proxy CA but not required, so a request without one gets a clear 401 rather
/// than a handshake failure. HTTP/1.1 only.
pub fn tls_config(
    certificate_pem: &[u8],
    key_pem: &[u8],
    front_proxy_ca_pem: &[u8],
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in certificates(front_proxy_ca_pem, "the front-proxy CA")? {
        roots.add(ca).map_err(TlsError::Roots)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(TlsError::Verifier)?;
    let chain = certificates(certificate_pem, "the serving certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| TlsError::Pem {
        what: "the serving key",
        source,
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Serving)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(TlsError::Serving)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
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
    pub front_proxy: RequestHeaderConfig,
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
        common_name: Option<&str>,
        request: &Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let (code, body) = self
            .answer(
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
        common_name: Option<&str>,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> (StatusCode, Value) {
        let fail = |code: StatusCode, message: &str| (code, api::status(code, message));
        if method != Method::GET {
            return fail(StatusCode::METHOD_NOT_ALLOWED, "only GET is served");
        }
        let user = match authenticate(&self.front_proxy, common_name, headers) {
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
    tls: Arc<rustls::ServerConfig>,
    api: Arc<MetricsApi<S, A>>,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
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
        let (acceptor, api) = (acceptor.clone(), Arc::clone(&api));
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
                let (api, common_name) = (Arc::clone(&api), common_name.clone());
                async move { Ok::<_, Infallible>(api.respond(common_name.as_deref(), &request).await) }
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
