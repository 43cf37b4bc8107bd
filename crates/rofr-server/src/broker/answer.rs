//! What an accepted command answers: its need and its events, each quoted with its
//! index exactly as stored.

use std::fmt::Write as _;

use rofr_store::NewEvent;
use serde_json::value::RawValue;

/// `{"need": …, "events": [{"index": …, "event": …}, …]}`, quoting each event's stored
/// bytes as they are. Written by hand: the bytes are the engine's own JSON, so parsing
/// them again (as `RawValue` would) only costs the writer time. The same text as
/// serializing [`IndexedEvent`]s, as a test checks.
pub(super) fn command_body(first: u64, events: &[NewEvent]) -> String {
    let size: usize = events.iter().map(|e| e.data.len() + 32).sum();
    let mut body = String::with_capacity(size + 64);
    body.push_str("{\"need\":");
    match events.first().filter(|e| !e.need.is_empty()) {
        Some(event) => {
            body.push_str(&serde_json::to_string(&event.need).expect("strings serialize"))
        }
        None => body.push_str("null"),
    }
    body.push_str(",\"events\":[");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        write!(body, "{{\"index\":{},\"event\":", first + i as u64).expect("writing to a string");
        body.push_str(std::str::from_utf8(&event.data).expect("events are UTF-8 JSON"));
        body.push('}');
    }
    body.push_str("]}");
    body
}

/// An event with its position in the log, its bytes quoted exactly as stored.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct IndexedEvent {
    /// Position in the log, from 0: the ledger's leaf index.
    pub index: u64,
    /// The entry as stored: an event (`type`, its fields, `need` and `at`), or, at index
    /// 0 of a new log, the deal's entry (`type` `deal_adopted`; docs/events.md).
    #[schema(value_type = Object)]
    pub event: Box<RawValue>,
}

/// Stored event bytes, embedded in a response without re-serializing them.
pub fn raw_json(bytes: &[u8]) -> Box<RawValue> {
    let text = String::from_utf8(bytes.to_vec()).expect("events are UTF-8 JSON");
    RawValue::from_string(text).expect("events are valid JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The serde form the hand-written body must equal, byte for byte.
    pub(super) fn by_serde(first: u64, events: &[NewEvent]) -> String {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            need: Option<&'a str>,
            events: Vec<IndexedEvent>,
        }
        let body = Body {
            need: events.first().map(|e| e.need.as_str()),
            events: events
                .iter()
                .enumerate()
                .map(|(i, event)| IndexedEvent {
                    index: first + i as u64,
                    event: raw_json(&event.data),
                })
                .collect(),
        };
        serde_json::to_string(&body).unwrap()
    }

    #[test]
    pub(super) fn command_bodies_are_what_serde_writes() {
        let event = |need: &str, data: &str| NewEvent {
            need: need.into(),
            kind: "offer_sent".into(),
            at: "2025-01-21T09:00:00Z".into(),
            data: data.as_bytes().to_vec(),
            leaf_hash: [0; 32],
        };
        let cases = [
            vec![],
            vec![event(
                "n1",
                r#"{"type":"need_completed","need":"n1","at":"2025-01-21T09:00:00Z"}"#,
            )],
            vec![
                event(
                    "n-2.b",
                    r#"{"type":"need_cancelled","reason":"a \"quoted\" \\ reason","need":"n-2.b","at":"2025-01-21T09:00:00Z"}"#,
                ),
                event(
                    "n-2.b",
                    r#"{"type":"need_expired","gpus":8,"need":"n-2.b","at":"2025-01-22T09:00:00Z"}"#,
                ),
            ],
        ];
        for (first, events) in [0u64, 9, 123_456_789].into_iter().zip(&cases) {
            assert_eq!(command_body(first, events), by_serde(first, events));
        }
    }
}
