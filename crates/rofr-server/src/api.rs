//! The HTTP API. Every handler returns `Result<_, ApiError>`, and every error reaches
//! the client in one envelope: `{"error": {"code", "message", "field"}}`.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rofr_engine::command::RejectionCode;
use rofr_engine::event::DeclineReason;
use rofr_engine::need::NeedSpec;
use rofr_engine::state::NeedStatus;
use rofr_engine::types::{Gpus, NeedId, Price, ProviderId};
use rofr_engine::Command;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::broker::{
    raw_json, Answer, Broker, BrokerError, Idempotency, IndexedEvent, Outcome, Party,
};
use crate::input::{Params as Query, Segments as Path};
use crate::views;

/// Largest request body accepted, in bytes.
pub const BODY_LIMIT: usize = 64 * 1024;
/// Largest page a list returns.
pub const MAX_PAGE: u32 = 1000;

pub fn router(broker: Broker) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .route("/v1/needs", post(submit_need).get(list_needs))
        .route("/v1/needs/{id}", get(show_need))
        .route("/v1/needs/{id}/events", get(need_events))
        .route("/v1/needs/{id}/cancel", post(cancel_need))
        .route("/v1/needs/{id}/accept", post(accept))
        .route("/v1/needs/{id}/decline", post(decline))
        .route("/v1/needs/{id}/quote", post(quote))
        .route("/v1/needs/{id}/match", post(match_offer))
        .route("/v1/needs/{id}/awards/{award}/approve", post(approve))
        .route("/v1/needs/{id}/awards/{award}/reject", post(reject))
        .route("/v1/needs/{id}/awards/{award}/confirm", post(confirm))
        .route("/v1/needs/{id}/awards/{award}/fail", post(fail))
        .route("/v1/offers", get(my_offers))
        .route("/v1/summary", get(summary))
        .route("/v1/deal", get(deal))
        .route("/v1/deal/amendments", post(amend_deal))
        .route("/v1/whoami", get(whoami))
        .route("/", get(|| async { axum::response::Redirect::to("/ui/") }))
        .route("/ui/", get(crate::dashboard::index))
        .route("/ui/app.js", get(crate::dashboard::script))
        .route("/ui/app.css", get(crate::dashboard::style))
        .route("/v1/rfqs", get(my_rfqs))
        .route("/v1/awards", get(my_awards))
        .route("/v1/events", get(events))
        .route("/v1/ledger/key", get(ledger_key))
        .route(
            "/v1/ledger/checkpoint",
            get(latest_checkpoint).post(make_checkpoint),
        )
        .route("/v1/ledger/inclusion", get(inclusion_proof))
        .route("/v1/ledger/consistency", get(consistency_proof))
        .route("/v1/ledger/evidence/{id}", get(evidence))
        .route("/v1/ledger/witnesses", get(witnesses))
        .route("/v1/ledger/export", get(period_export))
        .route("/v1/ledger/report", get(period_report))
        .route("/tlog/checkpoint", get(tlog_checkpoint))
        .route("/tlog/tile/{*path}", get(tlog_tile))
        .route("/v1/webhook", axum::routing::put(set_webhook))
        .route("/v1/webhook/deliveries", get(deliveries))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(crate::input::guard))
        .with_state(broker)
}

// ----- response shapes ---------------------------------------------------------------

/// The answer to every accepted write: the events it appended, with their log indexes.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CommandAnswer {
    pub need: Option<String>,
    pub events: Vec<IndexedEvent>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct NeedSummary {
    pub id: String,
    /// offered, sourcing, waiting, awarded, active, completed, expired or cancelled.
    pub status: String,
    pub sku: String,
    pub gpus: u32,
    pub awarded: u32,
    pub holder: Option<String>,
    pub submitted_at: String,
    pub updated_at: String,
    pub next_deadline: Option<String>,
}

/// A page of needs; pass `next` as `after` for the following page.
#[derive(Serialize, utoipa::ToSchema)]
pub struct NeedsPage {
    pub needs: Vec<NeedSummary>,
    pub next: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct NeedEvents {
    pub need: String,
    pub events: Vec<IndexedEvent>,
}

/// A page of the event log; pass `next` as `after` for the following page.
#[derive(Serialize, utoipa::ToSchema)]
pub struct EventPage {
    pub events: Vec<IndexedEvent>,
    pub next: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct OfferList {
    pub offers: Vec<views::OfferView>,
    /// Pass as `after` for the next page.
    pub next: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RfqList {
    pub rfqs: Vec<views::RfqView>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AwardList {
    pub awards: Vec<views::AwardView>,
    /// Where more may follow: the cursor to pass as `after` (a number that names no need).
    pub next: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: &'static str,
    pub deal: String,
    /// The broker's clock.
    pub now: rofr_engine::types::Timestamp,
    /// Model seconds per real second (1 unless time is scaled).
    pub speed: f64,
    /// Log entries this broker has folded in; replicas that agree are in step.
    pub log_entries: u64,
    /// Whether other replicas may share this broker's log (PostgreSQL).
    pub shared: bool,
}

// ----- the OpenAPI document ----------------------------------------------------------

/// The API's OpenAPI 3 document, generated from the handlers and types below.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "rofr", description = "Contract-aware multi-cloud GPU compute sourcing: buyer, provider and auditor API."),
    paths(
        healthz, submit_need, list_needs, show_need, need_events, cancel_need, approve, reject,
        accept, decline, quote, match_offer, confirm, fail, my_offers, my_rfqs, my_awards, events,
        set_webhook, deliveries, summary, deal, amend_deal, whoami, ledger_key, latest_checkpoint, make_checkpoint, inclusion_proof,
        consistency_proof, evidence, witnesses, period_export, period_report, tlog_checkpoint, tlog_tile
    ),
    components(schemas(Envelope<'static>, Body<'static>)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

async fn openapi_json() -> Response {
    let text = crate::openapi::document();
    ([(header::CONTENT_TYPE, "application/json")], text).into_response()
}

// ----- errors ------------------------------------------------------------------------

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    pub(crate) fn field(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    fn forbidden(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this token may not {what}"),
        )
    }
}

/// Every error: a stable `code`, a sentence, and the field at fault where there is one.
#[derive(Serialize, utoipa::ToSchema)]
struct Envelope<'a> {
    error: Body<'a>,
}

/// What a route for one kind of party may answer besides its own: no token, or
/// another party's. (Documentation only: `ApiError` makes the answers.)
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum Refused {
    #[response(status = 401, description = "No valid bearer token")]
    Unauthorized(Envelope<'static>),
    #[response(status = 403, description = "Not this party's operation")]
    Forbidden(Envelope<'static>),
}

/// What a command on a need may answer besides its own and [`Refused`].
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum CommandRefused {
    #[response(
        status = 404,
        description = "No such need, or not addressed to this provider"
    )]
    NotFound(Envelope<'static>),
    #[response(
        status = 409,
        description = "Conflicts with the need's state, or lapsed"
    )]
    Conflict(Envelope<'static>),
    #[response(status = 422, description = "A field is invalid")]
    Invalid(Envelope<'static>),
}

#[derive(Serialize, utoipa::ToSchema)]
struct Body<'a> {
    /// `unauthorized`, `forbidden`, `not_found`, `malformed_json`, `invalid_field`,
    /// `conflict`, `lapsed`, `idempotency_key_reused`, `unavailable` or `internal`.
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let envelope = Envelope {
            error: Body {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
            },
        };
        let mut response = (self.status, Json(envelope)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static(crate::input::CHALLENGE),
            );
        }
        response
    }
}

impl From<BrokerError> for ApiError {
    fn from(error: BrokerError) -> ApiError {
        match error {
            BrokerError::Rejected(r) => {
                let (status, code) = match r.code {
                    RejectionCode::NotFound => (StatusCode::NOT_FOUND, "not_found"),
                    RejectionCode::InvalidField => {
                        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field")
                    }
                    RejectionCode::Conflict => (StatusCode::CONFLICT, "conflict"),
                    RejectionCode::Lapsed => (StatusCode::CONFLICT, "lapsed"),
                    RejectionCode::ClockBackwards => (StatusCode::CONFLICT, "conflict"),
                };
                let mut e = ApiError::new(status, code, r.message);
                e.field = r.field.map(str::to_owned);
                e
            }
            BrokerError::KeyReused(key) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                format!("the Idempotency-Key `{key}` was already used for a different request"),
            )
            .field("Idempotency-Key"),
            BrokerError::Stopped => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the broker is shutting down",
            ),
            error @ BrokerError::EntryTooLarge(_) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "entry_too_large",
                error.to_string(),
            ),
            BrokerError::Failed => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the request failed inside the broker and was not applied; the broker goes on serving",
            ),
            other => {
                // Store and set-up errors name tables, files and addresses: logged
                // here, never sent.
                tracing::error!(error = %other, "request failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the request failed inside the broker; see the server's log",
                )
            }
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

