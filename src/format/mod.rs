//! Payload formats: how the bytes of a source topic (or of a webhook) become
//! records.
//!
//! `json` and `protobuf` are Sluice's own schemas. Every other format is a
//! vendor's webhook payload, decoded by its own file in this folder into zero
//! or more records of the source's kind. The same decoders serve `sluice
//! replay`, `sluice run`, `sluice decode` and `sluice ingest`, so a payload
//! means the same thing wherever it enters.

mod alertmanager;
mod argocd;
mod cloudevents;
mod distribution;
mod dockerhub;
mod ecr;
mod flux;
mod gar;
mod github;
mod github_package;
mod gitlab;
mod harbor;
mod quay;
mod util;

use std::fmt;

use regex::Regex;

use crate::record::{
    alert_from_flat, image_from_flat, parse_alert, parse_control, parse_deployment, parse_git,
    parse_image, FlatObject, InvalidRecord, Kind, Payload,
};

/// A source's or sink's wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Sluice's own JSON schema of the source's kind.
    Json,
    /// Sluice's own protobuf messages (`proto/sluice.proto`).
    Protobuf,
    /// Prometheus Alertmanager's webhook, version 4.
    Alertmanager,
    /// CNCF Distribution (registry:2) notification envelopes.
    Distribution,
    /// Docker Hub repository webhooks.
    Dockerhub,
    /// Harbor webhooks, default and CloudEvents payload formats.
    Harbor,
    /// Quay repository notifications (`repo_push`).
    Quay,
    /// GitHub `registry_package` and `package` webhooks.
    GithubPackage,
    /// AWS ECR's "ECR Image Action" through EventBridge.
    Ecr,
    /// Google Artifact Registry's notification through a Pub/Sub push.
    Gar,
    /// CloudEvents, structured and batch mode, `data` decoded by its `type`.
    Cloudevents,
    /// GitHub `push` and `pull_request` webhooks.
    Github,
    /// GitLab push and merge request webhooks.
    Gitlab,
    /// Flux notification-controller events (generic / generic-hmac provider).
    Flux,
    /// The body of the Argo CD notifications webhook template the README gives.
    Argocd,
}

