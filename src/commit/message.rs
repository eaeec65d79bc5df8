//! Commit messages: a subject from a template, one line per change (and per
//! retry), a `Sluice-Intent:` trailer for every intent the commit accounts
//! for, and a `Sluice-Newest:` trailer per service and environment (see
//! [`super::index`]).

use std::fmt::Write as _;

use super::index::Newest;

/// The trailer that records an intent in a commit; idempotency rests on it.
pub const TRAILER: &str = "Sluice-Intent";
/// The trailer that records the newest intent time of a service in an environment.
pub const NEWEST_TRAILER: &str = "Sluice-Newest";
/// The trailer naming a trace of the commit's intents: a commit leads back
/// to the webhooks behind it.
pub const TRACE_TRAILER: &str = "Sluice-Trace";

/// A message template with `{placeholder}`s (`{{` and `}}` for braces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(&'static str),
}

impl Template {
    /// Placeholders of a template about one change.
    pub const CHANGE: &'static [&'static str] = &[
        "service",
        "environment",
        "old_image",
        "new_image",
        "action",
        "reason",
        "intent_id",
        "branch",
        "count",
    ];
    /// Placeholders of a template about a whole commit.
    pub const COMMIT: &'static [&'static str] = &["branch", "count", "environment"];

    /// Parses `text`, accepting only the placeholders in `allowed`.
    pub fn parse(text: &str, allowed: &[&'static str]) -> Result<Template, String> {
        if text.chars().any(char::is_control) {
            return Err("a template is one line: no line breaks or control characters".into());
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(i) = rest.find(['{', '}']) {
            literal.push_str(&rest[..i]);
            let tail = &rest[i..];
            if let Some(after) = tail.strip_prefix("{{").or_else(|| tail.strip_prefix("}}")) {
                literal.push_str(&tail[..1]);
                rest = after;
                continue;
            }
            let Some(end) = tail.strip_prefix('{').and_then(|t| t.find('}')) else {
                return Err("unmatched brace: write {{ or }} for a literal one".into());
            };
            let name = &tail[1..=end];
            let Some(var) = allowed.iter().find(|a| **a == name) else {
                return Err(format!(
                    "unknown placeholder {{{name}}}; expected one of: {}",
                    allowed.join(", ")
                ));
            };
            if !literal.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut literal)));
            }
            parts.push(Part::Var(var));
            rest = &tail[end + 2..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Template { parts })
    }

    /// Fills in the placeholders; every value is made a single, bounded line
    /// so that an intent's text can never add lines (or trailers) to a message.
    pub fn render(&self, value: impl Fn(&str) -> String) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) => out.push_str(&one_line(&value(v))),
            }
        }
        out
    }
}

/// Control characters become spaces; long values are cut.
fn one_line(value: &str) -> String {
    const LIMIT: usize = 200;
    let mut out: String = value
        .chars()
        .take(LIMIT)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if value.chars().count() > LIMIT {
        out.push('…');
    }
    out
}

/// One service's image change in a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub service: String,
    pub environment: String,
    pub old_image: Option<String>,
    pub new_image: String,
    pub action: &'static str,
    pub reason: String,
    pub intent_id: String,
}

/// The templates a message is built from.
pub struct Templates<'a> {
    pub subject: &'a Template,
    pub multi_subject: &'a Template,
    pub line: &'a Template,
    /// The subject of a commit that only retries one failed sync.
    pub retry_subject: &'a Template,
}

/// What one commit holds.
#[derive(Debug, Default, Clone, Copy)]
pub struct Contents<'a> {
    /// The image changes, one per service and environment.
    pub changes: &'a [Change],
    /// Retries of failed syncs whose image the files already hold: each
    /// gets a line, but changes no file.
    pub retries: &'a [Change],
    /// Every intent the commit accounts for, including the ones superseded
    /// by a newer intent for the same service and environment.
    pub intent_ids: &'a [&'a str],
    /// The traces of those intents.
    pub trace_ids: &'a [String],
    /// The newest intent times the branch does not record yet.
    pub records: &'a [Newest],
}

