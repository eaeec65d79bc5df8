//! `[author]` and `[signing]`: who the commits are by, and how they are signed.

use super::{Author, Signing, SigningFormat};
use crate::topology::reader::TableReader;

pub(super) fn read_author(t: &mut TableReader<'_, '_, '_>) -> Option<Author> {
    let name = t.required_string("name");
    let email = t.required_string("email");
    let (name, email) = (name?, email?);
    let mut ok = true;
    for (key, v) in [("name", &name), ("email", &email)] {
        if v.value.trim().is_empty() || v.value.contains(['<', '>', '\n', '\r', '\0']) {
            t.diags().error(
                v.pos,
                t.key_path(key),
                "must not be empty or hold <, > or line breaks",
            );
            ok = false;
        }
    }
    ok.then_some(Author {
        name: name.value,
        email: email.value,
    })
}

pub(super) fn read_signing(t: &mut TableReader<'_, '_, '_>) -> Option<Signing> {
    let format = t.required_string("format");
    let key = t.required_string("key");
    let format = match format?.value.as_str() {
        "ssh" => SigningFormat::Ssh,
        "openpgp" => SigningFormat::Openpgp,
        other => {
            let msg = format!("unknown format `{other}`; expected ssh or openpgp");
            t.diags().error(t.pos(), t.key_path("format"), msg);
            return None;
        }
    };
    Some(Signing {
        format,
        key: key?.value,
    })
}
