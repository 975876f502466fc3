//! Places API (New) `places:searchNearby`: the request it takes, and its answer mapped to
//! the legacy Nearby Search shape that clients always get.
//!
//! Everything here is pure: the caller (the places proxy) does the HTTP and hands in the
//! status and body. The pieces:
//!
//! - [`FIELD_MASK`]: the `X-Goog-FieldMask` header, naming only the fields the mapping reads.
//! - [`request_body`]: the JSON body for a circle around a position.
//! - [`to_legacy`]: the New API's answer (places, `{}`, or a `google.rpc.Status` error)
//!   rewritten as a legacy answer, so clients see one format whichever API is configured.
//! - [`google_text`]: JSON laid out the way Google lays out its legacy answers (three-space
//!   indent, `"key" : value`, trailing newline), so a mapped answer looks like a real one.
//!
//! Legacy objects are built with their keys inserted in sorted order, as Google sorts them;
//! the crate turns on serde_json's `preserve_order`, so insertion order is output order.

use std::io;

use serde_json::ser::{Formatter, PrettyFormatter};
use serde_json::{Map, Value, json};

use crate::places_json::{BadAnswer, REQUEST_DENIED, UNKNOWN_ERROR, error_answer};
use crate::protocol::{Degrees, Radius};

/// The `X-Goog-FieldMask` header value: only the place fields [`to_legacy`] reads.
///
/// The New API has no default field set (a request without a mask is refused), and it bills
/// a call by the most expensive field asked for, so a wider mask (or `*`) costs more for
/// data that would be thrown away.
pub const FIELD_MASK: &str = "places.id,places.displayName,places.location,\
places.shortFormattedAddress,places.formattedAddress,places.types,places.rating,\
places.userRatingCount,places.businessStatus";

/// The most places one call may ask for. A call costs the same whatever the count, and 20
/// (the most a legacy page holds, and the largest WHATSAT bound) lets any bound be served
/// from one answer.
const MAX_RESULT_COUNT: u32 = 20;

/// The JSON body of a `places:searchNearby` call: up to 20 places within `radius` of
/// `position`, because that is the question a WHATSAT asks.
///
/// The radius goes in as a JSON number parsed from the exact metres text, so `12.5` stays
/// `12.5` (serde_json keeps it as the nearest f64, which prints back as the same text for
/// any radius with up to 15 significant digits).
pub fn request_body(position: &Degrees, radius: &Radius) -> String {
    let metres = radius.metres();
    let radius = serde_json::from_str::<serde_json::Number>(metres)
        .ok()
        .or_else(|| {
            metres
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
        })
        .map_or(Value::Null, Value::Number);
    json!({
        "maxResultCount": MAX_RESULT_COUNT,
        "locationRestriction": {
            "circle": {
                "center": {
                    "latitude": position.latitude,
                    "longitude": position.longitude,
                },
                "radius": radius,
            }
        }
    })
    .to_string()
}

/// Maps an answer of `places:searchNearby` (its HTTP status and body) to the legacy Nearby
/// Search shape, because clients always get the legacy shape whichever API the server calls
/// (docs/PROTOCOL.md). The text is laid out as Google lays out legacy answers ([`google_text`]).
///
/// - A `google.rpc.Status` `error` object (whatever the HTTP status) becomes a legacy error:
///   its message as `error_message` and its status mapped to a legacy status.
/// - Otherwise a 2xx answer's `places` become `results` with status `OK`, or `ZERO_RESULTS`
///   when there are none (the API answers `{}` then).
/// - Any other JSON object (a non-2xx answer without an `error` object) becomes an
///   `UNKNOWN_ERROR` naming the HTTP status.
///
/// A body that is not JSON, or JSON that is not an object, is refused: it is no answer of
/// the API, and the caller reports it as such.
pub fn to_legacy(http_status: u16, body: &str) -> Result<String, BadAnswer> {
    let value: Value = serde_json::from_str(body).map_err(|_| BadAnswer::NotJson)?;
    let Value::Object(answer) = value else {
        return Err(BadAnswer::NotAnObject);
    };
    let legacy = if let Some(Value::Object(error)) = answer.get("error") {
        legacy_error(http_status, error)
    } else if (200..300).contains(&http_status) {
        legacy_places(&answer)
    } else {
        error_object(
            UNKNOWN_ERROR,
            &format!("the places API answered HTTP {http_status}"),
        )
    };
    Ok(google_text(&legacy))
}

