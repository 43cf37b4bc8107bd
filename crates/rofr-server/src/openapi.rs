//! The OpenAPI document as served: what utoipa derives from the handlers, then what
//! the derive cannot see, written here once for every route: the limits the server
//! enforces on bodies, parameters and headers, and every status code a route can
//! answer (the guard's 413 and 415, the extractors' 404 and 422, 500 and 503).

use rofr_engine::need::{
    MAX_DECISION_DAYS, MAX_GPUS, MAX_HOURS, MAX_LIST_ITEMS, MAX_SHORT_TEXT, MAX_TEXT_CHARS,
};
use rofr_engine::state::NeedStatus;
use rofr_engine::types::time_pattern_for_years;
use serde_json::{json, Map, Value};

use crate::api::{ApiDoc, MAX_PAGE};
use crate::views::AwardState;

/// An Idempotency-Key: 1 to 200 visible ASCII characters, no spaces.
pub const IDEMPOTENCY_KEY_PATTERN: &str = "^[!-~]{1,200}$";
/// Text without control characters (C0, DEL and C1).
const PLAIN_TEXT: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$";
/// Plain text with at least one character that is not white space.
const PLAIN_TEXT_NOT_BLANK: &str =
    "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$";
/// The smallest price above zero the server keeps (a ten-thousandth of a dollar).
const LEAST_PRICE: f64 = 0.0001;

/// The document, as `/openapi.json` serves it.
pub fn document() -> String {
    use utoipa::OpenApi;
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serializes");
    body_limits(&mut doc);
    parameter_limits(&mut doc);
    statuses(&mut doc);
    examples_and_links(&mut doc);
    serde_json::to_string_pretty(&doc).expect("the document serializes")
}

/// An example need (for a broker whose clock stands early in 2025, as the tests' and
/// the demo's do), and links from a submission's answer to every route about a need,
/// so that a client generating requests from the document reaches them with real ids.
fn examples_and_links(doc: &mut Value) {
    let submit = &mut doc["paths"]["/v1/needs"]["post"];
    submit["requestBody"]["content"]["application/json"]["example"] = json!({
        "id": "train-1", "sku": "H100", "gpus": 64, "hours": 72, "workload": "training",
        "earliest_start": "2025-02-10T00:00:00Z", "latest_start": "2025-03-01T00:00:00Z",
        "decide_by": "2025-02-20T00:00:00Z", "max_price_per_gpu_hour": 8.0
    });
    let mut links = Map::new();
    for_each_operation(doc, |path, _, operation| {
        if path.contains("{id}") {
            if let Some(id) = operation["operationId"].as_str() {
                links.insert(
                    id.to_owned(),
                    json!({ "operationId": id, "parameters": { "id": "$response.body#/need" } }),
                );
            }
        }
    });
    doc["paths"]["/v1/needs"]["post"]["responses"]["201"]["links"] = Value::Object(links);
}

fn price(least: f64) -> Value {
    json!({
        "type": "number",
        "minimum": least,
        "maximum": rofr_engine::types::Price::MAX_DOLLARS,
        "description": "US dollars per GPU-hour, to a ten-thousandth",
    })
}

fn gpus() -> Value {
    json!({ "type": "integer", "minimum": 1, "maximum": MAX_GPUS })
}

fn nullable(schema: Value) -> Value {
    json!({ "oneOf": [{ "type": "null" }, schema] })
}

fn text(max: usize) -> Value {
    json!({ "type": "string", "maxLength": max, "pattern": PLAIN_TEXT })
}

/// Sets `property` of component `schema` to `value`, keeping its description.
fn set(doc: &mut Value, schema: &str, property: &str, value: Value) {
    let slot = &mut doc["components"]["schemas"][schema]["properties"][property];
    assert!(
        !slot.is_null(),
        "the document has no property {schema}.{property}"
    );
    let description = slot.get("description").cloned();
    *slot = value;
    if let (Some(description), Some(object)) = (description, slot.as_object_mut()) {
        object.insert("description".into(), description);
    }
}

