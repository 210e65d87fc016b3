//! `Content-Encoding` of the shared bodies. Prometheus asks for gzip on
//! every scrape (`Accept-Encoding: gzip`): at 1,000 pods `/metrics` is
//! megabytes of text with long runs of repeated labels, a tenth of that
//! compressed. The compressed body is made once per tick, like the plain
//! one, so a scrape still costs a reference count, not a compression.

use std::io::Write;

use axum::body::Bytes;
use axum::http::HeaderValue;
use flate2::write::GzEncoder;
use flate2::Compression;

/// How a body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
}

impl Encoding {
    /// Gzip when the request's `Accept-Encoding` accepts it (named, or
    /// `*`, with a q-value above 0), else identity, which every client
    /// takes. An unreadable header is no offer.
    pub fn negotiate(accept_encoding: Option<&HeaderValue>) -> Encoding {
        let Some(text) = accept_encoding.and_then(|v| v.to_str().ok()) else {
            return Encoding::Identity;
        };
        let mut gzip = None;
        let mut any = None;
        for offer in text.split(',') {
            let mut parts = offer.split(';');
            let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let acceptable = parts.all(|p| quality_above_zero(p.trim()));
            match coding.as_str() {
                "gzip" | "x-gzip" => gzip = Some(acceptable),
                "*" => any = Some(acceptable),
                _ => {}
            }
        }
        if gzip.or(any) == Some(true) {
            Encoding::Gzip
        } else {
            Encoding::Identity
        }
    }

    /// The `Content-Encoding` value, if any.
    pub fn content_encoding(self) -> Option<&'static str> {
        match self {
            Encoding::Identity => None,
            Encoding::Gzip => Some("gzip"),
        }
    }

    /// `plain`, encoded.
    pub fn encode(self, plain: &Bytes) -> Bytes {
        match self {
            Encoding::Identity => plain.clone(),
            Encoding::Gzip => {
                // The fastest level: most of the gain (repeated labels) at
                // a fraction of the default level's time.
                let mut encoder = GzEncoder::new(Vec::with_capacity(plain.len() / 8), Compression::fast());
                encoder.write_all(plain).expect("writing to a Vec cannot fail");
                encoder.finish().expect("writing to a Vec cannot fail").into()
            }
        }
    }
}

/// Whether one `;`-parameter leaves the offer acceptable: `q=0` (or
/// `0.0`, `0.000`) refuses it; other parameters are not ours to judge.
fn quality_above_zero(param: &str) -> bool {
    let Some(q) = param.strip_prefix("q=").or_else(|| param.strip_prefix("Q=")) else {
        return true;
    };
    q.trim().parse::<f32>().is_ok_and(|q| q > 0.0)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use flate2::read::GzDecoder;

    use super::*;

    fn negotiate(header: &str) -> Encoding {
        Encoding::negotiate(Some(&HeaderValue::from_str(header).unwrap()))
    }

    #[test]
    fn gzip_only_when_offered_with_a_quality_above_zero() {
        assert_eq!(Encoding::negotiate(None), Encoding::Identity);
        // What Prometheus sends.
        assert_eq!(negotiate("gzip"), Encoding::Gzip);
        assert_eq!(negotiate("deflate, gzip;q=1.0, *;q=0.5"), Encoding::Gzip);
        assert_eq!(negotiate("GZIP"), Encoding::Gzip);
        assert_eq!(negotiate("br, *"), Encoding::Gzip);
        assert_eq!(negotiate("gzip;q=0"), Encoding::Identity);
        assert_eq!(negotiate("gzip;q=0.000, *"), Encoding::Identity, "a refusal by name outweighs *");
        assert_eq!(negotiate("*;q=0"), Encoding::Identity);
        assert_eq!(negotiate("identity"), Encoding::Identity);
        assert_eq!(negotiate("br, deflate"), Encoding::Identity);
        assert_eq!(negotiate("gzip;q=nonsense"), Encoding::Identity);
        assert_eq!(negotiate(""), Encoding::Identity);
    }

    #[test]
    fn gzip_decodes_to_the_plain_body() {
        let plain = Bytes::from("iogate_io_requests_total{namespace=\"shop\"} 1\n".repeat(1000));
        let packed = Encoding::Gzip.encode(&plain);
        assert!(packed.len() * 10 < plain.len(), "{} bytes from {}", packed.len(), plain.len());
        let mut back = Vec::new();
        GzDecoder::new(&packed[..]).read_to_end(&mut back).unwrap();
        assert_eq!(back, plain);
        assert_eq!(Encoding::Identity.encode(&plain), plain);
    }
}