/// A legacy `OK` (or `ZERO_RESULTS`) answer from the New API's `places` array.
fn legacy_places(answer: &Map<String, Value>) -> Value {
    let results: Vec<Value> = answer
        .get("places")
        .and_then(Value::as_array)
        .map(|places| {
            places
                .iter()
                .filter_map(Value::as_object)
                .map(legacy_result)
                .collect()
        })
        .unwrap_or_default();
    let status = if results.is_empty() {
        "ZERO_RESULTS"
    } else {
        "OK"
    };
    // Keys in sorted order, as Google writes them.
    let mut legacy = Map::new();
    legacy.insert("html_attributions".into(), json!([]));
    legacy.insert("results".into(), Value::Array(results));
    legacy.insert("status".into(), json!(status));
    Value::Object(legacy)
}

/// One legacy result from one New API place, with only the fields the place has.
fn legacy_result(place: &Map<String, Value>) -> Value {
    // Keys in sorted order, as Google writes them; each is set only when the place has it.
    let mut result = Map::new();
    let mut put = |key: &str, value: Option<&Value>| {
        if let Some(value) = value {
            result.insert(key.to_owned(), value.clone());
        }
    };
    put("business_status", place.get("businessStatus"));
    let geometry = place
        .get("location")
        .and_then(Value::as_object)
        .map(|location| {
            // A `google.type.LatLng` is proto3 JSON: a coordinate that is 0 is left out.
            let coordinate = |key: &str| location.get(key).cloned().unwrap_or_else(|| json!(0));
            json!({
                "location": {
                    "lat": coordinate("latitude"),
                    "lng": coordinate("longitude"),
                }
            })
        });
    put("geometry", geometry.as_ref());
    put("name", place.get("displayName").and_then(|n| n.get("text")));
    put("place_id", place.get("id"));
    put("rating", place.get("rating"));
    put("types", place.get("types"));
    put("user_ratings_total", place.get("userRatingCount"));
    put(
        "vicinity",
        place
            .get("shortFormattedAddress")
            .or_else(|| place.get("formattedAddress")),
    );
    Value::Object(result)
}

/// A legacy error answer from a New API `error` object (the `google.rpc.Status` shape).
fn legacy_error(http_status: u16, error: &Map<String, Value>) -> Value {
    let message = match error.get("message").and_then(Value::as_str) {
        Some(message) => message.to_owned(),
        None => format!("the places API answered HTTP {http_status}"),
    };
    error_object(legacy_status(error), &message)
}

/// The legacy status that says what a New API error status says.
///
/// A bad key is `INVALID_ARGUMENT` in the New API but `REQUEST_DENIED` in the legacy one,
/// so the error's details are looked at for the `API_KEY_INVALID` reason first.
fn legacy_status(error: &Map<String, Value>) -> &'static str {
    let key_invalid = error
        .get("details")
        .and_then(Value::as_array)
        .is_some_and(|details| {
            details
                .iter()
                .any(|d| d.get("reason").and_then(Value::as_str) == Some("API_KEY_INVALID"))
        });
    if key_invalid {
        return REQUEST_DENIED;
    }
    match error.get("status").and_then(Value::as_str) {
        Some("PERMISSION_DENIED" | "UNAUTHENTICATED") => REQUEST_DENIED,
        Some("RESOURCE_EXHAUSTED") => "OVER_QUERY_LIMIT",
        Some("INVALID_ARGUMENT" | "FAILED_PRECONDITION") => "INVALID_REQUEST",
        _ => UNKNOWN_ERROR,
    }
}

