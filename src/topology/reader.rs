//! A reader over a parsed TOML table that records an error for every wrong,
//! missing or unknown key and carries on, so one pass finds every problem.

use std::collections::BTreeSet;

use toml_span::value::{Table, Value, ValueInner};

use super::diag::{Diags, Located, Pos};
use crate::duration::{parse_duration, DurationMs};

/// Reads the keys of one table. Keys that were never asked for are reported
/// as unknown by [`TableReader::finish`].
pub struct TableReader<'d, 's, 'de> {
    diags: &'d Diags<'s>,
    table: Table<'de>,
    /// Path of this table, e.g. `operators[2]`.
    path: String,
    pos: Pos,
    known: BTreeSet<&'static str>,
}

impl<'d, 's, 'de> TableReader<'d, 's, 'de> {
    /// Starts reading `value` as a table; reports and returns `None` when it is not one.
    pub fn new(diags: &'d Diags<'s>, mut value: Value<'de>, path: String) -> Option<Self> {
        let pos = diags.pos(value.span.start);
        match value.take() {
            ValueInner::Table(table) => Some(TableReader {
                diags,
                table,
                path,
                pos,
                known: BTreeSet::new(),
            }),
            other => {
                diags.error(
                    pos,
                    path,
                    format!("expected a table, found {}", other.type_str()),
                );
                None
            }
        }
    }

    pub fn diags(&self) -> &'d Diags<'s> {
        self.diags
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Where the table starts; errors about the table as a whole point here.
    pub fn pos(&self) -> Pos {
        self.pos
    }

    pub fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub fn contains(&self, key: &str) -> bool {
        self.table.keys().any(|k| k.name == key)
    }

    /// Removes `key` from the table, remembering it as a known key.
    pub fn take(&mut self, key: &'static str) -> Option<Value<'de>> {
        self.known.insert(key);
        let found = self.table.keys().find(|k| k.name == key).cloned()?;
        self.table.remove(&found)
    }

    fn wrong_type(&self, key: &str, expected: &str, value: &Value<'de>, found: &str) {
        self.diags.error(
            self.diags.pos(value.span.start),
            self.key_path(key),
            format!("expected {expected}, found {found}"),
        );
    }

    /// An optional string.
    pub fn string(&mut self, key: &'static str) -> Option<Located<String>> {
        let mut value = self.take(key)?;
        let pos = self.diags.pos(value.span.start);
        match value.take() {
            ValueInner::String(s) => Some(Located {
                value: s.into_owned(),
                pos,
            }),
            other => {
                self.wrong_type(key, "a string", &value, other.type_str());
                None
            }
        }
    }

    /// A string that must be present.
    pub fn required_string(&mut self, key: &'static str) -> Option<Located<String>> {
        let present = self.contains(key);
        let value = self.string(key);
        if !present {
            self.missing(key);
        }
        value
    }

    pub fn missing(&self, key: &str) {
        self.diags.error(
            self.pos,
            self.key_path(key),
            format!("missing required key `{key}`"),
        );
    }

    pub fn bool(&mut self, key: &'static str) -> Option<bool> {
        let mut value = self.take(key)?;
        match value.take() {
            ValueInner::Boolean(b) => Some(b),
            other => {
                self.wrong_type(key, "true or false", &value, other.type_str());
                None
            }
        }
    }

    /// An optional integer of at least `min`.
    pub fn integer(&mut self, key: &'static str, min: i64) -> Option<Located<u64>> {
        let mut value = self.take(key)?;
        let pos = self.diags.pos(value.span.start);
        match value.take() {
            ValueInner::Integer(i) if i >= min => Some(Located {
                value: i as u64,
                pos,
            }),
            ValueInner::Integer(i) => {
                self.diags.error(
                    pos,
                    self.key_path(key),
                    format!("must be at least {min}, found {i}"),
                );
                None
            }
            other => {
                self.wrong_type(key, "an integer", &value, other.type_str());
                None
            }
        }
    }

    /// An optional duration such as `30s`.
    pub fn duration(&mut self, key: &'static str) -> Option<Located<DurationMs>> {
        let text = self.string(key)?;
        match parse_duration(&text.value) {
            Ok(d) => Some(Located {
                value: d,
                pos: text.pos,
            }),
            Err(e) => {
                self.diags.error(text.pos, self.key_path(key), e);
                None
            }
        }
    }

    pub fn required_duration(&mut self, key: &'static str) -> Option<Located<DurationMs>> {
        if !self.contains(key) {
            self.missing(key);
        }
        self.duration(key)
    }

    /// An optional array of strings.
    pub fn string_list(&mut self, key: &'static str) -> Option<Located<Vec<Located<String>>>> {
        let mut value = self.take(key)?;
        let pos = self.diags.pos(value.span.start);
        let items = match value.take() {
            ValueInner::Array(items) => items,
            other => {
                self.wrong_type(key, "an array of strings", &value, other.type_str());
                return None;
            }
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, mut item) in items.into_iter().enumerate() {
            let item_pos = self.diags.pos(item.span.start);
            match item.take() {
                ValueInner::String(s) => out.push(Located {
                    value: s.into_owned(),
                    pos: item_pos,
                }),
                other => self.diags.error(
                    item_pos,
                    format!("{}[{i}]", self.key_path(key)),
                    format!("expected a string, found {}", other.type_str()),
                ),
            }
        }
        Some(Located { value: out, pos })
    }

    /// An optional array of tables (`[[key]]`), each as its own reader input.
    pub fn tables(&mut self, key: &'static str) -> Vec<(String, Value<'de>)> {
        let Some(mut value) = self.take(key) else {
            return Vec::new();
        };
        match value.take() {
            ValueInner::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| (format!("{}[{i}]", self.key_path(key)), v))
                .collect(),
            other => {
                self.wrong_type(
                    key,
                    &format!("an array of tables (`[[{key}]]`)"),
                    &value,
                    other.type_str(),
                );
                Vec::new()
            }
        }
    }

    /// Hands over every remaining entry, for tables whose keys are free-form
    /// (librdkafka properties); nothing is reported as unknown.
    pub fn into_entries(self) -> Vec<(toml_span::value::Key<'de>, Value<'de>)> {
        self.table.into_iter().collect()
    }

    /// Reports every key that was never asked for.
    pub fn finish(self) {
        for key in self.table.keys() {
            let expected: Vec<&str> = self.known.iter().copied().collect();
            self.diags.error(
                self.diags.pos(key.span.start),
                self.key_path(&key.name),
                format!(
                    "unknown key `{}`; expected one of: {}",
                    key.name,
                    expected.join(", ")
                ),
            );
        }
    }
}
