//! AIP-158 pagination: page sizes with a default and a cap, and opaque page tokens that carry
//! the position and a fingerprint of the request, so a token is refused with a clear error if
//! it is replayed against a different query or filter.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Page size when the caller sends 0.
pub const DEFAULT_PAGE_SIZE: i64 = 50;
/// Largest page size accepted.
pub const MAX_PAGE_SIZE: i64 = 1000;

/// Validates a page size: 0 means the default; negative or above the cap is refused.
pub fn page_size(requested: i32) -> Result<i64> {
    match i64::from(requested) {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n < 0 => Err(Error::invalid("page_size", "must not be negative")),
        n if n > MAX_PAGE_SIZE => {
            Err(Error::invalid("page_size", format!("must be at most {MAX_PAGE_SIZE}, got {n}")))
        }
        n => Ok(n),
    }
}

#[derive(Serialize, Deserialize)]
struct Token<P> {
    /// Fingerprint of the request parts that must not change between pages.
    f: String,
    /// Position after the last item returned.
    p: P,
}

/// Fingerprint of the parts of a request that must stay the same across pages.
pub fn request_fingerprint(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..8])
}

/// Encodes a page token.
pub fn encode<P: Serialize>(fingerprint: &str, position: &P) -> String {
    let json =
        serde_json::to_vec(&Token { f: fingerprint.to_string(), p: position }).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

/// Decodes a page token; `None` for the first page.
pub fn decode<P: DeserializeOwned>(token: &str, fingerprint: &str) -> Result<Option<P>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Error::invalid("page_token", "is not a token returned by this method");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let t: Token<P> = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if t.f != fingerprint {
        return Err(Error::invalid(
            "page_token",
            "was issued for a different query or filter; send the same query and filter as the first page",
        ));
    }
    Ok(Some(t.p))
}

/// Cuts `items`, fetched with a limit of `size + 1`, to one page, and returns the token of the
/// next page (empty on the last page), positioned after the last item kept.
pub fn finish_page<T, P: Serialize>(
    items: &mut Vec<T>,
    size: i64,
    fingerprint: &str,
    position: impl Fn(&T) -> P,
) -> String {
    let size = usize::try_from(size).unwrap_or(0);
    if items.len() <= size {
        return String::new();
    }
    items.truncate(size);
    items.last().map(|last| encode(fingerprint, &position(last))).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_defaults_and_caps() {
        assert_eq!(page_size(0).expect("ok"), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(10).expect("ok"), 10);
        assert!(page_size(1001).is_err());
        assert!(page_size(-1).is_err());
    }

    #[test]
    fn tokens_round_trip_and_refuse_other_requests() {
        let f = request_fingerprint(&["nationality = \"FR\""]);
        let t = encode(&f, &(3_i64, "abc".to_string()));
        let p: Option<(i64, String)> = decode(&t, &f).expect("ok");
        assert_eq!(p, Some((3, "abc".into())));
        let other = request_fingerprint(&["nationality = \"DE\""]);
        assert!(decode::<(i64, String)>(&t, &other).is_err());
        assert!(decode::<(i64, String)>("garbage!", &f).is_err());
    }
}