/// A legacy error object: no results, a status and a message, keys in sorted order.
fn error_object(status: &str, message: &str) -> Value {
    let mut legacy = Map::new();
    legacy.insert("error_message".into(), json!(message));
    legacy.insert("html_attributions".into(), json!([]));
    legacy.insert("results".into(), json!([]));
    legacy.insert("status".into(), json!(status));
    Value::Object(legacy)
}

/// `value` as text laid out the way Google lays out legacy answers: three-space indent,
/// `"key" : value`, a trailing newline, keys in the order the value holds them. So a mapped
/// answer reads like one from the legacy API, for clients and people alike.
pub fn google_text(value: &Value) -> String {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, GoogleFormatter::new());
    if serde::Serialize::serialize(value, &mut serializer).is_err() {
        // Writing a `Value` to a `Vec` does not fail; this only keeps the code panic-free.
        return error_answer(UNKNOWN_ERROR, "the places answer could not be written");
    }
    out.push(b'\n');
    // serde_json writes UTF-8 only.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// serde_json's pretty layout with a three-space indent and `" : "` between key and value,
/// as in Google's legacy answers.
struct GoogleFormatter {
    pretty: PrettyFormatter<'static>,
}

impl GoogleFormatter {
    fn new() -> Self {
        GoogleFormatter {
            pretty: PrettyFormatter::with_indent(b"   "),
        }
    }
}

