use proptest::prelude::*;

use super::*;

const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn image(reference: &str) -> ImageRef {
    ImageRef::parse(reference).expect("test image")
}

fn changed(text: &str, service: &str, reference: &str) -> String {
    match set_image(text, service, &image(reference)) {
        Ok(Edit::Changed(out)) => out,
        other => panic!("expected a change, got {other:?}"),
    }
}

fn error(text: &str, service: &str, reference: &str) -> String {
    match set_image(text, service, &image(reference)) {
        Err(e) => e.to_string(),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn whole_reference_marker_changes_only_the_value() {
    let text = "spec:\n  image: reg.io/app:v1 # {\"sluice\": \"app\"}\n  other: x\n";
    assert_eq!(
        changed(text, "app", "reg.io/app:v2"),
        "spec:\n  image: reg.io/app:v2 # {\"sluice\": \"app\"}\n  other: x\n"
    );
}

#[test]
fn split_markers_and_quotes_keep_their_style() {
    let text = format!(
        "image:\n  repository: 'reg.io/app' # {{\"sluice\": \"app:name\"}}\n  tag: \"v1\" # {{\"sluice\": \"app:tag\"}}\n  digest: {D1} # {{\"sluice\": \"app:digest\"}}\n"
    );
    let out = changed(&text, "app", &format!("reg.io/team/app:v2@{D2}"));
    assert_eq!(
        out,
        format!(
            "image:\n  repository: 'reg.io/team/app' # {{\"sluice\": \"app:name\"}}\n  tag: \"v2\" # {{\"sluice\": \"app:tag\"}}\n  digest: {D2} # {{\"sluice\": \"app:digest\"}}\n"
        )
    );
    assert_eq!(
        current_image(&out, "app").unwrap(),
        Some(format!("reg.io/team/app:v2@{D2}"))
    );
}

#[test]
fn digest_field_is_emptied_when_the_image_has_none() {
    let text = format!(
        "a: {D1} # {{\"sluice\": \"app:digest\"}}\nb: \"{D1}\" # {{\"sluice\": \"app:digest\"}}\n"
    );
    let out = changed(&text, "app", "app:v2");
    assert_eq!(
        out,
        "a:  # {\"sluice\": \"app:digest\"}\nb: \"\" # {\"sluice\": \"app:digest\"}\n"
    );
    // And filled again in place.
    assert_eq!(changed(&out, "app", &format!("app@{D1}")), text);
    assert_eq!(
        set_image(&out, "app", &image("app:v3")).unwrap(),
        Edit::Unchanged
    );
}

#[test]
fn tag_marker_needs_a_tag() {
    let text = "tag: v1 # {\"sluice\": \"app:tag\"}\n";
    let e = error(text, "app", &format!("app@{D1}"));
    assert!(e.contains("line 1") && e.contains("has none"), "{e}");
}

#[test]
fn unchanged_and_no_marker() {
    let text = "image: app:v1 # {\"sluice\": \"app\"}\nimage: web:v1 # {\"sluice\": \"web\"}\n";
    assert_eq!(
        set_image(text, "app", &image("app:v1")).unwrap(),
        Edit::Unchanged
    );
    assert_eq!(
        set_image(text, "api", &image("app:v1")).unwrap(),
        Edit::NoMarker
    );
    assert_eq!(
        changed(text, "web", "web:v2"),
        "image: app:v1 # {\"sluice\": \"app\"}\nimage: web:v2 # {\"sluice\": \"web\"}\n"
    );
}

#[test]
fn empty_value_is_filled_but_not_a_nested_block() {
    assert_eq!(
        changed("image: # {\"sluice\": \"app\"}\n", "app", "app:v1"),
        "image: app:v1 # {\"sluice\": \"app\"}\n"
    );
    assert_eq!(
        changed("- #  {\"sluice\":\"app\"}", "app", "app:1.10"),
        "- app:1.10 #  {\"sluice\":\"app\"}"
    );
    // No style to keep: quoted only because plain would read as a number.
    assert_eq!(
        changed("a: # {\"sluice\": \"app\"}", "app", "1:20"),
        "a: \"1:20\" # {\"sluice\": \"app\"}"
    );
    let nested = "image: # {\"sluice\": \"app\"}\n  repository: app\n";
    assert!(error(nested, "app", "app:v1").contains("nested block"));
}

#[test]
fn markers_in_block_scalars_and_quotes_are_content() {
    let text = "notes: |\n  image: app:v1 # {\"sluice\": \"app\"}\nq: \"x # {\\\"sluice\\\": \\\"app\\\"}\"\n";
    assert_eq!(
        set_image(text, "app", &image("app:v2")).unwrap(),
        Edit::NoMarker
    );
}

#[test]
fn uneditable_marker_positions_are_refused() {
    let cases = [
        ("a: &x app:v1\nb: *x # {\"sluice\": \"app\"}\n", "alias"),
        ("b: | # {\"sluice\": \"app\"}\n  app:v1\n", "block scalar"),
        ("b: [app:v1] # {\"sluice\": \"app\"}\n", "flow"),
        ("# {\"sluice\": \"app\"}\nb: app:v1\n", "only a comment"),
        ("b: \"app:\\x41\" # {\"sluice\": \"app\"}\n", "escapes"),
        ("b: app\n  :v1 # {\"sluice\": \"app\"}\n", "continuation"),
        ("b: !!int '3' # {\"sluice\": \"app\"}\n", "explicit tag"),
        (
            "f: {a: '}',\n  image: app:v1, # {\"sluice\": \"app\"}\n  }\n",
            "inside a flow collection",
        ),
    ];
    for (text, why) in cases {
        let e = error(text, "app", "app:v2");
        assert!(e.contains(why), "{text:?}: {e}");
    }
}

#[test]
fn broken_markers_are_errors_with_their_line() {
    let text = "a: 1\nb: x # {\"sluice\": \"app:version\"}\nc: web:v1 # {\"sluice\": \"web\"}\n";
    let e = error(text, "app", "app:v2");
    assert!(e.starts_with("line 2: malformed sluice marker"), "{e}");
    // Another service's typo does not block this one...
    assert!(set_image(text, "web", &image("web:v2")).is_ok());
    // ...but a marker that names no service blocks all.
    let text = "b: x # {\"sluice\": 3}\nc: web:v1 # {\"sluice\": \"web\"}\n";
    let e = error(text, "web", "web:v2");
    assert!(e.starts_with("line 1: malformed sluice marker"), "{e}");
}

#[test]
fn plain_values_that_would_change_type_are_refused() {
    let text = "tag: v1 # {\"sluice\": \"app:tag\"}\n";
    let e = error(text, "app", "app:1.10");
    assert!(e.contains("line 1") && e.contains("number"), "{e}");
    assert_eq!(
        changed(
            "tag: \"v1\" # {\"sluice\": \"app:tag\"}\n",
            "app",
            "app:1.10"
        ),
        "tag: \"1.10\" # {\"sluice\": \"app:tag\"}\n"
    );
    assert_eq!(
        changed(
            "tag: !!str v1 # {\"sluice\": \"app:tag\"}\n",
            "app",
            "app:1.10"
        ),
        "tag: !!str 1.10 # {\"sluice\": \"app:tag\"}\n"
    );
}

#[test]
fn invalid_references_are_refused_before_any_file() {
    for bad in [
        "app:v1\nx",
        "app:a: b",
        "app:v1 #x",
        "App:v1",
        "app",
        "app:",
        &format!("app@{}", &D1[..20]),
    ] {
        let e = ImageRef::parse(bad)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.starts_with("invalid image reference"), "{bad:?}: {e}");
    }
    let handmade = ImageRef {
        repository: "app".into(),
        tag: Some("v1\n  evil: true".into()),
        digest: None,
    };
    let text = "image: app:v0 # {\"sluice\": \"app\"}\n";
    let e = set_image(text, "app", &handmade).unwrap_err().to_string();
    assert!(e.contains("not a valid tag"), "{e}");
    assert!(set_image(text, "a:b", &image("app:v1")).is_err());
}

#[test]
fn crlf_bom_and_missing_final_newline_survive() {
    let text = "\u{feff}a: 1\r\nimage: app:v1 # {\"sluice\": \"app\"}\r\nz: 2";
    assert_eq!(
        changed(text, "app", "app:v2"),
        "\u{feff}a: 1\r\nimage: app:v2 # {\"sluice\": \"app\"}\r\nz: 2"
    );
    assert!(error(
        "image: app:v1 # {\"sluice\": \"app\"}\rz: 1\n",
        "app",
        "app:v2"
    )
    .contains("carriage return"));
}

#[test]
fn kustomize_entries_follow_the_repository() {
    let text =
        "images:\n- name: app\n  newTag: v1\n- name: web\n  newName: reg.io/web\n  digest: D\n";
    let text = text.replace('D', D1);
    let out = changed(&text, "any", "app:v2");
    assert_eq!(out, text.replace("newTag: v1", "newTag: v2"));
    // Digest without tag: inserted; an old newTag stays.
    let out = changed(&text, "any", &format!("app@{D2}"));
    assert_eq!(
        out,
        text.replace("newTag: v1\n", &format!("newTag: v1\n  digest: {D2}\n"))
    );
    // newName matches; a digest the image lacks goes with its line; a tag is inserted.
    let out = changed(&text, "any", "reg.io/web:v3");
    assert_eq!(
        out,
        "images:\n- name: app\n  newTag: v1\n- name: web\n  newName: reg.io/web\n  newTag: v3\n"
    );
    assert_eq!(
        current_image_in(&out, "any", "reg.io/web")
            .unwrap()
            .as_deref(),
        Some("reg.io/web:v3")
    );
    // `name` alone does not match an entry that renames to another repository.
    assert_eq!(
        set_image(&text, "any", &image("web:v3")).unwrap(),
        Edit::NoMarker
    );
}

#[test]
fn kustomize_insertion_at_end_of_file_keeps_no_final_newline() {
    let text = "images:\r\n  - name: app";
    assert_eq!(
        changed(text, "any", "app:v1"),
        "images:\r\n  - name: app\r\n    newTag: v1"
    );
    let text = format!("images:\n- name: app\n  newTag: v1\n  digest: {D1}");
    assert_eq!(
        changed(&text, "any", "app:v1"),
        "images:\n- name: app\n  newTag: v1"
    );
}

#[test]
fn images_lists_that_are_not_kustomize_are_left_alone() {
    let helm = "images:\n- name: app\n  tag: v1\n";
    assert_eq!(
        set_image(helm, "any", &image("app:v2")).unwrap(),
        Edit::NoMarker
    );
    let deployment = "kind: Deployment\nimages:\n- name: app\n  newTag: v1\n";
    assert_eq!(
        set_image(deployment, "any", &image("app:v2")).unwrap(),
        Edit::NoMarker
    );
}

#[test]
fn a_marker_and_a_kustomize_entry_that_disagree_conflict() {
    let text = "images:\n- name: app\n  newTag: v1 # {\"sluice\": \"app:name\"}\n";
    assert!(error(text, "app", "app:v2").contains("line 3"));
    let agree = "images:\n- name: app\n  newTag: v1 # {\"sluice\": \"app:tag\"}\n";
    assert_eq!(changed(agree, "app", "app:v2"), agree.replace("v1", "v2"));
}

#[test]
fn current_image_reads_markers() {
    let text = "a: x # {\"sluice\": \"app:tag\"}\n";
    assert_eq!(current_image(text, "app").unwrap(), None);
    assert_eq!(
        current_image("a: app:v1 # {\"sluice\": \"app\"}", "app")
            .unwrap()
            .as_deref(),
        Some("app:v1")
    );
    assert_eq!(current_image("a: 1", "app").unwrap(), None);
}

/// Line fragments that exercise the scanner's states.
fn fragment() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "image: app:v1 # {\"sluice\": \"app\"}",
        "  tag: \"v1\" # {\"sluice\": \"app:tag\"}",
        "  digest: '' # {\"sluice\": \"app:digest\"}",
        "- name: app",
        "  newTag: v1",
        "  digest: sha256:1111111111111111111111111111111111111111111111111111111111111111",
        "images:",
        "notes: |",
        "  text # {\"sluice\": \"app\"}",
        "q: \"open",
        "  close\" # c",
        "---",
        "",
        "# comment",
        "key:",
        "  - x: &a 1",
        "  y: *a",
        "kind: Kustomization",
        "\t tab: 1",
        "? complex",
        "image: # {\"sluice\": \"app\"}",
    ])
    .prop_map(str::to_owned)
}

