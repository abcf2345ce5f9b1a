//! The gateway's HTTP API: `POST /v1/orders`, `GET /v1/orders/{id}` and its OpenAPI document
//! (`GET /v1/openapi.json`). Owns the mapping of every outcome to a status code and a JSON error
//! body naming the rule and field; must not judge orders (the validate stage's rules do, through
//! [`Validator::admit`]) nor talk to librdkafka (the [`OrderSink`] does).

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use orderpipe_orders::validate::{Inadmissible, Validator};
use orderpipe_orders::{DeadLetterReason, MAX_PAYLOAD_BYTES, Reason, Rule, ids};
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use super::auth::{Denied, Scope, Tokens};
use super::kafka::{OrderSink, ProduceError};
use super::ledger::{Claim, Ledger};
use super::metrics::IntakeMetrics;
use super::status_view::StatusView;

/// The request header that makes a POST idempotent beyond its orderId.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Longest accepted `Idempotency-Key` value.
const IDEMPOTENCY_KEY_MAX: usize = 255;
/// Seconds a client should wait before retrying a 409 in flight, a 429 or a 503.
const RETRY_AFTER_SECONDS: &str = "1";

/// Everything the handlers share.
#[derive(Debug)]
pub struct Intake {
    pub validator: Validator,
    pub tokens: Tokens,
    pub sink: Arc<OrderSink>,
    pub ledger: Mutex<Ledger>,
    pub view: Arc<Mutex<StatusView>>,
    pub view_caught_up: Arc<AtomicBool>,
    pub metrics: Arc<IntakeMetrics>,
}

impl Intake {
    pub fn new(
        validator: Validator,
        tokens: Tokens,
        sink: Arc<OrderSink>,
        idempotency_entries: NonZeroUsize,
        status_entries: NonZeroUsize,
        metrics: Arc<IntakeMetrics>,
    ) -> Self {
        Self {
            validator,
            tokens,
            sink,
            ledger: Mutex::new(Ledger::new(idempotency_entries)),
            view: Arc::new(Mutex::new(StatusView::new(status_entries))),
            view_caught_up: Arc::new(AtomicBool::new(false)),
            metrics,
        }
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ready to take traffic: the broker answers and the status view has read its topic's backlog.
    pub fn ready(&self) -> Result<(), &'static str> {
        if !self.sink.broker.is_up() {
            Err("Kafka is unreachable")
        } else if !self.view_caught_up.load(Ordering::Relaxed) {
            Err("reading the status topic's backlog")
        } else {
            Ok(())
        }
    }
}

/// The API's routes.
pub fn router(intake: Arc<Intake>) -> Router {
    Router::new()
        .route("/v1/orders", post(post_order))
        .route("/v1/orders/{id}", get(get_order))
        .route("/v1/openapi.json", get(openapi_json))
        .with_state(intake)
}

/// The error body of every refusal.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// Stable code: a rule (`order_rejected` with `reasons`, `order_id_reused`), a dead-letter
    /// reason of the validate stage (`not_json`, `not_an_object`, `payload_too_large`...), or
    /// `unauthenticated`, `forbidden`, `idempotency_key_format`, `idempotency_key_reused`,
    /// `request_in_flight`, `queue_full`, `kafka_unavailable`, `not_found`.
    error: String,
    message: String,
    /// Every violated rule, in field order (400 `order_rejected`, 409 `order_id_reused`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    reasons: Vec<ReasonBody>,
}

/// One violated validation rule, as in `RejectedOrder.reasons`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReasonBody {
    /// JSON path into the submitted order, e.g. `items[2].quantity`.
    field: String,
    /// The rule's stable code (docs/orders.md).
    rule: String,
    message: String,
}

impl From<Reason> for ReasonBody {
    fn from(reason: Reason) -> Self {
        Self {
            field: reason.field,
            rule: reason.rule.code().to_owned(),
            message: reason.message,
        }
    }
}

/// A 202 answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AcceptedBody {
    order_id: String,
    /// Where to read the order's status (also the `Location` header).
    location: String,
}

