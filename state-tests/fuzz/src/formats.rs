//! Webhook payload decoders (`src/format/`).

use sluice::format::{decode, DecodeOptions, Decoded, Format, FORMATS};
use sluice::record::{
    parse_alert, parse_control, parse_deployment, parse_git, parse_image, Kind, Payload,
};

/// The input is `FORMAT\nPAYLOAD` (a format's name on the first line), or
/// else a payload tried in every vendor format. Decoding never panics, gives
/// the same answer twice, and yields only records of the source's kind that
/// are valid: their JSON form (what sinks write) parses back to the same
/// record. An error names a field.
pub fn webhook_decode(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let named = text
        .split_once('\n')
        .and_then(|(name, rest)| Some((Format::from_name(name.trim())?, rest)));
    let opts = DecodeOptions {
        environment: Some("prod".into()),
        ..DecodeOptions::default()
    };
    match named {
        Some((format, payload)) => check_format(format, payload, &opts),
        None => FORMATS
            .iter()
            .filter(|f| !f.is_native())
            .for_each(|f| check_format(*f, &text, &opts)),
    }
}

fn check_format(format: Format, payload: &str, opts: &DecodeOptions) {
    for kind in format.kinds() {
        let first = decode(format, *kind, payload, opts);
        assert_eq!(
            first,
            decode(format, *kind, payload, opts),
            "{format}: not deterministic"
        );
        match first {
            Ok(decoded) => check_records(*kind, &decoded),
            Err(e) => assert!(!e.path.is_empty(), "{format}: an error without a path: {e}"),
        }
    }
}

fn check_records(kind: Kind, decoded: &Decoded) {
    for record in &decoded.records {
        assert_eq!(record.kind(), kind, "a record of another kind: {record:?}");
        let written = record.to_json().to_string();
        let again = match record {
            Payload::Image(_) => parse_image(&written, None).map(|i| Payload::Image(Box::new(i))),
            Payload::Alert(_) => parse_alert(&written, None).map(|a| Payload::Alert(Box::new(a))),
            Payload::Git(_) => parse_git(&written, None).map(|g| Payload::Git(Box::new(g))),
            Payload::Deployment(_) => {
                parse_deployment(&written, None).map(|d| Payload::Deployment(Box::new(d)))
            }
            Payload::Control(_) => {
                parse_control(&written, None).map(|c| Payload::Control(Box::new(c)))
            }
            Payload::Intent(_) => panic!("a decoder yielded an intent"),
        };
        assert_eq!(again.as_ref(), Ok(record), "{written}");
    }
    assert!(
        decoded.ignored.iter().all(|t| !t.is_empty()),
        "an ignored entry without a type"
    );
}
