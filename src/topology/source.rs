//! `[[sources]]` entries: the topic, the kind of record, the payload format
//! and how its decoder fills what a vendor payload leaves out.

use std::sync::LazyLock;

use regex::Regex;

use super::diag::{Diags, Located};
use super::reader::TableReader;
use super::{read_name, read_topic, ENVIRONMENT};
use crate::format::{self, DecodeOptions, Decoded, FieldFrom, Format};
use crate::record::{FlatObject, Kind};

/// Kinds a source may read.
const SOURCE_KINDS: &[Kind] = &[
    Kind::Image,
    Kind::Alert,
    Kind::Git,
    Kind::Deployment,
    Kind::Control,
];

/// A `[[sources]]` entry: a topic whose records enter the topology.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub node: usize,
    pub topic: String,
    /// `image`, `alert`, `git`, `deployment` or `control`.
    pub kind: Kind,
    pub format: Format,
    /// What the decoder fills in (the default environment among it).
    pub decode: DecodeOptions,
    /// The topic's records are not keyed by service: `sluice run` re-keys
    /// them through `<app.id>-<source>-repartition` before any task sees them.
    pub repartition: bool,
}

impl Source {
    /// Environment given to records that have none.
    pub fn environment(&self) -> Option<&str> {
        self.decode.environment.as_deref()
    }

    /// Decodes one value (JSON text) of this source's format into records.
    pub fn decode(&self, json: &str) -> Result<Decoded, format::DecodeError> {
        self.decode_scanned(json, None)
    }

    /// [`Source::decode`], given the fields of `json` when a driver has
    /// already read it as a flat object.
    pub fn decode_scanned(
        &self,
        json: &str,
        fields: Option<&FlatObject<'_>>,
    ) -> Result<Decoded, format::DecodeError> {
        format::decode_scanned(self.format, self.kind, json, fields, &self.decode)
    }
}

/// A source as read. Its name counts even when the rest is wrong, so that
/// nodes reading from it are not reported as well; `kind` is known whenever
/// the `kind` key itself is right.
pub(super) struct SourceDecl {
    pub path: String,
    pub name: Located<String>,
    pub kind: Option<Kind>,
    /// `None` when a key of the source is wrong (reported).
    pub valid: Option<ValidSource>,
}

pub(super) struct ValidSource {
    pub topic: String,
    pub format: Format,
    pub decode: DecodeOptions,
    pub repartition: bool,
}

pub(super) fn read_source<'de>(
    diags: &Diags<'_>,
    path: String,
    value: toml_span::Value<'de>,
) -> Option<SourceDecl> {
    let mut t = TableReader::new(diags, value, path)?;
    let name = read_name(&mut t);
    let topic = read_topic(&mut t);
    let kind = read_kind(&mut t);
    let format = read_source_format(&mut t, kind);
    if format.is_some_and(Format::is_native) {
        refuse_vendor_options(&mut t);
    }
    let decode = read_decode_options(&mut t, kind);
    let repartition = t.bool("repartition").unwrap_or(false);
    let path = t.path().to_owned();
    t.finish();
    let valid = (|| {
        kind?;
        Some(ValidSource {
            topic: topic?,
            format: format?,
            decode: decode?,
            repartition,
        })
    })();
    Some(SourceDecl {
        path,
        name: name?,
        kind,
        valid,
    })
}

/// Sluice's own schemas name the service and environment outright: the
/// `*_from` keys would be silently unused.
fn refuse_vendor_options(t: &mut TableReader<'_, '_, '_>) {
    for key in ["service_from", "environment_from", "severity_from"] {
        if t.contains(key) {
            t.diags().error(
                t.pos(),
                t.key_path(key),
                format!("`{key}` is for vendor formats; Sluice's own schema (json, protobuf) names the field itself"),
            );
        }
    }
}

/// The keys that tell a decoder what a payload leaves out: `environment`,
/// `service_from`, `environment_from` and `severity_from`. Shared by
/// topology sources and `sluice ingest` endpoints. `kind` is `None` when the
/// table's kind is itself wrong (the keys are still read and checked).
pub(crate) fn read_decode_options(
    t: &mut TableReader<'_, '_, '_>,
    kind: Option<Kind>,
) -> Option<DecodeOptions> {
    let environment = read_environment(t);
    let service_from = read_from(t, "service_from", kind, "service");
    let environment_from = read_from(t, "environment_from", kind, "environment");
    let severity_from = read_from(t, "severity_from", kind, "severity");
    Some(DecodeOptions {
        environment: environment?,
        service_from: service_from?,
        environment_from: environment_from?,
        severity_from: severity_from?,
    })
}

