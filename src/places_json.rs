//! The places API's answer format (legacy Nearby Search JSON): an answer read once
//! ([`Page`]), cut to each WHATSAT's bound, and the error answers made here.
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

/// A whole answer in the legacy shape, read once as it came: checked to be a JSON object,
/// its status found, and where its top-level `results` array may be cut noted, so that
/// cutting it to each WHATSAT's bound (a cached answer serves many) reads it no more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    json: String,
    /// Where the status's text is in `json`, if the answer has one.
    status: Option<std::ops::Range<usize>>,
    /// Where the elements of `results` may be cut, if the answer has that array.
    results: Option<Cuts>,
}

/// The cutting points of a `results` array.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cuts {
    /// The comma after each element but the last: cutting to `k` elements removes from
    /// the `k`-th comma...
    commas: Vec<usize>,
    /// ...to the end of the last element, so that the white space before `]` stays.
    last_end: usize,
}

impl Page {
    /// Reads an answer: it must be a JSON object.
    pub fn read(json: String) -> Result<Page, BadAnswer> {
        // Checked without building a tree: this runs on every call, on bodies of ~40 KB.
        if serde_json::from_str::<serde::de::IgnoredAny>(&json).is_err() {
            return Err(BadAnswer::NotJson);
        }
        if !json.trim_start().starts_with('{') {
            return Err(BadAnswer::NotAnObject);
        }
        Ok(Page::scanned(json))
    }

    /// An answer known to be a JSON object, scanned for its status and results.
    fn scanned(json: String) -> Page {
        let (status, results) = scan(&json);
        Page {
            json,
            status,
            results,
        }
    }

    /// The answer's status (`OK`, `ZERO_RESULTS`, `REQUEST_DENIED`, ...), if it has one.
    pub fn status(&self) -> Option<Cow<'_, str>> {
        let raw = self.json.get(self.status.clone()?)?;
        if !raw.contains('\\') {
            return Some(Cow::Borrowed(raw));
        }
        // Escaped (no API does that to a status, but it is valid JSON): serde reads it.
        serde_json::from_str(&format!("\"{raw}\""))
            .ok()
            .map(Cow::Owned)
    }

    /// The answer with its `results` cut to at most `bound` elements, every other byte as
    /// it came.
    pub fn cut(&self, bound: usize) -> Cow<'_, str> {
        match &self.results {
            Some(Cuts { commas, last_end }) if bound >= 1 && bound <= commas.len() => {
                let json = &self.json;
                Cow::Owned(format!(
                    "{}{}",
                    &json[..commas[bound - 1]],
                    &json[*last_end..]
                ))
            }
            _ => Cow::Borrowed(&self.json),
        }
    }

    /// The whole answer.
    pub fn text(&self) -> &str {
        &self.json
    }
}

/// Where, in `json` (a JSON object), the top-level `status` string's text is, and where
/// the top-level `results` array may be cut: one pass over the structure, strings skipped
/// a vector at a time.
fn scan(json: &str) -> (Option<std::ops::Range<usize>>, Option<Cuts>) {
    let bytes = json.as_bytes();
    let (mut status, mut results) = (None, None);
    let mut depth = 0usize;
    // Inside the top-level `results` array: its elements are at depth 2.
    let mut in_results = false;
    let mut commas = Vec::new();
    // The end of the last token that is not white space.
    let mut last_end = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let start = i + 1;
                let Some(end) = string_end(bytes, start) else {
                    break;
                };
                i = end;
                // A top-level key: a string followed by a colon (values are followed by
                // `,` or `}`).
                let colon = skip_ws(bytes, end + 1);
                if depth == 1 && bytes.get(colon) == Some(&b':') {
                    let open = skip_ws(bytes, colon + 1);
                    match (&json[start..end], bytes.get(open)) {
                        ("results", Some(b'[')) if results.is_none() && !in_results => {
                            in_results = true;
                            depth += 1;
                            i = open;
                        }
                        ("status", Some(b'"')) => {
                            if let Some(value_end) = string_end(bytes, open + 1) {
                                status = Some(open + 1..value_end);
                                i = value_end;
                            }
                        }
                        _ => {}
                    }
                }
                last_end = i + 1;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                if in_results && depth == 2 {
                    in_results = false;
                    results = Some(Cuts {
                        commas: std::mem::take(&mut commas),
                        last_end,
                    });
                }
                depth = depth.saturating_sub(1);
                last_end = i + 1;
            }
            b',' if in_results && depth == 2 => commas.push(i),
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ => last_end = i + 1,
        }
        i += 1;
    }
    (status, results)
}

/// The index of the `"` that closes a string whose first byte is at `start`. Most of an
/// answer's bytes are inside strings, so they are skipped a vector at a time (`memchr2`).
fn string_end(bytes: &[u8], mut i: usize) -> Option<usize> {
    loop {
        i += memchr::memchr2(b'"', b'\\', bytes.get(i..)?)?;
        if bytes.get(i) == Some(&b'"') {
            return Some(i);
        }
        // An escape: the byte after the backslash is never the string's end.
        i += 2;
    }
}

fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while matches!(bytes.get(i), Some(b' ' | b'\t' | b'\r' | b'\n')) {
        i += 1;
    }
    i
}

/// Whether an answer with `status` is worth keeping for reuse: only a real answer (`OK` or
/// `ZERO_RESULTS`), never an error, which may be gone on the next call.
pub fn is_reusable(status: Option<&str>) -> bool {
    matches!(status, Some("OK" | "ZERO_RESULTS"))
}

/// An answer in the legacy API's error shape, as a [`Page`].
pub fn error_page(status: &str, message: &str) -> Page {
    // Made here as JSON: nothing to check.
    Page::scanned(error_answer(status, message))
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

    /// `json` read as a page and cut to `bound`.
    fn cut_results(json: &str, bound: usize) -> Result<String, BadAnswer> {
        Page::read(json.to_owned()).map(|page| page.cut(bound).into_owned())
    }

    /// The status of `json`, read as a page.
    fn status(json: &str) -> Option<String> {
        Page::read(json.to_owned())
            .ok()?
            .status()
            .map(Cow::into_owned)
    }

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
        let error = error_page(UNKNOWN_ERROR, "a \"status\" : \"OK\" here");
        assert_eq!(error.status().as_deref(), Some(UNKNOWN_ERROR));
        assert_eq!(error.cut(1), error.text());
    }

    #[test]
    fn the_status_is_the_top_level_ones_only() {
        let nested = r#"{"results": [{"status": "CLOSED", "x": "status"}], "status": "OK"}"#;
        assert_eq!(status(nested).as_deref(), Some("OK"));
        let inner_only = r#"{"results": [{"status": "CLOSED"}], "other": {"status": "X"}}"#;
        assert_eq!(status(inner_only), None);
        assert_eq!(status(r#"{"status": 5}"#), None);
        assert_eq!(status(r#"{"status" : "O\u004b"}"#).as_deref(), Some("OK"));
        assert_eq!(
            status(r#"{"a": "b\"status\": ", "status": "Z"}"#).as_deref(),
            Some("Z")
        );
        let fixture = include_str!("../tests/fixtures/places/legacy_ok.json");
        assert_eq!(status(fixture).as_deref(), Some("OK"));
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
