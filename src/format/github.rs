//! The `github` format: GitHub's `push` and `pull_request` webhooks
//! (docs.github.com "Webhook events and payloads"; payload examples in
//! octokit/webhooks `payload-examples/api.github.com/`).
//!
//! Replay carries no `X-GitHub-Event` header, so the event is told by its
//! body: a push has `ref` and `after` (without `ref_type`); a pull request
//! event has `pull_request` (and no `review`, `comment` or `thread`). A
//! body that has one of these but not the fields read is an error.
//!
//! Every other event is ignored, so that a hook sent "everything" does not
//! fill the dead letters: `create` and `delete` (a branch or tag created or
//! deleted: `ref` and `ref_type`, `master_branch` only in a create), `ping`
//! (`zen` or `hook_id`), and those told by the object they carry (`issues`,
//! `issue_comment`, `workflow_run`, `workflow_job`, `check_suite`,
//! `check_run`, `status`, `release`, `deployment`, `deployment_status`,
//! `pull_request_review`, ... see [`OTHER_EVENTS`]) as their event name;
//! any other body (an object) as `unknown`.
//!
//! Push fields read: `ref` (`refs/heads/BRANCH`; a tag is ignored as
//! `push:tag`), `deleted` (ignored as `push:delete`), `after` (the commit),
//! `repository.full_name`, `pusher.name` (the author). Pull request fields
//! read: `action` and `pull_request.merged` (only `closed` with `merged:
//! true` counts: a merge on `pull_request.base.ref` at
//! `pull_request.merge_commit_sha`; every other action is ignored as
//! `pull_request:ACTION`), `pull_request.number`,
//! `pull_request.merged_by.login` (the author), `repository.full_name`.

use super::util::{git_record, parse, At, ZERO_COMMIT};
use super::{DecodeError, DecodeOptions, Decoded};
use crate::record::GitFields;

/// Events other than push and pull_request, told by a top-level member
/// only they have: (member, event name), the first present wins. Tested
/// after `pull_request` (whose `labeled` and `milestoned` actions carry a
/// `label` or `milestone`), except for the review and comment events,
/// which carry a `pull_request` too (see [`comment_event`]).
const OTHER_EVENTS: &[(&str, &str)] = &[
    ("issue", "issues"),
    ("workflow_run", "workflow_run"),
    ("workflow_job", "workflow_job"),
    ("check_suite", "check_suite"),
    ("check_run", "check_run"),
    ("deployment_status", "deployment_status"),
    ("deployment", "deployment"),
    ("release", "release"),
    ("discussion", "discussion"),
    ("forkee", "fork"),
    ("pages", "gollum"),
    ("member", "member"),
    ("milestone", "milestone"),
    ("label", "label"),
    ("alert", "alert"),
    ("package", "package"),
    ("registry_package", "registry_package"),
    ("starred_at", "star"),
    ("workflow", "workflow_dispatch"),
];

/// The members this decoder reads (the parser skips the others).
const KEYS: &[&str] = &[
    "pull_request",
    "action",
    "ref",
    "after",
    "zen",
    "hook_id",
    "deleted",
    "pusher",
    "name",
    "repository",
    "full_name",
    "merged",
    "number",
    "merged_by",
    "login",
    "base",
    "merge_commit_sha",
    "ref_type",
    "master_branch",
    "context",
    "sha",
    "state",
    "review",
    "thread",
    "comment",
    "issue",
    "workflow_run",
    "workflow_job",
    "check_suite",
    "check_run",
    "deployment_status",
    "deployment",
    "release",
    "discussion",
    "forkee",
    "pages",
    "member",
    "milestone",
    "label",
    "alert",
    "package",
    "registry_package",
    "starred_at",
    "workflow",
];

pub(super) fn decode(json: &str, opts: &DecodeOptions) -> Result<Decoded, DecodeError> {
    let value = parse(json, KEYS)?;
    let root = At::root(&value);
    let has = |key| root.get(key).map(|v| v.is_some());
    if has("ref")? && has("ref_type")? {
        let event = if has("master_branch")? {
            "create"
        } else {
            "delete"
        };
        return Ok(Decoded::ignored(event));
    }
    if has("zen")? || has("hook_id")? {
        return Ok(Decoded::ignored("ping"));
    }
    if let Some(event) = comment_event(&root)? {
        return Ok(Decoded::ignored(event));
    }
    if has("pull_request")? {
        return pull_request(&root, opts);
    }
    if let Some(event) = other_event(&root)? {
        return Ok(Decoded::ignored(event));
    }
    if has("ref")? || has("after")? {
        push(&root, opts)
    } else {
        Ok(Decoded::ignored("unknown"))
    }
}

