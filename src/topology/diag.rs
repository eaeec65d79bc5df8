//! Validation errors that point at `file:line:column` and name the key at fault.

use std::cell::RefCell;
use std::fmt;

/// A position in a topology file, 1-based like editors show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// A value together with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located<T> {
    pub value: T,
    pub pos: Pos,
}

/// One problem found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub pos: Pos,
    /// The offending key as a path, e.g. `operators[2].ttl`.
    pub key: String,
    pub message: String,
}

/// Everything wrong with a file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub diagnostics: Vec<Diagnostic>,
}

impl ConfigError {
    /// A file that is not TOML at all: one diagnostic at the parser's position.
    pub fn syntax(diags: &Diags<'_>, file: &str, e: &toml_span::Error) -> ConfigError {
        let pos = match e.line_info {
            Some((line, column)) => Pos {
                line: line + 1,
                column: column + 1,
            },
            None => diags.pos(e.span.start),
        };
        ConfigError {
            file: file.to_owned(),
            diagnostics: vec![Diagnostic {
                pos,
                key: "(syntax)".into(),
                message: e.to_string(),
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.diagnostics.len();
        writeln!(
            f,
            "{}: {count} error{} found",
            self.file,
            if count == 1 { "" } else { "s" }
        )?;
        for d in &self.diagnostics {
            writeln!(
                f,
                "{}:{}:{}: `{}`: {}",
                self.file, d.pos.line, d.pos.column, d.key, d.message
            )?;
        }
        Ok(())
    }
}

/// Collects diagnostics while a file is read, so that all of them can be
/// reported at once instead of only the first.
pub struct Diags<'s> {
    src: &'s str,
    line_starts: Vec<usize>,
    list: RefCell<Vec<Diagnostic>>,
}

impl<'s> Diags<'s> {
    pub fn new(src: &'s str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(src.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Diags {
            src,
            line_starts,
            list: RefCell::new(Vec::new()),
        }
    }

    /// Converts a byte offset into a line and a column counted in characters.
    pub fn pos(&self, offset: usize) -> Pos {
        let offset = offset.min(self.src.len());
        let line = self
            .line_starts
            .partition_point(|&start| start <= offset)
            .max(1);
        let start = self.line_starts[line - 1];
        let column = self
            .src
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count())
            + 1;
        Pos { line, column }
    }

    pub fn error(&self, pos: Pos, key: impl Into<String>, message: impl Into<String>) {
        self.list.borrow_mut().push(Diagnostic {
            pos,
            key: key.into(),
            message: message.into(),
        });
    }

    pub fn has_errors(&self) -> bool {
        !self.list.borrow().is_empty()
    }

    /// The collected errors sorted by position, or `Ok` when there are none.
    pub fn finish(self, file: &str) -> Result<(), ConfigError> {
        let mut diagnostics = self.list.into_inner();
        if diagnostics.is_empty() {
            return Ok(());
        }
        diagnostics.sort_by_key(|d| (d.pos.line, d.pos.column));
        diagnostics.dedup();
        Err(ConfigError {
            file: file.to_owned(),
            diagnostics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_lines_and_character_columns() {
        let d = Diags::new("ab\nçd = 1\n");
        assert_eq!(d.pos(0), Pos { line: 1, column: 1 });
        assert_eq!(d.pos(3), Pos { line: 2, column: 1 });
        // `ç` is two bytes but one column.
        assert_eq!(d.pos(5), Pos { line: 2, column: 2 });
    }

    #[test]
    fn errors_are_listed_in_file_order() {
        let d = Diags::new("a\nb\nc\n");
        d.error(d.pos(4), "c", "third");
        d.error(d.pos(0), "a", "first");
        let err = d.finish("t.toml").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(
                "t.toml: 2 errors found\nt.toml:1:1: `a`: first\nt.toml:3:1: `c`: third"
            ),
            "{text}"
        );
    }
}
