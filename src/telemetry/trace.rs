//! Traces: one trace follows an image from the webhook that announced it to
//! the commit that deploys it. `sluice ingest` starts it (or continues the
//! sender's `traceparent`), `sluice run` continues it for the records a
//! payload yields and carries it through operator state to the intents
//! they cause, and `sluice commit` ends it with the commit and the push.
//! Contexts cross processes as W3C `traceparent` Kafka headers.
//!
//! Sampling is parent-based with a configurable ratio. With tracing off no
//! tracer exists and every helper here returns at once.

use std::borrow::Cow;
use std::time::SystemTime;

use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use crate::record::TraceContext;

/// The span kinds Sluice uses.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A webhook received (ingest).
    Server,
    /// A record taken from Kafka (run, commit).
    Consumer,
    /// Work inside the process (a batch, a push).
    Internal,
    /// A record written to Kafka.
    Producer,
}

/// A tracer, or nothing when tracing is off.
#[derive(Clone, Default)]
pub struct Tracing {
    tracer: Option<SdkTracer>,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing")
            .field("on", &self.tracer.is_some())
            .finish()
    }
}

/// A span being recorded; ends when dropped (or with [`Span::end`]).
pub struct Span {
    inner: Option<opentelemetry_sdk::trace::Span>,
}

impl Span {
    fn none() -> Self {
        Span { inner: None }
    }

    /// This span's context, to pass on as the parent of what it causes.
    /// `None` when tracing is off or the span is not sampled.
    pub fn context(&self) -> Option<TraceContext> {
        let span = self.inner.as_ref()?;
        to_record(span.span_context()).filter(TraceContext::sampled)
    }

    pub fn set_attribute(&mut self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(span) = self.inner.as_mut() {
            span.set_attribute(KeyValue::new(key, value));
        }
    }

    /// Marks the span failed, with a message.
    pub fn set_error(&mut self, message: impl Into<Cow<'static, str>>) {
        if let Some(span) = self.inner.as_mut() {
            span.set_status(opentelemetry::trace::Status::error(message));
        }
    }

    pub fn end(self) {}
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(span) = self.inner.as_mut() {
            span.end();
        }
    }
}

impl Tracing {
    pub fn off() -> Self {
        Tracing { tracer: None }
    }

    pub fn new(provider: &SdkTracerProvider) -> Self {
        use opentelemetry::trace::TracerProvider as _;
        Tracing {
            tracer: Some(provider.tracer("sluice")),
        }
    }

    pub fn is_on(&self) -> bool {
        self.tracer.is_some()
    }

    /// Starts a span as a child of `parent` (a new trace without one), with
    /// links to `links` (other records it joins).
    pub fn start(
        &self,
        name: &'static str,
        kind: Kind,
        parent: Option<&TraceContext>,
        links: &[TraceContext],
    ) -> Span {
        self.start_at(name, kind, parent, links, None)
    }

    /// As [`Tracing::start`], with a start time in the past (a commit's
    /// span starts when its batch did).
    pub fn start_at(
        &self,
        name: &'static str,
        kind: Kind,
        parent: Option<&TraceContext>,
        links: &[TraceContext],
        start: Option<SystemTime>,
    ) -> Span {
        let Some(tracer) = &self.tracer else {
            return Span::none();
        };
        // Sluice's sampler is parent-based (see `tracer_provider` in `telemetry`): the
        // child of an unsampled parent is never recorded, so it is not built
        // either. Most records arrive so (a sender sampling 1%), and building
        // a span that records nothing cost a run about a tenth of its rate.
        if parent.is_some_and(|p| !p.sampled()) {
            return Span::none();
        }
        let parent_cx = match parent {
            Some(p) => Context::new().with_remote_span_context(to_otel(p)),
            None => Context::new(),
        };
        let mut builder = tracer.span_builder(name).with_kind(match kind {
            Kind::Server => SpanKind::Server,
            Kind::Consumer => SpanKind::Consumer,
            Kind::Internal => SpanKind::Internal,
            Kind::Producer => SpanKind::Producer,
        });
        if !links.is_empty() {
            builder = builder.with_links(
                links
                    .iter()
                    .map(|l| Link::with_context(to_otel(l)))
                    .collect(),
            );
        }
        if let Some(start) = start {
            builder = builder.with_start_time(start);
        }
        Span {
            inner: Some(builder.start_with_context(tracer, &parent_cx)),
        }
    }
}

fn to_otel(ctx: &TraceContext) -> SpanContext {
    SpanContext::new(
        TraceId::from_bytes(ctx.trace_id),
        SpanId::from_bytes(ctx.span_id),
        TraceFlags::new(ctx.flags),
        true,
        TraceState::default(),
    )
}

fn to_record(ctx: &SpanContext) -> Option<TraceContext> {
    ctx.is_valid().then(|| TraceContext {
        trace_id: ctx.trace_id().to_bytes(),
        span_id: ctx.span_id().to_bytes(),
        flags: ctx.trace_flags().to_u8(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, Sampler};

    fn tracing(sampler: Sampler) -> (Tracing, InMemorySpanExporter, SdkTracerProvider) {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .with_sampler(sampler)
            .build();
        (Tracing::new(&provider), exporter, provider)
    }

    #[test]
    fn a_child_continues_its_parents_trace_and_links_others() {
        let (t, exporter, _p) = tracing(Sampler::AlwaysOn);
        let root = t.start("webhook", Kind::Server, None, &[]);
        let root_cx = root.context().expect("sampled");
        let other = t
            .start("webhook", Kind::Server, None, &[])
            .context()
            .unwrap();
        let child = t.start("intent", Kind::Producer, Some(&root_cx), &[other]);
        let child_cx = child.context().unwrap();
        drop(child);
        drop(root);
        assert_eq!(child_cx.trace_id, root_cx.trace_id);
        assert_ne!(child_cx.span_id, root_cx.span_id);
        let spans = exporter.get_finished_spans().unwrap();
        let intent = spans.iter().find(|s| s.name == "intent").unwrap();
        assert_eq!(intent.parent_span_id.to_bytes(), root_cx.span_id);
        assert_eq!(intent.links.links.len(), 1);
        assert_eq!(
            intent.links.links[0].span_context.trace_id().to_bytes(),
            other.trace_id
        );
    }

    #[test]
    fn off_and_unsampled_give_no_context() {
        assert!(Tracing::off()
            .start("x", Kind::Internal, None, &[])
            .context()
            .is_none());
        let (t, exporter, _p) = tracing(Sampler::ParentBased(Box::new(
            Sampler::TraceIdRatioBased(0.0),
        )));
        assert!(t.start("x", Kind::Internal, None, &[]).context().is_none());
        // A sampled parent wins over the ratio.
        let parent =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let cx = t.start("y", Kind::Consumer, Some(&parent), &[]).context();
        assert_eq!(cx.map(|c| c.trace_id), Some(parent.trace_id));
        assert_eq!(exporter.get_finished_spans().unwrap().len(), 1);
    }

    #[test]
    fn the_child_of_an_unsampled_parent_is_neither_recorded_nor_passed_on() {
        let (t, exporter, _p) = tracing(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
        let parent =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        let mut span = t.start("y", Kind::Consumer, Some(&parent), &[]);
        span.set_attribute("messaging.kafka.offset", 7_i64);
        assert!(span.context().is_none());
        drop(span);
        assert!(exporter.get_finished_spans().unwrap().is_empty());
        // Without a parent the ratio (here: always) decides.
        drop(t.start("root", Kind::Server, None, &[]));
        assert_eq!(exporter.get_finished_spans().unwrap().len(), 1);
    }
}
