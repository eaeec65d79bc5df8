//! `route`: gives each record an environment, chosen by regex rules.

use regex::{Regex, RegexBuilder};

use super::{Ctx, Operator};
use crate::record::{Field, Kind, Record};
use crate::state::{Committed, StateBackend, StateError, WriteBatch};
use crate::topology::diag::{Diags, Located};
use crate::topology::reader::TableReader;

/// Sets `environment` from the first rule whose regex matches anywhere in the
/// rule's field (anchor it with `^...$` to match the whole value). A record no
/// rule matches gets `default`; with no default it is dropped (counted as
/// `no_route`). An existing environment is overwritten. An absent field is
/// matched as the empty string.
///
/// ```toml
/// [[operators]]
/// name = "route"
/// type = "route"
/// input = "images"
/// default = "dev"
/// [[operators.rules]]
/// field = "tag"
/// regex = '^v\d+\.\d+\.\d+$'
/// environment = "prod"
/// ```
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// The node whose records are routed (an image or alert stream).
    pub input: Located<String>,
    /// Environment of records that no rule matches; without one they are dropped.
    pub default: Option<String>,
    /// Rules, tried in order; the first match wins.
    pub rules: Vec<RouteRule>,
}

/// One `[[operators.rules]]` entry.
#[derive(Debug, Clone)]
pub struct RouteRule {
    /// The record field the regex is matched against.
    pub field: Located<String>,
    /// Matched anywhere in the value (Rust regex syntax).
    pub regex: Regex,
    /// The environment a matching record gets.
    pub environment: String,
}

/// Compiled regexes are capped so that a topology cannot make matching slow or huge.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

impl RouteConfig {
    pub fn read(t: &mut TableReader<'_, '_, '_>) -> Option<Self> {
        let diags = t.diags();
        let input = t.required_string("input");
        let default = t.string("default");
        if let Some(d) = &default {
            check_environment(diags, d, &t.key_path("default"));
        }
        let mut rules = Vec::new();
        let mut ok = true;
        for (path, value) in t.tables("rules") {
            match read_rule(diags, path, value) {
                Some(rule) => rules.push(rule),
                None => ok = false,
            }
        }
        if ok && rules.is_empty() && default.is_none() {
            diags.error(
                t.pos(),
                t.key_path("rules"),
                "a route needs at least one [[operators.rules]] entry or a `default`",
            );
            return None;
        }
        Some(RouteConfig {
            input: input?,
            default: default.map(|d| d.value),
            rules,
        })
        .filter(|_| ok)
    }

    pub fn check(&self, kind: Kind, diags: &Diags<'_>, path: &str) -> Option<Kind> {
        if kind == Kind::Intent {
            diags.error(
                self.input.pos,
                format!("{path}.input"),
                "route reads image or alert records, but this input carries intents",
            );
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if kind.field(&rule.field.value).is_none() {
                diags.error(
                    rule.field.pos,
                    format!("{path}.rules[{i}].field"),
                    format!(
                        "{kind} records have no field `{}`; fields: {}",
                        rule.field.value,
                        kind.field_names().join(", ")
                    ),
                );
            }
        }
        Some(kind)
    }

    pub fn build(&self, kind: Kind) -> Route {
        let rules = self
            .rules
            .iter()
            .map(|r| {
                (
                    kind.field(&r.field.value).expect("checked"),
                    r.regex.clone(),
                    r.environment.clone(),
                )
            })
            .collect();
        Route {
            rules,
            default: self.default.clone(),
        }
    }

    pub fn summary(&self) -> String {
        let rules: Vec<String> = self
            .rules
            .iter()
            .map(|r| {
                format!(
                    "{} ~ /{}/ -> {}",
                    r.field.value,
                    r.regex.as_str(),
                    r.environment
                )
            })
            .collect();
        format!(
            "route [{}] default {}",
            rules.join("; "),
            self.default.as_deref().unwrap_or("(drop)")
        )
    }
}

fn read_rule(diags: &Diags<'_>, path: String, value: toml_span::Value<'_>) -> Option<RouteRule> {
    let mut t = TableReader::new(diags, value, path)?;
    let field = t.required_string("field");
    let regex = t.required_string("regex").and_then(|r| {
        match RegexBuilder::new(&r.value)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
        {
            Ok(re) => Some(re),
            Err(e) => {
                diags.error(
                    r.pos,
                    t.key_path("regex"),
                    format!("invalid regex: {}", e.to_string().replace('\n', " ")),
                );
                None
            }
        }
    });
    let environment = t.required_string("environment");
    if let Some(env) = &environment {
        check_environment(diags, env, &t.key_path("environment"));
    }
    t.finish();
    Some(RouteRule {
        field: field?,
        regex: regex?,
        environment: environment?.value,
    })
}

