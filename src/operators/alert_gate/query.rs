//! What the gate's state says about one key: the answer to "why is my
//! deploy not going out?".

use serde::Serialize;

/// The gate's view of one (service, environment).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GateView {}
