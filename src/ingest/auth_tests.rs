use super::*;
use axum::http::HeaderValue;

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

fn secret(s: &str) -> Secret {
    Secret::new(s.to_owned())
}

fn github_signature(key: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

#[test]
fn hmac_checks_the_exact_body() {
    let auth = Auth::Hmac {
        key: secret("It's a Secret to Everybody"),
        header: "x-hub-signature-256".into(),
        prefix: "sha256=".into(),
    };
    // GitHub's documented example (docs: "Validating webhook deliveries").
    let h = headers(&[(
        "x-hub-signature-256",
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
    )]);
    assert_eq!(auth.check_body(&h, b"Hello, World!"), Ok(()));
    assert_eq!(
        auth.check_body(&h, b"Hello, World?"),
        Err(Denied),
        "another body"
    );
    let wrong_key = github_signature("another key", b"Hello, World!");
    let h2 = headers(&[("x-hub-signature-256", &wrong_key)]);
    assert_eq!(auth.check_body(&h2, b"Hello, World!"), Err(Denied));
    for bad in ["", "sha256=", "sha256=zz", "757107ea", "sha1=757107ea"] {
        let h = headers(&[("x-hub-signature-256", bad)]);
        assert_eq!(
            auth.check_body(&h, b"Hello, World!"),
            Err(Denied),
            "{bad:?}"
        );
    }
    assert_eq!(
        auth.check_body(&HeaderMap::new(), b"x"),
        Err(Denied),
        "no header"
    );
}

#[test]
fn a_generic_hmac_header_has_its_own_name_and_prefix() {
    let auth = Auth::Hmac {
        key: secret("k"),
        header: "x-signature".into(),
        prefix: String::new(),
    };
    let sig = github_signature("k", b"{}");
    let hex = sig.trim_start_matches("sha256=");
    assert_eq!(
        auth.check_body(&headers(&[("x-signature", hex)]), b"{}"),
        Ok(())
    );
    assert_eq!(
        auth.check_body(&headers(&[("x-signature", &sig)]), b"{}"),
        Err(Denied)
    );
}

#[test]
fn tokens_must_match_whole() {
    let bearer = Auth::resolve_token_for_tests("authorization", "Bearer s3cret");
    assert_eq!(
        bearer.check_request(&headers(&[("authorization", "Bearer s3cret")]), None),
        Ok(())
    );
    for bad in ["Bearer s3cre", "Bearer s3cret2", "bearer x", "s3cret", ""] {
        let h = headers(&[("authorization", bad)]);
        assert_eq!(bearer.check_request(&h, None), Err(Denied), "{bad:?}");
    }
    assert_eq!(bearer.check_request(&HeaderMap::new(), None), Err(Denied));
    // Harbor sends the configured value as the whole Authorization header.
    let harbor = Auth::resolve_token_for_tests("authorization", "harbor-token");
    assert_eq!(
        harbor.check_request(&headers(&[("authorization", "harbor-token")]), None),
        Ok(())
    );
    assert_eq!(
        harbor.check_request(&headers(&[("authorization", "Bearer harbor-token")]), None),
        Err(Denied)
    );
}

#[test]
fn basic_auth_takes_user_and_password_together() {
    let auth = Auth::Basic {
        expected: secret("alertmanager:pa:ss"),
    };
    let b64 = |s: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
    };
    assert_eq!(
        auth.check_request(
            &headers(&[("authorization", &b64("alertmanager:pa:ss"))]),
            None
        ),
        Ok(())
    );
    for bad in ["alertmanager:pa", "other:pa:ss", "alertmanager", ""] {
        let h = headers(&[("authorization", &b64(bad))]);
        assert_eq!(auth.check_request(&h, None), Err(Denied), "{bad:?}");
    }
    let h = headers(&[("authorization", "Basic not-base64!")]);
    assert_eq!(auth.check_request(&h, None), Err(Denied));
}

#[test]
fn a_path_secret_must_be_given_and_right() {
    let auth = Auth::Path {
        secret: secret("abc123"),
    };
    assert_eq!(
        auth.check_request(&HeaderMap::new(), Some("abc123")),
        Ok(())
    );
    assert_eq!(
        auth.check_request(&HeaderMap::new(), Some("abc12")),
        Err(Denied)
    );
    assert_eq!(auth.check_request(&HeaderMap::new(), None), Err(Denied));
}

#[test]
fn the_comparison_is_constant_time_over_digests() {
    assert!(same(b"abc", b"abc"));
    assert!(!same(b"abc", b"abd"));
    assert!(!same(b"abc", b"abcd"), "lengths differ");
    assert!(!same(b"", b"a"));
}

#[test]
fn secrets_never_show_in_debug_output() {
    std::env::set_var("SLUICE_TEST_AUTH_TOKEN", "do-not-print-me");
    let config = AuthConfig::Bearer {
        token: SecretRef::Env("SLUICE_TEST_AUTH_TOKEN".into()),
    };
    let auth = Auth::resolve("e", &config).unwrap();
    let shown = format!("{auth:?} {auth:#?}");
    assert!(!shown.contains("do-not-print-me"), "{shown}");
    let missing = AuthConfig::Bearer {
        token: SecretRef::Env("SLUICE_TEST_AUTH_UNSET".into()),
    };
    let err = Auth::resolve("e", &missing).unwrap_err().to_string();
    assert!(err.contains("SLUICE_TEST_AUTH_UNSET is not set"), "{err}");
}

impl Auth {
    fn resolve_token_for_tests(header: &str, expected: &str) -> Auth {
        Auth::Token {
            header: header.into(),
            expected: secret(expected),
        }
    }
}
