//! The places API's answer format (legacy Nearby Search JSON), as pure functions.
//!
//! Clients get the API's JSON in the API's own format: same keys, same key order, same
//! layout. So the answer is not parsed and re-printed; it is checked to be JSON, then its
//! `results` array is cut to the bound in the text itself, leaving every other byte alone.
//! Failures get an object in the API's own error shape, laid out the way Google lays out
//! its legacy answers (sorted keys, three-space indent, `"key" : value`).

use std::borrow::Cow;

/// The status the legacy API gives for a request it refuses (also used when there is no key).
pub const REQUEST_DENIED: &str = "REQUEST_DENIED";

/// The status the legacy API gives for a failure on its side (also used for timeouts,
/// HTTP errors and bodies that are not JSON).
pub const UNKNOWN_ERROR: &str = "UNKNOWN_ERROR";

/// Why an answer from the places API cannot be passed on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadAnswer {
    /// The body does not parse as JSON.
    #[error("the places API answered with a body that is not JSON")]
    NotJson,
    /// The body is JSON but not an object, so it is not a Nearby Search answer.
    #[error("the places API answered with JSON that is not an object")]
    NotAnObject,
}

/// Checks that `json` is a JSON object and cuts its top-level `results` array to at most
/// `bound` elements, keeping every other byte as it was.
pub fn cut_results(json: &str, bound: usize) -> Result<Cow<'_, str>, BadAnswer> {
    // Checked without building a tree: this runs on every WHATSAT, on bodies of ~20 KB.
    if serde_json::from_str::<serde::de::IgnoredAny>(json).is_err() {
        return Err(BadAnswer::NotJson);
    }
    if !json.trim_start().starts_with('{') {
        return Err(BadAnswer::NotAnObject);
    }
    Ok(cut_checked(json, bound))
}

/// Cuts an answer that [`cut_results`] already checked (a cached or shared answer, cut
/// once per WHATSAT) without checking it again.
pub fn cut_checked(json: &str, bound: usize) -> Cow<'_, str> {
    match results_cut_span(json, bound) {
        Some((start, end)) => Cow::Owned(format!("{}{}", &json[..start], &json[end..])),
        None => Cow::Borrowed(json),
    }
}

/// The byte span to remove so that the top-level `results` array keeps `bound` elements:
/// from the comma after element `bound` to the end of the last element, so that the white
/// space before the closing `]` stays.
fn results_cut_span(json: &str, bound: usize) -> Option<(usize, usize)> {
    let bytes = json.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    // Position of the `[` of the top-level `results` array, once found.
    let mut in_results = false;
    let mut elements = 1usize;
    let mut cut_start = None;
    let mut last_end = 0usize;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let start = i + 1;
                i = string_end(bytes, start)?;
                if depth == 1 && !in_results && &json[start..i] == "results" {
                    let colon = skip_ws(bytes, i + 1);
                    if bytes.get(colon) == Some(&b':') {
                        let open = skip_ws(bytes, colon + 1);
                        if bytes.get(open) == Some(&b'[') {
                            in_results = true;
                            depth += 1;
                            i = open;
                        }
                    }
                }
                last_end = i + 1;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                if in_results && depth == 2 {
                    return cut_start.map(|s| (s, last_end));
                }
                depth = depth.checked_sub(1)?;
                last_end = i + 1;
            }
            b',' if in_results && depth == 2 => {
                if elements == bound {
                    cut_start = Some(i);
                }
                elements += 1;
            }
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ => last_end = i + 1,
        }
        i += 1;
    }
    None
}

/// The index of the `"` that closes a string whose first byte is at `start`.
fn string_end(bytes: &[u8], mut i: usize) -> Option<usize> {
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while matches!(bytes.get(i), Some(b' ' | b'\t' | b'\r' | b'\n')) {
        i += 1;
    }
    i
}

/// The `status` of an answer in the legacy shape (`OK`, `ZERO_RESULTS`, `REQUEST_DENIED`,
/// ...), if it has one.
pub fn status(json: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Status<'a> {
        #[serde(borrow)]
        status: Option<Cow<'a, str>>,
    }
    let Status { status } = serde_json::from_str::<Status<'_>>(json).ok()?;
    status.map(Cow::into_owned)
}

/// Whether an answer with `status` is worth keeping for reuse: only a real answer (`OK` or
/// `ZERO_RESULTS`), never an error, which may be gone on the next call.
pub fn is_reusable(status: Option<&str>) -> bool {
    matches!(status, Some("OK" | "ZERO_RESULTS"))
}

