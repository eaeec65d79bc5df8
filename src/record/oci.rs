//! Validation of image references, following the grammar of the
//! distribution/reference package that registries and container runtimes share.
//!
//! A value is checked here before it becomes part of a record, so nothing
//! downstream (intents, and later the committer's YAML edits) ever sees a
//! reference that a registry would refuse.

use std::sync::LazyLock;

use regex::Regex;

/// Longest repository name a registry accepts.
pub const MAX_REPOSITORY_LEN: usize = 255;

// The grammar, piece by piece (distribution/reference's regexp.go):
//   domain-component := [a-zA-Z0-9] | [a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]
//   domain           := (domain-name | "[" ipv6 "]") [":" port]
//   path-component   := [a-z0-9]+ (separator [a-z0-9]+)*,  separator := [_.] | "__" | "-"+
//   name             := [domain "/"] path-component ("/" path-component)*
static REPOSITORY: LazyLock<Regex> = LazyLock::new(|| {
    let domain_component = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
    let domain_name = format!(r"{domain_component}(?:\.{domain_component})*");
    let host = format!(r"(?:{domain_name}|\[[a-fA-F0-9:]+\])");
    let domain = format!(r"{host}(?::[0-9]+)?");
    let path_component = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*";
    let name = format!(r"^(?:{domain}/)?{path_component}(?:/{path_component})*$");
    Regex::new(&name).expect("the repository grammar is a valid regex")
});

static TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$").expect("valid regex"));

static DIGEST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$").expect("valid regex")
});

/// Checks a repository name such as `registry.example.com:5000/team/app`.
pub fn check_repository(name: &str) -> Result<(), String> {
    if name.len() > MAX_REPOSITORY_LEN {
        return Err(format!(
            "is {} characters long; at most {MAX_REPOSITORY_LEN} are allowed",
            name.len()
        ));
    }
    if REPOSITORY.is_match(name) {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not an OCI repository name (lowercase path components, optional registry host[:port])",
            printable(name)
        ))
    }
}

/// Checks a tag such as `v1.2.3` (`^[\w][\w.-]{0,127}$`, ASCII word characters).
pub fn check_tag(tag: &str) -> Result<(), String> {
    if TAG.is_match(tag) {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a valid tag (^[\\w][\\w.-]{{0,127}}$)",
            printable(tag)
        ))
    }
}

/// Checks a digest: `sha256:` + 64 lowercase hex digits or `sha512:` + 128.
pub fn check_digest(digest: &str) -> Result<(), String> {
    if DIGEST.is_match(digest) {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a valid digest (sha256:<64 hex> or sha512:<128 hex>, lowercase)",
            printable(digest)
        ))
    }
}

/// Parses a full reference `repository[:tag][@digest]` into its parts, checking each.
pub fn parse_reference(reference: &str) -> Result<(&str, Option<&str>, Option<&str>), String> {
    let (name_and_tag, digest) = match reference.split_once('@') {
        Some((left, digest)) => (left, Some(digest)),
        None => (reference, None),
    };
    // A tag follows the last ':' only when no '/' comes after it; otherwise the
    // colon belongs to a registry port (`host:5000/app`).
    let (repository, tag) = match name_and_tag.rfind(':') {
        Some(i) if !name_and_tag[i..].contains('/') => {
            (&name_and_tag[..i], Some(&name_and_tag[i + 1..]))
        }
        _ => (name_and_tag, None),
    };
    check_repository(repository)?;
    if let Some(tag) = tag {
        check_tag(tag)?;
    }
    if let Some(digest) = digest {
        check_digest(digest)?;
    }
    if tag.is_none() && digest.is_none() {
        return Err(format!(
            "`{}` has neither a tag nor a digest",
            printable(reference)
        ));
    }
    Ok((repository, tag, digest))
}

/// Builds the reference `repository[:tag][@digest]`.
pub fn reference(repository: &str, tag: Option<&str>, digest: Option<&str>) -> String {
    let mut out = String::with_capacity(
        repository.len() + tag.map_or(0, |t| t.len() + 1) + digest.map_or(0, |d| d.len() + 1),
    );
    out.push_str(repository);
    if let Some(tag) = tag {
        out.push(':');
        out.push_str(tag);
    }
    if let Some(digest) = digest {
        out.push('@');
        out.push_str(digest);
    }
    out
}

/// Shortens and escapes a value for an error message, so a hostile or huge
/// value can neither flood a log nor break a line.
pub fn printable(value: &str) -> String {
    const LIMIT: usize = 80;
    let mut out: String = value
        .chars()
        .take(LIMIT)
        .flat_map(char::escape_debug)
        .collect();
    if value.chars().count() > LIMIT {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_repository_names_registries_accept() {
        for ok in [
            "app",
            "team/app",
            "registry.example.com/team/app",
            "registry.example.com:5000/team-3/svc-0042",
            "localhost:5000/a",
            "[::1]:5000/a",
            "a__b/c.d/e--f",
            "Registry.Example.com/app",
        ] {
            assert!(check_repository(ok).is_ok(), "{ok} should be accepted");
        }
    }

    #[test]
    fn rejects_names_registries_refuse() {
        let long = "a".repeat(256);
        for bad in [
            "",
            "App",
            "team/App",
            "a/",
            "/a",
            "a//b",
            "a_-b",
            "-a",
            "a b",
            "a/b:c",
            long.as_str(),
        ] {
            assert!(check_repository(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn checks_tags_and_digests() {
        assert!(check_tag("v1.2.3").is_ok());
        assert!(check_tag("main-abc1234").is_ok());
        assert!(check_tag(&"a".repeat(128)).is_ok());
        for bad in ["", ".v1", "-v1", "v 1", "v1\n", "é", &"a".repeat(129)] {
            assert!(check_tag(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(check_digest(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(check_digest(&format!("sha512:{}", "0".repeat(128))).is_ok());
        for bad in [
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            "md5:00".into(),
        ] {
            assert!(check_digest(&bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn parses_references_with_ports_tags_and_digests() {
        let digest = format!("sha256:{}", "b".repeat(64));
        let full = format!("host:5000/team/app:v1@{digest}");
        assert_eq!(
            parse_reference(&full).unwrap(),
            ("host:5000/team/app", Some("v1"), Some(digest.as_str()))
        );
        assert_eq!(
            parse_reference("app:v2").unwrap(),
            ("app", Some("v2"), None)
        );
        assert!(
            parse_reference("host:5000/app").is_err(),
            "no tag, no digest"
        );
        assert_eq!(
            reference("a", Some("v1"), Some(&digest)),
            format!("a:v1@{digest}")
        );
    }

    #[test]
    fn printable_escapes_and_truncates() {
        assert_eq!(printable("a\nb"), "a\\nb");
        assert_eq!(printable(&"x".repeat(200)).chars().count(), 81);
    }
}
