//! How an endpoint authenticates its caller: an HMAC-SHA256 signature of
//! the exact body, a shared token (bearer, a raw header, basic auth), or a
//! secret path segment.
//!
//! Every comparison is constant-time, and secrets live in [`Secret`], which
//! prints as `***`: a failure never says which part was wrong, and nothing
//! here ever logs or echoes a value.

use axum::http::HeaderMap;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use toml_span::Value;

use super::config::{resolve_secret, SecretUnavailable};
use crate::topology::diag::Diags;
use crate::topology::kafka::{Secret, SecretRef};
use crate::topology::reader::TableReader;

/// GitHub's signature header, and the prefix before its hex digest.
const GITHUB_SIGNATURE: &str = "x-hub-signature-256";
const GITHUB_PREFIX: &str = "sha256=";

/// An endpoint's `auth` table, secrets by reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthConfig {
    /// `type = "none"`: no authentication, said outright.
    None,
    /// `type = "hmac"`: a hex HMAC-SHA256 of the body in `header`, after `prefix`.
    Hmac {
        secret: SecretRef,
        header: String,
        prefix: String,
    },
    /// `type = "bearer"`: `Authorization: Bearer TOKEN`.
    Bearer { token: SecretRef },
    /// `type = "header"`: a header whose whole value is the token (Harbor's `Authorization`).
    Header { header: String, token: SecretRef },
    /// `type = "basic"`: HTTP basic auth.
    Basic {
        username: String,
        password: SecretRef,
    },
    /// `type = "path"`: `/hooks/NAME/SECRET`.
    Path { secret: SecretRef },
}

const AUTH_TYPES: &str = "none, hmac, bearer, header, basic, path";

/// Reads an endpoint's `auth = { type = "...", ... }`.
pub(super) fn read_auth(diags: &Diags<'_>, path: String, value: Value<'_>) -> Option<AuthConfig> {
    let mut t = TableReader::new(diags, value, path)?;
    let kind = t.required_string("type")?;
    let secret = |t: &mut TableReader<'_, '_, '_>, key: &'static str| {
        let found = t.take(key);
        if found.is_none() {
            t.missing(key);
        }
        found.and_then(|v| SecretRef::read(diags, t.key_path(key), v))
    };
    let auth = match kind.value.as_str() {
        "none" => Some(AuthConfig::None),
        "hmac" => {
            let header = t.string("header").map(|h| h.value.to_ascii_lowercase());
            // GitHub's prefix goes with GitHub's header; a header of one's own has none unless said.
            let prefix =
                t.string("prefix")
                    .map(|p| p.value)
                    .unwrap_or_else(|| match header.as_deref() {
                        None | Some(GITHUB_SIGNATURE) => GITHUB_PREFIX.to_owned(),
                        Some(_) => String::new(),
                    });
            secret(&mut t, "secret").map(|secret| AuthConfig::Hmac {
                secret,
                header: header.unwrap_or_else(|| GITHUB_SIGNATURE.to_owned()),
                prefix,
            })
        }
        "bearer" => secret(&mut t, "token").map(|token| AuthConfig::Bearer { token }),
        "header" => {
            let header = t.string("header").map_or_else(
                || "authorization".to_owned(),
                |h| h.value.to_ascii_lowercase(),
            );
            secret(&mut t, "token").map(|token| AuthConfig::Header { header, token })
        }
        "basic" => {
            let username = t.required_string("username");
            let password = secret(&mut t, "password");
            match (username, password) {
                (Some(u), Some(password)) => Some(AuthConfig::Basic {
                    username: u.value,
                    password,
                }),
                _ => None,
            }
        }
        "path" => secret(&mut t, "secret").map(|secret| AuthConfig::Path { secret }),
        other => {
            diags.error(
                kind.pos,
                t.key_path("type"),
                format!("unknown auth type `{other}`; expected one of: {AUTH_TYPES}"),
            );
            None
        }
    };
    t.finish();
    auth
}