/// The limits `NeedSpec::validate` and the engine's command checks enforce.
fn body_limits(doc: &mut Value) {
    set(doc, "NeedSpec", "gpus", gpus());
    set(
        doc,
        "NeedSpec",
        "hours",
        json!({ "type": "integer", "minimum": 1, "maximum": MAX_HOURS }),
    );
    set(
        doc,
        "NeedSpec",
        "priority",
        json!({ "type": "integer", "minimum": 0, "maximum": 255 }),
    );
    let decision = format!(
        "After the broker's clock, at most {MAX_DECISION_DAYS} days after it, and not after latest_start"
    );
    for (field, rule) in [
        ("earliest_start", "At most latest_start"),
        ("latest_start", "Not before the broker's clock"),
        ("decide_by", decision.as_str()),
    ] {
        set(
            doc,
            "NeedSpec",
            field,
            json!({
                "type": "string",
                "format": "date-time",
                "description": format!("{rule}; whole seconds in the years 1970 to 2999"),
                "pattern": time_pattern_for_years("19[7-9][0-9]|2[0-9]{3}"),
            }),
        );
    }
    for (field, item) in [("regions", "Region"), ("tags", "Tag")] {
        set(
            doc,
            "NeedSpec",
            field,
            json!({
                "type": "array",
                "items": { "$ref": format!("#/components/schemas/{item}") },
                "uniqueItems": true,
                "maxItems": MAX_LIST_ITEMS,
            }),
        );
    }
    set(doc, "NeedSpec", "launch", nullable(text(MAX_SHORT_TEXT)));
    set(
        doc,
        "NeedSpec",
        "max_price_per_gpu_hour",
        price(LEAST_PRICE),
    );
    set(
        doc,
        "NeedSpec",
        "offer_price_per_gpu_hour",
        nullable(price(0.0)),
    );
    for schema in ["AcceptBody", "MatchBody"] {
        set(doc, schema, "gpus", nullable(gpus()));
    }
    set(doc, "AcceptBody", "price", nullable(price(LEAST_PRICE)));
    set(doc, "QuoteBody", "gpus", gpus());
    set(doc, "QuoteBody", "price", price(LEAST_PRICE));
    set(doc, "Reason", "reason", text(MAX_TEXT_CHARS));
    set(
        doc,
        "ConfirmBody",
        "reservation",
        json!({
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_SHORT_TEXT,
            "pattern": PLAIN_TEXT_NOT_BLANK,
        }),
    );
    set(
        doc,
        "WebhookBody",
        "url",
        json!({
            "type": "string",
            "format": "uri",
            "maxLength": crate::webhook::MAX_URL_CHARS,
            "pattern": "^https?://[^@/?#]+([/?#].*)?$",
        }),
    );
}

/// Query, path and header parameters, by name (each name means one thing everywhere).
fn parameter_limits(doc: &mut Value) {
    let statuses: Vec<&str> = NeedStatus::ALL.iter().map(|s| s.as_str()).collect();
    let award_states: Vec<&str> = AwardState::ALL.iter().map(|s| s.as_str()).collect();
    for_each_operation(doc, |path, _, operation| {
        let Some(parameters) = operation
            .get_mut("parameters")
            .and_then(Value::as_array_mut)
        else {
            return;
        };
        for parameter in parameters {
            let name = parameter["name"].as_str().unwrap_or_default().to_owned();
            let schema = match name.as_str() {
                "limit" => json!({ "type": "integer", "minimum": 1, "maximum": MAX_PAGE }),
                "Idempotency-Key" => json!({
                    "type": "string",
                    "minLength": 1,
                    "maxLength": crate::api::MAX_IDEMPOTENCY_KEY,
                    "pattern": IDEMPOTENCY_KEY_PATTERN,
                }),
                "id" => json!({ "$ref": "#/components/schemas/NeedId" }),
                "award" => json!({ "type": "integer", "minimum": 0, "maximum": u32::MAX }),
                // Log indexes and sizes, read as u64.
                "index" | "size" | "from" | "to" => {
                    json!({ "type": "integer", "minimum": 0, "maximum": u64::MAX })
                }
                "after" if path == "/v1/awards" => {
                    json!({ "type": "string", "pattern": "^[0-9]{1,9}$" })
                }
                "after" if path == "/v1/events" => {
                    json!({ "type": "integer", "minimum": 0, "maximum": u64::MAX })
                }
                "status" if path == "/v1/needs" => json!({ "type": "string", "enum": statuses }),
                "status" if path == "/v1/awards" => {
                    let one = format!(" *({}) *", award_states.join("|"));
                    json!({ "type": "string", "pattern": format!("^{one}(,{one})*$") })
                }
                "status" if path == "/v1/webhook/deliveries" => {
                    json!({ "type": "string", "enum": ["pending", "delivered", "failed"] })
                }
                _ => continue,
            };
            parameter["schema"] = schema;
        }
    });
}

