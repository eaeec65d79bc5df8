//! The committer's file-editing core: set a service's image in one manifest,
//! changing the bytes of the image value and nothing else.
//!
//! A full YAML round trip would lose comments, quoting and layout, so the
//! text is never re-printed. A line scanner ([`scan`]) finds the values, the
//! edit is a list of byte splices, and the result is checked before it is
//! returned: scanned again, it must have the same line structure, and
//! editing it again must change nothing.
//!
//! Values are found in two ways:
//! - setter markers, a comment `# {"sluice": "SERVICE[:name|:tag|:digest]"}`
//!   after the value (see [`marker`]);
//! - kustomize `images:` entries whose image is the intent's repository
//!   (see [`kustomize`]).

mod kustomize;
mod marker;
mod scan;
mod value;

#[cfg(test)]
mod corpus;

use std::fmt;

use marker::Field;
use scan::{Kind, Line};
use value::{Slot, Splice};

use crate::record::oci;

/// A validated OCI image reference, split the way split-field markers need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses and validates `repository[:tag][@digest]` against the OCI
    /// reference grammar; a tag or a digest is required.
    pub fn parse(reference: &str) -> Result<ImageRef, EditError> {
        let (repository, tag, digest) =
            oci::parse_reference(reference).map_err(|reason| EditError::InvalidImage {
                reference: oci::printable(reference),
                reason,
            })?;
        Ok(ImageRef {
            repository: repository.to_owned(),
            tag: tag.map(str::to_owned),
            digest: digest.map(str::to_owned),
        })
    }

    /// `repository[:tag][@digest]`.
    pub fn reference(&self) -> String {
        oci::reference(
            &self.repository,
            self.tag.as_deref(),
            self.digest.as_deref(),
        )
    }

    /// Checks every part again: the fields are public, so a value built by
    /// hand must not slip past the grammar into a file.
    pub fn validate(&self) -> Result<(), EditError> {
        let invalid = |reason| EditError::InvalidImage {
            reference: oci::printable(&self.reference()),
            reason,
        };
        oci::check_repository(&self.repository).map_err(invalid)?;
        if let Some(tag) = &self.tag {
            oci::check_tag(tag).map_err(invalid)?;
        }
        if let Some(digest) = &self.digest {
            oci::check_digest(digest).map_err(invalid)?;
        }
        if self.tag.is_none() && self.digest.is_none() {
            return Err(invalid("it has neither a tag nor a digest".into()));
        }
        Ok(())
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reference())
    }
}

/// The outcome of [`set_image`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// The new full text of the file.
    Changed(String),
    /// Markers (or kustomize entries) were found and already hold the image.
    Unchanged,
    /// Nothing in the file names the service (or, for kustomize, the repository).
    NoMarker,
}

/// Why a file was not edited. Messages name the 1-based line where there is one.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("invalid image reference `{reference}`: {reason}")]
    InvalidImage { reference: String, reason: String },
    #[error("`{service}` is not a valid service name")]
    InvalidService { service: String },
    #[error("line {line}: malformed sluice marker: {reason}")]
    BadMarker { line: usize, reason: String },
    #[error("line {line}: the marker for `{service}` is on {reason}; it must follow a single-line scalar value")]
    Uneditable {
        line: usize,
        service: String,
        reason: &'static str,
    },
    #[error("line {line}: cannot write `{value}` as a {style} value: {reason}")]
    UnsafeValue {
        line: usize,
        value: String,
        style: &'static str,
        reason: &'static str,
    },
    #[error("line {line}: the `{service}:{field}` marker needs the image's {field}, but `{image}` has none")]
    MissingPart {
        line: usize,
        service: String,
        field: &'static str,
        image: String,
    },
    #[error("line {line}: kustomize images entry: {reason}")]
    Kustomize { line: usize, reason: String },
    #[error("line {line}: two edits want different bytes here (a marker and a kustomize entry disagree)")]
    Conflict { line: usize },
    #[error("line {line}: a carriage return without a line feed; only LF and CRLF line endings are supported")]
    LoneCarriageReturn { line: usize },
    #[error("refusing to write: the edited text would not read back as intended ({reason}); this is a bug in sluice")]
    Verify { reason: String },
}