impl Formatter for GoogleFormatter {
    fn begin_array<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.pretty.begin_array(writer)
    }

    fn end_array<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.pretty.end_array(writer)
    }

    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.pretty.begin_array_value(writer, first)
    }

    fn end_array_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.pretty.end_array_value(writer)
    }

    fn begin_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.pretty.begin_object(writer)
    }

    fn end_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.pretty.end_object(writer)
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.pretty.begin_object_key(writer, first)
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b" : ")
    }

    fn end_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.pretty.end_object_value(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW_OK: &str = include_str!("../tests/fixtures/places/new_ok.json");
    const NEW_ERROR: &str = include_str!("../tests/fixtures/places/new_error.json");
    const NEW_SERVICE_DISABLED: &str =
        include_str!("../tests/fixtures/places/new_error_service_disabled.json");

    fn parse(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    fn keys(value: &Value) -> Vec<&str> {
        value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect()
    }

    fn body_for(km: &str) -> Value {
        let position = Degrees {
            latitude: 34.068930,
            longitude: -118.445127,
        };
        parse(&request_body(&position, &Radius::parse(km).unwrap()))
    }

    #[test]
    fn the_request_body_has_the_documented_shape() {
        let body = body_for("1.5");
        assert_eq!(
            body,
            json!({
                "maxResultCount": 20,
                "locationRestriction": {
                    "circle": {
                        "center": {"latitude": 34.068930, "longitude": -118.445127},
                        "radius": 1500
                    }
                }
            })
        );
        assert!(body["locationRestriction"]["circle"]["radius"].is_number());
    }

    #[test]
    fn the_request_radius_is_the_exact_metres() {
        for (km, metres) in [
            ("1.5", "1500"),
            ("0.0125", "12.5"),
            ("50", "50000"),
            ("1.23456789", "1234.56789"),
            ("0.0000001", "0.0001"),
        ] {
            let body = body_for(km);
            let radius = &body["locationRestriction"]["circle"]["radius"];
            assert!(radius.is_number(), "{km}");
            assert_eq!(radius.to_string(), metres, "{km}");
        }
        assert_eq!(
            body_for("0.0125")["locationRestriction"]["circle"]["radius"].as_f64(),
            Some(12.5)
        );
    }

    #[test]
    fn the_field_mask_names_only_place_fields() {
        for field in FIELD_MASK.split(',') {
            assert!(field.starts_with("places.") && field.len() > 7, "{field}");
        }
        assert_eq!(FIELD_MASK.split(',').count(), 9);
    }

    #[test]
    fn places_map_to_legacy_results_in_order() {
        let text = to_legacy(200, NEW_OK).unwrap();
        let legacy = parse(&text);
        let places = parse(NEW_OK)["places"].as_array().unwrap().clone();
        let results = legacy["results"].as_array().unwrap();
        assert_eq!(legacy["status"], "OK");
        assert_eq!(legacy["html_attributions"], json!([]));
        assert_eq!(results.len(), 5);
        assert_eq!(places.len(), 5);
        for (place, result) in places.iter().zip(results) {
            assert_eq!(result["name"], place["displayName"]["text"]);
            assert_eq!(result["place_id"], place["id"]);
            assert_eq!(
                result["geometry"]["location"]["lat"],
                place["location"]["latitude"]
            );
            assert_eq!(
                result["geometry"]["location"]["lng"],
                place["location"]["longitude"]
            );
            assert_eq!(result["vicinity"], place["shortFormattedAddress"]);
            assert_eq!(result["types"], place["types"]);
            assert_eq!(result["business_status"], place["businessStatus"]);
            // Absent in the place (the second has no rating) means absent in the result.
            assert_eq!(result.get("rating"), place.get("rating"));
            assert_eq!(
                result.get("user_ratings_total"),
                place.get("userRatingCount")
            );
        }
        assert!(results[1].get("rating").is_none());
    }

    #[test]
    fn legacy_keys_are_sorted_and_laid_out_like_google() {
        let text = to_legacy(200, NEW_OK).unwrap();
        let legacy = parse(&text);
        assert_eq!(keys(&legacy), ["html_attributions", "results", "status"]);
        let first = &legacy["results"][0];
        assert_eq!(
            keys(first),
            [
                "business_status",
                "geometry",
                "name",
                "place_id",
                "rating",
                "types",
                "user_ratings_total",
                "vicinity"
            ]
        );
        for result in legacy["results"].as_array().unwrap() {
            let keys = keys(result);
            assert!(keys.is_sorted(), "{keys:?}");
        }
        assert!(text.starts_with("{\n   \"html_attributions\" : [],\n   \"results\" : [\n      {\n         \"business_status\" : \"OPERATIONAL\",\n"));
        assert!(text.ends_with("\n   ],\n   \"status\" : \"OK\"\n}\n"));
        assert!(!text.contains("\": "));
    }

    #[test]
    fn a_place_without_a_short_address_uses_the_formatted_one() {
        let body = r#"{"places": [{"id": "x", "formattedAddress": "1 Long St, Town, UK",
            "location": {"latitude": 51.5}}]}"#;
        let legacy = parse(&to_legacy(200, body).unwrap());
        let result = &legacy["results"][0];
        assert_eq!(result["vicinity"], "1 Long St, Town, UK");
        assert_eq!(keys(result), ["geometry", "place_id", "vicinity"]);
        assert_eq!(
            result["geometry"],
            json!({"location": {"lat": 51.5, "lng": 0}})
        );
    }

    #[test]
    fn no_places_is_zero_results() {
        for body in ["{}", r#"{"places": []}"#] {
            let text = to_legacy(200, body).unwrap();
            assert_eq!(
                text,
                "{\n   \"html_attributions\" : [],\n   \"results\" : [],\n   \"status\" : \"ZERO_RESULTS\"\n}\n"
            );
        }
    }

    #[test]
    fn an_invalid_key_is_request_denied() {
        let text = to_legacy(400, NEW_ERROR).unwrap();
        let legacy = parse(&text);
        assert_eq!(
            keys(&legacy),
            ["error_message", "html_attributions", "results", "status"]
        );
        assert_eq!(legacy["status"], "REQUEST_DENIED");
        assert_eq!(
            legacy["error_message"],
            "API key not valid. Please pass a valid API key."
        );
        assert_eq!(legacy["results"], json!([]));
        assert_eq!(
            legacy,
            parse(include_str!(
                "../tests/fixtures/places/new_error.as_legacy.json"
            ))
        );
    }

    #[test]
    fn a_disabled_service_is_request_denied() {
        let legacy = parse(&to_legacy(403, NEW_SERVICE_DISABLED).unwrap());
        assert_eq!(legacy["status"], "REQUEST_DENIED");
        assert_eq!(
            legacy["error_message"],
            parse(NEW_SERVICE_DISABLED)["error"]["message"]
        );
    }

    #[test]
    fn error_statuses_map_to_legacy_statuses() {
        let table = [
            ("RESOURCE_EXHAUSTED", 429, "OVER_QUERY_LIMIT"),
            ("UNAUTHENTICATED", 401, "REQUEST_DENIED"),
            ("PERMISSION_DENIED", 403, "REQUEST_DENIED"),
            ("INVALID_ARGUMENT", 400, "INVALID_REQUEST"),
            ("FAILED_PRECONDITION", 400, "INVALID_REQUEST"),
            ("INTERNAL", 500, "UNKNOWN_ERROR"),
            ("UNAVAILABLE", 503, "UNKNOWN_ERROR"),
        ];
        for (status, code, legacy_status) in table {
            let body = json!({"error": {"code": code, "message": "m", "status": status}});
            let legacy = parse(&to_legacy(code, &body.to_string()).unwrap());
            assert_eq!(legacy["status"], legacy_status, "{status}");
            assert_eq!(legacy["error_message"], "m", "{status}");
        }
    }

    #[test]
    fn bodies_that_are_not_json_objects_are_refused() {
        assert_eq!(to_legacy(500, "<html>"), Err(BadAnswer::NotJson));
        assert_eq!(to_legacy(200, ""), Err(BadAnswer::NotJson));
        assert_eq!(to_legacy(200, "[1, 2]"), Err(BadAnswer::NotAnObject));
        assert_eq!(to_legacy(503, "\"down\""), Err(BadAnswer::NotAnObject));
    }

    #[test]
    fn an_http_error_without_an_error_object_is_unknown_error() {
        let legacy = parse(&to_legacy(503, r#"{"foo": 1}"#).unwrap());
        assert_eq!(legacy["status"], "UNKNOWN_ERROR");
        assert!(
            legacy["error_message"]
                .as_str()
                .unwrap()
                .contains("HTTP 503"),
            "{legacy}"
        );
        assert_eq!(legacy["results"], json!([]));
    }

    #[test]
    fn an_error_mapped_from_the_new_api_reads_exactly_like_the_servers_own_errors() {
        // Two writers of the legacy error shape (the server's own errors by
        // `places_json::error_answer`, mapped ones by `error_object`): a client must not
        // tell them apart.
        let message = "quota \"gone\" \u{e9}";
        assert_eq!(
            google_text(&error_object("OVER_QUERY_LIMIT", message)),
            error_answer("OVER_QUERY_LIMIT", message)
        );
    }

    #[test]
    fn the_google_layout_is_exact() {
        let value = json!({"a": [], "b": {"c": 1}, "d": [1, "x"], "e": {}});
        assert_eq!(
            google_text(&value),
            "{\n   \"a\" : [],\n   \"b\" : {\n      \"c\" : 1\n   },\n   \"d\" : [\n      1,\n      \"x\"\n   ],\n   \"e\" : {}\n}\n"
        );
        assert_eq!(
            google_text(&json!({"a": [], "b": {"c": 1}})),
            "{\n   \"a\" : [],\n   \"b\" : {\n      \"c\" : 1\n   }\n}\n"
        );
    }
}
