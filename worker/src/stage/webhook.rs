//! The notify stage's HTTP side: one POST per attempt, reported as an [`HttpOutcome`] for the pure
//! retry policy to judge. Owns the HTTP client (reqwest with rustls, per-attempt timeout, the
//! configured `Authorization`); must not decide about retries or dead letters.

use std::future::Future;
use std::time::Duration;

use orderpipe_api::contract::{NotifyConfig, SecretString};
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
    url: String,
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
        Ok(Self {
            client,
            url: config.url.clone(),
            authorization: config.authorization.clone(),
        })
    }
}

impl Webhook for HttpWebhook {
    async fn post(&self, body: &[u8], headers: &[(&'static str, &str)]) -> HttpOutcome {
        let mut request = self.client.post(&self.url).body(body.to_vec());
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
            Ok(response) => HttpOutcome::Response {
                status: response.status().as_u16(),
                retry_after: response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned),
            },
            Err(error) if error.is_timeout() => HttpOutcome::Timeout,
            Err(error) => {
                tracing::debug!(%error, "webhook request failed");
                HttpOutcome::ConnectionFailed
            }
        }
    }
}
