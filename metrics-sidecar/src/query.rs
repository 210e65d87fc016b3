//! The REST API's query parameters, read and checked apart from the
//! handlers, so that each endpoint's rules (which parameters it knows, what
//! each may hold) are one function of the request's URI that tests and the
//! fuzzer can call. Parsing is axum's own (`Query`, form-urlencoded), as the
//! handlers' extractor does it.

use std::collections::HashMap;

use axum::extract::Query;
use axum::http::Uri;
use thiserror::Error;

/// `/api/v1/topslow` without `?limit=`, and the pods `/api/v1/metrics` ranks.
pub const DEFAULT_TOP: usize = 5;
/// The largest `?limit=` `/api/v1/topslow` accepts.
pub const MAX_TOP: usize = 1000;

/// A query the endpoint refuses (400), with the message the client gets.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QueryError {
    #[error("{0}")]
    Malformed(String),
    #[error("unknown query parameter(s) {unknown}; expected {expected}")]
    Unknown { unknown: String, expected: String },
    #[error("namespace must not be empty")]
    EmptyNamespace,
    #[error("limit: expected a whole number from 1 to {MAX_TOP}, found {0:?}")]
    Limit(String),
}

fn params(uri: &Uri) -> Result<HashMap<String, String>, QueryError> {
    Query::<HashMap<String, String>>::try_from_uri(uri)
        .map(|Query(q)| q)
        .map_err(|rejection| QueryError::Malformed(rejection.body_text()))
}

/// Rejects query parameters the endpoint does not know, so a typo
/// (`?namspace=`) is an error rather than a silently ignored filter.
pub fn only(query: &HashMap<String, String>, allowed: &[&str]) -> Result<(), QueryError> {
    let mut unknown: Vec<&str> = query.keys().map(String::as_str).filter(|k| !allowed.contains(k)).collect();
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort();
    let expected = if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") };
    Err(QueryError::Unknown { unknown: unknown.join(", "), expected })
}

/// `/api/v1/metrics`: no parameters.
pub fn all_metrics(uri: &Uri) -> Result<(), QueryError> {
    only(&params(uri)?, &[])
}

/// `/api/v1/metrics/{pod}`: an optional, non-empty `namespace`.
pub fn pod_metrics(uri: &Uri) -> Result<Option<String>, QueryError> {
    let mut query = params(uri)?;
    only(&query, &["namespace"])?;
    match query.remove("namespace") {
        Some(ns) if ns.is_empty() => Err(QueryError::EmptyNamespace),
        namespace => Ok(namespace),
    }
}

/// `/api/v1/topslow`: `limit`, 1 to [`MAX_TOP`], default [`DEFAULT_TOP`].
pub fn top_slow(uri: &Uri) -> Result<usize, QueryError> {
    let query = params(uri)?;
    only(&query, &["limit"])?;
    match query.get("limit") {
        None => Ok(DEFAULT_TOP),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_TOP).contains(&n) => Ok(n),
            _ => Err(QueryError::Limit(v.clone())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    #[test]
    fn each_endpoint_knows_its_parameters() {
        assert_eq!(all_metrics(&uri("/api/v1/metrics")), Ok(()));
        assert_eq!(
            all_metrics(&uri("/api/v1/metrics?namspace=x")).unwrap_err().to_string(),
            "unknown query parameter(s) namspace; expected none"
        );
        assert_eq!(pod_metrics(&uri("/api/v1/metrics/web?namespace=shop")), Ok(Some("shop".into())));
        assert_eq!(pod_metrics(&uri("/api/v1/metrics/web")), Ok(None));
        assert_eq!(pod_metrics(&uri("/api/v1/metrics/web?namespace=")), Err(QueryError::EmptyNamespace));
        assert_eq!(
            pod_metrics(&uri("/api/v1/metrics/web?b=1&a=2")).unwrap_err().to_string(),
            "unknown query parameter(s) a, b; expected namespace"
        );
    }

    #[test]
    fn the_top_limit_is_bounded() {
        assert_eq!(top_slow(&uri("/api/v1/topslow")), Ok(DEFAULT_TOP));
        assert_eq!(top_slow(&uri("/api/v1/topslow?limit=1000")), Ok(1000));
        for bad in ["0", "1001", "-1", "ten", "", "%201"] {
            let e = top_slow(&uri(&format!("/api/v1/topslow?limit={bad}"))).unwrap_err();
            assert!(matches!(e, QueryError::Limit(_)), "{bad}: {e}");
        }
        assert_eq!(
            top_slow(&uri("/api/v1/topslow?limit=x")).unwrap_err().to_string(),
            "limit: expected a whole number from 1 to 1000, found \"x\""
        );
    }

    #[test]
    fn percent_escapes_are_decoded_and_the_last_value_counts() {
        assert_eq!(pod_metrics(&uri("/api/v1/metrics/web?namespace=sh%6Fp")), Ok(Some("shop".into())));
        // Not UTF-8: decoded lossily, so it names no namespace that exists.
        assert_eq!(pod_metrics(&uri("/api/v1/metrics/web?namespace=%FF")), Ok(Some("\u{FFFD}".into())));
        assert_eq!(pod_metrics(&uri("/api/v1/metrics/web?namespace=a&namespace=b")), Ok(Some("b".into())));
    }
}