/// An endpoint's authentication with its secret read.
#[derive(Debug, Clone)]
pub enum Auth {
    None,
    Hmac {
        key: Secret,
        header: String,
        prefix: String,
    },
    /// The exact value `header` must carry (`Bearer TOKEN`, or Harbor's raw token).
    Token {
        header: String,
        expected: Secret,
    },
    /// `username:password`, as the basic credentials decode to.
    Basic {
        expected: Secret,
    },
    Path {
        secret: Secret,
    },
}

/// Authentication failed. Deliberately carries nothing: the answer is the
/// same whatever was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied;

impl Auth {
    /// Reads the endpoint's secret from where it is kept.
    pub fn resolve(endpoint: &str, config: &AuthConfig) -> Result<Auth, SecretUnavailable> {
        let read = |r: &SecretRef| resolve_secret(endpoint, r);
        Ok(match config {
            AuthConfig::None => Auth::None,
            AuthConfig::Hmac {
                secret,
                header,
                prefix,
            } => Auth::Hmac {
                key: read(secret)?,
                header: header.clone(),
                prefix: prefix.clone(),
            },
            AuthConfig::Bearer { token } => Auth::Token {
                header: "authorization".into(),
                expected: Secret::new(format!("Bearer {}", read(token)?.expose())),
            },
            AuthConfig::Header { header, token } => Auth::Token {
                header: header.clone(),
                expected: read(token)?,
            },
            AuthConfig::Basic { username, password } => Auth::Basic {
                expected: Secret::new(format!("{username}:{}", read(password)?.expose())),
            },
            AuthConfig::Path { secret } => Auth::Path {
                secret: read(secret)?,
            },
        })
    }

    /// Whether the endpoint takes its secret in the path (`/hooks/NAME/SECRET`).
    pub fn uses_path(&self) -> bool {
        matches!(self, Auth::Path { .. })
    }

    /// What can be checked before the body is read: everything but a signature.
    pub fn check_request(
        &self,
        headers: &HeaderMap,
        path_secret: Option<&str>,
    ) -> Result<(), Denied> {
        match self {
            Auth::None | Auth::Hmac { .. } => Ok(()),
            Auth::Token { header, expected } => {
                let got = headers.get(header.as_str()).map(|v| v.as_bytes());
                verdict(got.is_some_and(|g| same(g, expected.expose().as_bytes())))
            }
            Auth::Basic { expected } => {
                let got = headers
                    .get("authorization")
                    .and_then(|v| basic_credentials(v.as_bytes()));
                verdict(got.is_some_and(|g| same(&g, expected.expose().as_bytes())))
            }
            Auth::Path { secret } => {
                verdict(path_secret.is_some_and(|s| same(s.as_bytes(), secret.expose().as_bytes())))
            }
        }
    }

    /// The signature over the exact body, for HMAC endpoints.
    pub fn check_body(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), Denied> {
        let Auth::Hmac {
            key,
            header,
            prefix,
        } = self
        else {
            return Ok(());
        };
        let signature = headers
            .get(header.as_str())
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().strip_prefix(prefix.as_str()))
            .and_then(decode_hex);
        let Some(signature) = signature else {
            return Err(Denied);
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(key.expose().as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(body);
        // `verify_slice` compares in constant time.
        verdict(mac.verify_slice(&signature).is_ok())
    }
}

fn verdict(ok: bool) -> Result<(), Denied> {
    if ok {
        Ok(())
    } else {
        Err(Denied)
    }
}

/// Constant-time equality that does not even leak the length: both sides are
/// hashed to 32 bytes first, and the digests compared with `subtle`.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    let (da, db) = (Sha256::digest(a), Sha256::digest(b));
    da.as_slice().ct_eq(db.as_slice()).into()
}

/// The `user:password` of an `Authorization: Basic ...` value.
fn basic_credentials(value: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(value).ok()?;
    let (scheme, encoded) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