/// Builds a commit message: subject, a line per change and per retry, then
/// the trailers. With neither, the commit only records (a fixed subject
/// says so).
pub fn commit_message(templates: &Templates<'_>, branch: &str, contents: &Contents<'_>) -> String {
    let Contents {
        changes,
        retries,
        intent_ids,
        trace_ids,
        records,
    } = *contents;
    let count = (changes.len() + retries.len()).to_string();
    let mut environments: Vec<&str> = changes
        .iter()
        .chain(retries)
        .map(|c| c.environment.as_str())
        .collect();
    environments.sort_unstable();
    environments.dedup();
    let environments = environments.join(",");
    let change_value = |c: &Change, var: &str| -> String {
        match var {
            "service" => c.service.clone(),
            "environment" => c.environment.clone(),
            "old_image" => c.old_image.clone().unwrap_or_else(|| "(none)".into()),
            "new_image" => c.new_image.clone(),
            "action" => c.action.into(),
            "reason" => c.reason.clone(),
            "intent_id" => c.intent_id.clone(),
            "branch" => branch.into(),
            _ => count.clone(),
        }
    };
    let mut msg = match (changes, retries) {
        ([], []) => format!(
            "Record {} intents on {branch}: the files already hold their images",
            intent_ids.len().max(records.len())
        ),
        ([one], []) => templates.subject.render(|v| change_value(one, v)),
        ([], [one]) => templates.retry_subject.render(|v| change_value(one, v)),
        _ => templates.multi_subject.render(|v| match v {
            "branch" => branch.into(),
            "environment" => environments.clone(),
            _ => count.clone(),
        }),
    };
    msg.push_str("\n\n");
    match (changes, retries) {
        ([], []) => msg.push_str("No image changes: these trailers only record what was already in place,\nso that an older intent can never be applied after a newer one.\n"),
        ([], _) => msg.push_str("No file changes: a new revision, so that Argo CD or Flux syncs again\nafter a failed sync.\n"),
        _ => {}
    }
    for c in changes.iter().chain(retries) {
        msg.push_str(&templates.line.render(|v| change_value(c, v)));
        msg.push('\n');
    }
    msg.push('\n');
    for id in intent_ids {
        let _ = writeln!(msg, "{TRAILER}: {id}");
    }
    for id in trace_ids {
        let _ = writeln!(msg, "{TRACE_TRAILER}: {id}");
    }
    for r in records {
        let _ = writeln!(msg, "{NEWEST_TRAILER}: {}", r.trailer_value());
    }
    msg
}