proptest! {
    #[test]
    fn never_panics_on_arbitrary_text(text in "\\PC{0,200}", service in "\\PC{0,12}", raw in "[ -~\n]{0,40}") {
        let img = ImageRef { repository: "app".into(), tag: Some("v2".into()), digest: None };
        let _ = set_image(&text, &service, &img);
        let _ = current_image(&text, &service);
        let _ = current_image_in(&text, &service, "app");
        let _ = ImageRef::parse(&raw);
    }

    #[test]
    fn edits_are_idempotent_and_local(
        frags in prop::collection::vec(fragment(), 0..14),
        crlf in any::<bool>(),
        tag in "[a-z0-9][a-z0-9.-]{0,6}",
        digest in prop::option::of(Just(D2)),
    ) {
        let text = frags.join(if crlf { "\r\n" } else { "\n" });
        let img = ImageRef { repository: "app".into(), tag: Some(tag), digest: digest.map(str::to_owned) };
        if let Ok(Edit::Changed(out)) = set_image(&text, "app", &img) {
            prop_assert_eq!(set_image(&out, "app", &img).unwrap(), Edit::Unchanged);
            // Lines without a marker or kustomize key are untouched.
            let kept = |s: &str| s.lines().filter(|l| !l.contains("sluice") && !l.contains("newTag") && !l.contains("digest")).map(str::to_owned).collect::<Vec<_>>();
            prop_assert_eq!(kept(&text), kept(&out));
        }
    }
}