pub(crate) fn read_kind(t: &mut TableReader<'_, '_, '_>) -> Option<Kind> {
    let k = t.required_string("kind")?;
    match SOURCE_KINDS.iter().find(|kind| kind.as_str() == k.value) {
        Some(kind) => Some(*kind),
        None => {
            t.diags().error(
                k.pos,
                t.key_path("kind"),
                format!(
                    "unknown kind `{}`; expected image, alert, git, deployment or control",
                    k.value
                ),
            );
            None
        }
    }
}

/// The source's format, checked against its kind (`json` when absent).
pub(crate) fn read_source_format(
    t: &mut TableReader<'_, '_, '_>,
    kind: Option<Kind>,
) -> Option<Format> {
    let Some(f) = t.string("format") else {
        return Some(Format::Json);
    };
    let Some(format) = Format::from_name(&f.value) else {
        let names: Vec<_> = format::FORMATS.iter().map(|f| f.name()).collect();
        t.diags().error(
            f.pos,
            t.key_path("format"),
            format!(
                "unknown format `{}`; expected one of: {}",
                f.value,
                names.join(", ")
            ),
        );
        return None;
    };
    match kind {
        Some(kind) if !format.kinds().contains(&kind) => {
            let fitting: Vec<_> = format::FORMATS
                .iter()
                .filter(|f| f.kinds().contains(&kind))
                .map(|f| f.name())
                .collect();
            t.diags().error(
                f.pos,
                t.key_path("format"),
                format!(
                    "format `{format}` does not carry {kind} records; {kind} sources take: {}",
                    fitting.join(", ")
                ),
            );
            None
        }
        _ => Some(format),
    }
}

fn read_environment(t: &mut TableReader<'_, '_, '_>) -> Option<Option<String>> {
    match t.string("environment") {
        Some(env) if !ENVIRONMENT.is_match(&env.value) => {
            t.diags().error(
                env.pos,
                t.key_path("environment"),
                "must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$",
            );
            None
        }
        other => Some(other.map(|e| e.value)),
    }
}

static LABEL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z_][A-Za-z0-9_]*$").expect("valid regex"));

