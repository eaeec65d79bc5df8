//! Helpers the decoders share: reading fields by path with errors that name
//! the path, deriving a service or environment from a repository, and
//! telling the pushes that are not deployable images (sigstore tags).
//!
//! Payloads are read into a `serde_json::Value` tree and walked with [`At`],
//! a value together with its path (`alerts[1].labels.alertname`), so that
//! every error names the vendor's field at fault. The path is only built
//! into text when an error is reported.

use base64::alphabet::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use regex::Regex;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{DecodeError, DecodeOptions, Decoded, FieldFrom};
use crate::record::{
    oci, validate_git, validate_image, GitFields, ImageFields, InvalidRecord, Payload,
};

/// A branch deleted or created from nothing points at this "commit" (GitHub
/// and GitLab alike).
pub(super) const ZERO_COMMIT: &str = "0000000000000000000000000000000000000000";

/// The ignored type of a push whose tag is a cosign/sigstore one.
pub(super) const SIGNATURE: &str = "push:signature";

/// Whether `tag` is one cosign (sigstore) pushes beside an image:
/// `sha256-<64 hex>.sig` (a signature), `.att` (an attestation) or `.sbom`
/// (an SBOM), named after the digest of the image it is about. Such an
/// artifact is not a deployable image.
pub(super) fn is_signature_tag(tag: &str) -> bool {
    let Some((hex, suffix)) = tag
        .strip_prefix("sha256-")
        .and_then(|rest| rest.split_once('.'))
    else {
        return false;
    };
    hex.len() == 64
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
        && matches!(suffix, "sig" | "att" | "sbom")
}

/// Parses a payload's text, keeping only the object members named in
/// `keys` (at any depth): those its decoder reads. The rest is checked for
/// syntax and skipped without being built, which spares most of a webhook's
/// bulk (GitHub's run to tens of kilobytes). A syntax error is located at
/// `value`.
pub(super) fn parse(json: &str, keys: &[&str]) -> Result<Value, DecodeError> {
    parse_kept(&mut serde_json::Deserializer::from_str(json), keys)
        .map_err(|e| DecodeError::new("value", format!("not JSON: {e}")))
}

fn parse_kept<'de, R: serde_json::de::Read<'de>>(
    de: &mut serde_json::Deserializer<R>,
    keys: &[&str],
) -> Result<Value, serde_json::Error> {
    let value = Kept(keys).deserialize(&mut *de)?;
    de.end()?;
    Ok(value)
}

/// Builds a `Value` of the members named in its list.
#[derive(Clone, Copy)]
struct Kept<'k>(&'k [&'k str]);

impl<'de> DeserializeSeed<'de> for Kept<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Kept<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(Key(key)) = map.next_key()? {
            if self.0.contains(&key.as_ref()) {
                let value = map.next_value_seed(self)?;
                members.insert(key.into_owned(), value);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Value::Object(members))
    }
}

/// An object member's name, borrowed from the text unless it has escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v.to_owned())))
    }
}

/// One segment of a path.
#[derive(Debug, Clone, Copy)]
enum Seg<'p> {
    Root,
    Key(&'p str),
    Index(usize),
}

/// A JSON value and where it sits in the payload: a chain of borrowed
/// parents, so that walking allocates nothing until an error is reported.
#[derive(Debug, Clone, Copy)]
pub(super) struct At<'p, 'v> {
    pub value: &'v Value,
    parent: Option<&'p At<'p, 'v>>,
    seg: Seg<'p>,
}

impl<'p, 'v> At<'p, 'v> {
    pub fn root(value: &'v Value) -> Self {
        At {
            value,
            parent: None,
            seg: Seg::Root,
        }
    }