/// A generated line (or group of lines) of a manifest, rendered with a given image.
#[derive(Debug, Clone)]
enum Piece {
    /// A value marked for `app`: in a sequence, quoting style, anchor, gap
    /// before the comment, field, compact JSON.
    Marked {
        dash: bool,
        style: u8,
        anchor: bool,
        gap: usize,
        field: u8,
        compact: bool,
    },
    /// A value marked for another service.
    Other,
    /// A block scalar whose content looks like markers.
    Block,
    /// A multi-line single-quoted scalar whose content looks like a marker.
    Quoted,
    Comment,
    Blank,
    Document,
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        4 => (any::<bool>(), 0..3u8, any::<bool>(), 1..3usize, 0..4u8, any::<bool>()).prop_map(
            |(dash, style, anchor, gap, field, compact)| Piece::Marked { dash, style, anchor, gap, field, compact }
        ),
        1 => Just(Piece::Other),
        1 => Just(Piece::Block),
        1 => Just(Piece::Quoted),
        1 => Just(Piece::Comment),
        1 => Just(Piece::Blank),
        1 => Just(Piece::Document),
    ]
}

/// The manifest these pieces make with `image` in every marked value.
fn render(pieces: &[Piece], image: &ImageRef, eol: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    for p in pieces {
        match p {
            Piece::Marked {
                dash,
                style,
                anchor,
                gap,
                field,
                compact,
            } => {
                let (suffix, value) = match field {
                    0 => ("", image.reference()),
                    1 => (":name", image.repository.clone()),
                    2 => (":tag", image.tag.clone().unwrap_or_default()),
                    _ => (":digest", image.digest.clone().unwrap_or_default()),
                };
                let q = ["", "'", "\""][*style as usize];
                let marker = if *compact {
                    format!("#{{\"sluice\":\"app{suffix}\"}}")
                } else {
                    format!("# {{ \"sluice\" : \"app{suffix}\" }}")
                };
                if *dash {
                    lines.push("list:".into());
                }
                lines.push(format!(
                    "{}image: {}{q}{value}{q}{}{marker}",
                    if *dash { "  - " } else { "" },
                    if *anchor { "&img " } else { "" },
                    " ".repeat(*gap),
                ));
            }
            Piece::Other => lines.push("image: web:v1 # {\"sluice\": \"web\"}".into()),
            Piece::Block => lines.extend([
                "notes: |".to_owned(),
                "  image: app:v0 # {\"sluice\": \"app\"}".to_owned(),
                String::new(),
                "  # {\"sluice\": \"app:tag\"}".to_owned(),
            ]),
            Piece::Quoted => lines.extend([
                "q: 'first".to_owned(),
                "  image: app:v0 # {\"sluice\": \"app\"}".to_owned(),
                "  end' # a comment".to_owned(),
            ]),
            Piece::Comment => lines.push("# image: app:v0 # {\"sluice\": \"app\"}".into()),
            Piece::Blank => lines.push(String::new()),
            Piece::Document => lines.push("---".into()),
        }
    }
    lines.join(eol)
}