/// `KEY = { regex = '...(?P<GROUP>...)...' }` (image and git sources) or
/// `KEY = { label = "name" }` / `{ labels = ["a", "b"] }` (alert sources).
/// `Some(None)` when absent; `None` when wrong (reported).
fn read_from(
    t: &mut TableReader<'_, '_, '_>,
    key: &'static str,
    kind: Option<Kind>,
    group: &str,
) -> Option<Option<FieldFrom>> {
    let diags = t.diags();
    let Some(value) = t.take(key) else {
        return Some(None);
    };
    let mut from = TableReader::new(diags, value, t.key_path(key))?;
    let regex = from.string("regex");
    let label = from.string("label");
    let labels = from.string_list("labels");
    let pos = from.pos();
    let path = from.path().to_owned();
    from.finish();
    let alert = kind == Some(Kind::Alert);
    if group == "severity" && matches!(kind, Some(Kind::Image | Kind::Git)) {
        diags.error(pos, path, "only alert sources have a severity");
        return None;
    }
    match (regex, label, labels) {
        (Some(r), None, None) if !alert => match Regex::new(&r.value) {
            Err(e) => {
                diags.error(
                    r.pos,
                    format!("{path}.regex"),
                    format!("not a valid regex: {e}"),
                );
                None
            }
            Ok(re) if !re.capture_names().flatten().any(|n| n == group) => {
                diags.error(
                    r.pos,
                    format!("{path}.regex"),
                    format!("the regex needs a named group `(?P<{group}>...)`"),
                );
                None
            }
            Ok(re) => Some(Some(FieldFrom::Regex(re))),
        },
        (None, label, labels) if alert && (label.is_some() != labels.is_some()) => {
            let names: Vec<Located<String>> = match (label, labels) {
                (Some(l), _) => vec![l],
                (_, Some(ls)) => ls.value,
                _ => Vec::new(),
            };
            let mut ok = true;
            if names.is_empty() {
                diags.error(pos, path.clone(), "give at least one label");
                ok = false;
            }
            for n in &names {
                if !LABEL.is_match(&n.value) {
                    diags.error(
                        n.pos,
                        path.clone(),
                        format!("`{}` is not a label name", n.value),
                    );
                    ok = false;
                }
            }
            ok.then(|| {
                Some(FieldFrom::Labels(
                    names.into_iter().map(|n| n.value).collect(),
                ))
            })
        }
        _ => {
            let expected = if alert {
                "`{ label = \"NAME\" }` or `{ labels = [\"A\", \"B\"] }` (alert sources read labels)"
            } else {
                "`{ regex = '...(?P<GROUP>...)...' }` over the repository"
            };
            diags.error(
                pos,
                path,
                format!("expected {}", expected.replace("GROUP", group)),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::format::{FieldFrom, Format};
    use crate::topology::diag::Diagnostic;
    use crate::topology::Topology;

    const TAIL: &str = "[[sinks]]\nname = \"out\"\ninput = \"in\"\ntopic = \"out\"\n";

    fn topology(source: &str) -> Result<Topology, Vec<Diagnostic>> {
        let text =
            format!("[app]\nid = \"t\"\n[[sources]]\nname = \"in\"\ntopic = \"t\"\n{source}{TAIL}");
        Topology::parse("t.toml", &text).map_err(|e| e.diagnostics)
    }

    /// (line, key, message) of each error; the source's own lines start at 6.
    fn errors(source: &str) -> Vec<(usize, String, String)> {
        match topology(source) {
            Ok(_) => panic!("expected errors for:\n{source}"),
            Err(d) => d
                .into_iter()
                .map(|d| (d.pos.line, d.key, d.message))
                .collect(),
        }
    }

    #[test]
    fn sluice_schemas_refuse_the_vendor_options() {
        let errs = errors("kind = \"image\"\nservice_from = { regex = '(?P<service>.+)' }\n");
        assert!(
            errs.iter()
                .any(|(_, k, m)| k == "sources[0].service_from" && m.contains("vendor formats")),
            "{errs:?}"
        );
    }

    #[test]
    fn a_vendor_format_is_checked_against_the_kind() {
        let errs = errors("kind = \"image\"\nformat = \"alertmanager\"\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        let (line, key, message) = &errs[0];
        assert_eq!((*line, key.as_str()), (7, "sources[0].format"));
        assert!(
            message.contains("does not carry image records"),
            "{message}"
        );
        assert!(
            message.contains("harbor") && !message.contains("alertmanager,"),
            "{message}"
        );
        let errs = errors("kind = \"git\"\nformat = \"protobuf\"\n");
        assert_eq!(errs[0].1, "sources[0].format");
        let errs = errors("kind = \"alert\"\nformat = \"prometheus\"\n");
        assert!(
            errs[0].2.contains("unknown format `prometheus`"),
            "{errs:?}"
        );
        assert!(
            errs[0].2.contains("gitlab"),
            "the message lists the formats: {errs:?}"
        );
    }

    #[test]
    fn decode_options_are_read_per_kind() {
        let t = topology("kind = \"image\"\nformat = \"harbor\"\nservice_from = { regex = '^[^/]+/(?P<service>.+)$' }\nenvironment_from = { regex = '^(?P<environment>[a-z]+)\\.' }\n").unwrap();
        let s = &t.sources[0];
        assert_eq!(s.format, Format::Harbor);
        assert!(matches!(&s.decode.service_from, Some(FieldFrom::Regex(r)) if r.is_match("a/b")));
        let t = topology("kind = \"alert\"\nformat = \"alertmanager\"\nservice_from = { label = \"app\" }\nenvironment_from = { labels = [\"namespace\", \"env\"] }\nenvironment = \"prod\"\n").unwrap();
        let d = &t.sources[0].decode;
        assert!(matches!(&d.service_from, Some(FieldFrom::Labels(l)) if l == &["app"]));
        assert!(
            matches!(&d.environment_from, Some(FieldFrom::Labels(l)) if l == &["namespace", "env"])
        );
        assert_eq!(t.sources[0].environment(), Some("prod"));
    }

    #[test]
    fn wrong_decode_options_are_located_and_named() {
        let cases = [
            (
                "kind = \"image\"\nservice_from = { regex = '^(?P<svc>.+)$' }\n",
                "sources[0].service_from.regex",
                "named group `(?P<service>",
            ),
            (
                "kind = \"image\"\nservice_from = { regex = '(' }\n",
                "sources[0].service_from.regex",
                "not a valid regex",
            ),
            (
                "kind = \"image\"\nservice_from = { label = \"app\" }\n",
                "sources[0].service_from",
                "over the repository",
            ),
            (
                "kind = \"alert\"\nservice_from = { regex = '(?P<service>.+)' }\n",
                "sources[0].service_from",
                "alert sources read labels",
            ),
            (
                "kind = \"alert\"\nseverity_from = { label = \"not-a-label\" }\n",
                "sources[0].severity_from",
                "not a label name",
            ),
            (
                "kind = \"git\"\nseverity_from = { regex = '(?P<severity>.)' }\n",
                "sources[0].severity_from",
                "only alert sources",
            ),
            (
                "kind = \"alert\"\nservice_from = { labels = [] }\nformat = \"alertmanager\"\n",
                "sources[0].service_from",
                "at least one label",
            ),
            (
                "kind = \"alert\"\nservice_from = { label = \"a\", lable = \"b\" }\n",
                "sources[0].service_from.lable",
                "unknown",
            ),
        ];
        for (source, key, needle) in cases {
            let errs = errors(source);
            assert!(
                errs.iter()
                    .any(|(line, k, m)| k == key && m.contains(needle) && *line == 7),
                "{source}: expected `{key}` at line 7 mentioning `{needle}`, got {errs:?}"
            );
        }
    }
}