/// Sets `service`'s image in one file's text.
///
/// Every marker for the service and every kustomize entry for the image's
/// repository is updated; on any error nothing is changed.
pub fn set_image(text: &str, service: &str, image: &ImageRef) -> Result<Edit, EditError> {
    check_service(service)?;
    image.validate()?;
    let lines = lines(text)?;
    let plan = plan(text, &lines, service, image)?;
    if !plan.found {
        return Ok(Edit::NoMarker);
    }
    if plan.splices.is_empty() {
        return Ok(Edit::Unchanged);
    }
    let edited = apply(text, &plan.splices);
    verify(&lines, &edited, service, image, &plan.splices)?;
    Ok(Edit::Changed(edited))
}

/// The image currently set for `service` by its markers: the first whole
/// reference, else the `:name` marker with the `:tag` and `:digest` ones.
/// `None` when no marker names the service, or only tag/digest markers do.
pub fn current_image(text: &str, service: &str) -> Result<Option<String>, EditError> {
    check_service(service)?;
    let lines = lines(text)?;
    let slots = marked(text, &lines, service)?;
    let first = |field| {
        slots
            .iter()
            .find(|(f, _)| *f == field)
            .and_then(|(_, s)| s.read(text))
    };
    if let Some(whole) = first(Field::Whole) {
        return Ok(Some(whole.to_owned()));
    }
    Ok(
        first(Field::Name)
            .map(|name| oci::reference(name, first(Field::Tag), first(Field::Digest))),
    )
}

/// Like [`current_image`], falling back to a kustomize entry for `repository`.
pub fn current_image_in(
    text: &str,
    service: &str,
    repository: &str,
) -> Result<Option<String>, EditError> {
    if let Some(image) = current_image(text, service)? {
        return Ok(Some(image));
    }
    Ok(kustomize::current(text, &lines(text)?, repository))
}

fn check_service(service: &str) -> Result<(), EditError> {
    if oci::is_name(service) {
        Ok(())
    } else {
        Err(EditError::InvalidService {
            service: oci::printable(service),
        })
    }
}

fn lines(text: &str) -> Result<Vec<Line>, EditError> {
    scan::scan(text).map_err(|line| EditError::LoneCarriageReturn { line })
}

/// What an edit would do.
struct Plan {
    /// A marker or kustomize entry names the service or image.
    found: bool,
    /// Sorted, non-overlapping.
    splices: Vec<Splice>,
}

fn plan(text: &str, lines: &[Line], service: &str, image: &ImageRef) -> Result<Plan, EditError> {
    let slots = marked(text, lines, service)?;
    let whole = image.reference();
    let mut splices = Vec::new();
    for (field, slot) in &slots {
        let new = match field {
            Field::Whole => Some(whole.as_str()),
            Field::Name => Some(image.repository.as_str()),
            Field::Tag => Some(
                image
                    .tag
                    .as_deref()
                    .ok_or_else(|| missing(slot, service, "tag", image))?,
            ),
            // No digest: empty the field, or the old digest would still win.
            Field::Digest => image.digest.as_deref(),
        };
        splices.extend(slot.write(text, new)?);
    }
    let (matched, more) = kustomize::plan(text, lines, image)?;
    splices.extend(more);
    Ok(Plan {
        found: matched || !slots.is_empty(),
        splices: merge(splices)?,
    })
}

fn missing(slot: &Slot, service: &str, field: &'static str, image: &ImageRef) -> EditError {
    EditError::MissingPart {
        line: slot.line,
        service: service.to_owned(),
        field,
        image: image.reference(),
    }
}

