//! The chunk and manifest HTTP answers, one implementation for every server of artifacts: a
//! region's nodes (from the store) and the rack relays (from their cache or upstream).
//!
//! `GET /v1/chunks/{digest}` answers a chunk held whole: 200 with its bytes, or for a single
//! `Range` 206 with that range and `Content-Range`, or 416 if the range cannot be satisfied.
//! `GET /v1/manifests/{digest}` answers the manifest as JSON. A digest in a path is
//! `sha256:<hex>` or the bare hex, lower case ([`Digest::parse_either`]).

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::{parse_range, Digest, Manifest};

/// A refusal: a status and a one-line reason (an answer, once `into_response`d).
pub type Refusal = (StatusCode, String);

pub fn refusal(status: StatusCode, msg: impl Into<String>) -> Refusal {
    (status, format!("{}\n", msg.into()))
}

/// A plain-text answer, one line.
pub fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    refusal(status, msg).into_response()
}

/// The digest a request's path names, or the 400 that says why it names none.
pub fn path_digest(raw: &str) -> Result<Digest, Refusal> {
    Digest::parse_either(raw).map_err(|e| refusal(StatusCode::BAD_REQUEST, e.to_string()))
}

/// A manifest as JSON.
pub fn manifest_answer(manifest: &Manifest) -> Response {
    match serde_json::to_vec(manifest) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The answer to a chunk request for `data`, the whole chunk: `body` makes the response body
/// from the bytes to send (a relay paces them within its NIC).
pub fn chunk_answer(
    data: Bytes,
    headers: &HeaderMap,
    body: impl FnOnce(Bytes) -> Body,
) -> Response {
    let len = data.len() as u64;
    let (status, part, range) = match headers.get(header::RANGE) {
        None => (StatusCode::OK, data, None),
        Some(r) => match r.to_str().ok().and_then(|r| parse_range(r, len)) {
            Some((s, e)) => (
                StatusCode::PARTIAL_CONTENT,
                data.slice(s as usize..e as usize),
                Some((s, e)),
            ),
            None => {
                return (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{len}"))],
                    "unsatisfiable range\n",
                )
                    .into_response()
            }
        },
    };
    let mut resp = body(part).into_response();
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some((s, e)) = range {
        if let Ok(v) = format!("bytes {s}-{}/{len}", e - 1).parse() {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_range(r: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, r.parse().expect("a header value"));
        h
    }

    #[test]
    fn a_chunk_is_answered_whole_in_a_range_or_refused() {
        let data = Bytes::from_static(b"0123456789");
        let whole = chunk_answer(data.clone(), &HeaderMap::new(), Body::from);
        assert_eq!(whole.status(), StatusCode::OK);
        assert_eq!(whole.headers()[header::ACCEPT_RANGES], "bytes");
        assert!(whole.headers().get(header::CONTENT_RANGE).is_none());

        let mut sent = Bytes::new();
        let part = chunk_answer(data.clone(), &with_range("bytes=2-4"), |b| {
            sent = b.clone();
            Body::from(b)
        });
        assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(part.headers()[header::CONTENT_RANGE], "bytes 2-4/10");
        assert_eq!(&sent[..], b"234");

        let refused = chunk_answer(data, &with_range("bytes=20-"), Body::from);
        assert_eq!(refused.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(refused.headers()[header::CONTENT_RANGE], "bytes */10");
    }

    #[test]
    fn a_path_that_names_no_digest_is_a_bad_request() {
        assert!(path_digest(&"ab".repeat(32)).is_ok());
        let (status, _) = path_digest("../../etc/passwd").expect_err("not a digest");
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(path_digest(&"AB".repeat(32)).is_err());
    }
}