/// An order's status, from the status stage's committed transitions.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderStatusBody {
    order_id: String,
    /// `Placed` (accepted, not yet validated) or the state of the latest transition.
    state: String,
    /// Number of accepted transitions (0 while `Placed`).
    version: u64,
    /// RFC 3339 time of the latest transition; absent while `Placed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    updated_at: Option<String>,
    /// The latest transitions, oldest first (at most 16).
    history: Vec<TransitionBody>,
}

/// One accepted transition (a `StatusChanged` record).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransitionBody {
    from: String,
    to: String,
    version: u64,
    at: String,
    event_id: String,
}

/// A refused request: its status, its JSON body, and whether the same request may succeed later
/// (`Retry-After`). Small, so that helpers can return it as their error.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    body: ErrorBody,
    retry_later: bool,
}

impl Refusal {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                error: code.to_owned(),
                message: message.into(),
                reasons: Vec::new(),
            },
            retry_later: false,
        }
    }

    fn with_reasons(mut self, reasons: Vec<Reason>) -> Self {
        self.body.reasons = reasons.into_iter().map(ReasonBody::from).collect();
        self
    }

    /// The request may succeed unchanged in a moment (in flight, queue full, Kafka down).
    fn retry_later(mut self) -> Self {
        self.retry_later = true;
        self
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body)).into_response();
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.retry_later {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}

fn denied(denied: Denied) -> Refusal {
    match denied {
        Denied::Unauthenticated => Refusal::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "send Authorization: Bearer <token> with a token the gateway knows",
        ),
        Denied::Forbidden(scope) => Refusal::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("the token lacks the scope {}", scope.code()),
        ),
    }
}

fn authorize(intake: &Intake, headers: &HeaderMap, scope: Scope) -> Result<(), Refusal> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    intake.tokens.check(authorization, scope).map_err(denied)
}

fn location(order_id: &str) -> String {
    // An orderId is [A-Za-z0-9_-]: nothing to escape.
    format!("/v1/orders/{order_id}")
}

/// Set on a 202 that repeats an earlier acceptance: the order is in Kafka once, from before.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

fn accepted(order_id: String) -> Response {
    let location = location(&order_id);
    let mut response = (
        StatusCode::ACCEPTED,
        axum::Json(AcceptedBody {
            order_id,
            location: location.clone(),
        }),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// The `Idempotency-Key` header, if any: 1–255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Refusal> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key)
            if !key.is_empty()
                && key.len() <= IDEMPOTENCY_KEY_MAX
                && key.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(key.to_owned()))
        }
        _ => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "idempotency_key_format",
            format!("Idempotency-Key must be 1-{IDEMPOTENCY_KEY_MAX} visible ASCII characters"),
        )),
    }
}

#[utoipa::path(
    post,
    path = "/v1/orders",
    tag = "orders",
    request_body(
        content = serde_json::Value,
        content_type = "application/json",
        description = "An OrderPlaced (docs/schemas/order-placed.schema.json), at most 512 KiB"
    ),
    params(
        ("Idempotency-Key" = Option<String>, Header,
         description = "1-255 visible ASCII characters; the same key with another order is 422")
    ),
    responses(
        (status = 202, description = "The broker acknowledged the record (acks=all)", body = AcceptedBody,
         headers(("Location" = String, description = "/v1/orders/{orderId}"),
                 ("Idempotent-Replayed" = String, description = "true when this is the answer to an earlier request for the same order, which this request did not produce again"))),
        (status = 400, description = "Not a valid order: every violated rule and field, or the dead-letter reason", body = ErrorBody),
        (status = 401, description = "No or an unknown bearer token", body = ErrorBody),
        (status = 403, description = "The token lacks orders:write", body = ErrorBody),
        (status = 409, description = "order_id_reused (other content), or request_in_flight (retry after Retry-After)", body = ErrorBody),
        (status = 413, description = "Body over 512 KiB", body = ErrorBody),
        (status = 422, description = "idempotency_key_reused: the key was used for another order or content", body = ErrorBody),
        (status = 429, description = "The producer queue is full; retry after Retry-After", body = ErrorBody),
        (status = 503, description = "Kafka is unreachable or did not acknowledge in time; retry after Retry-After", body = ErrorBody),
    ),
    security(("bearer" = ["orders:write"]))
)]
async fn post_order(State(intake): State<Arc<Intake>>, request: Request) -> Response {
    let started = Instant::now();
    let response = submit(&intake, request)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    intake
        .metrics
        .answered("post_order", response.status().as_u16(), started.elapsed());
    response
}