    /// The path as text: `value` for the root, else `a.b[2].c`.
    pub fn path(&self) -> String {
        let mut segs = Vec::new();
        let mut at = Some(self);
        while let Some(node) = at {
            segs.push(node.seg);
            at = node.parent;
        }
        let mut out = String::new();
        for seg in segs.iter().rev() {
            match seg {
                Seg::Root => {}
                Seg::Key(k) if out.is_empty() => out.push_str(k),
                Seg::Key(k) => {
                    out.push('.');
                    out.push_str(k);
                }
                Seg::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        if out.is_empty() {
            out.push_str("value");
        }
        out
    }

    /// The path of `rel` (a dotted relative path) below this value.
    pub fn path_of(&self, rel: &str) -> String {
        match self.parent {
            None => rel.to_owned(),
            Some(_) => format!("{}.{rel}", self.path()),
        }
    }

    pub fn error(&self, problem: impl Into<String>) -> DecodeError {
        DecodeError::new(self.path(), problem)
    }

    fn child<'s>(&'s self, seg: Seg<'s>, value: &'v Value) -> At<'s, 'v> {
        At {
            value,
            parent: Some(self),
            seg,
        }
    }

    /// This value as an object.
    pub fn object(&self) -> Result<&'v Map<String, Value>, DecodeError> {
        self.value
            .as_object()
            .ok_or_else(|| self.error(format!("expected an object, found {}", kind(self.value))))
    }

    /// The field `key` of this object; `None` when absent or `null`.
    pub fn get<'s>(&'s self, key: &'s str) -> Result<Option<At<'s, 'v>>, DecodeError> {
        Ok(match self.object()?.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(self.child(Seg::Key(key), v)),
        })
    }

    /// The field `key`, which must be present.
    pub fn req<'s>(&'s self, key: &'s str) -> Result<At<'s, 'v>, DecodeError> {
        self.get(key)?
            .ok_or_else(|| DecodeError::new(self.path_of(key), "missing"))
    }

    /// This value as a string.
    pub fn str(&self) -> Result<&'v str, DecodeError> {
        self.value
            .as_str()
            .ok_or_else(|| self.error(format!("expected a string, found {}", kind(self.value))))
    }

    /// The string field `key`, which must be present.
    pub fn req_str(&self, key: &str) -> Result<&'v str, DecodeError> {
        self.req(key)?.str()
    }

    /// The string field `key` that names an event type, action or kind:
    /// present and not empty, since entries that are skipped are counted
    /// under that name and an empty one would count them under no reason.
    pub fn req_name(&self, key: &str) -> Result<&'v str, DecodeError> {
        self.req(key)?.name()
    }

    /// This value as a non-empty string naming an event type.
    pub fn name(&self) -> Result<&'v str, DecodeError> {
        match self.str()? {
            "" => Err(self.error("empty: expected the name of an event type")),
            name => Ok(name),
        }
    }

    /// The string field `key`, if present.
    pub fn opt_str(&self, key: &str) -> Result<Option<&'v str>, DecodeError> {
        self.get(key)?.map(|v| v.str()).transpose()
    }

    /// The string field `key`, if present and not empty.
    pub fn non_empty_str(&self, key: &str) -> Result<Option<&'v str>, DecodeError> {
        Ok(self.opt_str(key)?.filter(|s| !s.is_empty()))
    }

    /// The boolean field `key`; absent counts as false.
    pub fn flag(&self, key: &str) -> Result<bool, DecodeError> {
        match self.get(key)? {
            None => Ok(false),
            Some(v) => v
                .value
                .as_bool()
                .ok_or_else(|| v.error(format!("expected a boolean, found {}", kind(v.value)))),
        }
    }

    /// The unsigned integer field `key`, if present.
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>, DecodeError> {
        match self.get(key)? {
            None => Ok(None),
            Some(v) => v.value.as_u64().map(Some).ok_or_else(|| {
                v.error(format!("expected a whole number, found {}", kind(v.value)))
            }),
        }
    }

    /// The items of this array, each with its index in the path.
    pub fn items(&self) -> Result<Vec<At<'_, 'v>>, DecodeError> {
        let items = self
            .value
            .as_array()
            .ok_or_else(|| self.error(format!("expected an array, found {}", kind(self.value))))?;
        Ok(items
            .iter()
            .enumerate()
            .map(|(i, v)| self.child(Seg::Index(i), v))
            .collect())
    }
}

/// The JSON type of a value, for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Turns a record's validation error into a decode error located at the
/// vendor field that supplied the record field at fault. `origins` maps
/// record fields to paths relative to `entry`; a field not in it (or a
/// problem spanning fields) is located at `entry` itself.
pub(super) fn invalid(entry: &At<'_, '_>, origins: Origins<'_>, e: InvalidRecord) -> DecodeError {
    let field = e.0.split_once(": ").map_or("", |(field, _)| field);
    located(origin_path(entry, origins, field), e)
}

