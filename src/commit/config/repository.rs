//! `[repository]`: the GitOps repository's URL, and the credentials (given by
//! reference, never the secret) that fit its scheme.

use std::path::PathBuf;

use super::{Credentials, RepositoryConfig};
use crate::commit::url::{check_url, Scheme};
use crate::topology::reader::TableReader;

pub(super) fn read_repository(t: &mut TableReader<'_, '_, '_>) -> Option<RepositoryConfig> {
    let url = t.required_string("url");
    let key_file = t.string("ssh_key_file");
    let agent = t.bool("ssh_agent").unwrap_or(false);
    let token_env = t.string("token_env");
    let username = t.string("token_username");
    let url = url?;
    let scheme = match check_url(&url.value) {
        Ok(scheme) => scheme,
        Err(message) => {
            t.diags().error(url.pos, t.key_path("url"), message);
            return None;
        }
    };
    let given = [key_file.is_some(), agent, token_env.is_some()];
    if given.iter().filter(|g| **g).count() > 1 {
        t.diags().error(
            t.pos(),
            t.path().to_owned(),
            "give at most one of ssh_key_file, ssh_agent and token_env",
        );
        return None;
    }
    let credentials = match (key_file, agent, token_env) {
        (Some(k), _, _) => Credentials::SshKeyFile(PathBuf::from(k.value)),
        (None, true, _) => Credentials::SshAgent,
        (None, false, Some(env)) => {
            if env.value.is_empty() || env.value.contains('=') {
                let key = t.key_path("token_env");
                t.diags()
                    .error(env.pos, key, "the name of an environment variable");
                return None;
            }
            Credentials::Token {
                env: env.value,
                username: username.map_or_else(|| "x-access-token".into(), |u| u.value),
            }
        }
        (None, false, None) => Credentials::None,
    };
    let fits = match &credentials {
        Credentials::None => true,
        Credentials::SshKeyFile(_) | Credentials::SshAgent => scheme == Scheme::Ssh,
        // Plain http only to this machine, where the token never crosses a network.
        Credentials::Token { .. } => {
            scheme == Scheme::Https
                || (scheme == Scheme::Http
                    && [
                        "http://127.0.0.1:",
                        "http://127.0.0.1/",
                        "http://localhost:",
                        "http://localhost/",
                    ]
                    .iter()
                    .any(|p| url.value.starts_with(p)))
        }
    };
    if !fits {
        t.diags().error(
            url.pos,
            t.key_path("url"),
            format!("{}:// cannot use these credentials: SSH keys need ssh://, a token needs https:// (http:// only to localhost)", scheme.as_str()),
        );
        return None;
    }
    Some(RepositoryConfig {
        url: url.value,
        credentials,
    })
}