async fn submit(intake: &Arc<Intake>, request: Request) -> Result<Response, Refusal> {
    let (parts, body) = request.into_parts();
    authorize(intake, &parts.headers, Scope::Write)?;
    if !intake.sink.broker.is_up() {
        return Err(unavailable("Kafka is unreachable; nothing was accepted"));
    }
    let key = idempotency_key(&parts.headers)?;
    // One byte over the stage's limit is enough to tell "too large" without buffering more.
    let payload = axum::body::to_bytes(body, MAX_PAYLOAD_BYTES + 1)
        .await
        .map_err(|_| {
            Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                DeadLetterReason::PayloadTooLarge.code(),
                format!("the body is larger than the limit of {MAX_PAYLOAD_BYTES} bytes"),
            )
        })?;
    let admitted = intake
        .validator
        .admit(&payload)
        .map_err(|refused| match refused {
            Inadmissible::Undecodable { reason, message } => {
                let status = if reason == DeadLetterReason::PayloadTooLarge {
                    StatusCode::PAYLOAD_TOO_LARGE
                } else {
                    StatusCode::BAD_REQUEST
                };
                Refusal::new(status, reason.code(), message)
            }
            Inadmissible::Rejected { reasons, .. } => Refusal::new(
                StatusCode::BAD_REQUEST,
                "order_rejected",
                "the order breaks the validation rules listed in reasons",
            )
            .with_reasons(reasons),
        })?;
    let claim = {
        let mut ledger = intake.ledger();
        let claim = ledger.claim(
            &admitted.order_id,
            &admitted.fingerprint.to_string(),
            key.as_deref(),
        );
        intake.metrics.idempotency_entries(ledger.len());
        claim
    };
    match claim {
        Claim::New => {}
        Claim::Replay => {
            let mut response = accepted(admitted.order_id);
            response
                .headers_mut()
                .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
            return Ok(response);
        }
        Claim::InFlight => {
            return Err(Refusal::new(
                StatusCode::CONFLICT,
                "request_in_flight",
                "the same order is waiting for the broker's acknowledgement; retry shortly",
            )
            .retry_later());
        }
        Claim::OrderIdReused => {
            let reason = Reason {
                field: "orderId".to_owned(),
                rule: Rule::OrderIdReused,
                message: "was already accepted with different content".to_owned(),
            };
            return Err(Refusal::new(
                StatusCode::CONFLICT,
                Rule::OrderIdReused.code(),
                "this orderId was already accepted with different content",
            )
            .with_reasons(vec![reason]));
        }
        Claim::KeyReused => {
            return Err(Refusal::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used for another order or content",
            ));
        }
    }
    // Awaited in its own task: a client that hangs up must not leave the claim in flight forever.
    let produce = {
        let intake = Arc::clone(intake);
        let order_id = admitted.order_id.clone();
        tokio::spawn(async move {
            let result = intake.sink.produce(&order_id, &payload).await;
            let mut ledger = intake.ledger();
            match &result {
                Ok(_) => ledger.accepted(&order_id),
                Err(_) => ledger.failed(&order_id, key.as_deref()),
            }
            intake.metrics.kafka_up(intake.sink.broker.is_up());
            result
        })
    };
    match produce.await {
        Ok(Ok(_)) => Ok(accepted(admitted.order_id)),
        Ok(Err(ProduceError::QueueFull)) => Err(Refusal::new(
            StatusCode::TOO_MANY_REQUESTS,
            "queue_full",
            "the gateway's producer queue is full; nothing was accepted",
        )
        .retry_later()),
        Ok(Err(failure @ ProduceError::Refused(_))) => Err(Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            DeadLetterReason::PayloadTooLarge.code(),
            failure.to_string(),
        )),
        Ok(Err(failure @ ProduceError::Unavailable(_))) => Err(unavailable(failure.to_string())),
        Err(join) => Err(unavailable(format!("producing was interrupted: {join}"))),
    }
}

/// 503: Kafka is unreachable or did not acknowledge in time.
fn unavailable(message: impl Into<String>) -> Refusal {
    Refusal::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "kafka_unavailable",
        message,
    )
    .retry_later()
}

