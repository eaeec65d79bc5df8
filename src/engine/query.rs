//! The state query: what every operator holds for one (service,
//! environment). Transport-free: `sluice state` prints it from a replay's
//! state directory, and a live runtime can serve the same value.

use serde::Serialize;

use super::Engine;
use crate::operators::view::{OperatorView, QueryCx};
use crate::state::StateError;

/// The answer for one (service, environment).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyState {
    pub service: String,
    pub environment: String,
    /// The engine's clock when it answered (ms).
    pub clock: u64,
    /// The operators that hold something for the key, in topology order.
    pub operators: Vec<OperatorState>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OperatorState {
    pub name: String,
    #[serde(flatten)]
    pub view: OperatorView,
}

impl Engine {
    /// What every operator holds for (service, environment): the gate's
    /// view (current image, rollout, parked image and every reason it is
    /// held, timers), and the records debounces and throttles hold back
    /// with their deadlines. Reads uncommitted changes too; scans the
    /// debounce and throttle stores, so it is for queries, not hot paths.
    pub fn query(&mut self, service: &str, environment: &str) -> Result<KeyState, StateError> {
        let mut operators = Vec::new();
        for (op, operator) in self.ops.iter_mut().enumerate() {
            let cx = QueryCx {
                backend: self.backend.as_ref(),
                timers: &self.timers,
                op,
                now: self.clock,
            };
            if let Some(view) = operator.query(service, environment, &cx)? {
                operators.push(OperatorState {
                    name: self.op_names[op].clone(),
                    view,
                });
            }
        }
        Ok(KeyState {
            service: service.to_owned(),
            environment: environment.to_owned(),
            clock: self.clock,
            operators,
        })
    }
}