/// The review and comment events, told by their `review`, `thread` or
/// `comment` (a comment by where it is: an issue, a pull request, a
/// discussion, else a commit).
fn comment_event(root: &At<'_, '_>) -> Result<Option<&'static str>, DecodeError> {
    let has = |key| root.get(key).map(|v| v.is_some());
    Ok(if has("review")? {
        Some("pull_request_review")
    } else if has("thread")? {
        Some("pull_request_review_thread")
    } else if !has("comment")? {
        None
    } else if has("issue")? {
        Some("issue_comment")
    } else if has("pull_request")? {
        Some("pull_request_review_comment")
    } else if has("discussion")? {
        Some("discussion_comment")
    } else {
        Some("commit_comment")
    })
}

/// The name of an event other than push and pull_request, told by a member
/// of its own ([`OTHER_EVENTS`]; a `status` by `sha`, `state` and `context`).
fn other_event(root: &At<'_, '_>) -> Result<Option<&'static str>, DecodeError> {
    let has = |key| root.get(key).map(|v| v.is_some());
    for (member, event) in OTHER_EVENTS {
        if has(member)? {
            return Ok(Some(event));
        }
    }
    if has("sha")? && has("state")? && has("context")? {
        return Ok(Some("status"));
    }
    Ok(None)
}

fn push(root: &At<'_, '_>, opts: &DecodeOptions) -> Result<Decoded, DecodeError> {
    let reference = root.req_str("ref")?;
    let Some(branch) = reference.strip_prefix("refs/heads/") else {
        let kind = if reference.starts_with("refs/tags/") {
            "push:tag"
        } else {
            "push:other"
        };
        return Ok(Decoded::ignored(kind));
    };
    let after = root.req_str("after")?;
    if root.flag("deleted")? || after == ZERO_COMMIT {
        return Ok(Decoded::ignored("push:delete"));
    }
    let author = match root.get("pusher")? {
        Some(pusher) => pusher.opt_str("name")?,
        None => None,
    };
    let fields = GitFields {
        repository: Some(root.req("repository")?.req_str("full_name")?.to_owned()),
        branch: Some(branch.to_owned()),
        commit: Some(after.to_owned()),
        author: author.map(str::to_owned),
        event: Some("push".into()),
        ..GitFields::default()
    };
    let origins = [
        ("repository", "repository.full_name"),
        ("branch", "ref"),
        ("commit", "after"),
        ("author", "pusher.name"),
    ];
    git_record(root, &origins, fields, opts).map(Decoded::one)
}

fn pull_request(root: &At<'_, '_>, opts: &DecodeOptions) -> Result<Decoded, DecodeError> {
    let action = root.req_str("action")?;
    let pr = root.req("pull_request")?;
    if action != "closed" || !pr.flag("merged")? {
        return Ok(Decoded::ignored(format!("pull_request:{action}")));
    }
    let number = match pr.opt_u64("number")? {
        Some(n) => n,
        None => root
            .opt_u64("number")?
            .ok_or_else(|| DecodeError::new(pr.path_of("number"), "missing"))?,
    };
    let author = match pr.get("merged_by")? {
        Some(by) => by.opt_str("login")?,
        None => None,
    };
    let fields = GitFields {
        repository: Some(root.req("repository")?.req_str("full_name")?.to_owned()),
        branch: Some(pr.req("base")?.req_str("ref")?.to_owned()),
        commit: Some(pr.req_str("merge_commit_sha")?.to_owned()),
        author: author.map(str::to_owned),
        event: Some("merge".into()),
        pull_request: Some(number),
        ..GitFields::default()
    };
    let origins = [
        ("repository", "repository.full_name"),
        ("branch", "pull_request.base.ref"),
        ("commit", "pull_request.merge_commit_sha"),
        ("author", "pull_request.merged_by.login"),
    ];
    git_record(root, &origins, fields, opts).map(Decoded::one)
}

#[cfg(test)]
mod tests {
    use super::super::util::testing::{error_path, run};
    use super::super::{decode, FieldFrom, Format};
    use super::*;
    use crate::record::{GitEvent, GitEventType, Kind, Payload};

    const AFTER: &str = "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c";
    const MERGE: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678";