/// An answer in the legacy API's error shape: no results, a status and a message.
pub fn error_answer(status: &str, message: &str) -> String {
    // Serialising a string cannot fail; the fallback only keeps this free of `unwrap`.
    let message = serde_json::to_string(message).unwrap_or_else(|_| "\"\"".to_owned());
    let status = serde_json::to_string(status).unwrap_or_else(|_| "\"\"".to_owned());
    format!(
        "{{\n   \"error_message\" : {message},\n   \"html_attributions\" : [],\n   \
         \"results\" : [],\n   \"status\" : {status}\n}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE: &str = "{\n   \"html_attributions\" : [],\n\n   \"results\" : [\n      {\n         \"name\" : \"a, [b]\"\n      },\n      {\n         \"name\" : \"c\\\"]\"\n      },\n      {\n         \"name\" : \"d\"\n      }\n   ],\n   \"status\" : \"OK\"\n}\n";

    fn names(json: &str) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn results_are_cut_to_the_bound_keeping_the_layout() {
        let one = cut_results(THREE, 1).unwrap();
        assert_eq!(
            one,
            "{\n   \"html_attributions\" : [],\n\n   \"results\" : [\n      {\n         \"name\" : \"a, [b]\"\n      }\n   ],\n   \"status\" : \"OK\"\n}\n"
        );
        assert_eq!(names(&cut_results(THREE, 2).unwrap()), ["a, [b]", "c\"]"]);
        assert_eq!(cut_results(THREE, 3).unwrap(), THREE);
        assert_eq!(cut_results(THREE, 20).unwrap(), THREE);
    }

    #[test]
    fn a_nested_results_key_is_not_cut() {
        let json = r#"{"inner": {"results": [1, 2, 3]}, "results": [4, 5, 6]}"#;
        assert_eq!(
            cut_results(json, 1).unwrap(),
            r#"{"inner": {"results": [1, 2, 3]}, "results": [4]}"#
        );
    }

    #[test]
    fn key_order_is_kept() {
        let json = r#"{"status": "OK", "results": [1, 2], "html_attributions": []}"#;
        assert_eq!(
            cut_results(json, 1).unwrap(),
            r#"{"status": "OK", "results": [1], "html_attributions": []}"#
        );
    }

    #[test]
    fn the_fixture_of_twenty_results_cuts_to_five() {
        let fixture = include_str!("../tests/fixtures/places/legacy_ok.json");
        let cut = cut_results(fixture, 5).unwrap();
        assert_eq!(names(&cut), names(fixture)[..5]);
        let full: serde_json::Value = serde_json::from_str(fixture).unwrap();
        let five: serde_json::Value = serde_json::from_str(&cut).unwrap();
        assert_eq!(five["next_page_token"], full["next_page_token"]);
    }

    #[test]
    fn answers_without_results_pass_through() {
        let denied = include_str!("../tests/fixtures/places/legacy_request_denied.json");
        assert_eq!(cut_results(denied, 5).unwrap(), denied);
    }

    #[test]
    fn bodies_that_are_not_json_objects_are_refused() {
        assert_eq!(cut_results("<html>", 5), Err(BadAnswer::NotJson));
        assert_eq!(cut_results("[1, 2]", 5), Err(BadAnswer::NotAnObject));
    }

    #[test]
    fn only_real_answers_are_reusable() {
        let reusable = |json: &str| is_reusable(status(json).as_deref());
        assert!(reusable(THREE));
        assert!(reusable(include_str!(
            "../tests/fixtures/places/legacy_zero_results.json"
        )));
        assert!(!reusable(include_str!(
            "../tests/fixtures/places/legacy_request_denied.json"
        )));
        assert!(!reusable(&error_answer(UNKNOWN_ERROR, "x")));
        assert!(!reusable("{}"));
        assert_eq!(
            status(&error_answer(UNKNOWN_ERROR, "x")).as_deref(),
            Some(UNKNOWN_ERROR)
        );
    }

    #[test]
    fn error_answer_has_the_legacy_error_shape() {
        let json = error_answer(UNKNOWN_ERROR, "timed out \"here\"");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["status"], "UNKNOWN_ERROR");
        assert_eq!(v["error_message"], "timed out \"here\"");
        assert_eq!(v["results"], serde_json::json!([]));
        assert_eq!(v["html_attributions"], serde_json::json!([]));
    }
}
