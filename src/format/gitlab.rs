//! The `gitlab` format: GitLab's push and merge request webhooks (GitLab
//! docs "Webhook events": Push events, Merge request events).
//!
//! The event is told by the body's `object_kind` (replay carries no
//! `X-Gitlab-Event` header): `push` and `merge_request` are read, any other
//! kind (`tag_push`, `note`, `pipeline`, `build`...) is ignored as itself.
//!
//! Push fields read: `ref` (`refs/heads/BRANCH`), `after` (the commit; all
//! zeros for a deleted branch, ignored as `push:delete`), `user_username`
//! (the author), `project.path_with_namespace`. Merge request fields read,
//! from `object_attributes`: `action` (only `merge` counts; the others are
//! ignored as `merge_request:ACTION`), `target_branch`, `iid`, and the
//! commit the target branch ends at: `merge_commit_sha`, else
//! `squash_commit_sha`, else `last_commit.id` (a fast-forward merge); and
//! `user.username` (the author), `project.path_with_namespace`.

use super::util::{git_record, parse, At, ZERO_COMMIT};
use super::{DecodeError, DecodeOptions, Decoded};
use crate::record::GitFields;

/// The members this decoder reads (the parser skips the others).
const KEYS: &[&str] = &[
    "object_kind",
    "ref",
    "after",
    "user_username",
    "project",
    "path_with_namespace",
    "object_attributes",
    "action",
    "merge_commit_sha",
    "squash_commit_sha",
    "last_commit",
    "id",
    "target_branch",
    "iid",
    "user",
    "username",
];

pub(super) fn decode(json: &str, opts: &DecodeOptions) -> Result<Decoded, DecodeError> {
    let value = parse(json, KEYS)?;
    let root = At::root(&value);
    match root.req_name("object_kind")? {
        "push" => push(&root, opts),
        "merge_request" => merge_request(&root, opts),
        other => Ok(Decoded::ignored(other)),
    }
}

fn push(root: &At<'_, '_>, opts: &DecodeOptions) -> Result<Decoded, DecodeError> {
    let reference = root.req_str("ref")?;
    let Some(branch) = reference.strip_prefix("refs/heads/") else {
        return Ok(Decoded::ignored("push:other"));
    };
    let after = root.req_str("after")?;
    if after == ZERO_COMMIT {
        return Ok(Decoded::ignored("push:delete"));
    }
    let fields = GitFields {
        repository: Some(repository(root)?),
        branch: Some(branch.to_owned()),
        commit: Some(after.to_owned()),
        author: root.opt_str("user_username")?.map(str::to_owned),
        event: Some("push".into()),
        ..GitFields::default()
    };
    let origins = [
        ("repository", "project.path_with_namespace"),
        ("branch", "ref"),
        ("commit", "after"),
        ("author", "user_username"),
    ];
    git_record(root, &origins, fields, opts).map(Decoded::one)
}

fn merge_request(root: &At<'_, '_>, opts: &DecodeOptions) -> Result<Decoded, DecodeError> {
    let mr = root.req("object_attributes")?;
    let action = mr.opt_str("action")?.unwrap_or("none");
    if action != "merge" {
        return Ok(Decoded::ignored(format!("merge_request:{action}")));
    }
    let (commit_path, commit) = merged_commit(&mr)?;
    let author = match root.get("user")? {
        Some(user) => user.opt_str("username")?,
        None => None,
    };
    let fields = GitFields {
        repository: Some(repository(root)?),
        branch: Some(mr.req_str("target_branch")?.to_owned()),
        commit: Some(commit.to_owned()),
        author: author.map(str::to_owned),
        event: Some("merge".into()),
        pull_request: Some(
            mr.opt_u64("iid")?
                .ok_or_else(|| DecodeError::new(mr.path_of("iid"), "missing"))?,
        ),
        ..GitFields::default()
    };
    let origins = [
        ("repository", "project.path_with_namespace"),
        ("branch", "object_attributes.target_branch"),
        ("commit", commit_path),
        ("author", "user.username"),
    ];
    git_record(root, &origins, fields, opts).map(Decoded::one)
}

/// The commit a merge left the target branch at, and the path it came from.
fn merged_commit<'v>(mr: &At<'_, 'v>) -> Result<(&'static str, &'v str), DecodeError> {
    if let Some(sha) = mr.non_empty_str("merge_commit_sha")? {
        return Ok(("object_attributes.merge_commit_sha", sha));
    }
    if let Some(sha) = mr.non_empty_str("squash_commit_sha")? {
        return Ok(("object_attributes.squash_commit_sha", sha));
    }
    let last = mr.req("last_commit")?.req_str("id")?;
    Ok(("object_attributes.last_commit.id", last))
}

fn repository(root: &At<'_, '_>) -> Result<String, DecodeError> {
    Ok(root
        .req("project")?
        .req_str("path_with_namespace")?
        .to_owned())
}

