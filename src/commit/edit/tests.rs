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
    ];
    for (text, why) in cases {
        let e = error(text, "app", "app:v2");
        assert!(e.contains(why), "{text:?}: {e}");
    }
}

#[test]
fn broken_markers_are_errors_with_their_line() {
    let e = error(
        "a: 1\nb: x # {\"sluice\": \"app:version\"}\n",
        "other",
        "app:v2",
    );
    assert!(e.starts_with("line 2: malformed sluice marker"), "{e}");
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
