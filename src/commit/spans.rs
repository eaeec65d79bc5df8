//! The committer's spans and the labels its logs name intents by.

use super::batch::{Delivery, Outcome};
use crate::record::TraceContext;
use crate::telemetry::trace::{Kind as SpanKind, Span, Tracing};

/// The spans of one batch: the batch's own, linking every intent's trace,
/// and one per traced intent in that intent's trace, so that each trace
/// runs from the webhook to the commit.
pub(super) struct BatchSpans {
    pub(super) batch: Span,
    intents: Vec<Option<Span>>,
}

impl BatchSpans {
    pub(super) fn start(tracing: &Tracing, batch: &[Delivery]) -> Self {
        if !tracing.is_on() {
            return BatchSpans {
                batch: tracing.start("sluice.commit batch", SpanKind::Internal, None, &[]),
                intents: Vec::new(),
            };
        }
        let mut links: Vec<TraceContext> = batch.iter().filter_map(|d| d.trace).collect();
        links.dedup();
        let mut span = tracing.start("sluice.commit batch", SpanKind::Internal, None, &links);
        span.set_attribute("sluice.intents", batch.len() as i64);
        let me: Vec<TraceContext> = span.context().into_iter().collect();
        let intents = batch
            .iter()
            .map(|d| {
                let parent = d.trace?;
                let mut s = tracing.start(
                    "sluice.commit intent",
                    SpanKind::Consumer,
                    Some(&parent),
                    &me,
                );
                s.set_attribute("sluice.origin", d.origin.clone());
                Some(s)
            })
            .collect();
        BatchSpans {
            batch: span,
            intents,
        }
    }

    pub(super) fn outcome(&mut self, i: usize, outcome: &Outcome) {
        if let Some(Some(span)) = self.intents.get_mut(i) {
            span.set_attribute("sluice.outcome", outcome.label());
        }
    }
}

/// The fields of an intent that logs name it by.
#[derive(Default, serde::Deserialize)]
pub(super) struct Label {
    #[serde(default)]
    pub(super) intent_id: String,
    #[serde(default)]
    pub(super) service: String,
    #[serde(default)]
    pub(super) environment: String,
}