#[cfg(test)]
mod tests {
    use super::super::util::testing::{error_path, run};
    use super::super::Format;
    use super::*;
    use crate::record::{GitEvent, GitEventType, Kind, Payload};

    const AFTER: &str = "da1560886d4f094c3e6c9ef40349f7d38b5d27d7";
    const MERGED: &str = "3a4b5c6d7e8f90123a4b5c6d7e8f90123a4b5c6d";

    fn push_body(reference: &str, after: &str) -> String {
        format!(
            r#"{{"object_kind":"push","event_name":"push","before":"{AFTER}","after":"{after}",
              "ref":"{reference}","checkout_sha":"{after}","user_username":"jsmith",
              "project":{{"id":15,"name":"Billing","path_with_namespace":"shop/billing"}},
              "commits":[],"total_commits_count":0}}"#
        )
    }

    fn mr_body(action: &str, merge_commit: &str) -> String {
        format!(
            r#"{{"object_kind":"merge_request","event_type":"merge_request",
              "user":{{"id":1,"name":"Administrator","username":"root"}},
              "project":{{"id":15,"path_with_namespace":"shop/billing"}},
              "object_attributes":{{"id":99,"iid":7,"target_branch":"main","source_branch":"fix",
                "state":"merged","action":"{action}","merge_commit_sha":{merge_commit},
                "last_commit":{{"id":"{AFTER}"}}}}}}"#
        )
    }

    fn git(commit: &str, author: &str, event: GitEventType, mr: Option<u64>) -> Payload {
        Payload::Git(Box::new(GitEvent {
            service: "billing".into(),
            repository: "shop/billing".into(),
            branch: "main".into(),
            commit: commit.into(),
            author: Some(author.into()),
            event,
            pull_request: mr,
            environment: None,
        }))
    }

    #[test]
    fn pushes_and_merges_become_records() {
        let push = run(
            Format::Gitlab,
            Kind::Git,
            &push_body("refs/heads/main", AFTER),
        );
        assert_eq!(
            push.records,
            vec![git(AFTER, "jsmith", GitEventType::Push, None)]
        );
        let merge = run(
            Format::Gitlab,
            Kind::Git,
            &mr_body("merge", &format!(r#""{MERGED}""#)),
        );
        assert_eq!(
            merge.records,
            vec![git(MERGED, "root", GitEventType::Merge, Some(7))]
        );
        let squashed = mr_body("merge", "null").replace(
            r#""last_commit""#,
            &format!(r#""squash_commit_sha":"{MERGED}","last_commit""#),
        );
        let squashed = run(Format::Gitlab, Kind::Git, &squashed);
        assert_eq!(
            squashed.records,
            vec![git(MERGED, "root", GitEventType::Merge, Some(7))]
        );
        let fast_forward = run(Format::Gitlab, Kind::Git, &mr_body("merge", "null"));
        assert_eq!(
            fast_forward.records,
            vec![git(AFTER, "root", GitEventType::Merge, Some(7))]
        );
    }

    #[test]
    fn everything_else_is_ignored_with_its_type() {
        let cases = [
            (push_body("refs/heads/old", ZERO_COMMIT), "push:delete"),
            (push_body("refs/merge-requests/1/head", AFTER), "push:other"),
            (mr_body("open", "null"), "merge_request:open"),
            (mr_body("close", "null"), "merge_request:close"),
            (mr_body("update", "null"), "merge_request:update"),
            (
                r#"{"object_kind":"tag_push","ref":"refs/tags/v1"}"#.to_owned(),
                "tag_push",
            ),
            (r#"{"object_kind":"pipeline"}"#.to_owned(), "pipeline"),
        ];
        for (json, kind) in cases {
            let decoded = run(Format::Gitlab, Kind::Git, &json);
            assert_eq!(decoded.ignored, [kind], "{json}");
            assert!(decoded.records.is_empty());
        }
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("{}".to_owned(), "object_kind"),
            (r#"{"object_kind":""}"#.to_owned(), "object_kind"),
            (r#"{"object_kind":"push"}"#.to_owned(), "ref"),
            (push_body("refs/heads/main", "xyz"), "after"),
            (
                push_body("refs/heads/main", AFTER)
                    .replace(r#","path_with_namespace":"shop/billing""#, ""),
                "project.path_with_namespace",
            ),
            (mr_body("merge", "42"), "object_attributes.merge_commit_sha"),
            (
                mr_body("merge", r#""nothex""#),
                "object_attributes.merge_commit_sha",
            ),
            (
                mr_body("merge", "null").replace(r#""iid":7,"#, ""),
                "object_attributes.iid",
            ),
            (
                r#"{"object_kind":"merge_request"}"#.to_owned(),
                "object_attributes",
            ),
        ];
        for (json, path) in cases {
            assert_eq!(error_path(Format::Gitlab, Kind::Git, &json), path, "{json}");
        }
    }
}
