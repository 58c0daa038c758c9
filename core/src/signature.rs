//! The `WorkOS-Signature` header: parsing, verification and signing.
//!
//! Header format: `t=<unix ms>, v1=<hex HMAC-SHA256>`. The signed string is the `t` value exactly
//! as sent, a `.`, then the raw request body bytes; the key is the secret's UTF-8 bytes as given.
//! See `../shared/reference/workos-api.md` §1.

use std::fmt;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::clock::EpochMillis;

type HmacSha256 = Hmac<Sha256>;

/// The header name, as WorkOS documents it. `http::HeaderMap` look-ups are case-insensitive.
pub const HEADER: &str = "workos-signature";
/// WorkOS SDKs default to three minutes.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(180);
/// At most this many `v1` entries are tried, so a hostile header cannot make us hash forever.
pub const MAX_SIGNATURES: usize = 8;

/// Why a request was not accepted. The receiver logs the kind; callers only ever see 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("signature header missing")]
    MissingHeader,
    #[error("signature header malformed")]
    MalformedHeader,
    #[error("signature timestamp is not a millisecond epoch")]
    BadTimestamp,
    #[error("signature timestamp outside tolerance")]
    OutsideTolerance,
    #[error("no signature matched")]
    NoMatch,
}

impl VerifyError {
    /// A short stable name for logs and metrics.
    pub fn kind(self) -> &'static str {
        match self {
            VerifyError::MissingHeader => "missing_header",
            VerifyError::MalformedHeader => "malformed_header",
            VerifyError::BadTimestamp => "bad_timestamp",
            VerifyError::OutsideTolerance => "outside_tolerance",
            VerifyError::NoMatch => "no_match",
        }
    }
}

/// Configuration problems, found at init.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("no webhook secret configured")]
    Empty,
}

/// A parsed header. `t_raw` is kept as sent because it is what was signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedHeader<'a> {
    pub t_raw: &'a str,
    pub t: EpochMillis,
    /// Candidate signatures that decoded as 32-byte hex; others can never match and are dropped.
    pub v1: Vec<[u8; 32]>,
}

/// Parse tolerantly: parts split on `,`, each trimmed, `key=value`, any order, unknown keys
/// ignored. `t` must appear exactly once and `v1` at least once.
pub fn parse_header(value: &str) -> Result<ParsedHeader<'_>, VerifyError> {
    let mut t_raw: Option<&str> = None;
    let mut saw_v1 = false;
    let mut v1 = Vec::new();
    for part in value.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let Some((key, val)) = part.split_once('=') else {
            return Err(VerifyError::MalformedHeader);
        };
        match key.trim() {
            "t" if t_raw.replace(val.trim()).is_some() => return Err(VerifyError::MalformedHeader),
            "t" => {}
            "v1" => {
                saw_v1 = true;
                let mut sig = [0u8; 32];
                if v1.len() < MAX_SIGNATURES && hex::decode_to_slice(val.trim(), &mut sig).is_ok() {
                    v1.push(sig);
                }
            }
            _ => {}
        }
    }
    let (Some(t_raw), true) = (t_raw, saw_v1) else {
        return Err(VerifyError::MalformedHeader);
    };
    if t_raw.is_empty() || !t_raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::BadTimestamp);
    }
    let t = t_raw.parse::<u64>().map_err(|_| VerifyError::BadTimestamp)?;
    Ok(ParsedHeader {
        t_raw,
        t: EpochMillis(t),
        v1,
    })
}

