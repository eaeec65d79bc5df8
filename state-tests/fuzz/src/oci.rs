//! Small grammars checked against independent regexes: OCI references and durations.

use std::sync::LazyLock;

use regex::Regex;
use sluice::commit::edit::ImageRef;
use sluice::duration::parse_duration;
use sluice::record::oci;

/// distribution/reference's grammar as regexes (ASCII classes: the Go
/// package's `\w` is ASCII), with Sluice's digest rule (sha256 or sha512,
/// lowercase hex) and its rule that a reference carries a tag or a digest.
static REFERENCE: LazyLock<Regex> = LazyLock::new(|| {
    let dc = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
    let domain = format!(r"(?:{dc}(?:\.{dc})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?");
    let path = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*";
    let name = format!(r"(?:{domain}/)?{path}(?:/{path})*");
    let tag = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}";
    let digest = r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}";
    let re = format!(r"^(?P<name>{name})(?::(?P<tag>{tag}))?(?:@(?P<digest>{digest}))?$");
    Regex::new(&re).expect("valid regex")
});

/// `parse_reference` accepts exactly what the grammar accepts, splits it
/// where the grammar does, and its parts rebuild the input byte for byte.
pub fn oci_reference(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = oci::parse_reference(text);
    let expected = REFERENCE.captures(text).and_then(|c| {
        let part = |n| c.name(n).map(|m| m.as_str());
        let name = part("name")?;
        let some_version = part("tag").is_some() || part("digest").is_some();
        (name.len() <= oci::MAX_REPOSITORY_LEN && some_version)
            .then(|| (name, part("tag"), part("digest")))
    });
    match (&parsed, expected) {
        (Ok(parts), Some(want)) => assert_eq!(*parts, want, "{text:?} split differently"),
        (Err(_), None) => {}
        (got, want) => panic!("{text:?}: parse_reference {got:?}, the grammar {want:?}"),
    }
    let Ok((repository, tag, digest)) = parsed else {
        return;
    };
    assert_eq!(oci::reference(repository, tag, digest), text);
    let image = ImageRef::parse(text).expect("what parse_reference accepts, ImageRef accepts");
    image.validate().expect("a parsed ImageRef validates");
    assert_eq!(image.reference(), text);
}

static DURATION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(?:[0-9]+(?:ms|s|m|h|d))+$").expect("valid regex"));
static DURATION_PART: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"([0-9]+)(ms|s|m|h|d)").expect("valid regex"));

/// The milliseconds `text` means by the documented grammar, computed in
/// u128 so that overflow is seen rather than wrapped; `None` when invalid,
/// zero or larger than u64.
fn duration_by_grammar(text: &str) -> Option<u64> {
    if !DURATION.is_match(text) {
        return None;
    }
    let mut total: u128 = 0;
    for part in DURATION_PART.captures_iter(text) {
        let number: u128 = part[1].parse().ok()?;
        let scale: u128 = match &part[2] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => 86_400_000,
        };
        total = total.checked_add(number.checked_mul(scale)?)?;
    }
    u64::try_from(total).ok().filter(|&ms| ms > 0)
}

/// `parse_duration` agrees with the grammar, and what it displays parses
/// back to the same value.
pub fn duration(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse_duration(text).map(|d| d.as_ms());
    match (&parsed, duration_by_grammar(text)) {
        (Ok(got), Some(want)) => assert_eq!(*got, want, "{text:?}"),
        (Err(_), None) => {}
        (got, want) => panic!("{text:?}: parse_duration {got:?}, the grammar {want:?}"),
    }
    if let Ok(d) = parse_duration(text) {
        let shown = d.to_string();
        assert_eq!(
            parse_duration(&shown),
            Ok(d),
            "{text:?} displays as {shown:?}"
        );
    }
}
