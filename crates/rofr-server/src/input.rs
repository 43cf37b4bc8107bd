//! What the server takes from a request before a handler sees it, and what leaves it
//! when no handler answered: strict query strings and path segments, JSON bodies
//! only, and the error envelope on every error response, whoever made it.

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::api::ApiError;

/// What a 401 says about how to authenticate (RFC 6750).
pub const CHALLENGE: &str = "Bearer realm=\"rofr\"";

/// A query string read strictly: an unknown parameter or a value of the wrong type is a
/// 422 that names the parameter.
pub struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(Params)
            .map_err(|error| {
                let path = error.path().to_string();
                let e = ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_field",
                    format!("the query string: {}", error.into_inner()),
                );
                if path == "." {
                    e
                } else {
                    e.field(path)
                }
            })
    }
}

/// Path segments: one that cannot name anything (an award number that is not a
/// number) is a 404 like any other name that is not there.
pub struct Segments<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Segments<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| Segments(t))
            .map_err(|rejection| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("nothing is at this path: {}", unparsed(&rejection)),
                )
            })
    }
}

/// What of a path could not be read, in the caller's terms.
fn unparsed(rejection: &PathRejection) -> String {
    use axum::extract::path::ErrorKind;
    let PathRejection::FailedToDeserializePathParams(failed) = rejection else {
        return rejection.body_text();
    };
    match failed.kind() {
        ErrorKind::ParseErrorAtKey {
            value,
            expected_type,
            ..
        }
        | ErrorKind::ParseErrorAtIndex {
            value,
            expected_type,
            ..
        }
        | ErrorKind::ParseError {
            value,
            expected_type,
        } => match max_of(expected_type) {
            Some(max) => format!("`{value}` is not a number from 0 to {max}"),
            None => failed.body_text(),
        },
        _ => failed.body_text(),
    }
}

/// The largest value of the unsigned integer type named `name`, as text.
fn max_of(name: &str) -> Option<String> {
    Some(match name {
        "u8" => u8::MAX.to_string(),
        "u16" => u16::MAX.to_string(),
        "u32" => u32::MAX.to_string(),
        "u64" => u64::MAX.to_string(),
        _ => return None,
    })
}

/// Whether a content type is JSON: `application/json` or `application/<x>+json`,
/// with any parameters.
fn is_json(value: &HeaderValue) -> bool {
    let Ok(text) = value.to_str() else {
        return false;
    };
    let essence = text.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json")
            || subtype.len() > 5
                && subtype.is_char_boundary(subtype.len() - 5)
                && subtype[subtype.len() - 5..].eq_ignore_ascii_case("+json"))
}

fn has_body(request: &Request) -> bool {
    let headers = request.headers();
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return true;
    }
    headers.get(header::CONTENT_LENGTH).is_some_and(|length| {
        length
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            != Some(0)
    })
}

/// The outermost layer: refuses a body that is not JSON (415), and gives every error
/// response that is not yet in the envelope (405 from routing, 413 from the body
/// limit, anything a library answered in plain text) the envelope, and every 401
/// its challenge.
pub async fn guard(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let writes = matches!(method, Method::POST | Method::PUT | Method::PATCH);
    if writes
        && has_body(&request)
        && !request
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(is_json)
    {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON, with `Content-Type: application/json`",
        )
        .field("Content-Type")
        .into_response();
    }
    let response = next.run(request).await;
    enveloped(response, &method).await
}

async fn enveloped(response: Response, method: &Method) -> Response {
    let status = response.status();
    if !status.is_client_error() && !status.is_server_error() {
        return response;
    }
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(is_json);
    let mut response = if json {
        response
    } else {
        let (parts, body) = response.into_parts();
        // What libraries answer with is a short sentence; more is not read.
        let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
        let text = String::from_utf8_lossy(&text).trim().to_owned();
        let allow = parts.headers.get(header::ALLOW).cloned();
        let (code, message) = match status {
            StatusCode::NOT_FOUND => ("not_found", "no such endpoint".to_owned()),
            StatusCode::METHOD_NOT_ALLOWED => {
                let allowed = allow
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("another method");
                (
                    "method_not_allowed",
                    format!("this endpoint does not take {method}; it takes {allowed}"),
                )
            }
            StatusCode::PAYLOAD_TOO_LARGE => (
                "payload_too_large",
                format!(
                    "the body is larger than the {} bytes a request may carry",
                    crate::api::BODY_LIMIT
                ),
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => (
                "unsupported_media_type",
                "send the body as JSON, with `Content-Type: application/json`".to_owned(),
            ),
            StatusCode::UNAUTHORIZED => ("unauthorized", "send a valid bearer token".to_owned()),
            status if status.is_client_error() => (
                "bad_request",
                if text.is_empty() {
                    status
                        .canonical_reason()
                        .unwrap_or("bad request")
                        .to_owned()
                } else {
                    text
                },
            ),
            _ => (
                "internal",
                "the request failed inside the broker; see the server's log".to_owned(),
            ),
        };
        let mut fresh = ApiError::new(status, code, message).into_response();
        if let Some(allow) = allow {
            fresh.headers_mut().insert(header::ALLOW, allow);
        }
        fresh
    };
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(CHALLENGE),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    #[test]
    fn json_content_types_are_told_from_others() {
        for yes in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/merge-patch+json",
        ] {
            assert!(is_json(&HeaderValue::from_static(yes)), "{yes}");
        }
        for no in [
            "text/plain",
            "application/jsonx",
            "json",
            "+json",
            "application/+json",
            "",
        ] {
            assert!(!is_json(&HeaderValue::from_static(no)), "{no}");
        }
    }

    #[tokio::test]
    async fn a_plain_text_error_gets_the_envelope() {
        let response = Response::builder()
            .status(StatusCode::METHOD_NOT_ALLOWED)
            .header(header::ALLOW, "GET,HEAD")
            .body(Body::empty())
            .unwrap();
        let response = enveloped(response, &Method::DELETE).await;
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "GET,HEAD");
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "method_not_allowed");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("DELETE"));
    }
}
