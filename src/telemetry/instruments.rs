//! OpenTelemetry instruments built from catalog definitions, so that a
//! name, unit, help text or bucket list is written in one place only.

use opentelemetry::metrics::{AsyncInstrument, Counter, Histogram, Meter};

use super::catalog::{Def, Kind};

pub fn counter(meter: &Meter, def: &'static Def) -> Counter<u64> {
    debug_assert_eq!(def.kind, Kind::Counter, "{}", def.name);
    meter
        .u64_counter(def.name)
        .with_description(def.help)
        .with_unit(def.unit.otel())
        .build()
}

pub fn histogram(meter: &Meter, def: &'static Def) -> Histogram<f64> {
    let Kind::Histogram(bounds) = def.kind else {
        panic!("{} is not a histogram", def.name);
    };
    meter
        .f64_histogram(def.name)
        .with_description(def.help)
        .with_unit(def.unit.otel())
        .with_boundaries(bounds.to_vec())
        .build()
}

/// A counter read at each collection from what the process already counts.
pub fn observable_counter(
    meter: &Meter,
    def: &'static Def,
    callback: impl Fn(&dyn AsyncInstrument<u64>) + Send + Sync + 'static,
) {
    debug_assert_eq!(def.kind, Kind::Counter, "{}", def.name);
    // The SDK keeps the callback registered for the provider's lifetime.
    let _ = meter
        .u64_observable_counter(def.name)
        .with_description(def.help)
        .with_unit(def.unit.otel())
        .with_callback(callback)
        .build();
}

pub fn observable_counter_f64(
    meter: &Meter,
    def: &'static Def,
    callback: impl Fn(&dyn AsyncInstrument<f64>) + Send + Sync + 'static,
) {
    debug_assert_eq!(def.kind, Kind::Counter, "{}", def.name);
    let _ = meter
        .f64_observable_counter(def.name)
        .with_description(def.help)
        .with_unit(def.unit.otel())
        .with_callback(callback)
        .build();
}

/// A gauge read at each collection.
pub fn observable_gauge(
    meter: &Meter,
    def: &'static Def,
    callback: impl Fn(&dyn AsyncInstrument<f64>) + Send + Sync + 'static,
) {
    debug_assert_eq!(def.kind, Kind::Gauge, "{}", def.name);
    let _ = meter
        .f64_observable_gauge(def.name)
        .with_description(def.help)
        .with_unit(def.unit.otel())
        .with_callback(callback)
        .build();
}