/// Whether `id` may stand in a trailer: a bounded token that cannot break
/// the trailer block (intent ids are 32 hex digits when Sluice makes them).
pub fn is_intent_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(service: &str, reason: &str) -> Change {
        Change {
            service: service.into(),
            environment: "prod".into(),
            old_image: Some("api:v1".into()),
            new_image: "api:v2".into(),
            action: "deploy",
            reason: reason.into(),
            intent_id: "i1".into(),
        }
    }

    fn templates() -> (Template, Template, Template, Template) {
        (
            Template::parse(
                "{action} {service} to {new_image} ({environment})",
                Template::CHANGE,
            )
            .unwrap(),
            Template::parse(
                "{count} images on {branch}: {environment}",
                Template::COMMIT,
            )
            .unwrap(),
            Template::parse(
                "- {service}: {old_image} -> {new_image}, {reason}",
                Template::CHANGE,
            )
            .unwrap(),
            Template::parse(
                "{reason}: {action} {service} ({environment}) {new_image}",
                Template::CHANGE,
            )
            .unwrap(),
        )
    }

    fn with<'a>((s, m, l, r): &'a (Template, Template, Template, Template)) -> Templates<'a> {
        Templates {
            subject: s,
            multi_subject: m,
            line: l,
            retry_subject: r,
        }
    }

    proptest::proptest! {
        #[test]
        fn any_template_text_parses_or_is_refused_without_panicking(text in "\\PC{0,40}") {
            if let Ok(t) = Template::parse(&text, Template::CHANGE) {
                let rendered = t.render(|v| format!("<{v}>"));
                proptest::prop_assert!(!rendered.contains('\n'));
                if !text.contains(['{', '}']) {
                    proptest::prop_assert_eq!(rendered, text);
                }
            }
        }
    }

    #[test]
    fn templates_reject_unknown_placeholders_and_stray_braces() {
        assert!(Template::parse("{nope}", Template::CHANGE)
            .unwrap_err()
            .contains("{nope}"));
        assert!(Template::parse("{service", Template::CHANGE).is_err());
        assert!(Template::parse("{service}", Template::COMMIT).is_err());
        let t = Template::parse("{{literal}} {count}", Template::COMMIT).unwrap();
        assert_eq!(t.render(|_| "3".into()), "{literal} 3");
    }

    #[test]
    fn one_change_uses_the_subject_and_lists_every_intent_as_a_trailer() {
        let all = templates();
        let t = with(&all);
        let contents = Contents {
            changes: &[change("api", "new image")],
            intent_ids: &["i0", "i1"],
            ..Contents::default()
        };
        let msg = commit_message(&t, "main", &contents);
        assert_eq!(
            msg,
            "deploy api to api:v2 (prod)\n\n- api: api:v1 -> api:v2, new image\n\nSluice-Intent: i0\nSluice-Intent: i1\n"
        );
    }

    #[test]
    fn intent_text_cannot_forge_lines_or_trailers() {
        let all = templates();
        let t = with(&all);
        let changes = [
            change("api", "x\n\nSluice-Intent: forged"),
            change("web", "y"),
        ];
        let contents = Contents {
            changes: &changes,
            intent_ids: &["i1"],
            ..Contents::default()
        };
        let msg = commit_message(&t, "main", &contents);
        assert!(msg.starts_with("2 images on main: prod\n"), "{msg}");
        assert_eq!(
            msg.lines()
                .filter(|l| l.starts_with("Sluice-Intent"))
                .count(),
            1,
            "{msg}"
        );
        assert!(is_intent_id("606f4651581f232afb49da0840719970"));
        assert!(!is_intent_id("a b"));
        assert!(!is_intent_id("a\nSluice-Intent: b"));
    }

    #[test]
    fn newest_times_follow_the_intent_trailers_and_a_record_only_commit_says_so() {
        let all = templates();
        let t = with(&all);
        let newest = Newest {
            environment: "prod".into(),
            service: "api".into(),
            ts: 20,
        };
        let traces = ["4bf92f3577b34da6a3ce929d0e0e4736".to_owned()];
        let contents = Contents {
            intent_ids: &["a"],
            trace_ids: &traces,
            records: std::slice::from_ref(&newest),
            ..Contents::default()
        };
        let msg = commit_message(&t, "main", &contents);
        assert!(msg.starts_with("Record 1 intents on main: "), "{msg}");
        assert!(
            msg.ends_with("\n\nSluice-Intent: a\nSluice-Trace: 4bf92f3577b34da6a3ce929d0e0e4736\nSluice-Newest: prod api 20\n"),
            "{msg}"
        );
    }

    #[test]
    fn a_retry_alone_has_its_own_subject_and_a_line_and_with_changes_it_counts_as_one() {
        let all = templates();
        let t = with(&all);
        let mut retry = change("api", "retry 1 of 3 after failed sync");
        retry.old_image = Some("api:v2".into());
        let contents = Contents {
            retries: std::slice::from_ref(&retry),
            intent_ids: &["r1"],
            ..Contents::default()
        };
        let msg = commit_message(&t, "main", &contents);
        assert_eq!(
            msg,
            "retry 1 of 3 after failed sync: deploy api (prod) api:v2\n\n\
             No file changes: a new revision, so that Argo CD or Flux syncs again\n\
             after a failed sync.\n\
             - api: api:v2 -> api:v2, retry 1 of 3 after failed sync\n\n\
             Sluice-Intent: r1\n"
        );
        let mut web = change("web", "new image");
        web.environment = "dev".into();
        let contents = Contents {
            changes: std::slice::from_ref(&web),
            retries: std::slice::from_ref(&retry),
            intent_ids: &["w1", "r1"],
            ..Contents::default()
        };
        let msg = commit_message(&t, "main", &contents);
        assert!(
            msg.starts_with("2 images on main: dev,prod\n\n- web: "),
            "{msg}"
        );
        assert!(
            msg.contains("\n- api: api:v2 -> api:v2, retry 1 of 3 after failed sync\n"),
            "{msg}"
        );
    }
}
