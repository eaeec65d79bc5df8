//! The repository URL's rules: a supported transport, and no credential.
//!
//! A credential in the URL would be saved in the clone's `.git/config` and
//! shown wherever git prints the URL, so the URL may not carry one:
//! - no password anywhere (`https://user:pass@…`, `ssh://git:pass@…`);
//! - no user name in `https://`, `http://`, `git://` or `file://` URLs: there
//!   it is how a token is passed (`https://TOKEN@host/…`); give `token_env`
//!   (and `token_username`) instead;
//! - no query string in `https://` and `http://` URLs (`?access_token=…`);
//! - a user name without a password is fine for SSH, where it names the
//!   account and the key authenticates: `ssh://git@host/org/repo.git` and
//!   the scp-like `git@host:org/repo.git`.
//!
//! Messages say what is wrong and never repeat the URL.

/// A transport the committer accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    File,
    /// `ssh://` or the scp-like `[user@]host:path`.
    Ssh,
    Https,
    /// Local tests only (a token may go to localhost only).
    Http,
    Git,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::File => "file",
            Scheme::Ssh => "ssh",
            Scheme::Https => "https",
            Scheme::Http => "http",
            Scheme::Git => "git",
        }
    }
}

/// Checks a repository URL; the error is a message for the config error.
pub fn check_url(url: &str) -> Result<Scheme, &'static str> {
    if url.chars().any(char::is_control) {
        return Err("control characters in the URL");
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return scp_like(url);
    };
    let scheme = match scheme {
        "file" => Scheme::File,
        "ssh" => Scheme::Ssh,
        "https" => Scheme::Https,
        "http" => Scheme::Http,
        "git" => Scheme::Git,
        _ => return Err("unsupported scheme: use file://, ssh:// or https://"),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if let Some((userinfo, _host)) = authority.rsplit_once('@') {
        check_userinfo(scheme, userinfo)?;
    }
    if matches!(scheme, Scheme::Https | Scheme::Http) && rest.contains('?') {
        return Err("the URL has a query string, where tokens hide: give credentials by reference (token_env)");
    }
    Ok(scheme)
}

fn check_userinfo(scheme: Scheme, userinfo: &str) -> Result<(), &'static str> {
    if userinfo.contains(':') {
        return Err("the URL holds a password: give credentials by reference (token_env, ssh_key_file or ssh_agent)");
    }
    if scheme != Scheme::Ssh {
        return Err("the URL holds a user name, which is how a token is passed over https: give the token by reference (token_env, and token_username for the name)");
    }
    Ok(())
}

/// `[user@]host:path`, git's scp-like syntax for SSH.
fn scp_like(url: &str) -> Result<Scheme, &'static str> {
    const NOT_A_URL: &str =
        "expected a URL: file://, ssh://, https:// or user@host:path (git:// and http:// for local tests)";
    let Some((host_part, path)) = url.split_once(':') else {
        return Err(NOT_A_URL);
    };
    // git reads `a/b:c` as a local path, and so does a path with no host.
    if host_part.is_empty() || host_part.contains('/') || path.is_empty() {
        return Err(NOT_A_URL);
    }
    let host = match host_part.rsplit_once('@') {
        Some((user, host)) => {
            if user.is_empty() {
                return Err(NOT_A_URL);
            }
            host
        }
        None => host_part,
    };
    if host.is_empty() || host.starts_with('-') {
        return Err(NOT_A_URL);
    }
    // `user:password@host:path` splits at the password's colon: host_part
    // is then `user` and the password is in `path`, before an `@`.
    if path.split('/').next().is_some_and(|p| p.contains('@')) {
        return Err(
            "the URL holds a password: give credentials by reference (ssh_key_file or ssh_agent)",
        );
    }
    Ok(Scheme::Ssh)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_urls_and_their_schemes() {
        for (url, scheme) in [
            ("file:///srv/deploy.git", Scheme::File),
            ("file:///srv/a@b/deploy.git", Scheme::File),
            ("https://git.example.com/platform/deploy.git", Scheme::Https),
            ("ssh://git@git.example.com/platform/deploy.git", Scheme::Ssh),
            (
                "ssh://git.example.com:2222/platform/deploy.git",
                Scheme::Ssh,
            ),
            ("git@github.com:platform/deploy.git", Scheme::Ssh),
            ("github.com:platform/deploy.git", Scheme::Ssh),
            ("git://127.0.0.1:9418/deploy.git", Scheme::Git),
            ("http://127.0.0.1:8080/deploy.git", Scheme::Http),
        ] {
            assert_eq!(check_url(url), Ok(scheme), "{url}");
        }
    }

    #[test]
    fn every_credential_is_refused() {
        for (url, says) in [
            (
                "https://ghp_0123456789abcdef@github.com/o/r.git",
                "user name",
            ),
            (
                "https://x-access-token:ghp_0123@github.com/o/r.git",
                "password",
            ),
            ("https://bob:hunter2@git.example.com/d.git", "password"),
            ("http://TOKEN@127.0.0.1:8080/d.git", "user name"),
            ("git://TOKEN@127.0.0.1/d.git", "user name"),
            ("file://TOKEN@/srv/d.git", "user name"),
            ("ssh://git:hunter2@git.example.com/d.git", "password"),
            ("git:hunter2@git.example.com:o/r.git", "password"),
            (
                "https://git.example.com/d.git?access_token=abc",
                "query string",
            ),
        ] {
            let err = check_url(url).expect_err(url);
            assert!(err.contains(says), "{url}: {err}");
        }
    }

    #[test]
    fn other_text_is_not_a_url() {
        for url in [
            "",
            "deploy.git",
            "/srv/deploy.git",
            "./a:b",
            ":x",
            "@h:p",
            "ftp://h/x",
        ] {
            assert!(check_url(url).is_err(), "{url}");
        }
    }
}
