//! The notify stage's HTTP side: one POST per attempt, reported as an [`HttpOutcome`] for the pure
//! retry policy to judge. Owns the HTTP client (reqwest with rustls, per-attempt timeout, the
//! configured `Authorization`); must not decide about retries or dead letters.

use std::future::Future;
use std::time::Duration;

use orderpipe_api::contract::{NotifyConfig, SecretString, env};
use orderpipe_orders::notify::HttpOutcome;
use reqwest::header::{AUTHORIZATION, HeaderValue, RETRY_AFTER};

use crate::error::WorkerError;

/// Something that can POST a notification. The runtime uses [`HttpWebhook`]; tests script answers.
pub trait Webhook: Send + Sync + 'static {
    /// POSTs `body` with `headers`; never fails, every failure is an [`HttpOutcome`].
    fn post(
        &self,
        body: &[u8],
        headers: &[(&'static str, &str)],
    ) -> impl Future<Output = HttpOutcome> + Send;
}

/// The real webhook endpoint of a notify stage.
#[derive(Debug, Clone)]
pub struct HttpWebhook {
    client: reqwest::Client,
    /// Parsed once: parsing it for every POST (host normalisation included) was about 3 % of the
    /// notify stage's CPU.
    url: reqwest::Url,
    authorization: Option<SecretString>,
}

impl HttpWebhook {
    pub fn new(config: &NotifyConfig) -> Result<Self, WorkerError> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            // Webhooks are not redirected: a 3xx is a configuration error the policy treats as
            // permanent, and following it could send the notification somewhere unintended.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(WorkerError::HttpClient)?;
        // The reason only: a URL may carry credentials.
        let url = reqwest::Url::parse(&config.url).map_err(|error| WorkerError::WebhookUrl {
            var: env::WEBHOOK_URL,
            reason: error.to_string(),
        })?;
        Ok(Self {
            client,
            url,
            authorization: config.authorization.clone(),
        })
    }
}

impl Webhook for HttpWebhook {
    async fn post(&self, body: &[u8], headers: &[(&'static str, &str)]) -> HttpOutcome {
        let mut request = self.client.post(self.url.clone()).body(body.to_vec());
        for &(name, value) in headers {
            request = request.header(name, value);
        }
        if let Some(secret) = &self.authorization {
            match HeaderValue::from_str(secret.expose()) {
                Ok(mut value) => {
                    value.set_sensitive(true);
                    request = request.header(AUTHORIZATION, value);
                }
                // Not retryable and not the record's fault; the policy dead-letters after the
                // attempts, and the log says why without printing the secret.
                Err(_) => {
                    tracing::error!("the webhook Authorization value is not a valid header value");
                    return HttpOutcome::ConnectionFailed;
                }
            }
        }
        match request.send().await {
            Ok(response) => {
                let outcome = HttpOutcome::Response {
                    status: response.status().as_u16(),
                    retry_after: response
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|value| value.to_str().ok())
                        .map(str::to_owned),
                };
                drain(response).await;
                outcome
            }
            Err(error) if error.is_timeout() => HttpOutcome::Timeout,
            Err(error) => {
                tracing::debug!(%error, "webhook request failed");
                HttpOutcome::ConnectionFailed
            }
        }
    }
}

/// Most bytes of a webhook's answer read so that its connection is reused.
const DRAINED_BYTES: usize = 64 * 1024;

/// Reads the answer's body to its end, so the connection goes back to the pool: the client reuses
/// a connection only once its response was read whole. A short body that came with the headers is
/// already read; without this, any longer answer (a receipt over a few KiB, or one sent after the
/// headers) cost a new TCP (and TLS) connection per notification. An answer longer than
/// [`DRAINED_BYTES`] is not worth reading; its connection is closed instead. The client's timeout
/// bounds the reading, and a failure while reading changes nothing: the status decided.
async fn drain(mut response: reqwest::Response) {
    let mut read = 0;
    while let Ok(Some(chunk)) = response.chunk().await {
        read += chunk.len();
        if read > DRAINED_BYTES {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::extract::{ConnectInfo, State};
    use axum::routing::post;

    use super::*;

    type Peers = Arc<Mutex<HashSet<SocketAddr>>>;

    /// A webhook endpoint answering 200 with a body, noting each client connection it serves.
    async fn endpoint_with_a_body() -> (String, Peers) {
        async fn receive(
            State(peers): State<Peers>,
            ConnectInfo(peer): ConnectInfo<SocketAddr>,
        ) -> String {
            peers.lock().expect("not poisoned").insert(peer);
            // A receipt longer than one read of the socket.
            format!(r#"{{"received":true,"note":"{}"}}"#, "x".repeat(32 * 1024))
        }
        let peers = Peers::default();
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(Arc::clone(&peers))
            .into_make_service_with_connect_info::<SocketAddr>();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds loopback");
        let address = listener.local_addr().expect("has an address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{address}/hook"), peers)
    }

    fn config(url: String) -> NotifyConfig {
        NotifyConfig {
            url,
            authorization: None,
            timeout: Duration::from_secs(5),
            channel: "email".into(),
            max_attempts: 1,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
        }
    }

    #[test]
    fn a_webhook_url_that_does_not_parse_is_refused_with_the_reason_and_without_the_url() {
        let error = HttpWebhook::new(&config("hooks.example/secret-token".into()))
            .expect_err("a relative URL is refused");
        let message = error.to_string();
        assert!(message.contains("ORDERPIPE_WEBHOOK_URL"), "{message}");
        assert!(message.contains("relative URL without a base"), "{message}");
        assert!(!message.contains("secret-token"), "{message}");
    }

    #[tokio::test]
    async fn notifications_to_a_webhook_that_answers_with_a_body_share_one_connection() {
        let (url, peers) = endpoint_with_a_body().await;
        let webhook = HttpWebhook::new(&config(url)).expect("client builds");
        for _ in 0..5 {
            let outcome = webhook.post(b"{}", &[]).await;
            assert!(
                matches!(outcome, HttpOutcome::Response { status: 200, .. }),
                "{outcome:?}"
            );
        }
        let connections = peers.lock().expect("not poisoned").len();
        assert_eq!(
            connections, 1,
            "5 notifications used {connections} connections"
        );
    }
}