/// A record's validation error (`field: problem`) located at `path`.
pub(super) fn located(path: String, e: InvalidRecord) -> DecodeError {
    match e.0.split_once(": ") {
        // `events[0].target.digest: digest: ...` would say the field twice.
        Some((field, problem)) if path == field || path.ends_with(&format!(".{field}")) => {
            DecodeError::new(path, problem)
        }
        _ => DecodeError::new(path, e.0),
    }
}

/// Where a record field came from, relative to its entry: (record field, vendor path).
pub(super) type Origins<'a> = &'a [(&'a str, &'a str)];

/// The path of the vendor field that supplied record field `field`. A
/// service or environment without an origin of its own was derived from the
/// repository.
fn origin_path(entry: &At<'_, '_>, origins: Origins<'_>, field: &str) -> String {
    let find = |field: &str| origins.iter().find(|(f, _)| *f == field);
    let origin = match find(field) {
        None if matches!(field, "service" | "environment") => find("repository"),
        found => found,
    };
    match origin {
        Some((_, rel)) => entry.path_of(rel),
        None => entry.path(),
    }
}

/// An image record for `repository[:tag][@digest]`, its service and
/// environment derived from the repository, validated; errors are located
/// through `origins`.
pub(super) fn image_record(
    entry: &At<'_, '_>,
    origins: Origins<'_>,
    repository: &str,
    tag: Option<&str>,
    digest: Option<&str>,
    opts: &DecodeOptions,
) -> Result<Payload, DecodeError> {
    let at = origin_path(entry, origins, "repository");
    let fields = ImageFields {
        service: Some(service_of(repository, opts, &at)?),
        environment: environment_of(repository, opts, &at)?,
        repository: Some(repository.to_owned()),
        tag: tag.map(str::to_owned),
        digest: digest.map(str::to_owned),
    };
    validate_image(fields, opts.environment.as_deref())
        .map(|i| Payload::Image(Box::new(i)))
        .map_err(|e| invalid(entry, origins, e))
}

/// A pushed image: its record (see [`image_record`]), or, when its tag is a
/// sigstore one ([`is_signature_tag`]), ignored as `push:signature`. Every
/// image decoder makes its records through this.
pub(super) fn pushed_image(
    entry: &At<'_, '_>,
    origins: Origins<'_>,
    repository: &str,
    tag: Option<&str>,
    digest: Option<&str>,
    opts: &DecodeOptions,
) -> Result<Decoded, DecodeError> {
    if tag.is_some_and(is_signature_tag) {
        return Ok(Decoded::ignored(SIGNATURE));
    }
    image_record(entry, origins, repository, tag, digest, opts).map(Decoded::one)
}

/// A git record: `fields` without service and environment, which are derived
/// from its repository; validated, errors located through `origins`.
pub(super) fn git_record(
    entry: &At<'_, '_>,
    origins: Origins<'_>,
    mut fields: GitFields,
    opts: &DecodeOptions,
) -> Result<Payload, DecodeError> {
    if let Some(repository) = &fields.repository {
        let at = origin_path(entry, origins, "repository");
        fields.service = Some(service_of(repository, opts, &at)?);
        fields.environment = environment_of(repository, opts, &at)?;
    }
    validate_git(fields, opts.environment.as_deref())
        .map(|g| Payload::Git(Box::new(g)))
        .map_err(|e| invalid(entry, origins, e))
}

/// The service of an image or git event whose repository is `repository`
/// (read at `at`): the `service` group of `service_from`'s regex, or else
/// the repository's last path component.
pub(super) fn service_of(
    repository: &str,
    opts: &DecodeOptions,
    at: &str,
) -> Result<String, DecodeError> {
    match &opts.service_from {
        Some(FieldFrom::Regex(re)) => capture(re, repository, "service", "service_from", at),
        _ => Ok(last_component(repository).to_owned()),
    }
}