/// Every status a route can answer, each with the envelope: whatever a handler says,
/// plus what the layers around every handler may answer.
fn statuses(doc: &mut Value) {
    for_each_operation(doc, |_, method, operation| {
        let public = operation
            .get("security")
            .and_then(Value::as_array)
            .is_some_and(|s| s.iter().all(|r| r.as_object().is_some_and(Map::is_empty)));
        let has_body = operation.get("requestBody").is_some();
        let parameters: Vec<String> = operation
            .get("parameters")
            .and_then(Value::as_array)
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| p["in"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let writes = matches!(method, "post" | "put");
        let mut add = |status: &str, description: &str| {
            let responses = operation["responses"]
                .as_object_mut()
                .expect("every operation has responses");
            responses.entry(status).or_insert_with(|| {
                json!({
                    "description": description,
                    "content": { "application/json": {
                        "schema": { "$ref": "#/components/schemas/Envelope" }
                    }}
                })
            });
        };
        if public {
            return;
        }
        add("401", "No valid bearer token");
        if has_body || writes {
            add("400", "Malformed JSON, or data after it");
            add("413", "The body is larger than the server takes");
            add("415", "The body is not JSON");
            add("422", "A field is invalid");
        }
        if parameters.iter().any(|p| p == "query" || p == "header") {
            add("422", "A parameter is invalid");
        }
        if parameters.iter().any(|p| p == "path") {
            add("404", "Nothing at this path for this party");
        }
        add(
            "500",
            "The request failed inside the broker; nothing was written",
        );
        add("503", "The broker is shutting down");
    });
    // A body that may be empty (every field optional) is not required.
    for_each_operation(doc, |_, _, operation| {
        let Some(body) = operation.get_mut("requestBody") else {
            return;
        };
        let schema = body["content"]["application/json"]["schema"]["$ref"]
            .as_str()
            .map(str::to_owned);
        let optional = matches!(
            schema.as_deref(),
            Some("#/components/schemas/AcceptBody" | "#/components/schemas/MatchBody")
        );
        if optional {
            body["required"] = json!(false);
        }
    });
}

fn for_each_operation(doc: &mut Value, mut f: impl FnMut(&str, &str, &mut Value)) {
    let paths = doc["paths"]
        .as_object_mut()
        .expect("the document has paths");
    for (path, item) in paths.iter_mut() {
        for method in ["get", "put", "post", "delete", "patch"] {
            if let Some(operation) = item.get_mut(method) {
                f(path, method, operation);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rofr_engine::types::{NeedId, Timestamp, ID_PATTERN, TIME_PATTERN};

    /// The patterns say what the parsers take: what a pattern admits is parsed, and
    /// what it refuses is refused.
    #[test]
    fn the_patterns_agree_with_the_parsers() {
        let id = regex::Regex::new(ID_PATTERN).unwrap();
        let long = "a".repeat(64);
        let longer = "a".repeat(65);
        for text in ["a", "n-1.x_2", &long, "", "-a", &longer, "a b", "é", "a\n"] {
            assert_eq!(id.is_match(text), NeedId::parse(text).is_ok(), "{text:?}");
        }
        let time = regex::Regex::new(TIME_PATTERN).unwrap();
        for text in [
            "2025-01-21T09:00:00Z",
            "9999-12-31T23:59:59Z",
            "2025-13-21T09:00:00Z",
            "2025-00-21T09:00:00Z",
            "2025-01-32T09:00:00Z",
            "2025-01-21T24:00:00Z",
            "2025-01-21T23:60:00Z",
            "2025-01-21T23:59:60Z",
            "2025-01-21T09:00:00+24:00",
            "2025-01-21T09:00:00-23:59",
            "2025-01-21t09:00:00z",
            "2025-01-21T09:00:00+05:30",
            "2025-01-21T09:00:00.5Z",
            "2025-01-21 09:00:00Z",
            "2025-01-21T09:00Z",
        ] {
            assert_eq!(
                time.is_match(text),
                Timestamp::parse(text).is_ok(),
                "{text:?}"
            );
        }
        let key = regex::Regex::new(IDEMPOTENCY_KEY_PATTERN).unwrap();
        for text in ["k-1", "a b", "", &"k".repeat(200), &"k".repeat(201), "ключ"] {
            assert_eq!(
                key.is_match(text),
                crate::api::idempotency_key_ok(text),
                "{text:?}"
            );
        }
        let plain = regex::Regex::new(PLAIN_TEXT).unwrap();
        for text in ["ok", "", "tab\there", "bell\u{7}", "c1\u{85}", "ünïcode"] {
            assert_eq!(
                plain.is_match(text),
                rofr_engine::need::check_text("reason", text, 500).is_ok(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn the_award_states_pattern_agrees_with_their_parser() {
        let doc: Value = serde_json::from_str(&document()).unwrap();
        let parameters = doc["paths"]["/v1/awards"]["get"]["parameters"]
            .as_array()
            .unwrap();
        let status = parameters.iter().find(|p| p["name"] == "status").unwrap();
        let pattern = regex::Regex::new(status["schema"]["pattern"].as_str().unwrap()).unwrap();
        for text in [
            "made",
            "made,confirmed",
            " made , failed",
            "",
            "made,",
            ",made",
            "made\t",
            "unknown",
            "made,,failed",
        ] {
            assert_eq!(
                pattern.is_match(text),
                AwardState::parse_list(text).is_ok(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn every_operation_names_its_errors() {
        let doc: Value = serde_json::from_str(&document()).unwrap();
        let submit = &doc["paths"]["/v1/needs"]["post"]["responses"];
        for status in ["400", "401", "413", "415", "422", "500", "503"] {
            assert!(
                submit.get(status).is_some(),
                "POST /v1/needs lacks {status}"
            );
        }
        let show = &doc["paths"]["/v1/needs/{id}"]["get"]["responses"];
        assert!(show.get("404").is_some());
        assert_eq!(
            doc["components"]["schemas"]["NeedSpec"]["properties"]["gpus"]["maximum"],
            MAX_GPUS
        );
    }
}
