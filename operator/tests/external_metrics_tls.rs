//! The external metrics API server over real TLS on loopback, with certificates made by rcgen and
//! a real HTTPS client: only a front-proxy client certificate (signed by the requestheader CA,
//! with an allowed name) makes the user headers count; the user is then authorized per request.
//! The lag and the authorizer are fakes: this is about the transport and the auth path.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use orderpipe_operator::external_metrics::auth::{RequestHeaderConfig, User};
use orderpipe_operator::external_metrics::{
    Authorizer, Decision, FrontProxyTrust, MetricsApi, ServingCertificate, serve,
};
use orderpipe_operator::lag::{CacheSettings, LagCache, LagError, LagSource, StageKey};
use orderpipe_operator::metrics::Metrics;
use prometheus_client::registry::Registry;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use reqwest::StatusCode;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Every stage lags 42 records, except in pipeline `gone`, which does not exist.
struct FortyTwo;

impl LagSource for FortyTwo {
    type Client = ();

    async fn measure(&self, stage: &StageKey, _: &mut Option<()>) -> Result<u64, LagError> {
        if stage.pipeline == "gone" {
            return Err(LagError::PipelineNotFound {
                namespace: stage.namespace.clone(),
                pipeline: stage.pipeline.clone(),
            });
        }
        Ok(42)
    }

    fn close(&self, _: Vec<()>) {}
}

/// RBAC stand-in: alice may read metrics, nobody else.
struct OnlyAlice;

impl Authorizer for OnlyAlice {
    async fn authorize(&self, user: &User, _: &str, _: &str) -> Result<Decision, String> {
        Ok(if user.name == "alice" {
            Decision::Allowed
        } else {
            Decision::Denied("no RBAC rule".into())
        })
    }
}

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let pem = params.self_signed(&key).expect("CA").pem();
    Ca {
        pem,
        issuer: Issuer::new(params, key),
    }
}