/// The environment of an image or git event: the `environment` group of
/// `environment_from`'s regex when the source has one; else `None`, and the
/// source's default applies.
pub(super) fn environment_of(
    repository: &str,
    opts: &DecodeOptions,
    at: &str,
) -> Result<Option<String>, DecodeError> {
    match &opts.environment_from {
        Some(FieldFrom::Regex(re)) => {
            capture(re, repository, "environment", "environment_from", at).map(Some)
        }
        _ => Ok(None),
    }
}

fn last_component(repository: &str) -> &str {
    repository.rsplit('/').next().unwrap_or(repository)
}

fn capture(
    re: &Regex,
    repository: &str,
    group: &str,
    option: &str,
    at: &str,
) -> Result<String, DecodeError> {
    re.captures(repository)
        .and_then(|c| c.name(group))
        .map(|m| m.as_str().to_owned())
        .ok_or_else(|| {
            DecodeError::new(
                at,
                format!(
                    "`{}` does not match {option} regex `{re}` (group `{group}`)",
                    oci::printable(repository)
                ),
            )
        })
}

/// Standard base64, padded or not: senders differ.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes base64, as Pub/Sub messages and CloudEvents' `data_base64` carry
/// it, and parses the result as JSON, keeping the members named in `keys`.
pub(super) fn base64_json(at: &At<'_, '_>, keys: &[&str]) -> Result<Value, DecodeError> {
    let bytes = BASE64
        .decode(at.str()?)
        .map_err(|e| at.error(format!("not base64: {e}")))?;
    parse_kept(&mut serde_json::Deserializer::from_slice(&bytes), keys)
        .map_err(|e| at.error(format!("its decoded bytes are not JSON: {e}")))
}

/// Locates an error of a value decoded from the text at `within` (base64)
/// below that path: `message.data.digest` is the decoded data's `digest`.
pub(super) fn inside(within: &str, e: DecodeError) -> DecodeError {
    match (within, e.path.as_str()) {
        ("", _) => e,
        (_, "value") => DecodeError::new(within, e.problem),
        (_, path) => DecodeError::new(format!("{within}.{path}"), e.problem),
    }
}

/// A sender's free text as one bounded line: control characters (a
/// multi-line message) become spaces and the text is cut at 1024 bytes.
pub(super) fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(1024));
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > 1024 {
            break;
        }
        out.push(c);
    }
    out
}

/// Adds a part's records and ignored entries to a payload's.
pub(super) fn merge(into: &mut Decoded, part: Decoded) {
    into.records.extend(part.records);
    into.ignored.extend(part.ignored);
}

/// Splits `HOST/PATH/IMAGE@sha256:...` or `HOST/PATH/IMAGE:TAG` into the
/// repository and the digest or tag, without checking them (the record's
/// validation does, naming the field).
pub(super) fn split_reference(reference: &str) -> (&str, Option<&str>, Option<&str>) {
    let (name_and_tag, digest) = match reference.split_once('@') {
        Some((left, digest)) => (left, Some(digest)),
        None => (reference, None),
    };
    match name_and_tag.rfind(':') {
        Some(i) if !name_and_tag[i..].contains('/') => {
            (&name_and_tag[..i], Some(&name_and_tag[i + 1..]), digest)
        }
        _ => (name_and_tag, None, digest),
    }
}

/// What the decoders' unit tests share.
#[cfg(test)]
pub(super) mod testing {
    use super::super::{decode, DecodeOptions, Decoded, Format};
    use crate::record::Kind;

    pub fn run(format: Format, kind: Kind, json: &str) -> Decoded {
        decode(format, kind, json, &DecodeOptions::default())
            .unwrap_or_else(|e| panic!("{format} should decode: {e}\n{json}"))
    }

    pub fn error_path(format: Format, kind: Kind, json: &str) -> String {
        match decode(format, kind, json, &DecodeOptions::default()) {
            Ok(d) => panic!("{format} should refuse, yet gave {d:?}\n{json}"),
            Err(e) => e.path,
        }
    }

    pub fn sha(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    /// A cosign/sigstore tag: `sha256-<64 hex>.sig` (or `.att`, `.sbom`).
    pub fn sigstore_tag(suffix: &str) -> String {
        format!("sha256-{}.{suffix}", "5e".repeat(32))
    }
}
