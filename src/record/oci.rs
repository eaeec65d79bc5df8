//! Validation of image references, following the grammar of the
//! distribution/reference package that registries and container runtimes share.
//!
//! A value is checked here before it becomes part of a record, so nothing
//! downstream (intents, and later the committer's YAML edits) ever sees a
//! reference that a registry would refuse.

//! The checks are written out by hand rather than as regexes: they run for
//! every record, and the tests hold them to the grammar's regexes.

/// Longest repository name a registry accepts.
pub const MAX_REPOSITORY_LEN: usize = 255;

// The grammar (distribution/reference's regexp.go):
//   domain-component := [a-zA-Z0-9] | [a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]
//   domain           := (domain-component ("." domain-component)* | "[" ipv6 "]") [":" port]
//   path-component   := [a-z0-9]+ (separator [a-z0-9]+)*,  separator := [_.] | "__" | "-"+
//   name             := [domain "/"] path-component ("/" path-component)*

/// Whether `f` holds for every byte. Without an early exit, so that the
/// compiler checks many bytes per instruction: these checks run on every
/// field of every record, and the strings that fail are rare.
fn every_byte(b: &[u8], f: impl Fn(u8) -> bool) -> bool {
    b.iter().fold(true, |ok, &x| ok & f(x))
}

fn is_path_component(b: &[u8]) -> bool {
    let alnum = |x: u8| x.is_ascii_lowercase() | x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    // The common shape (`svc-01`, `team-a`): any run of `-` is a separator.
    if every_byte(b, |x| alnum(x) | (x == b'-')) {
        return true;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &b[start..i];
        let ok = matches!(sep, b"." | b"_" | b"__") || sep.iter().all(|&x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_domain_component(b: &[u8]) -> bool {
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && every_byte(b, |x| x.is_ascii_alphanumeric() | (x == b'-'))
}

/// The parts of `b` between the bytes equal to `sep`. Not `str::split`:
/// its searcher costs more to set up than these short names take to scan
/// (a third of the repository check's instructions on the releases flood).
fn parts(b: &[u8], sep: u8) -> impl Iterator<Item = &[u8]> {
    b.split(move |&x| x == sep)
}

fn is_domain(d: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = d.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&x| x == b']') else {
            return false;
        };
        let ipv6 = &rest[..end];
        if ipv6.is_empty() || !ipv6.iter().all(|&x| x.is_ascii_hexdigit() || x == b':') {
            return false;
        }
        (&b""[..], &rest[end + 1..])
    } else {
        match d.iter().position(|&x| x == b':') {
            Some(i) => (&d[..i], &d[i..]),
            None => (d, &b""[..]),
        }
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(b":")
            .is_some_and(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit));
    let host_ok = d.starts_with(b"[") || parts(host, b'.').all(is_domain_component);
    port_ok && host_ok
}

fn is_repository(name: &str) -> bool {
    let b = name.as_bytes();
    match b.iter().position(|&x| x == b'/') {
        None => is_path_component(b),
        Some(i) => {
            let (first, rest) = (&b[..i], &b[i + 1..]);
            parts(rest, b'/').all(is_path_component)
                && (is_path_component(first) || is_domain(first))
        }
    }
}

/// Checks a repository name such as `registry.example.com:5000/team/app`.
pub fn check_repository(name: &str) -> Result<(), String> {
    if name.len() > MAX_REPOSITORY_LEN {
        return Err(format!(
            "is {} characters long; at most {MAX_REPOSITORY_LEN} are allowed",
            name.len()
        ));
    }
    if is_repository(name) {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not an OCI repository name (lowercase path components, optional registry host[:port])",
            printable(name)
        ))
    }
}

fn is_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    (1..=128).contains(&b.len())
        && word(b[0])
        && every_byte(b, |x| word(x) | (x == b'.') | (x == b'-'))
}

/// Checks a tag such as `v1.2.3` (`^[\w][\w.-]{0,127}$`, ASCII word characters).
pub fn check_tag(tag: &str) -> Result<(), String> {
    if is_tag(tag) {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a valid tag (^[\\w][\\w.-]{{0,127}}$)",
            printable(tag)
        ))
    }
}

fn is_digest(digest: &str) -> bool {
    let hex = |h: &str, len: usize| {
        h.len() == len
            && every_byte(h.as_bytes(), |x| {
                x.is_ascii_digit() | (b'a'..=b'f').contains(&x)
            })
    };
    match digest.split_once(':') {
        Some(("sha256", h)) => hex(h, 64),
        Some(("sha512", h)) => hex(h, 128),
        _ => false,
    }
}

/// Checks a digest: `sha256:` + 64 lowercase hex digits or `sha512:` + 128.
pub fn check_digest(digest: &str) -> Result<(), String> {
    if is_digest(digest) {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a valid digest (sha256:<64 hex> or sha512:<128 hex>, lowercase)",
            printable(digest)
        ))
    }
}

/// Whether `value` is a valid service or environment name:
/// `^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$`.
pub fn is_name(value: &str) -> bool {
    let b = value.as_bytes();
    (1..=253).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && every_byte(b, |x| {
            x.is_ascii_alphanumeric() | matches!(x, b'.' | b'_' | b'-')
        })
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
    use proptest::prelude::*;
    use regex::Regex;
    use std::sync::LazyLock;

    /// The grammar as regexes, the oracle for the hand-written checks.
    static REPOSITORY: LazyLock<Regex> = LazyLock::new(|| {
        let dc = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
        let domain = format!(r"(?:{dc}(?:\.{dc})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?");
        let path = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*";
        Regex::new(&format!(r"^(?:{domain}/)?{path}(?:/{path})*$")).unwrap()
    });
    static TAG: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$").unwrap());
    static DIGEST: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$").unwrap());
    static NAME: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$").unwrap());

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

        #[test]
        fn hand_written_checks_agree_with_the_grammar(s in "[a-zA-Z0-9._:/\\[\\]-]{0,24}") {
            prop_assert_eq!(is_repository(&s), REPOSITORY.is_match(&s), "repository {:?}", s);
            prop_assert_eq!(is_tag(&s), TAG.is_match(&s), "tag {:?}", s);
            prop_assert_eq!(is_name(&s), NAME.is_match(&s), "name {:?}", s);
        }

        #[test]
        fn path_like_strings_agree_with_the_grammar(s in "([a-z0-9]{1,3}[._-]{0,3}){1,4}(/([a-z0-9]{1,3}[._-]{0,2}){1,3}){0,3}") {
            prop_assert_eq!(is_repository(&s), REPOSITORY.is_match(&s), "repository {:?}", s);
        }

        #[test]
        fn digests_agree_with_the_grammar(alg in "sha256|sha512|sha1", hex in "[0-9a-fA-F]{60,130}") {
            let d = format!("{alg}:{hex}");
            prop_assert_eq!(is_digest(&d), DIGEST.is_match(&d), "digest {:?}", d);
        }
    }

    #[test]
    fn lengths_at_the_limits() {
        assert!(is_tag(&"a".repeat(128)) && !is_tag(&"a".repeat(129)));
        assert!(is_name(&"a".repeat(253)) && !is_name(&"a".repeat(254)));
    }

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