#[utoipa::path(
    get,
    path = "/v1/orders/{id}",
    tag = "orders",
    params(("id" = String, Path, description = "The orderId")),
    responses(
        (status = 200, description = "The order's status, version and recent history", body = OrderStatusBody),
        (status = 400, description = "order_id_format: not an orderId", body = ErrorBody),
        (status = 401, description = "No or an unknown bearer token", body = ErrorBody),
        (status = 403, description = "The token lacks orders:read", body = ErrorBody),
        (status = 404, description = "not_found: unknown, or no longer held in the gateway's bounded view", body = ErrorBody),
    ),
    security(("bearer" = ["orders:read"]))
)]
async fn get_order(
    State(intake): State<Arc<Intake>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let response = status_of(&intake, &id, &headers).unwrap_or_else(IntoResponse::into_response);
    intake
        .metrics
        .answered("get_order", response.status().as_u16(), started.elapsed());
    response
}

fn status_of(intake: &Intake, id: &str, headers: &HeaderMap) -> Result<Response, Refusal> {
    authorize(intake, headers, Scope::Read)?;
    if !ids::is_order_id(id) {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            Rule::OrderIdFormat.code(),
            "an orderId is 1-64 characters of A-Z, a-z, 0-9, '_' and '-'",
        ));
    }
    let known = {
        let mut view = intake.view.lock().unwrap_or_else(|p| p.into_inner());
        view.get(id).map(|order| OrderStatusBody {
            order_id: id.to_owned(),
            state: order.state.code().to_owned(),
            version: order.version,
            updated_at: Some(orderpipe_orders::rfc3339::format(&order.updated_at)),
            history: order
                .history
                .iter()
                .map(|change| TransitionBody {
                    from: change.from.code().to_owned(),
                    to: change.to.code().to_owned(),
                    version: change.version,
                    at: orderpipe_orders::rfc3339::format(&change.at),
                    event_id: change.event_id.clone(),
                })
                .collect(),
        })
    };
    let body = known.or_else(|| {
        // Accepted here, not yet validated: the status stage has no record of it yet.
        intake.ledger().is_accepted(id).then(|| OrderStatusBody {
            order_id: id.to_owned(),
            state: orderpipe_orders::OrderState::Placed.code().to_owned(),
            version: 0,
            updated_at: None,
            history: Vec::new(),
        })
    });
    match body {
        Some(body) => Ok((StatusCode::OK, axum::Json(body)).into_response()),
        None => Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no status for this orderId: unknown, rejected, or no longer held by the gateway",
        )),
    }
}

async fn openapi_json() -> Response {
    match ApiDoc::openapi().to_pretty_json() {
        Ok(json) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            Body::from(json),
        )
            .into_response(),
        Err(failure) => Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "openapi",
            failure.to_string(),
        )
        .into_response(),
    }
}

/// The bearer scheme every operation requires.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The gateway's OpenAPI document, committed as `docs/intake.openapi.json`.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "orderpipe intake gateway",
        description = "Shops submit orders over HTTP and read their status back. Design: docs/intake.md.",
        license(name = "Apache-2.0"),
        version = "v1"
    ),
    paths(post_order, get_order),
    components(schemas(ErrorBody, ReasonBody, AcceptedBody, OrderStatusBody, TransitionBody)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// The document as committed (pretty JSON and a final newline).
pub fn openapi_document() -> String {
    let mut json = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|failure| format!("{{\"error\": \"{failure}\"}}"));
    json.push('\n');
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_openapi_document_matches_the_code() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/intake.openapi.json");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == openapi_document(),
            "{} is stale: run `make manifests` and commit the result",
            path.display()
        );
    }

    #[test]
    fn the_document_lists_every_answer_of_each_operation() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("serialises");
        let codes = |path: &str, method: &str| -> Vec<String> {
            doc["paths"][path][method]["responses"]
                .as_object()
                .map(|responses| responses.keys().cloned().collect())
                .unwrap_or_default()
        };
        assert_eq!(
            codes("/v1/orders", "post"),
            [
                "202", "400", "401", "403", "409", "413", "422", "429", "503"
            ]
        );
        assert_eq!(
            codes("/v1/orders/{id}", "get"),
            ["200", "400", "401", "403", "404"]
        );
    }
}