fn generated_image() -> impl Strategy<Value = ImageRef> {
    let digest = prop::option::of("[0-9a-f]{64}".prop_map(|h| format!("sha256:{h}")));
    (
        prop::sample::select(vec!["app", "reg.io/app", "reg.io:5000/team/app"]),
        "v[0-9]{1,3}",
        digest,
    )
        .prop_map(|(repository, tag, digest)| ImageRef {
            repository: repository.into(),
            tag: Some(tag),
            digest,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    /// The oracle: a manifest rendered with the old image, edited, equals the
    /// same manifest rendered with the new image, byte for byte.
    #[test]
    fn editing_equals_rendering_with_the_new_image(
        pieces in prop::collection::vec(piece(), 0..12),
        crlf in any::<bool>(),
        final_eol in any::<bool>(),
        bom in any::<bool>(),
        new in generated_image(),
        old_tag in "v[0-9]{1,3}",
    ) {
        let old = ImageRef { tag: Some(old_tag), digest: Some(D1.into()), ..new.clone() };
        let eol = if crlf { "\r\n" } else { "\n" };
        let wrap = |body: String| {
            let bom = if bom { "\u{feff}" } else { "" };
            let end = if final_eol && !body.is_empty() { eol } else { "" };
            format!("{bom}{body}{end}")
        };
        let before = wrap(render(&pieces, &old, eol));
        let after = wrap(render(&pieces, &new, eol));
        let marked = pieces.iter().any(|p| matches!(p, Piece::Marked { .. }));
        let expected = if !marked {
            Edit::NoMarker
        } else if before == after {
            Edit::Unchanged
        } else {
            Edit::Changed(after)
        };
        prop_assert_eq!(set_image(&before, "app", &new).unwrap(), expected);
    }
}

/// A generated kustomize `images:` entry.
#[derive(Debug, Clone)]
struct KEntry {
    name: &'static str,
    new_name: Option<&'static str>,
    new_tag: Option<String>,
    quoted_tag: bool,
    digest: Option<String>,
    lone_dash: bool,
}

fn kentry() -> impl Strategy<Value = KEntry> {
    let names = prop::sample::select(vec!["app", "web", "reg.io/app"]);
    let new_names = prop::option::of(prop::sample::select(vec!["reg.io/app", "reg.io/web"]));
    let digest = prop::option::of(Just(D1.to_owned()));
    (
        names,
        new_names,
        prop::option::of("v[0-9]"),
        any::<bool>(),
        digest,
        any::<bool>(),
    )
        .prop_map(
            |(name, new_name, new_tag, quoted_tag, digest, lone_dash)| KEntry {
                name,
                new_name,
                new_tag,
                quoted_tag,
                digest,
                lone_dash,
            },
        )
}

impl KEntry {
    fn produces(&self) -> &str {
        self.new_name.unwrap_or(self.name)
    }

    /// The entry after a deploy of `image` (when it matches).
    fn deployed(&self, image: &ImageRef) -> KEntry {
        if self.produces() != image.repository {
            return self.clone();
        }
        // An inserted newTag is plain (these tags need no quotes).
        let quoted_tag = self.quoted_tag && self.new_tag.is_some();
        KEntry {
            new_tag: image.tag.clone(),
            quoted_tag,
            digest: image.digest.clone(),
            ..self.clone()
        }
    }

    fn render(&self, indent: &str, out: &mut Vec<String>) {
        let mut fields = vec![format!("name: {}", self.name)];
        fields.extend(self.new_name.map(|n| format!("newName: {n}")));
        let q = if self.quoted_tag { "\"" } else { "" };
        fields.extend(self.new_tag.as_ref().map(|t| format!("newTag: {q}{t}{q}")));
        fields.extend(self.digest.as_ref().map(|d| format!("digest: {d}")));
        if self.lone_dash {
            out.push(format!("{indent}-"));
            out.extend(fields.iter().map(|f| format!("{indent}  {f}")));
        } else {
            out.push(format!("{indent}- {}", fields[0]));
            out.extend(fields[1..].iter().map(|f| format!("{indent}  {f}")));
        }
    }
}

fn render_kustomization(entries: &[KEntry], indent: &str, trailer: bool) -> String {
    let mut lines = vec!["kind: Kustomization".to_owned(), "images:".to_owned()];
    for e in entries {
        e.render(indent, &mut lines);
    }
    if trailer {
        lines.extend(["resources:".to_owned(), "- deployment.yaml".to_owned()]);
    }
    lines.join("\n")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    /// The kustomize oracle: matching entries end up with the image's tag and
    /// digest in kustomize's field order, every other byte stays.
    #[test]
    fn kustomize_edits_equal_rendering_the_deployed_entries(
        entries in prop::collection::vec(kentry(), 0..5),
        indented in any::<bool>(),
        trailer in any::<bool>(),
        repository in prop::sample::select(vec!["app", "reg.io/app", "reg.io/web"]),
        tag in "v[0-9]",
        digest in prop::option::of(Just(D2.to_owned())),
    ) {
        let image = ImageRef { repository: repository.into(), tag: Some(tag), digest };
        let indent = if indented { "  " } else { "" };
        let before = render_kustomization(&entries, indent, trailer);
        let deployed: Vec<KEntry> = entries.iter().map(|e| e.deployed(&image)).collect();
        let after = render_kustomization(&deployed, indent, trailer);
        let expected = if !entries.iter().any(|e| e.produces() == image.repository) {
            Edit::NoMarker
        } else if before == after {
            Edit::Unchanged
        } else {
            Edit::Changed(after)
        };
        prop_assert_eq!(set_image(&before, "any", &image).unwrap(), expected);
    }
}
