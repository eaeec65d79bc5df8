//! `[batch]`: the window that turns intents into commits, and the templates of
//! the commit messages.

use std::num::NonZeroUsize;
use std::time::Duration;

use toml_span::value::Value;

use super::{
    BatchConfig, DEFAULT_LINE, DEFAULT_MULTI_SUBJECT, DEFAULT_RETRY_SUBJECT, DEFAULT_SUBJECT,
};
use crate::commit::message::Template;
use crate::topology::reader::TableReader;

pub(super) fn default_batch() -> Option<BatchConfig> {
    Some(BatchConfig {
        window: Duration::from_secs(2),
        max_intents: NonZeroUsize::new(10_000)?,
        subject: Template::parse(DEFAULT_SUBJECT, Template::CHANGE).ok()?,
        multi_subject: Template::parse(DEFAULT_MULTI_SUBJECT, Template::COMMIT).ok()?,
        line: Template::parse(DEFAULT_LINE, Template::CHANGE).ok()?,
        retry_subject: Template::parse(DEFAULT_RETRY_SUBJECT, Template::CHANGE).ok()?,
    })
}

pub(super) fn read_batch(t: &mut TableReader<'_, '_, '_>) -> Option<BatchConfig> {
    let defaults = default_batch()?;
    let window = match t.take("window") {
        None => Some(defaults.window),
        Some(v) => zero_or_duration(t, "window", v),
    };
    let max_intents = t
        .integer("max_intents", 1)
        .map_or(Some(defaults.max_intents), |n| {
            NonZeroUsize::new(n.value as usize)
        });
    let subject = template(t, "subject", Template::CHANGE, defaults.subject);
    let multi_subject = template(t, "multi_subject", Template::COMMIT, defaults.multi_subject);
    let line = template(t, "line", Template::CHANGE, defaults.line);
    let retry_subject = template(t, "retry_subject", Template::CHANGE, defaults.retry_subject);
    Some(BatchConfig {
        window: window?,
        max_intents: max_intents?,
        subject: subject?,
        multi_subject: multi_subject?,
        line: line?,
        retry_subject: retry_subject?,
    })
}

/// A duration where `0s` is allowed (a window of zero: no waiting).
fn zero_or_duration(t: &TableReader<'_, '_, '_>, key: &str, mut v: Value<'_>) -> Option<Duration> {
    let pos = t.diags().pos(v.span.start);
    let text = match v.take() {
        toml_span::value::ValueInner::String(s) => s.into_owned(),
        other => {
            let msg = format!(
                "expected a duration such as \"2s\", found {}",
                other.type_str()
            );
            t.diags().error(pos, t.key_path(key), msg);
            return None;
        }
    };
    if text.trim_end_matches(|c: char| c.is_ascii_alphabetic()) == "0" {
        return Some(Duration::ZERO);
    }
    match crate::duration::parse_duration(&text) {
        Ok(d) => Some(Duration::from_millis(d.as_ms())),
        Err(e) => {
            t.diags().error(pos, t.key_path(key), e);
            None
        }
    }
}

fn template(
    t: &mut TableReader<'_, '_, '_>,
    key: &'static str,
    allowed: &[&'static str],
    default: Template,
) -> Option<Template> {
    let Some(text) = t.string(key) else {
        return Some(default);
    };
    match Template::parse(&text.value, allowed) {
        Ok(tpl) => Some(tpl),
        Err(e) => {
            t.diags().error(text.pos, t.key_path(key), e);
            None
        }
    }
}