/// The values marked for `service`, with the field each holds.
fn marked(text: &str, lines: &[Line], service: &str) -> Result<Vec<(Field, Slot)>, EditError> {
    let mut slots = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(hash) = line.comment else { continue };
        let comment = text.get(hash + 1..line.end).unwrap_or("");
        let marker = match marker::parse(comment) {
            Ok(marker) => marker,
            Err(broken) if broken.concerns(service) => {
                let reason = broken.reason;
                return Err(EditError::BadMarker {
                    line: line.number,
                    reason,
                });
            }
            // Another service's typo is that service's error.
            Err(_) => None,
        };
        let Some(marker) = marker.filter(|m| m.service == service) else {
            continue;
        };
        let slot = Slot::of(text, lines, i).map_err(|reason| EditError::Uneditable {
            line: line.number,
            service: service.to_owned(),
            reason,
        })?;
        slots.push((marker.field, slot));
    }
    Ok(slots)
}

/// Sorts splices, drops exact duplicates (a marker on a kustomize `newTag`),
/// and refuses overlapping ones.
fn merge(mut splices: Vec<Splice>) -> Result<Vec<Splice>, EditError> {
    splices.sort_by_key(|s| (s.range.start, s.range.end));
    splices.dedup();
    for pair in splices.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let same_point = a.range == b.range;
        if b.range.start < a.range.end || same_point {
            return Err(EditError::Conflict { line: b.line });
        }
    }
    Ok(splices)
}

fn apply(text: &str, splices: &[Splice]) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    let mut pos = 0;
    for s in splices {
        out.push_str(&text[pos..s.range.start]);
        out.push_str(&s.text);
        pos = s.range.end;
    }
    out.push_str(&text[pos..]);
    out
}

/// What must not change about a line.
#[derive(Debug, PartialEq, Eq)]
struct Shape {
    kind: std::mem::Discriminant<Kind>,
    indent: usize,
    dashes: usize,
    key: Option<String>,
}

fn shape(line: &Line) -> Shape {
    let (indent, dashes, key) = match &line.kind {
        Kind::Node(n) => (n.indent, n.dashes, n.key.clone()),
        _ => (0, 0, None),
    };
    Shape {
        kind: std::mem::discriminant(&line.kind),
        indent,
        dashes,
        key,
    }
}

/// Checks the edited text before anyone writes it: every old line keeps its
/// shape (inserted and removed kustomize lines aside), and editing again
/// changes nothing, so the values read back exactly as written.
fn verify(
    old: &[Line],
    edited: &str,
    service: &str,
    image: &ImageRef,
    splices: &[Splice],
) -> Result<(), EditError> {
    let fail = |reason: String| EditError::Verify { reason };
    let new = scan::scan(edited).map_err(|line| fail(format!("line {line} has a lone CR")))?;
    let mut k = 0;
    for line in old {
        if !splices.iter().any(|s| s.removes == Some(line.number)) {
            let same = new.get(k).is_some_and(|n| shape(n) == shape(line));
            if !same {
                return Err(fail(format!("line {} changed its structure", line.number)));
            }
            k += 1;
        }
        let adds: usize = splices
            .iter()
            .filter(|s| s.line == line.number)
            .map(|s| s.adds)
            .sum();
        for added in new.iter().skip(k).take(adds) {
            if !matches!(&added.kind, Kind::Node(n) if n.dashes == 0 && n.key.is_some()) {
                let n = added.number;
                return Err(fail(format!("inserted line {n} is not a key: value line")));
            }
        }
        k += adds;
    }
    if k != new.len() {
        return Err(fail(format!("{} lines expected, {} found", k, new.len())));
    }
    let again = plan(edited, &new, service, image)
        .map_err(|e| fail(format!("editing again fails: {e}")))?;
    if !again.found || !again.splices.is_empty() {
        return Err(fail("editing again would change it further".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