// ----- authentication ----------------------------------------------------------------

/// The party behind the request's bearer token.
pub struct Caller(pub Party);

impl FromRequestParts<Broker> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, broker: &Broker) -> Result<Self, ApiError> {
        let unauthorized = |message: &str| {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message.to_owned())
        };
        let header = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            unauthorized(
                "send `Authorization: Bearer <token>`; tokens come from `rofr token create`",
            )
        })?;
        // The scheme is case-insensitive (RFC 9110 §11.1).
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.trim_start().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token)
            .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`"))?;
        match broker.authenticate(token.trim())? {
            Some(party) => Ok(Caller(party)),
            None => Err(unauthorized("unknown token")),
        }
    }
}

impl Caller {
    fn buyer(&self, what: &str) -> Result<(), ApiError> {
        match self.0 {
            Party::Buyer => Ok(()),
            _ => Err(ApiError::forbidden(what)),
        }
    }

    fn reader(&self, what: &str) -> Result<(), ApiError> {
        match self.0 {
            Party::Buyer | Party::Auditor => Ok(()),
            _ => Err(ApiError::forbidden(what)),
        }
    }

    fn provider(&self, what: &str) -> Result<ProviderId, ApiError> {
        match &self.0 {
            Party::Provider(id) => Ok(id.clone()),
            _ => Err(ApiError::forbidden(what)),
        }
    }
}

// ----- request parsing ---------------------------------------------------------------

/// Parses a JSON body, naming the field at fault in the error.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let body: &[u8] = if body.is_empty() { b"{}" } else { body };
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let status = if inner.is_syntax() || inner.is_eof() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        let code = if status == StatusCode::BAD_REQUEST {
            "malformed_json"
        } else {
            "invalid_field"
        };
        let e = ApiError::new(status, code, inner.to_string());
        if path == "." {
            e
        } else {
            e.field(path)
        }
    })?;
    // One JSON value and nothing after it but white space.
    de.end().map_err(|error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("data after the JSON value: {error}"),
        )
    })?;
    Ok(value)
}

fn need_id(id: &str) -> Result<NeedId, ApiError> {
    NeedId::parse(id).map_err(|e| ApiError::new(StatusCode::NOT_FOUND, "not_found", e.0))
}

/// The longest Idempotency-Key, in characters.
pub(crate) const MAX_IDEMPOTENCY_KEY: usize = 200;

/// An Idempotency-Key is 1 to 200 visible ASCII characters, without spaces
/// (`openapi::IDEMPOTENCY_KEY_PATTERN` says the same).
pub(crate) fn idempotency_key_ok(key: &str) -> bool {
    (1..=MAX_IDEMPOTENCY_KEY).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

fn idempotency(
    headers: &HeaderMap,
    method_path: &str,
    body: &Bytes,
) -> Result<Option<Idempotency>, ApiError> {
    let Some(key) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| idempotency_key_ok(k))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                "an Idempotency-Key is 1 to 200 visible ASCII characters, without spaces",
            )
            .field("Idempotency-Key")
        })?;
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(method_path.as_bytes());
    hasher.update([0]);
    hasher.update(body);
    Ok(Some(Idempotency {
        key: key.to_owned(),
        request_hash: hex::encode(hasher.finalize()),
    }))
}

/// The status an accepted command is answered with.
fn status_of(outcome: Outcome) -> StatusCode {
    match outcome {
        Outcome::Created => StatusCode::CREATED,
        Outcome::Applied => StatusCode::OK,
    }
}

fn reply(answer: Answer) -> Response {
    let mut response = (
        status_of(answer.outcome),
        [(header::CONTENT_TYPE, "application/json")],
        answer.body,
    )
        .into_response();
    if answer.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", "true".parse().expect("valid header"));
    }
    response
}

async fn run(
    broker: &Broker,
    caller: &Caller,
    headers: &HeaderMap,
    path: &str,
    body: &Bytes,
    command: Command,
) -> Result<Response, ApiError> {
    let idem = idempotency(headers, path, body)?;
    let answer = broker.execute(caller.0.clone(), command, idem).await?;
    Ok(reply(answer))
}

// ----- buyer -------------------------------------------------------------------------

#[utoipa::path(
    post,
    path = "/v1/needs",
    tag = "buyer",
    request_body = NeedSpec,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key repeat no effect")),
    responses(
        (status = 201, body = CommandAnswer),
        (status = 400, body = Envelope, description = "Malformed JSON"),
        Refused,
        CommandRefused
    )
)]
async fn submit_need(
    State(broker): State<Broker>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.buyer("submit needs")?;
    let need: NeedSpec = parse(&body)?;
    run(
        &broker,
        &caller,
        &headers,
        "POST /v1/needs",
        &body,
        Command::SubmitNeed { need },
    )
    .await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
}

fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit.unwrap_or(100) {
        0 => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "limit must be at least 1",
        )
        .field("limit")),
        n if n > MAX_PAGE => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            format!("limit may be at most {MAX_PAGE}"),
        )
        .field("limit")),
        n => Ok(n),
    }
}

#[utoipa::path(
    get,
    path = "/v1/needs",
    tag = "buyer",
    params(ListQuery),
    responses(
        (status = 200, body = NeedsPage),
        (status = 422, body = Envelope),
        Refused
    )
)]
async fn list_needs(
    State(broker): State<Broker>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> Result<Json<NeedsPage>, ApiError> {
    caller.reader("list needs")?;
    if let Some(status) = &query.status {
        let statuses = NeedStatus::ALL.map(NeedStatus::as_str);
        if !statuses.contains(&status.as_str()) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                format!(
                    "unknown status `{status}`: use one of {}",
                    statuses.join(", ")
                ),
            )
            .field("status"));
        }
    }
    let limit = page_limit(query.limit)?;
    broker.projected().await?;
    let rows = broker
        .store(|s| s.list_needs(query.status.as_deref(), query.after.as_deref(), limit))
        .map_err(BrokerError::from)?;
    let next = (rows.len() as u32 == limit)
        .then(|| rows.last().map(|r| r.id.clone()))
        .flatten();
    let needs = rows
        .into_iter()
        .map(|r| NeedSummary {
            id: r.id,
            status: r.status,
            sku: r.sku,
            gpus: r.gpus,
            awarded: r.awarded,
            holder: r.holder,
            submitted_at: r.submitted_at,
            updated_at: r.updated_at,
            next_deadline: r.next_deadline,
        })
        .collect();
    Ok(Json(NeedsPage { needs, next }))
}

#[utoipa::path(
    get,
    path = "/v1/needs/{id}",
    tag = "buyer",
    params(("id" = String, Path)),
    responses(
        (status = 200, body = views::NeedView),
        (status = 404, body = Envelope),
        Refused
    )
)]
async fn show_need(
    State(broker): State<Broker>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<views::NeedView>, ApiError> {
    caller.reader("read needs")?;
    let id = need_id(&id)?;
    broker
        .read_committed(|e| {
            e.state()
                .need(id.as_str())
                .map(|need| views::need_view(&need))
        })
        .await?
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no need `{id}`"),
            )
        })
}

#[utoipa::path(
    get,
    path = "/v1/needs/{id}/events",
    tag = "auditor",
    params(("id" = String, Path)),
    responses(
        (status = 200, body = NeedEvents),
        (status = 404, body = Envelope),
        Refused
    )
)]
async fn need_events(
    State(broker): State<Broker>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.reader("read the event log")?;
    let id = need_id(&id)?;
    let rows = broker.events_of(id.as_str()).await?;
    if rows.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no need `{id}`"),
        ));
    }
    let body = NeedEvents {
        need: id.to_string(),
        events: rows
            .iter()
            .map(|r| IndexedEvent {
                index: r.index,
                event: raw_json(&r.data),
            })
            .collect(),
    };
    let body = serde_json::to_string(&body).expect("pages serialize");
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Reason {
    reason: String,
}

#[utoipa::path(
    post,
    path = "/v1/needs/{id}/cancel",
    tag = "buyer",
    request_body = Reason,
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses(
        (status = 200, body = CommandAnswer),
        Refused,
        CommandRefused
    )
)]
async fn cancel_need(
    State(broker): State<Broker>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.buyer("cancel needs")?;
    let need = need_id(&id)?;
    let Reason { reason } = parse(&body)?;
    let path = format!("POST /v1/needs/{id}/cancel");
    run(
        &broker,
        &caller,
        &headers,
        &path,
        &body,
        Command::CancelNeed { need, reason },
    )
    .await
}

#[utoipa::path(
    post,
    path = "/v1/needs/{id}/awards/{award}/approve",
    tag = "buyer",
    params(("id" = String, Path), ("award" = u32, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses(
        (status = 200, body = CommandAnswer),
        Refused,
        CommandRefused
    )
)]
async fn approve(
    State(broker): State<Broker>,
    caller: Caller,
    Path((id, award)): Path<(String, u32)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.buyer("approve awards")?;
    let need = need_id(&id)?;
    let path = format!("POST /v1/needs/{id}/awards/{award}/approve");
    run(
        &broker,
        &caller,
        &headers,
        &path,
        &body,
        Command::Approve { need, award },
    )
    .await
}

#[utoipa::path(
    post,
    path = "/v1/needs/{id}/awards/{award}/reject",
    tag = "buyer",
    request_body = Reason,
    params(("id" = String, Path), ("award" = u32, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses(
        (status = 200, body = CommandAnswer),
        Refused,
        CommandRefused
    )
)]
async fn reject(
    State(broker): State<Broker>,
    caller: Caller,
    Path((id, award)): Path<(String, u32)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.buyer("reject awards")?;
    let need = need_id(&id)?;
    let Reason { reason } = parse(&body)?;
    let path = format!("POST /v1/needs/{id}/awards/{award}/reject");
    run(
        &broker,
        &caller,
        &headers,
        &path,
        &body,
        Command::Reject {
            need,
            award,
            reason,
        },
    )
    .await
}

// ----- providers ---------------------------------------------------------------------

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AcceptBody {
    offer: Option<u32>,
    gpus: Option<Gpus>,
    price: Option<Price>,
}

#[utoipa::path(
    post,
    path = "/v1/needs/{id}/accept",
    tag = "provider",
    request_body = AcceptBody,
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses(
        (status = 200, body = CommandAnswer),
        Refused,
        CommandRefused
    )
)]
async fn accept(
    State(broker): State<Broker>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let provider = caller.provider("answer offers")?;
    let need = need_id(&id)?;
    let AcceptBody { offer, gpus, price } = parse(&body)?;
    let path = format!("POST /v1/needs/{id}/accept");
    let command = Command::Accept {
        provider,
        need,
        offer,
        gpus,
        price,
    };
    run(&broker, &caller, &headers, &path, &body, command).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct DeclineBody {
    offer: Option<u32>,
    reason: DeclineReason,
}

#[utoipa::path(
    post,
    path = "/v1/needs/{id}/decline",
    tag = "provider",
    request_body = DeclineBody,
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses(
        (status = 200, body = CommandAnswer),
        Refused,
        CommandRefused
    )
)]
async fn decline(
    State(broker): State<Broker>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let provider = caller.provider("answer offers")?;
    let need = need_id(&id)?;
    let DeclineBody { offer, reason } = parse(&body)?;
    let path = format!("POST /v1/needs/{id}/decline");
    let command = Command::Decline {
        provider,
        need,
        offer,
        reason,
    };
    run(&broker, &caller, &headers, &path, &body, command).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct QuoteBody {
    gpus: Gpus,
    price: Price,
}

#[utoipa::path(
    post,
    path = "/v1/needs/{id}/quote",
    tag = "provider",
    request_body = QuoteBody,
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses(
        (status = 200, body = CommandAnswer),
        Refused,
        CommandRefused
    )
)]
async fn quote(
    State(broker): State<Broker>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let provider = caller.provider("quote")?;
    let need = need_id(&id)?;
    let QuoteBody { gpus, price } = parse(&body)?;
    let path = format!("POST /v1/needs/{id}/quote");
    let command = Command::Quote {
        provider,
        need,
        gpus,
        price,
    };
    run(&broker, &caller, &headers, &path, &body, command).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct MatchBody {
    offer: Option<u32>,
    gpus: Option<Gpus>,
}

#[utoipa::path(
    post,
    path = "/v1/needs/{id}/match",
    tag = "provider",
    request_body = MatchBody,
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses(
        (status = 200, body = CommandAnswer),
        Refused,
        CommandRefused
    )
)]
async fn match_offer(
    State(broker): State<Broker>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let provider = caller.provider("match offers")?;
    let need = need_id(&id)?;
    let MatchBody { offer, gpus } = parse(&body)?;
    let path = format!("POST /v1/needs/{id}/match");
    let command = Command::Match {
        provider,
        need,
        offer,
        gpus,
    };
    run(&broker, &caller, &headers, &path, &body, command).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ConfirmBody {
    reservation: String,
}

#[utoipa::path(
    post,
    path = "/v1/needs/{id}/awards/{award}/confirm",
    tag = "provider",
    request_body = ConfirmBody,
    params(("id" = String, Path), ("award" = u32, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses(
        (status = 200, body = CommandAnswer),
        Refused,
        CommandRefused
    )
)]
async fn confirm(
    State(broker): State<Broker>,
    caller: Caller,
    Path((id, award)): Path<(String, u32)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let provider = caller.provider("confirm awards")?;
    let need = need_id(&id)?;
    let ConfirmBody { reservation } = parse(&body)?;
    let path = format!("POST /v1/needs/{id}/awards/{award}/confirm");
    let command = Command::Confirm {
        provider,
        need,
        award,
        reservation,
    };
    run(&broker, &caller, &headers, &path, &body, command).await
}

#[utoipa::path(
    post,
    path = "/v1/needs/{id}/awards/{award}/fail",
    tag = "provider",
    request_body = Reason,
    params(("id" = String, Path), ("award" = u32, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses(
        (status = 200, body = CommandAnswer),
        Refused,
        CommandRefused
    )
)]
async fn fail(
    State(broker): State<Broker>,
    caller: Caller,
    Path((id, award)): Path<(String, u32)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let provider = caller.provider("report failed awards")?;
    let need = need_id(&id)?;
    let Reason { reason } = parse(&body)?;
    let path = format!("POST /v1/needs/{id}/awards/{award}/fail");
    let command = Command::Fail {
        provider,
        need,
        award,
        reason,
    };
    run(&broker, &caller, &headers, &path, &body, command).await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct OfferQuery {
    /// Continue after this need (the previous page's `next`).
    after: Option<String>,
    limit: Option<u32>,
}

/// Open offers: a provider's own, or every provider's for the buyer and auditors.
#[utoipa::path(
    get,
    path = "/v1/offers",
    tag = "provider",
    params(OfferQuery),
    responses(
        (status = 200, body = OfferList),
        (status = 401, body = Envelope, description = "No valid bearer token"),
        (status = 422, body = Envelope)
    )
)]
async fn my_offers(
    State(broker): State<Broker>,
    caller: Caller,
    Query(query): Query<OfferQuery>,
) -> Result<Json<OfferList>, ApiError> {
    let limit = page_limit(query.limit)? as usize;
    let provider = match &caller.0 {
        Party::Provider(provider) => Some(provider.clone()),
        _ => None,
    };
    let (offers, next) = broker
        .read_committed(|e| views::offers_page(e, provider.as_ref(), query.after.as_deref(), limit))
        .await?;
    Ok(Json(OfferList { offers, next }))
}

#[utoipa::path(
    get,
    path = "/v1/rfqs",
    tag = "provider",
    responses(
        (status = 200, body = RfqList),
        Refused
    )
)]
async fn my_rfqs(State(broker): State<Broker>, caller: Caller) -> Result<Json<RfqList>, ApiError> {
    let provider = caller.provider("list its requests for quotes")?;
    let rfqs = broker
        .read_committed(|e| views::rfqs_for(e, &provider))
        .await?;
    Ok(Json(RfqList { rfqs }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AwardQuery {
    /// Only awards with one of these statuses, separated by commas: pending_approval,
    /// made, confirmed, completed, rejected, failed.
    status: Option<String>,
    /// The previous page's `next`, to continue from there.
    after: Option<String>,
    limit: Option<u32>,
}

/// A provider's own awards, in the order their needs were submitted.
///
/// A page ends at `limit` awards (with every award of its last need) or after 20,000
/// needs read, so it may be short, even empty, and still have a `next`.
#[utoipa::path(
    get,
    path = "/v1/awards",
    tag = "provider",
    params(AwardQuery),
    responses(
        (status = 200, body = AwardList),
        (status = 422, body = Envelope),
        Refused
    )
)]
async fn my_awards(
    State(broker): State<Broker>,
    caller: Caller,
    Query(query): Query<AwardQuery>,
) -> Result<Json<AwardList>, ApiError> {
    let provider = caller.provider("list its awards")?;
    let limit = page_limit(query.limit)? as usize;
    let statuses: Option<Vec<views::AwardState>> = query
        .status
        .as_deref()
        .map(|text| {
            views::AwardState::parse_list(text).map_err(|status| {
                let known: Vec<&str> = views::AwardState::ALL.iter().map(|s| s.as_str()).collect();
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_field",
                    format!(
                        "unknown award status `{status}`: use one or more of {}, separated by commas",
                        known.join(", ")
                    ),
                )
                .field("status")
            })
        })
        .transpose()?;
    let after = query
        .after
        .as_deref()
        .map(|a| a.parse::<u32>())
        .transpose()
        .map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                "`after` is the `next` of a previous page of awards",
            )
            .field("after")
        })?;
    let (awards, next) = broker
        .read_committed(|e| {
            views::awards_page(
                e,
                &provider,
                statuses.as_deref(),
                after,
                limit,
                views::AWARDS_SCAN,
            )
        })
        .await?;
    Ok(Json(AwardList { awards, next }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct WebhookBody {
    /// Where deliveries are posted: an http or https URL.
    url: String,
}

/// A registered webhook and the secret its deliveries are signed with (shown once).
#[derive(Serialize, utoipa::ToSchema)]
pub struct WebhookAnswer {
    pub url: String,
    pub secret: String,
}

#[utoipa::path(
    put,
    path = "/v1/webhook",
    tag = "provider",
    request_body = WebhookBody,
    responses(
        (status = 200, body = WebhookAnswer),
        (status = 401, body = Envelope),
        (status = 403, body = Envelope),
        (status = 422, body = Envelope)
    )
)]
async fn set_webhook(
    State(broker): State<Broker>,
    caller: Caller,
    body: Bytes,
) -> Result<Json<WebhookAnswer>, ApiError> {
    let provider = caller.provider("register a webhook")?;
    let WebhookBody { url } = parse(&body)?;
    let secret = broker.set_webhook(&provider, &url)?;
    Ok(Json(WebhookAnswer { url, secret }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DeliveryQuery {
    /// `pending`, `delivered` or `failed`.
    status: Option<String>,
    limit: Option<u32>,
}

/// One webhook delivery's state.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    pub id: i64,
    pub provider: String,
    pub event_index: u64,
    pub status: String,
    pub attempts: u32,
    pub last_error: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryView>,
}

#[utoipa::path(
    get,
    path = "/v1/webhook/deliveries",
    tag = "buyer",
    params(DeliveryQuery),
    responses(
        (status = 200, body = DeliveryList),
        (status = 401, body = Envelope),
        (status = 403, body = Envelope),
        (status = 422, body = Envelope)
    )
)]
async fn deliveries(
    State(broker): State<Broker>,
    caller: Caller,
    Query(query): Query<DeliveryQuery>,
) -> Result<Json<DeliveryList>, ApiError> {
    caller.buyer("read webhook deliveries")?;
    if let Some(status) = &query.status {
        if !["pending", "delivered", "failed"].contains(&status.as_str()) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                "status is pending, delivered or failed",
            )
            .field("status"));
        }
    }
    let limit = page_limit(query.limit)?;
    let rows = broker
        .store(|s| s.list_deliveries(query.status.as_deref(), limit))
        .map_err(BrokerError::from)?;
    let deliveries = rows
        .into_iter()
        .map(|d| DeliveryView {
            id: d.id,
            provider: d.provider,
            event_index: d.event_index,
            status: d.status,
            attempts: d.attempts,
            last_error: d.last_error,
        })
        .collect();
    Ok(Json(DeliveryList { deliveries }))
}

// ----- dashboard support -------------------------------------------------------------

#[utoipa::path(
    get,
    path = "/v1/summary",
    tag = "buyer",
    responses(
        (status = 200, body = views::Summary),
        (status = 401, body = Envelope),
        (status = 403, body = Envelope)
    )
)]
async fn summary(
    State(broker): State<Broker>,
    caller: Caller,
) -> Result<Json<views::Summary>, ApiError> {
    caller.reader("read the summary")?;
    Ok(Json(broker.read_committed(views::summary).await?))
}

#[utoipa::path(
    get,
    path = "/v1/deal",
    tag = "buyer",
    responses(
        (status = 200, body = crate::broker::DealVersions),
        (status = 401, body = Envelope),
        (status = 403, body = Envelope)
    )
)]
/// The deal's versions: the one a log began with, its file's hash and the ledger
/// entry that holds it. For the buyer and the auditor.
async fn deal(
    State(broker): State<Broker>,
    caller: Caller,
) -> Result<Json<crate::broker::DealVersions>, ApiError> {
    caller.reader("read the deal")?;
    Ok(Json(broker.deal_versions()?))
}

/// A new version of the deal, as `POST /v1/deal/amendments` takes it.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AmendRequest {
    /// The file's name, as errors and the ledger entry name it.
    pub file: String,
    /// The file's exact text: the ledger entry holds these bytes and their SHA-256.
    pub text: String,
    /// When the new version comes into force: `now` (the moment the broker writes
    /// it), or an RFC 3339 time no earlier than the last entry's.
    #[schema(value_type = String, example = "2025-10-28T00:00:00Z")]
    pub effective: String,
    /// What becomes of the needs open at the effective time: `keep` (the default:
    /// each runs on under the terms it started with) or `move` (each moves to the new
    /// version; offers to a holder it no longer gives the right are withdrawn).
    #[serde(default)]
    pub open_needs: rofr_engine::log::OpenNeeds,
    /// Check the amendment and say what it would do, writing nothing.
    #[serde(default)]
    pub dry_run: bool,
}

#[utoipa::path(
    post,
    path = "/v1/deal/amendments",
    tag = "buyer",
    request_body = AmendRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key repeat no effect")),
    responses(
        (status = 200, body = crate::broker::AmendmentPlan, description = "A dry run: what the amendment would do"),
        (status = 201, body = CommandAnswer, description = "The amendment's entry, then the events of needs that moved to it"),
        (status = 400, body = Envelope, description = "Malformed JSON"),
        Refused,
        CommandRefused
    )
)]
/// Amends the deal: the file becomes its next version, written as one ledger entry.
/// It is refused whole, naming the file:line:column, where it does not parse, lints
/// with errors, renames the deal or takes effect before the last entry. For the buyer.
async fn amend_deal(
    State(broker): State<Broker>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.buyer("amend the deal")?;
    let request: AmendRequest = parse(&body)?;
    if request.file.is_empty() || request.file.chars().count() > 200 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "file must name the deal file in 1 to 200 characters",
        )
        .field("file"));
    }
    let effective = match request.effective.as_str() {
        "now" => None,
        text => Some(rofr_engine::types::Timestamp::parse(text).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                format!("effective: {e}; write `now` or a time such as 2025-10-28T00:00:00Z"),
            )
            .field("effective")
        })?),
    };
    let plan = broker
        .plan_amendment(&request.file, &request.text, effective, request.open_needs)
        .map_err(|refusal| match refusal {
            crate::broker::Refusal::Text(errors) => {
                let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_field",
                    format!("the amendment is refused:\n{}", lines.join("\n")),
                )
                .field("text")
            }
            crate::broker::Refusal::Effective(message) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message)
                    .field("effective")
            }
        })?;
    if request.dry_run {
        return Ok(Json(plan).into_response());
    }
    let command = Command::AmendDeal {
        file: request.file,
        text: request.text,
        effective,
        open_needs: request.open_needs,
    };
    run(
        &broker,
        &caller,
        &headers,
        "POST /v1/deal/amendments",
        &body,
        command,
    )
    .await
}

/// Who a token speaks for.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Whoami {
    /// buyer, auditor or provider.
    pub party: &'static str,
    pub provider: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/whoami",
    responses(
        (status = 200, body = Whoami),
        (status = 401, body = Envelope)
    )
)]
async fn whoami(caller: Caller) -> Json<Whoami> {
    Json(match caller.0 {
        Party::Buyer => Whoami {
            party: "buyer",
            provider: None,
        },
        Party::Auditor => Whoami {
            party: "auditor",
            provider: None,
        },
        Party::Provider(id) => Whoami {
            party: "provider",
            provider: Some(id.to_string()),
        },
    })
}

// ----- ledger ------------------------------------------------------------------------

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

#[utoipa::path(
    get,
    path = "/v1/ledger/key",
    tag = "auditor",
    responses(
        (status = 200, body = String, description = "The verifier key: `<name>+<key ID>+<base64 key>`"),
        (status = 401, body = Envelope)
    )
)]
async fn ledger_key(State(broker): State<Broker>, _caller: Caller) -> Response {
    text(format!("{}\n", broker.ledger(|l| l.verifier_key())))
}

#[utoipa::path(
    get,
    path = "/v1/ledger/witnesses",
    tag = "auditor",
    responses(
        (status = 200, body = crate::broker::witnessing::Witnessing, description = "How far witnessing trails the log, and where each witness the deal names stands"),
        (status = 401, body = Envelope)
    )
)]
async fn witnesses(State(broker): State<Broker>, _caller: Caller) -> Response {
    Json(broker.witnessing()).into_response()
}

/// The latest checkpoint with the cosignatures gathered on it (C2SP tlog-tiles).
#[utoipa::path(
    get,
    path = "/tlog/checkpoint",
    tag = "auditor",
    responses(
        (status = 200, body = String, description = "The latest checkpoint, a C2SP signed note with the log's signature and any witnesses' cosignatures"),
        (status = 401, body = Envelope),
        (status = 404, body = Envelope)
    )
)]
async fn tlog_checkpoint(
    State(broker): State<Broker>,
    caller: Caller,
) -> Result<Response, ApiError> {
    latest_checkpoint(State(broker), caller).await
}

/// A hash tile `tile/<L>/<N>[.p/<W>]` or an entry bundle `tile/entries/<N>[.p/<W>]`
/// of the tree of the latest checkpoint (C2SP tlog-tiles). Entry bundles hold every
/// entry's bytes, confidential terms included: the buyer and the auditor only.
#[utoipa::path(
    get,
    path = "/tlog/tile/{path}",
    tag = "auditor",
    params(("path" = String, Path, description = "`<L>/<N>[.p/<W>]` or `entries/<N>[.p/<W>]`, N in 3-digit elements such as `x001/234`")),
    responses(
        (status = 200, body = Vec<u8>, content_type = "application/octet-stream", description = "256 hashes of 32 bytes (fewer for a partial tile), or big-endian u16 length-prefixed entries"),
        (status = 401, body = Envelope),
        (status = 403, body = Envelope),
        (status = 404, body = Envelope)
    )
)]
async fn tlog_tile(
    State(broker): State<Broker>,
    caller: Caller,
    Path(path): Path<String>,
) -> Result<Response, ApiError> {
    use rofr_ledger::tiles::{TileKind, TilePath};
    let tile = TilePath::parse(&format!("tile/{path}"))
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, "not_found", e))?;
    let missing = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "the tree of the latest checkpoint has no tile {}",
                tile.path()
            ),
        )
    };
    let bytes = match tile.kind {
        // Above level 0 every hash is a node the tree keeps.
        TileKind::Hashes(level) if level > 0 => {
            broker.ledger(|l| l.tile(&tile))?.ok_or_else(missing)?
        }
        // Level 0 and entry bundles are the entries themselves, read from the log
        // without holding the ledger.
        kind => {
            if kind == TileKind::Entries {
                caller.reader("read entry bundles (entries carry confidential terms)")?;
            }
            let size = broker.ledger(|l| l.latest().map_or(0, |(s, _)| *s));
            if !tile.exists_in(size) {
                return Err(missing());
            }
            let (start, end) = tile.leaves().expect("exists_in checked it");
            let rows = broker
                .store(|s| crate::ledger::read_entries(s, start, end))
                .map_err(|e| BrokerError::Setup(format!("a tile: {e}")))?;
            match kind {
                TileKind::Entries => {
                    rofr_ledger::tiles::entry_bundle(rows.iter().map(|r| r.data.as_slice()))
                        .map_err(BrokerError::Setup)?
                }
                _ => rows
                    .iter()
                    .flat_map(|r| rofr_ledger::leaf_hash(&r.data))
                    .collect(),
            }
        }
    };
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (
                header::CACHE_CONTROL,
                "private, max-age=31536000, immutable",
            ),
        ],
        bytes,
    )
        .into_response())
}

#[utoipa::path(
    get,
    path = "/v1/ledger/checkpoint",
    tag = "auditor",
    responses(
        (status = 200, body = String, description = "The latest checkpoint as a C2SP signed note, with any witnesses' cosignatures"),
        (status = 401, body = Envelope),
        (status = 404, body = Envelope)
    )
)]
async fn latest_checkpoint(
    State(broker): State<Broker>,
    _caller: Caller,
) -> Result<Response, ApiError> {
    match broker.ledger(|l| l.latest().cloned()) {
        // It changes with every checkpoint and cosignature.
        Some((_, note)) => Ok(([(header::CACHE_CONTROL, "no-cache")], text(note)).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no checkpoint yet: POST to make one",
        )),
    }
}

#[utoipa::path(
    post,
    path = "/v1/ledger/checkpoint",
    tag = "auditor",
    responses(
        (status = 200, body = String, description = "A checkpoint of every committed entry, signed now"),
        (status = 401, body = Envelope),
        (status = 403, body = Envelope)
    )
)]
async fn make_checkpoint(
    State(broker): State<Broker>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.reader("make checkpoints")?;
    let (_, note) = broker.checkpoint_now()?;
    Ok(text(note))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct InclusionQuery {
    /// The entry's log index.
    index: u64,
    /// The tree size to prove against (a checkpoint's size).
    size: u64,
}

/// An inclusion or consistency proof: base64 hashes, as RFC 9162 orders them.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ProofAnswer {
    pub proof: Vec<String>,
}

fn b64(hashes: &[rofr_ledger::Hash]) -> Vec<String> {
    use base64::Engine as _;
    hashes
        .iter()
        .map(|h| base64::engine::general_purpose::STANDARD.encode(h))
        .collect()
}

#[utoipa::path(
    get,
    path = "/v1/ledger/inclusion",
    tag = "auditor",
    params(InclusionQuery),
    responses(
        (status = 200, body = ProofAnswer),
        (status = 401, body = Envelope),
        (status = 404, body = Envelope),
        (status = 422, body = Envelope)
    )
)]
async fn inclusion_proof(
    State(broker): State<Broker>,
    caller: Caller,
    Query(query): Query<InclusionQuery>,
) -> Result<Json<ProofAnswer>, ApiError> {
    if let Party::Provider(provider) = &caller.0 {
        // A provider may prove only entries it may see (I6).
        let rows = broker
            .store(|s| s.events_after(query.index.checked_sub(1), 1))
            .map_err(BrokerError::from)?;
        let entry = rows
            .first()
            .filter(|r| r.index == query.index)
            .and_then(|r| rofr_engine::log::Entry::from_json(&r.data).ok());
        let shown = match entry {
            Some(rofr_engine::log::Entry::Event(event)) => {
                let holder = broker.read(|e| {
                    e.state()
                        .need(event.need.as_str())
                        .and_then(|n| n.holder.clone())
                });
                event.kind.shown_to(provider, holder.as_ref())
            }
            // The deal's entries, to a party of the contract: a holder of a right in
            // any of its versions.
            Some(rofr_engine::log::Entry::Deal(_) | rofr_engine::log::Entry::Amended(_)) => broker
                .read(|e| {
                    (1..=e.versions())
                        .filter_map(|v| e.deal_of(v))
                        .any(|d| d.first_refusals.iter().any(|r| &r.holder == provider))
                }),
            None => false,
        };
        if !shown {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no entry {} for this provider", query.index),
            ));
        }
    }
    broker
        .ledger_with_log(|l, log| l.inclusion_proof(query.index, query.size, log))?
        .map(|proof| Json(ProofAnswer { proof: b64(&proof) }))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                "the index must be below the size, and the size at most the log's length",
            )
            .field("size")
        })
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ConsistencyQuery {
    from: u64,
    to: u64,
}

#[utoipa::path(
    get,
    path = "/v1/ledger/consistency",
    tag = "auditor",
    params(ConsistencyQuery),
    responses(
        (status = 200, body = ProofAnswer),
        (status = 401, body = Envelope),
        (status = 422, body = Envelope)
    )
)]
async fn consistency_proof(
    State(broker): State<Broker>,
    _caller: Caller,
    Query(query): Query<ConsistencyQuery>,
) -> Result<Json<ProofAnswer>, ApiError> {
    broker
        .ledger_with_log(|l, log| l.consistency_proof(query.from, query.to, log))?
        .map(|proof| Json(ProofAnswer { proof: b64(&proof) }))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                "`from` must be at most `to`, and `to` at most the log's length",
            )
            .field("to")
        })
}

#[utoipa::path(
    get,
    path = "/v1/ledger/evidence/{id}",
    tag = "auditor",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "The evidence bundle (docs/evidence.md)"),
        (status = 401, body = Envelope),
        (status = 404, body = Envelope)
    )
)]
async fn evidence(
    State(broker): State<Broker>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = need_id(&id)?;
    let missing = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no need `{id}`"),
        )
    };
    // A provider gets the entries of needs that concern it that it may see (I6).
    let viewer = match &caller.0 {
        Party::Provider(provider) => Some(provider),
        Party::Buyer | Party::Auditor => None,
    };
    let bundle = broker
        .evidence(id.as_str(), viewer)
        .await?
        .ok_or_else(missing)?;
    let body = serde_json::to_string_pretty(&bundle).expect("bundles serialize");
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct PeriodQuery {
    /// The period's start: a date (its midnight UTC) or an RFC 3339 time.
    from: String,
    /// The period's end, not included.
    to: String,
    /// The export as this provider may see it (a provider may ask only for its own).
    provider: Option<String>,
    /// For a report: `html` (the default) or `json`.
    format: Option<String>,
}

/// The period and whose view, checked: a provider gets its own view, and another's
/// not at all (404, as for everything of another provider's).
fn period_of(
    caller: &Caller,
    query: &PeriodQuery,
) -> Result<
    (
        rofr_engine::types::Timestamp,
        rofr_engine::types::Timestamp,
        Option<ProviderId>,
    ),
    ApiError,
> {
    let invalid = |field: &str, message: String| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message).field(field)
    };
    let from = rofr_report::parse_bound("from", &query.from).map_err(|e| invalid("from", e))?;
    let to = rofr_report::parse_bound("to", &query.to).map_err(|e| invalid("to", e))?;
    if from >= to {
        return Err(invalid(
            "to",
            format!("`to` ({to}) must be after `from` ({from})"),
        ));
    }
    let asked = query
        .provider
        .as_deref()
        .map(|p| ProviderId::parse(p).map_err(|e| invalid("provider", format!("`provider`: {e}"))))
        .transpose()?;
    let viewer = match (&caller.0, asked) {
        (Party::Provider(me), None) => Some(me.clone()),
        (Party::Provider(me), Some(p)) if &p == me => Some(p),
        (Party::Provider(_), Some(p)) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no export for provider `{p}`"),
            ))
        }
        (Party::Buyer | Party::Auditor, asked) => asked,
    };
    Ok((from, to, viewer))
}

/// Hands what is written to a streamed answer body in chunks of about 64 KiB.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<axum::body::Bytes, std::io::Error>>,
    buffer: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = axum::body::Bytes::from(std::mem::take(&mut self.buffer));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client left"))
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= 64 * 1024 {
            self.send()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

#[utoipa::path(
    get,
    path = "/v1/ledger/export",
    tag = "auditor",
    params(PeriodQuery),
    responses(
        (status = 200, description = "The period's export, JSON Lines (docs/export.md)", content_type = "application/x-ndjson"),
        (status = 404, body = Envelope),
        (status = 422, body = Envelope),
        Refused
    )
)]
async fn period_export(
    State(broker): State<Broker>,
    caller: Caller,
    Query(query): Query<PeriodQuery>,
) -> Result<Response, ApiError> {
    let (from, to, viewer) = period_of(&caller, &query)?;
    // Chosen and proved before the answer starts, so a refusal still gets its status;
    // then written as it is read, a chunk at a time.
    let plan = broker.export_plan(from, to, viewer.as_ref()).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter {
            tx,
            buffer: Vec::new(),
        };
        let written = broker
            .write_export(&plan, &mut out)
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|_| std::io::Write::flush(&mut out));
        if let Err(error) = written {
            // The body ends in an error: the client sees a cut answer, not a whole one.
            let _ = out.tx.blocking_send(Err(error));
        }
    });
    let body = axum::body::Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async {
        rx.recv().await.map(|chunk| (chunk, rx))
    }));
    let name = format!(
        "attachment; filename=\"rofr-export-{}-{}.jsonl\"",
        &from.to_string()[..10],
        &to.to_string()[..10]
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson".to_owned()),
            (header::CONTENT_DISPOSITION, name),
        ],
        body,
    )
        .into_response())
}

#[utoipa::path(
    get,
    path = "/v1/ledger/report",
    tag = "auditor",
    params(PeriodQuery),
    responses(
        (status = 200, description = "The period's report (docs/report.md): a self-contained HTML page, or its figures as JSON with `format=json`"),
        (status = 404, body = Envelope),
        (status = 422, body = Envelope),
        Refused
    )
)]
async fn period_report(
    State(broker): State<Broker>,
    caller: Caller,
    Query(query): Query<PeriodQuery>,
) -> Result<Response, ApiError> {
    let (from, to, viewer) = period_of(&caller, &query)?;
    let json = match query.format.as_deref() {
        None | Some("html") => false,
        Some("json") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                format!("`format`: `{other}` is neither `html` nor `json`"),
            )
            .field("format"))
        }
    };
    let plan = broker.export_plan(from, to, viewer.as_ref()).await?;
    let key = rofr_ledger::VerifierKey::parse(&broker.ledger(|l| l.verifier_key()))
        .map_err(|e| BrokerError::Setup(format!("the ledger's own key: {e}")))?;
    // The witnesses of the deal that cosigned the checkpoint are named in the report;
    // the others are listed as unchecked.
    let cosigned: Vec<_> = broker
        .witness_keys()
        .into_iter()
        .filter(|w| w.check(&plan.header.checkpoint).is_ok())
        .collect();
    let report = tokio::task::spawn_blocking(move || {
        // Through an unnamed temporary file: the export is never held in memory.
        let failed = |e: std::io::Error| format!("a temporary file for the export: {e}");
        let mut file = std::io::BufWriter::new(tempfile::tempfile().map_err(failed)?);
        broker
            .write_export(&plan, &mut file)
            .map_err(|e| e.to_string())?;
        let mut file = file.into_inner().map_err(|e| failed(e.into_error()))?;
        std::io::Seek::rewind(&mut file).map_err(failed)?;
        rofr_report::make(std::io::BufReader::new(file), "export", &key, &cosigned)
            .map_err(|e| format!("the broker's own export did not verify: {e}"))
    })
    .await
    .map_err(|e| BrokerError::Setup(format!("the report: {e}")))?
    .map_err(BrokerError::Setup)?;
    Ok(if json {
        Json(report).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            rofr_report::html::render(&report),
        )
            .into_response()
    })
}

// ----- auditor -----------------------------------------------------------------------

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    after: Option<u64>,
    limit: Option<u32>,
}

#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "auditor",
    params(EventsQuery),
    responses(
        (status = 200, body = EventPage),
        (status = 422, body = Envelope),
        Refused
    )
)]
async fn events(
    State(broker): State<Broker>,
    caller: Caller,
    Query(query): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    caller.reader("read the event log")?;
    let limit = page_limit(query.limit)?;
    let rows = broker
        .store(|s| s.events_after(query.after, limit))
        .map_err(BrokerError::from)?;
    let next = (rows.len() as u32 == limit)
        .then(|| rows.last().map(|r| r.index))
        .flatten();
    let page = EventPage {
        events: rows
            .iter()
            .map(|r| IndexedEvent {
                index: r.index,
                event: raw_json(&r.data),
            })
            .collect(),
        next,
    };
    let body = serde_json::to_string(&page).expect("pages serialize");
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

// ----- operations --------------------------------------------------------------------

#[utoipa::path(
    get,
    path = "/healthz",
    security(()),
    responses((status = 200, body = Health))
)]
async fn healthz(State(broker): State<Broker>) -> Json<Health> {
    // The broker's clock; the last event's time where that is later (a deal's test
    // clock may start before the log's last entry).
    let (last, log_entries) = broker.read(|e| (e.clock(), e.state().events));
    let now = broker.clock().now().max(last);
    let speed = match broker.clock() {
        crate::Clock::System => 1.0,
        crate::Clock::Scaled { speed, .. } => *speed,
    };
    Json(Health {
        status: "ok",
        deal: broker.deal().name.clone(),
        now,
        speed,
        log_entries,
        shared: broker.shared(),
    })
}

async fn metrics(State(broker): State<Broker>) -> Response {
    let text = crate::metrics::render(&broker);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replayed answer is answered with the status the store kept for it.
    #[test]
    fn each_outcome_keeps_the_status_it_is_answered_with() {
        for outcome in [Outcome::Created, Outcome::Applied] {
            assert_eq!(status_of(outcome).as_u16(), outcome.stored());
        }
    }
}