fn check_environment(diags: &Diags<'_>, env: &Located<String>, key: &str) {
    static ENV: std::sync::LazyLock<Regex> = std::sync::LazyLock::new(|| {
        Regex::new(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$").expect("valid regex")
    });
    if !ENV.is_match(&env.value) {
        diags.error(
            env.pos,
            key,
            "an environment must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$",
        );
    }
}

/// The runtime: stateless.
pub struct Route {
    rules: Vec<(Field, Regex, String)>,
    default: Option<String>,
}

impl Operator for Route {
    fn on_record(
        &mut self,
        _port: usize,
        mut record: Record,
        cx: &mut Ctx<'_>,
    ) -> Result<(), StateError> {
        let chosen = self
            .rules
            .iter()
            .find(|(field, regex, _)| regex.is_match(&record.payload.field(*field)))
            .map(|(_, _, env)| env)
            .or(self.default.as_ref());
        match chosen {
            Some(env) => {
                record.payload.set_environment(env);
                cx.pass(record);
            }
            None => cx.drop_record("no_route"),
        }
        Ok(())
    }

    fn on_timer(&mut self, _key: &[u8], _cx: &mut Ctx<'_>) -> Result<(), StateError> {
        Ok(())
    }

    fn commit(
        &mut self,
        _now: u64,
        _backend: &dyn StateBackend,
        _batch: &mut WriteBatch,
    ) -> Result<Committed, StateError> {
        Ok(Committed::All)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{image, Harness};
    use super::*;

    const TOPOLOGY: &str = r#"
[[operators]]
name = "route"
type = "route"
input = "images"
default = "dev"
[[operators.rules]]
field = "tag"
regex = '^v\d+\.\d+\.\d+$'
environment = "prod"
[[operators.rules]]
field = "tag"
regex = 'rc'
environment = "staging"
"#;

    fn envs(h: &mut Harness, tags: &[&str]) -> Vec<String> {
        tags.iter()
            .enumerate()
            .flat_map(|(i, tag)| h.push(i as u64, image("a", Some(tag))))
            .map(|r| r.payload.field(Field::Environment).into_owned())
            .collect()
    }

    #[test]
    fn first_matching_rule_wins_and_matches_anywhere() {
        let mut h = Harness::new(TOPOLOGY);
        assert_eq!(
            envs(&mut h, &["v1.2.3", "v1.2.3-rc1", "main-rc", "latest"]),
            ["prod", "staging", "staging", "dev"]
        );
    }

    #[test]
    fn without_default_unmatched_records_are_dropped_and_counted() {
        let mut h = Harness::new(&TOPOLOGY.replace("default = \"dev\"\n", ""));
        assert_eq!(envs(&mut h, &["latest", "v2.0.0"]), ["prod"]);
        assert_eq!(h.dropped("no_route"), 1);
    }

    #[test]
    fn absent_field_is_matched_as_empty_string_and_environment_is_overwritten() {
        let topo = "[[operators]]\nname = \"route\"\ntype = \"route\"\ninput = \"images\"\n[[operators.rules]]\nfield = \"tag\"\nregex = '^$'\nenvironment = \"digest-only\"\n";
        let mut h = Harness::new(topo);
        let mut img = image("a", None);
        if let crate::record::Payload::Image(i) = &mut img {
            i.environment = Some("prod".into());
        }
        let out = h.push(0, img);
        assert_eq!(out[0].payload.field(Field::Environment), "digest-only");
    }

    #[test]
    fn config_errors_name_their_keys() {
        let errs = Harness::errors("[[operators]]\nname = \"route\"\ntype = \"route\"\ninput = \"images\"\n[[operators.rules]]\nfield = \"alertname\"\nregex = '(unclosed'\nenvironment = \"-bad\"\n");
        assert!(
            errs.contains("operators[0].rules[0].regex") && errs.contains("invalid regex"),
            "{errs}"
        );
        assert!(errs.contains("operators[0].rules[0].environment"), "{errs}");
        let errs = Harness::errors("[[operators]]\nname = \"route\"\ntype = \"route\"\ninput = \"images\"\n[[operators.rules]]\nfield = \"alertname\"\nregex = 'x'\nenvironment = \"p\"\n");
        assert!(
            errs.contains("operators[0].rules[0].field") && errs.contains("no field `alertname`"),
            "{errs}"
        );
        let errs = Harness::errors(
            "[[operators]]\nname = \"route\"\ntype = \"route\"\ninput = \"images\"\n",
        );
        assert!(errs.contains("at least one"), "{errs}");
    }
}
