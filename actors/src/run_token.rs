//! Run tokens: a bearer credential for one run's WebSocket, HMAC-signed over the run id and expiry
//! (the reference's format: `b64url(payload) "." b64url(HMAC-SHA256(secret, b64url(payload)))`,
//! base64url without padding, payload `{"run_id","exp","nonce","perm"}`).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Signs and checks run tokens with one secret.
#[derive(Clone)]
pub struct RunTokenSigner {
    secret: Vec<u8>,
}

// The secret must never reach a log line.
impl std::fmt::Debug for RunTokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunTokenSigner(<redacted>)")
    }
}

impl RunTokenSigner {
    /// A signer keyed by `secret`.
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self {
            secret: secret.into(),
        }
    }

    fn mac(&self, data: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("any key length");
        mac.update(data);
        mac
    }

    /// A token for `run_id` that expires at unix second `exp`.
    pub fn issue(&self, run_id: &str, exp: u64) -> String {
        let nonce = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>());
        let payload =
            serde_json::json!({"run_id": run_id, "exp": exp, "nonce": nonce, "perm": "read"});
        let body = URL_SAFE_NO_PAD.encode(payload.to_string());
        let sig = URL_SAFE_NO_PAD.encode(self.mac(body.as_bytes()).finalize().into_bytes());
        format!("{body}.{sig}")
    }

    /// Checks a token at unix second `now`; returns what it grants, or "invalid token" /
    /// "expired".
    pub fn verify(&self, token: &str, now: u64) -> Result<RunTokenClaims, &'static str> {
        let (body, sig) = token.split_once('.').ok_or("invalid token")?;
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| "invalid token")?;
        self.mac(body.as_bytes())
            .verify_slice(&sig)
            .map_err(|_| "invalid token")?;
        let payload: serde_json::Value = URL_SAFE_NO_PAD
            .decode(body)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("invalid token")?;
        let run_id = payload["run_id"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or("invalid token")?;
        let exp = payload["exp"].as_u64().ok_or("invalid token")?;
        if now > exp {
            return Err("expired");
        }
        Ok(RunTokenClaims {
            run_id: run_id.to_string(),
            exp,
        })
    }
}

/// What a valid run token grants: reading one run until `exp` (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunTokenClaims {
    pub run_id: String,
    pub exp: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_until_they_expire() {
        let s = RunTokenSigner::new("k");
        let t = s.issue("run-1", 100);
        assert_eq!(
            s.verify(&t, 100),
            Ok(RunTokenClaims {
                run_id: "run-1".into(),
                exp: 100
            })
        );
        assert_eq!(s.verify(&t, 101), Err("expired"));
        assert_eq!(
            RunTokenSigner::new("other").verify(&t, 0),
            Err("invalid token")
        );
        assert_eq!(s.verify("garbage", 0), Err("invalid token"));
    }
}