/// Certificate and key PEM signed by `ca`.
fn leaf(ca: &Ca, common_name: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> String {
    let key = KeyPair::generate().expect("key");
    let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
    let mut params = CertificateParams::new(sans).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![usage];
    let certificate = params.signed_by(&key, &ca.issuer).expect("signed");
    format!("{}{}", certificate.pem(), key.serialize_pem())
}

struct Server {
    url: String,
    serving_ca: String,
    front_proxy: Ca,
    trust: Arc<FrontProxyTrust>,
    stop: CancellationToken,
}

/// kube-apiserver's front-proxy settings with this CA, as the ConfigMap carries them.
fn front_proxy_settings(ca: &Ca) -> RequestHeaderConfig {
    let data = BTreeMap::from([
        ("requestheader-client-ca-file", ca.pem.as_str()),
        ("requestheader-allowed-names", r#"["front-proxy-client"]"#),
        ("requestheader-username-headers", r#"["X-Remote-User"]"#),
        ("requestheader-group-headers", r#"["X-Remote-Group"]"#),
    ]);
    let data = data
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
    RequestHeaderConfig::from_config_map(&data).expect("front proxy")
}

async fn start() -> Server {
    let serving_ca = ca("serving-ca");
    let serving = leaf(
        &serving_ca,
        "orderpipe-operator",
        &["127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    // The serving certificate as a mounted kubernetes.io/tls Secret: tls.crt and tls.key.
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("tls.crt"), &serving).expect("written");
    std::fs::write(dir.path().join("tls.key"), &serving).expect("written");
    let serving = Arc::new(ServingCertificate::load(dir.path()).expect("certificate"));
    let front_proxy = ca("front-proxy-ca");
    let trust = FrontProxyTrust::new(serving, front_proxy_settings(&front_proxy));
    let trust = Arc::new(trust.expect("TLS settings"));
    let metrics = Arc::new(Metrics::register(&mut Registry::default()));
    let api = MetricsApi {
        lag: Arc::new(LagCache::new(
            FortyTwo,
            CacheSettings::default(),
            Arc::clone(&metrics),
        )),
        authorizer: OnlyAlice,
        metrics,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bound");
    let url = format!("https://{}", listener.local_addr().expect("address"));
    let stop = CancellationToken::new();
    tokio::spawn(serve(
        listener,
        Arc::clone(&trust),
        Arc::new(api),
        stop.clone(),
    ));
    Server {
        url,
        serving_ca: serving_ca.pem,
        front_proxy,
        trust,
        stop,
    }
}

fn client(server: &Server, identity: Option<&str>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(server.serving_ca.as_bytes()).expect("CA"),
        )
        .timeout(Duration::from_secs(10));
    if let Some(pem) = identity {
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"));
    }
    builder.build().expect("client")
}

const LAG: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/shop/orderpipe_consumer_lag";

async fn get(
    client: &reqwest::Client,
    server: &Server,
    path: &str,
    user: &str,
) -> reqwest::Result<(StatusCode, Value)> {
    let response = client
        .get(format!("{}{path}", server.url))
        .header("X-Remote-User", user)
        .header("X-Remote-Group", "system:authenticated")
        .send()
        .await?;
    let status = response.status();
    Ok((status, response.json().await?))
}

/// Whether a Status answer's message mentions `text`.
fn message_says(status: &Value, text: &str) -> bool {
    status["message"].as_str().is_some_and(|m| m.contains(text))
}

#[tokio::test]
async fn without_a_front_proxy_certificate_every_request_is_unauthorized() {
    let server = start().await;
    let anonymous = client(&server, None);
    for path in ["/apis/external.metrics.k8s.io/v1beta1", LAG] {
        let (status, body) = get(&anonymous, &server, path, "alice")
            .await
            .expect("answer");
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
        assert_eq!(body["kind"], "Status");
    }

    let not_allowed = leaf(
        &server.front_proxy,
        "someone-else",
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let (status, body) = get(&client(&server, Some(&not_allowed)), &server, LAG, "alice")
        .await
        .expect("answer");
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(message_says(&body, "someone-else"), "{body}");

    // Signed by another CA: the handshake itself fails.
    let stranger = leaf(
        &ca("other-ca"),
        "front-proxy-client",
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let refused = get(&client(&server, Some(&stranger)), &server, LAG, "alice").await;
    assert!(refused.is_err(), "{refused:?}");
    server.stop.cancel();
}

#[tokio::test]
async fn the_front_proxy_gets_discovery_and_the_lag_of_authorized_users() {
    let server = start().await;
    let proxy_pem = leaf(
        &server.front_proxy,
        "front-proxy-client",
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let proxy = client(&server, Some(&proxy_pem));

    let (status, resources) = get(
        &proxy,
        &server,
        "/apis/external.metrics.k8s.io/v1beta1",
        "bob",
    )
    .await
    .expect("answer");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(resources["kind"], "APIResourceList");
    assert_eq!(resources["resources"][0]["name"], "orderpipe_consumer_lag");

    let selected = format!("{LAG}?labelSelector=pipeline%3Dcheckout%2Cstage%3Dvalidate");
    let (status, list) = get(&proxy, &server, &selected, "alice")
        .await
        .expect("answer");
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["kind"], "ExternalMetricValueList");
    assert_eq!(list["items"][0]["value"], "42");
    assert_eq!(list["items"][0]["metricLabels"]["stage"], "validate");

    let (status, denied) = get(&proxy, &server, &selected, "bob")
        .await
        .expect("answer");
    assert_eq!(status, StatusCode::FORBIDDEN, "{denied}");
    assert!(message_says(&denied, "no RBAC rule"), "{denied}");

    let (status, body) = get(&proxy, &server, LAG, "alice").await.expect("answer");
    assert_eq!(status, StatusCode::BAD_REQUEST, "no selector: {body}");

    let gone = format!("{LAG}?labelSelector=pipeline%3Dgone%2Cstage%3Dvalidate");
    let (status, body) = get(&proxy, &server, &gone, "alice").await.expect("answer");
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let other =
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/shop/queue_depth?labelSelector=a%3Db";
    let (status, body) = get(&proxy, &server, other, "alice").await.expect("answer");
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    server.stop.cancel();
}

#[tokio::test]
async fn a_rotated_front_proxy_ca_is_trusted_from_the_next_connection() {
    let server = start().await;
    let proxy = |ca: &Ca| {
        let pem = leaf(
            ca,
            "front-proxy-client",
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        client(&server, Some(&pem))
    };
    let discovery = "/apis/external.metrics.k8s.io/v1beta1";
    let old_proxy = proxy(&server.front_proxy);
    let (status, _) = get(&old_proxy, &server, discovery, "system:kube-aggregator")
        .await
        .expect("answer");
    assert_eq!(status, StatusCode::OK);

    let rotated = ca("front-proxy-ca-2");
    let unchanged = server
        .trust
        .update(front_proxy_settings(&server.front_proxy));
    assert!(!unchanged.expect("valid"), "same settings: nothing to do");
    assert!(
        server
            .trust
            .update(front_proxy_settings(&rotated))
            .expect("valid")
    );

    let (status, _) = get(
        &proxy(&rotated),
        &server,
        discovery,
        "system:kube-aggregator",
    )
    .await
    .expect("answer");
    assert_eq!(status, StatusCode::OK, "the new CA's certificate");
    let refused = get(&proxy(&server.front_proxy), &server, discovery, "alice").await;
    assert!(
        refused.is_err(),
        "the old CA is no longer trusted: {refused:?}"
    );
    server.stop.cancel();
}