fn mac_for(secret: &[u8], t_raw: &str, body: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this constructor cannot fail; the fallback keeps it total.
    let mut mac = match HmacSha256::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable_hmac(),
    };
    mac.update(t_raw.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

#[cold]
fn unreachable_hmac() -> ! {
    unreachable!("HMAC-SHA256 accepts keys of any length")
}

/// Lowercase hex HMAC-SHA256 of `<t>.<body>`.
pub fn compute_signature(secret: &str, t_raw: &str, body: &[u8]) -> String {
    hex::encode(mac_for(secret.as_bytes(), t_raw, body).finalize().into_bytes())
}

/// A header value as WorkOS sends it: `t=<ms>, v1=<hex>`.
pub fn signature_header(secret: &str, t: EpochMillis, body: &[u8]) -> String {
    let t_raw = t.0.to_string();
    let sig = compute_signature(secret, &t_raw, body);
    format!("t={t_raw}, v1={sig}")
}

/// One webhook secret. Its `Debug` never shows the value.
#[derive(Clone)]
struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// Verifies signatures against one or more secrets (several while a secret is rotated).
#[derive(Clone, Debug)]
pub struct Verifier {
    secrets: Vec<Secret>,
    tolerance: Duration,
}

impl Verifier {
    /// Build from secrets, used byte for byte as given; empty strings are ignored, and at least
    /// one must remain.
    pub fn new<I, S>(secrets: I, tolerance: Duration) -> Result<Self, SecretError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let secrets: Vec<Secret> = secrets
            .into_iter()
            .map(|s| s.as_ref().as_bytes().to_vec())
            .filter(|s| !s.is_empty())
            .map(Secret)
            .collect();
        if secrets.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Verifier { secrets, tolerance })
    }

    /// Parse a comma-separated list, as `WORKOS_WEBHOOK_SECRET` holds it. Whitespace around each
    /// entry is dropped (WorkOS secrets contain none).
    pub fn from_list(list: &str, tolerance: Duration) -> Result<Self, SecretError> {
        Self::new(list.split(',').map(str::trim), tolerance)
    }

    pub fn tolerance(&self) -> Duration {
        self.tolerance
    }

    pub fn secret_count(&self) -> usize {
        self.secrets.len()
    }

    /// Verify a header value over the raw body at time `now`. Returns the signed timestamp.
    pub fn verify(&self, header: Option<&str>, body: &[u8], now: EpochMillis) -> Result<EpochMillis, VerifyError> {
        let header = header.ok_or(VerifyError::MissingHeader)?;
        let parsed = parse_header(header)?;
        if parsed.t.abs_diff(now) > self.tolerance {
            return Err(VerifyError::OutsideTolerance);
        }
        for secret in &self.secrets {
            let mac = mac_for(&secret.0, parsed.t_raw, body);
            for sig in &parsed.v1 {
                if mac.clone().verify_slice(sig).is_ok() {
                    return Ok(parsed.t);
                }
            }
        }
        Err(VerifyError::NoMatch)
    }

    /// Verify using the header map of a request (the look-up is case-insensitive).
    pub fn verify_headers(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
        now: EpochMillis,
    ) -> Result<EpochMillis, VerifyError> {
        let value = match headers.get(HEADER) {
            None => None,
            Some(v) => Some(v.to_str().map_err(|_| VerifyError::MalformedHeader)?),
        };
        self.verify(value, body, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: EpochMillis = EpochMillis(1_700_000_000_000);

    fn v(secret: &str) -> Verifier {
        Verifier::new([secret], DEFAULT_TOLERANCE).expect("secret")
    }

    // Known-answer vectors from ../shared/reference/workos-api.md §1.
    #[test]
    fn vector_sdk_suite() {
        let sig = compute_signature("secret", "1700000000000", b"body");
        assert_eq!(sig, "32850522003ebbce01a416e5d5df8ec8354a96e921cac7d0ebbaeef5732bdaea");
        let header = "t=1700000000000, v1=32850522003ebbce01a416e5d5df8ec8354a96e921cac7d0ebbaeef5732bdaea";
        assert_eq!(v("secret").verify(Some(header), b"body", T0), Ok(T0));
        // The SDK test: a clock 200 s later rejects.
        let later = T0.saturating_add(Duration::from_secs(200));
        assert_eq!(
            v("secret").verify(Some(header), b"body", later),
            Err(VerifyError::OutsideTolerance)
        );
    }

    #[test]
    fn vector_raw_hmac() {
        use hmac::Mac;
        let hm = |msg: &[u8]| {
            let mut m = HmacSha256::new_from_slice(b"test_secret").expect("key");
            m.update(msg);
            hex::encode(m.finalize().into_bytes())
        };
        assert_eq!(
            hm(b""),
            "f7f9bd47fb987337b5796fdc1fdb9ba221d0d5396814bfcaf9521f43fd8927fd"
        );
        assert_eq!(
            hm("😀".as_bytes()),
            "837da296d05c4fe31f61d5d7ead035099d9585a5bcde87de952012a78f0b0c43"
        );
    }

    #[test]
    fn vector_round_trip_input() {
        let body = br#"{"id":"evt_1","object":"event","event":"test","data":{},"created_at":"2026-01-01T00:00:00Z"}"#;
        assert_eq!(
            compute_signature("test-secret", "1735689600000", body),
            "f8629ec80b7cd60d2c5eeb5017c460577642a5219ae36a3ead31233f389c3698"
        );
    }

    #[test]
    fn vector_dsync_shaped() {
        let body = br#"{"id":"event_01HZTEST","object":"event","event":"dsync.group.user_added","data":{"directory_id":"directory_01","user":{"object":"directory_user","id":"directory_user_01"},"group":{"object":"directory_group","id":"directory_group_01"}},"created_at":"2023-11-14T22:13:20.000Z"}"#;
        assert_eq!(body.len(), 275);
        let header = "t=1700000000000, v1=279769ab57838cf7e49a16579a406938cf055b225afe56b2c1b9d491367648a8";
        assert_eq!(v("whsec_test_secret").verify(Some(header), body, T0), Ok(T0));
    }

    #[test]
    fn header_parsing_is_tolerant() {
        let sig = compute_signature("s", "1700000000000", b"x");
        for h in [
            format!("t=1700000000000, v1={sig}"),
            format!("t=1700000000000,v1={sig}"),
            format!("  v1={sig} ,   t=1700000000000  "),
            format!("t=1700000000000, v0=abc, v1={sig}, x=y"),
            format!("t=1700000000000, v1=deadbeef, v1={sig}"),
            format!("t=1700000000000, v1={}, v1={sig}", "0".repeat(64)),
        ] {
            assert_eq!(v("s").verify(Some(&h), b"x", T0), Ok(T0), "header {h:?}");
        }
    }

    #[test]
    fn malformed_headers_are_typed_errors() {
        let cases: &[(&str, VerifyError)] = &[
            ("", VerifyError::MalformedHeader),
            ("garbage", VerifyError::MalformedHeader),
            ("t=1700000000000", VerifyError::MalformedHeader),
            ("v1=abcd", VerifyError::MalformedHeader),
            ("t=1, t=2, v1=ab", VerifyError::MalformedHeader),
            ("t=, v1=ab", VerifyError::BadTimestamp),
            ("t=-5, v1=ab", VerifyError::BadTimestamp),
            ("t=1.5e12, v1=ab", VerifyError::BadTimestamp),
            ("t=99999999999999999999999, v1=ab", VerifyError::BadTimestamp),
            ("t=1700000000000, v1=zz", VerifyError::NoMatch),
            ("t=1700000000000, v1=", VerifyError::NoMatch),
        ];
        for (h, want) in cases {
            assert_eq!(v("s").verify(Some(h), b"x", T0), Err(*want), "header {h:?}");
        }
        assert_eq!(v("s").verify(None, b"x", T0), Err(VerifyError::MissingHeader));
    }

    #[test]
    fn tolerance_edges_both_ways() {
        let verifier = Verifier::new(["s"], Duration::from_secs(180)).expect("secret");
        let header = signature_header("s", T0, b"x");
        let tol = Duration::from_secs(180);
        let one = Duration::from_millis(1);
        assert!(verifier.verify(Some(&header), b"x", T0.saturating_add(tol)).is_ok());
        assert!(verifier.verify(Some(&header), b"x", T0.saturating_sub(tol)).is_ok());
        assert_eq!(
            verifier.verify(Some(&header), b"x", T0.saturating_add(tol + one)),
            Err(VerifyError::OutsideTolerance)
        );
        assert_eq!(
            verifier.verify(Some(&header), b"x", T0.saturating_sub(tol + one)),
            Err(VerifyError::OutsideTolerance)
        );
    }

    #[test]
    fn rotation_accepts_any_configured_secret() {
        let verifier = Verifier::from_list("whsec_old, whsec_new", DEFAULT_TOLERANCE).expect("secrets");
        assert_eq!(verifier.secret_count(), 2);
        for s in ["whsec_old", "whsec_new"] {
            let h = signature_header(s, T0, b"payload");
            assert_eq!(verifier.verify(Some(&h), b"payload", T0), Ok(T0));
        }
        let h = signature_header("whsec_other", T0, b"payload");
        assert_eq!(verifier.verify(Some(&h), b"payload", T0), Err(VerifyError::NoMatch));
    }

    #[test]
    fn secrets_are_not_trimmed_inside_and_empty_lists_fail() {
        assert_eq!(
            Verifier::from_list(" , ,", DEFAULT_TOLERANCE).err(),
            Some(SecretError::Empty)
        );
        assert_eq!(
            Verifier::new(Vec::<String>::new(), DEFAULT_TOLERANCE).err(),
            Some(SecretError::Empty)
        );
    }

    #[test]
    fn debug_redacts_secrets() {
        let verifier = Verifier::from_list("whsec_supersecret", DEFAULT_TOLERANCE).expect("secret");
        let dbg = format!("{verifier:?}");
        assert!(!dbg.contains("supersecret"), "{dbg}");
        assert!(dbg.contains("REDACTED"));
    }

    #[test]
    fn header_map_lookup_is_case_insensitive_and_rejects_non_ascii() {
        let verifier = v("s");
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "WorkOS-Signature",
            signature_header("s", T0, b"x").parse().expect("value"),
        );
        assert_eq!(verifier.verify_headers(&headers, b"x", T0), Ok(T0));
        let mut bad = http::HeaderMap::new();
        bad.insert(
            "workos-signature",
            http::HeaderValue::from_bytes(b"t=1\xff, v1=00").expect("value"),
        );
        assert_eq!(
            verifier.verify_headers(&bad, b"x", T0),
            Err(VerifyError::MalformedHeader)
        );
    }

    // Cross-check against the official crate (3.5.0), both ways. Its body type is `&str`.
    #[test]
    fn official_crate_accepts_ours_and_we_accept_its() {
        use workos::helpers::webhook_verification::{compute_webhook_signature, WebhookVerifier};
        let body = r#"{"id":"event_1","event":"dsync.user.created","data":{"id":"directory_user_1"},"created_at":"2026-01-01T00:00:00.000Z"}"#;
        let secret = "whsec_cross_check";
        let at = std::time::UNIX_EPOCH + Duration::from_millis(T0.0);
        let official = WebhookVerifier::new(secret).with_clock(move || at);
        // Ours -> theirs.
        let ours = signature_header(secret, T0, body.as_bytes());
        assert!(
            official.verify_payload(&ours, body).is_ok(),
            "official crate rejected our header"
        );
        // A tampered body is rejected by both.
        assert!(official
            .verify_payload(&ours, &body.replace("user_1", "user_2"))
            .is_err());
        // Theirs -> ours.
        let sig = compute_webhook_signature(secret, &T0.0.to_string(), body);
        let header = format!("t={}, v1={}", T0.0, sig);
        assert_eq!(v(secret).verify(Some(&header), body.as_bytes(), T0), Ok(T0));
    }

    proptest! {
        #[test]
        fn sign_then_verify(secret in "[ -~]{1,40}", body in proptest::collection::vec(any::<u8>(), 0..512), t in 1_000_000_000_000u64..4_000_000_000_000u64) {
            prop_assume!(!secret.is_empty());
            let verifier = Verifier::new([secret.as_str()], DEFAULT_TOLERANCE).expect("secret");
            let h = signature_header(&secret, EpochMillis(t), &body);
            prop_assert_eq!(verifier.verify(Some(&h), &body, EpochMillis(t)), Ok(EpochMillis(t)));
        }

        #[test]
        fn any_body_byte_flip_fails(body in proptest::collection::vec(any::<u8>(), 1..256), idx in any::<prop::sample::Index>(), bit in 0u8..8) {
            let h = signature_header("s", T0, &body);
            let mut tampered = body.clone();
            let i = idx.index(tampered.len());
            tampered[i] ^= 1 << bit;
            prop_assert_eq!(v("s").verify(Some(&h), &tampered, T0), Err(VerifyError::NoMatch));
        }

        #[test]
        fn any_signature_hex_change_fails(idx in 0usize..64, repl in "[0-9a-f]") {
            let sig = compute_signature("s", "1700000000000", b"x");
            let mut chars: Vec<char> = sig.chars().collect();
            let r = repl.chars().next().unwrap_or('0');
            prop_assume!(chars[idx] != r);
            chars[idx] = r;
            let h = format!("t=1700000000000, v1={}", chars.into_iter().collect::<String>());
            prop_assert_eq!(v("s").verify(Some(&h), b"x", T0), Err(VerifyError::NoMatch));
        }

        #[test]
        fn any_timestamp_change_fails(delta in 1u64..100_000) {
            let sig = compute_signature("s", "1700000000000", b"x");
            let t = 1_700_000_000_000u64 + delta;
            let h = format!("t={t}, v1={sig}");
            prop_assert_eq!(v("s").verify(Some(&h), b"x", EpochMillis(t)), Err(VerifyError::NoMatch));
        }

        #[test]
        fn arbitrary_headers_never_panic(h in ".{0,200}") {
            let _ = v("s").verify(Some(&h), b"x", T0);
        }
    }
}