/// All formats, in the order the README lists them.
pub const FORMATS: &[Format] = &[
    Format::Json,
    Format::Protobuf,
    Format::Alertmanager,
    Format::Distribution,
    Format::Dockerhub,
    Format::Harbor,
    Format::Quay,
    Format::GithubPackage,
    Format::Ecr,
    Format::Gar,
    Format::Cloudevents,
    Format::Github,
    Format::Gitlab,
    Format::Flux,
    Format::Argocd,
];

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Protobuf => "protobuf",
            Format::Alertmanager => "alertmanager",
            Format::Distribution => "distribution",
            Format::Dockerhub => "dockerhub",
            Format::Harbor => "harbor",
            Format::Quay => "quay",
            Format::GithubPackage => "github_package",
            Format::Ecr => "ecr",
            Format::Gar => "gar",
            Format::Cloudevents => "cloudevents",
            Format::Github => "github",
            Format::Gitlab => "gitlab",
            Format::Flux => "flux",
            Format::Argocd => "argocd",
        }
    }

    pub fn from_name(name: &str) -> Option<Format> {
        FORMATS.iter().copied().find(|f| f.name() == name)
    }

    /// Whether this is one of Sluice's own schemas (as opposed to a vendor's payload).
    pub fn is_native(self) -> bool {
        matches!(self, Format::Json | Format::Protobuf)
    }

    /// The kinds of record this format can carry.
    pub fn kinds(self) -> &'static [Kind] {
        match self {
            Format::Json => &[
                Kind::Image,
                Kind::Alert,
                Kind::Git,
                Kind::Intent,
                Kind::Deployment,
                Kind::Control,
            ],
            Format::Protobuf => &[Kind::Image, Kind::Alert, Kind::Intent],
            Format::Alertmanager => &[Kind::Alert],
            Format::Github | Format::Gitlab => &[Kind::Git],
            Format::Flux | Format::Argocd => &[Kind::Deployment],
            Format::Distribution
            | Format::Dockerhub
            | Format::Harbor
            | Format::Quay
            | Format::GithubPackage
            | Format::Ecr
            | Format::Gar
            | Format::Cloudevents => &[Kind::Image],
        }
    }

    /// Whether a webhook body of content type `content_type` can be in this
    /// format. Every vendor format is JSON; senders label it `application/json`,
    /// a `+json` type of their own (Distribution, CloudEvents), or, for a few
    /// old senders, nothing at all.
    pub fn accepts_content_type(self, content_type: Option<&str>) -> bool {
        let Some(ct) = content_type else {
            return true;
        };
        let essence = ct
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match self {
            Format::Protobuf => {
                essence == "application/x-protobuf" || essence == "application/octet-stream"
            }
            _ => {
                essence == "application/json"
                    || (essence.starts_with("application/") && essence.ends_with("+json"))
            }
        }
    }

    /// The request header in which the sender puts its delivery id, if it has one.
    pub fn delivery_header(self) -> Option<&'static str> {
        match self {
            Format::Github | Format::GithubPackage => Some("x-github-delivery"),
            Format::Gitlab => Some("x-gitlab-event-uuid"),
            Format::Cloudevents => Some("ce-id"),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vendor_payload_given_as_a_string_of_its_text_decodes_like_the_payload() {
        let payload = r#"{"type":"PUSH_ARTIFACT","occur_at":1,"operator":"ci","event_data":{"resources":[{"digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","tag":"v1","resource_url":"h.io/p/a:v1"}],"repository":{"name":"a","namespace":"p","repo_full_name":"p/a","repo_type":"private"}}}"#;
        let quoted = serde_json::to_string(payload).unwrap();
        let opts = DecodeOptions::default();
        let direct = decode(Format::Harbor, Kind::Image, payload, &opts).unwrap();
        assert_eq!(direct.records.len(), 1);
        assert_eq!(
            decode(Format::Harbor, Kind::Image, &quoted, &opts).unwrap(),
            direct
        );
        // Only one level: a string of a string is an error, not a loop.
        let twice = serde_json::to_string(&quoted).unwrap();
        assert!(decode(Format::Harbor, Kind::Image, &twice, &opts).is_err());
        // Sluice's own schema keeps refusing strings.
        assert!(decode(Format::Json, Kind::Image, &quoted, &opts).is_err());
    }

    /// A field of Sluice's own records and a few values for it, valid
    /// first: most generated records are valid, some are not.
    const FIELD_VALUES: &[(&str, &[&str])] = &[
        ("service", &["svc-1", "svc-1", "Bad Name!"]),
        ("repository", &["r/a", "registry.io:5000/t/a", "Bad Repo"]),
        ("tag", &["v1.2.3", "v2-rc1", "bad tag!"]),
        (
            "digest",
            &[
                "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "sha256:short",
            ],
        ),
        ("environment", &["prod", "staging", "Not Valid"]),
        ("alertname", &["HighErrors", "HighErrors", ""]),
        ("severity", &["critical", "warning"]),
        ("status", &["firing", "resolved", "bogus"]),
        ("fingerprint", &["abc", "def"]),
        ("branch", &["main"]),
    ];

    proptest::proptest! {
        /// Given the fields a check of the text found, every format and kind
        /// decodes a flat object as from its text: the same records, the
        /// same errors.
        #[test]
        fn fields_already_read_decode_as_the_text_does(
            // Per field: absent, null, or one of its values; then a field
            // given twice (the last one wins).
            picks in proptest::collection::vec((0u8..8, 0usize..3), FIELD_VALUES.len()),
            repeated in proptest::option::of((0usize..10, 0usize..3)),
            format in proptest::sample::select(vec![Format::Json, Format::Protobuf, Format::Harbor]),
            kind in proptest::sample::select(vec![Kind::Image, Kind::Alert, Kind::Git]),
            environment in proptest::option::of(proptest::sample::select(vec!["staging", "Not Valid"])),
        ) {
            let field = |(name, values): &(&str, &[&str]), pick: usize| {
                format!("\"{name}\":\"{}\"", values[pick % values.len()])
            };
            let mut fields: Vec<String> = FIELD_VALUES
                .iter()
                .zip(&picks)
                .filter_map(|(f, &(presence, pick))| match presence {
                    0 => None,
                    1 => Some(format!("\"{}\":null", f.0)),
                    _ => Some(field(f, pick)),
                })
                .collect();
            // At most eight are kept: drop the last few past that.
            fields.truncate(7);
            if let Some((i, pick)) = repeated {
                fields.push(field(&FIELD_VALUES[i], pick));
            }
            let json = format!("{{{}}}", fields.join(","));
            let opts = DecodeOptions {
                environment: environment.map(str::to_owned),
                ..DecodeOptions::default()
            };
            let crate::record::Flat::Kept(object) = FlatObject::check(&json) else {
                panic!("a flat object of at most eight fields is kept: {json}");
            };
            proptest::prop_assert_eq!(
                decode_scanned(format, kind, &json, Some(&object), &opts),
                decode(format, kind, &json, &opts)
            );
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a record's service (or environment) comes from, when the payload
/// does not name it outright.
#[derive(Debug, Clone)]
pub enum FieldFrom {
    /// The named capture group of a regex over the repository
    /// (`service` for the service, `environment` for the environment).
    Regex(Regex),
    /// An alert label (or the first of several that is present).
    Labels(Vec<String>),
}

/// How a source's decoder fills the fields a vendor payload does not carry.
#[derive(Debug, Clone, Default)]
pub struct DecodeOptions {
    /// Environment for records that have none (the source's `environment`).
    pub environment: Option<String>,
    /// Image and git events: the service. Default: the repository's last
    /// path component. Alerts: the labels holding it (default `service`).
    pub service_from: Option<FieldFrom>,
    /// Image and git events: a regex over the repository (no default).
    /// Alerts: the labels holding it (default `environment`, then `env`).
    pub environment_from: Option<FieldFrom>,
    /// Alerts: the labels holding the severity (default `severity`).
    pub severity_from: Option<FieldFrom>,
}

/// What one payload yields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decoded {
    pub records: Vec<Payload>,
    /// The event types of the payload's entries that are not pushes (a pull,
    /// a delete, a scan result, a pull request opened): skipped, and counted
    /// as `ignored` with their type.
    pub ignored: Vec<String>,
}

impl Decoded {
    pub fn one(payload: Payload) -> Self {
        Decoded {
            records: vec![payload],
            ignored: Vec::new(),
        }
    }

    pub fn ignored(event: impl Into<String>) -> Self {
        Decoded {
            records: Vec::new(),
            ignored: vec![event.into()],
        }
    }
}

/// Why a payload cannot be decoded: the path of the field at fault (such as
/// `alerts[1].labels.alertname`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct DecodeError {
    pub path: String,
    pub problem: String,
}

impl DecodeError {
    pub fn new(path: impl Into<String>, problem: impl Into<String>) -> Self {
        DecodeError {
            path: path.into(),
            problem: problem.into(),
        }
    }
}

/// [`decode`], given the fields of `json` when the driver has already
/// read it as a flat object (replay): an image or an alert in Sluice's own
/// schema is then made from them, without reading the text again.
pub fn decode_scanned(
    format: Format,
    kind: Kind,
    json: &str,
    fields: Option<&FlatObject<'_>>,
    opts: &DecodeOptions,
) -> Result<Decoded, DecodeError> {
    debug_assert!(
        fields.is_none_or(|f| std::ptr::eq(f.text(), json)),
        "the fields were found in another text"
    );
    let env = opts.environment.as_deref();
    match (format, kind, fields) {
        (Format::Json | Format::Protobuf, Kind::Image, Some(fields)) => {
            native(image_from_flat(fields, env).map(|i| Payload::Image(Box::new(i))))
        }
        (Format::Json | Format::Protobuf, Kind::Alert, Some(fields)) => {
            native(alert_from_flat(fields, env).map(|a| Payload::Alert(Box::new(a))))
        }
        _ => decode(format, kind, json, opts),
    }
}

/// A record of Sluice's own schema, or the field at fault.
fn native(r: Result<Payload, InvalidRecord>) -> Result<Decoded, DecodeError> {
    r.map(Decoded::one).map_err(|e| match e.0.split_once(": ") {
        Some((path, problem)) if !path.contains(' ') => DecodeError::new(path, problem),
        _ => DecodeError::new("value", e.0),
    })
}

/// Decodes one payload (JSON text) of a source of `kind` in `format`.
/// Protobuf values reach this as the JSON the driver decoded them to.
pub fn decode(
    format: Format,
    kind: Kind,
    json: &str,
    opts: &DecodeOptions,
) -> Result<Decoded, DecodeError> {
    if !format.is_native() && json.trim_start().starts_with('"') {
        // A replay line may carry a vendor payload as a string of its text
        // (as `sluice record` keeps values it cannot read as JSON).
        let text: String =
            serde_json::from_str(json).map_err(|e| DecodeError::new("value", e.to_string()))?;
        if !text.trim_start().starts_with('"') {
            return decode(format, kind, &text, opts);
        }
    }
    let env = opts.environment.as_deref();
    match (format, kind) {
        (Format::Json | Format::Protobuf, Kind::Image) => {
            native(parse_image(json, env).map(|i| Payload::Image(Box::new(i))))
        }
        (Format::Json | Format::Protobuf, Kind::Alert) => {
            native(parse_alert(json, env).map(|a| Payload::Alert(Box::new(a))))
        }
        (Format::Json, Kind::Git) => {
            native(parse_git(json, env).map(|g| Payload::Git(Box::new(g))))
        }
        (Format::Json, Kind::Deployment) => {
            native(parse_deployment(json, env).map(|d| Payload::Deployment(Box::new(d))))
        }
        (Format::Json, Kind::Control) => {
            native(parse_control(json, env).map(|c| Payload::Control(Box::new(c))))
        }
        (Format::Alertmanager, _) => alertmanager::decode(json, opts),
        (Format::Distribution, _) => distribution::decode(json, opts),
        (Format::Dockerhub, _) => dockerhub::decode(json, opts),
        (Format::Harbor, _) => harbor::decode(json, opts),
        (Format::Quay, _) => quay::decode(json, opts),
        (Format::GithubPackage, _) => github_package::decode(json, opts),
        (Format::Ecr, _) => ecr::decode(json, opts),
        (Format::Gar, _) => gar::decode(json, opts),
        (Format::Cloudevents, _) => cloudevents::decode(json, opts),
        (Format::Github, _) => github::decode(json, opts),
        (Format::Gitlab, _) => gitlab::decode(json, opts),
        (Format::Flux, _) => flux::decode(json, opts),
        (Format::Argocd, _) => argocd::decode(json, opts),
        (format, kind) => Err(DecodeError::new(
            "format",
            format!("{format} cannot carry {kind} records"),
        )),
    }
}