    fn push_body(reference: &str, after: &str, deleted: bool) -> String {
        format!(
            r#"{{"ref":"{reference}","before":"9f8e7d6c5b4a39281f2e3d4c5b6a79881f2e3d4c","after":"{after}",
              "created":false,"deleted":{deleted},"forced":false,"base_ref":null,
              "commits":[],"head_commit":null,
              "repository":{{"id":1,"name":"payments","full_name":"acme/payments"}},
              "pusher":{{"name":"octocat","email":"o@example.com"}},"sender":{{"login":"octocat"}}}}"#
        )
    }

    fn pr_body(action: &str, merged: bool) -> String {
        format!(
            r#"{{"action":"{action}","number":42,
              "pull_request":{{"id":7,"number":42,"state":"closed","merged":{merged},
                "merge_commit_sha":"{MERGE}","merged_by":{{"login":"hubot"}},
                "head":{{"ref":"feature","sha":"{AFTER}"}},"base":{{"ref":"main","sha":"{AFTER}"}}}},
              "repository":{{"full_name":"acme/payments"}},"sender":{{"login":"hubot"}}}}"#
        )
    }

    fn git(
        branch: &str,
        commit: &str,
        author: &str,
        event: GitEventType,
        pr: Option<u64>,
    ) -> Payload {
        Payload::Git(Box::new(GitEvent {
            service: "payments".into(),
            repository: "acme/payments".into(),
            branch: branch.into(),
            commit: commit.into(),
            author: Some(author.into()),
            event,
            pull_request: pr,
            environment: None,
        }))
    }

    #[test]
    fn a_branch_push_becomes_a_push_record() {
        let decoded = run(
            Format::Github,
            Kind::Git,
            &push_body("refs/heads/release/2", AFTER, false),
        );
        let expected = git("release/2", AFTER, "octocat", GitEventType::Push, None);
        assert_eq!(decoded.records, vec![expected]);
    }

    #[test]
    fn a_merged_pull_request_becomes_a_merge_on_its_base_branch() {
        let decoded = run(Format::Github, Kind::Git, &pr_body("closed", true));
        let expected = git("main", MERGE, "hubot", GitEventType::Merge, Some(42));
        assert_eq!(decoded.records, vec![expected]);
    }

    #[test]
    fn the_service_and_environment_can_come_from_regexes() {
        let opts = DecodeOptions {
            service_from: Some(FieldFrom::Regex(
                regex::Regex::new("^acme/(?P<service>pay)").unwrap(),
            )),
            environment_from: Some(FieldFrom::Regex(
                regex::Regex::new("(?P<environment>ments)$").unwrap(),
            )),
            ..DecodeOptions::default()
        };
        let json = push_body("refs/heads/main", AFTER, false);
        let decoded = decode(Format::Github, Kind::Git, &json, &opts).unwrap();
        let Payload::Git(g) = &decoded.records[0] else {
            panic!("a git record")
        };
        assert_eq!(
            (g.service.as_str(), g.environment.as_deref()),
            ("pay", Some("ments"))
        );
        let opts = DecodeOptions {
            service_from: Some(FieldFrom::Regex(
                regex::Regex::new("^other/(?P<service>.+)").unwrap(),
            )),
            ..DecodeOptions::default()
        };
        let err = decode(Format::Github, Kind::Git, &json, &opts).unwrap_err();
        assert_eq!(err.path, "repository.full_name");
        assert!(err.problem.contains("service_from"), "{err}");
    }

    #[test]
    fn everything_else_is_ignored_with_its_type() {
        let cases = [
            (push_body("refs/tags/v1.0", AFTER, false), "push:tag"),
            (
                push_body("refs/heads/gone", ZERO_COMMIT, true),
                "push:delete",
            ),
            (push_body("refs/notes/x", AFTER, false), "push:other"),
            (pr_body("closed", false), "pull_request:closed"),
            (pr_body("opened", false), "pull_request:opened"),
            (pr_body("synchronize", false), "pull_request:synchronize"),
            (
                r#"{"zen":"Keep it logically awesome.","hook_id":1,"hook":{}}"#.to_owned(),
                "ping",
            ),
        ];
        for (json, kind) in cases {
            let decoded = run(Format::Github, Kind::Git, &json);
            assert_eq!(decoded.ignored, [kind], "{json}");
            assert!(decoded.records.is_empty());
        }
    }

    #[test]
    fn create_and_delete_events_are_ignored() {
        let cases = [
            (
                r#"{"ref":"v1.0","ref_type":"tag","master_branch":"main","description":null,
                  "pusher_type":"user","repository":{"full_name":"acme/payments"},"sender":{}}"#,
                "create",
            ),
            (
                r#"{"ref":"feature","ref_type":"branch","pusher_type":"user",
                  "repository":{"full_name":"acme/payments"},"sender":{}}"#,
                "delete",
            ),
        ];
        for (json, kind) in cases {
            let decoded = run(Format::Github, Kind::Git, json);
            assert_eq!(decoded.ignored, [kind], "{json}");
            assert!(decoded.records.is_empty());
        }
    }

    #[test]
    fn other_event_types_are_ignored_by_name_or_as_unknown() {
        let repo = r#""repository":{"full_name":"acme/payments"},"sender":{"login":"o"}"#;
        let cases = [
            (
                format!(r#"{{"action":"opened","issue":{{"number":1}},{repo}}}"#),
                "issues",
            ),
            (
                format!(r#"{{"action":"created","issue":{{}},"comment":{{}},{repo}}}"#),
                "issue_comment",
            ),
            (
                format!(r#"{{"action":"completed","workflow_run":{{}},"workflow":{{}},{repo}}}"#),
                "workflow_run",
            ),
            (
                format!(r#"{{"action":"queued","workflow_job":{{}},{repo}}}"#),
                "workflow_job",
            ),
            (
                format!(r#"{{"action":"completed","check_suite":{{}},{repo}}}"#),
                "check_suite",
            ),
            (
                format!(r#"{{"action":"created","check_run":{{}},{repo}}}"#),
                "check_run",
            ),
            (
                format!(
                    r#"{{"id":1,"sha":"{AFTER}","name":"acme/payments","context":"ci",
                      "state":"success","commit":{{}},"branches":[],{repo}}}"#
                ),
                "status",
            ),
            (
                format!(r#"{{"action":"published","release":{{}},{repo}}}"#),
                "release",
            ),
            (
                format!(
                    r#"{{"action":"created","deployment_status":{{}},"deployment":{{}},{repo}}}"#
                ),
                "deployment_status",
            ),
            (
                format!(r#"{{"action":"created","deployment":{{}},{repo}}}"#),
                "deployment",
            ),
            (
                format!(
                    r#"{{"action":"submitted","review":{{}},"pull_request":{{"number":1}},{repo}}}"#
                ),
                "pull_request_review",
            ),
            (
                format!(
                    r#"{{"action":"created","comment":{{}},"pull_request":{{"number":1}},{repo}}}"#
                ),
                "pull_request_review_comment",
            ),
            (
                pr_body("labeled", false).replacen('{', r#"{"label":{"name":"x"},"#, 1),
                "pull_request:labeled",
            ),
            (format!(r#"{{"action":"started",{repo}}}"#), "unknown"),
            ("{}".to_owned(), "unknown"),
        ];
        for (json, kind) in cases {
            let decoded = run(Format::Github, Kind::Git, &json);
            assert_eq!(decoded.ignored, [kind], "{json}");
            assert!(decoded.records.is_empty());
        }
    }

    #[test]
    fn errors_name_the_field() {
        let pr = pr_body("closed", true);
        let cases = [
            ("[1]".to_owned(), "value"),
            ("7".to_owned(), "value"),
            (r#"{"ref":"refs/heads/main"}"#.to_owned(), "after"),
            (r#"{"pull_request":{}}"#.to_owned(), "action"),
            (
                r#"{"ref":"refs/heads/main","after":"abc1"}"#.to_owned(),
                "repository",
            ),
            (push_body("refs/heads/main", "zz", false), "after"),
            (
                push_body("refs/heads/main", AFTER, false)
                    .replace(r#""full_name":"acme/payments""#, r#""full_name":7"#),
                "repository.full_name",
            ),
            (
                pr.replace(MERGE, "not-a-sha"),
                "pull_request.merge_commit_sha",
            ),
            (
                pr.replace(r#""base":{"ref":"main","#, r#""base":{"#),
                "pull_request.base.ref",
            ),
            (
                pr.replace(r#""merged":true"#, r#""merged":"yes""#),
                "pull_request.merged",
            ),
        ];
        for (json, path) in cases {
            assert_eq!(error_path(Format::Github, Kind::Git, &json), path, "{json}");
        }
    }
}
