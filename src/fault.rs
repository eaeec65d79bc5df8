//! Fault injection for tests, compiled only with the `fault-injection`
//! cargo feature (which `.ci/test` enables). A release build has none of it:
//! every call below is an empty inline function there.
//!
//! A test tells a child process where to fail through `SLUICE_FAULTS`, a
//! comma-separated list of `POINT=ACTION[@N]`:
//!
//! - `kill`: SIGKILL the process (like `kill -9`: no destructor, no flush);
//! - `delay:MS`: sleep that many milliseconds, then go on;
//! - `fail`: the call site returns its simulated error (what that is, for
//!   instance a timeout, is written next to each point).
//!
//! `@N` acts on the N-th time the point is reached (default: every time for
//! `delay`, the first time for `kill` and `fail`); `@N+` from the N-th on.

/// What a test asked a point to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Return the point's simulated error.
    Fail,
}

#[cfg(feature = "fault-injection")]
mod enabled {
    use super::Fault;
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    use std::time::Duration;

    pub const ENV: &str = "SLUICE_FAULTS";

    #[derive(Debug, Clone, Copy)]
    enum Action {
        Kill,
        Delay(Duration),
        Fail,
    }

    #[derive(Debug, Clone, Copy)]
    enum When {
        Every,
        Nth(u64),
        From(u64),
    }

    struct Rule {
        action: Action,
        when: When,
        hits: u64,
    }

    fn rules() -> &'static Mutex<HashMap<String, Rule>> {
        static RULES: OnceLock<Mutex<HashMap<String, Rule>>> = OnceLock::new();
        RULES.get_or_init(|| Mutex::new(parse(&std::env::var(ENV).unwrap_or_default())))
    }

    fn parse(spec: &str) -> HashMap<String, Rule> {
        let mut out = HashMap::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let Some((point, action)) = item.split_once('=') else {
                panic!("{ENV}: `{item}` is not POINT=ACTION[@N]");
            };
            let (action, when) = match action.split_once('@') {
                Some((a, n)) => (a, Some(n)),
                None => (action, None),
            };
            let action = match action {
                "kill" => Action::Kill,
                "fail" => Action::Fail,
                a => match a.strip_prefix("delay:").and_then(|ms| ms.parse().ok()) {
                    Some(ms) => Action::Delay(Duration::from_millis(ms)),
                    None => panic!("{ENV}: unknown action `{a}`"),
                },
            };
            let when = match when {
                None if matches!(action, Action::Delay(_)) => When::Every,
                None => When::Nth(1),
                Some(n) => match n.strip_suffix('+') {
                    Some(n) => When::From(n.parse().expect("SLUICE_FAULTS: bad @N+")),
                    None => When::Nth(n.parse().expect("SLUICE_FAULTS: bad @N")),
                },
            };
            out.insert(
                point.to_owned(),
                Rule {
                    action,
                    when,
                    hits: 0,
                },
            );
        }
        out
    }

    pub fn reached(point: &str) -> Option<Fault> {
        let action = {
            let mut rules = rules().lock().unwrap_or_else(|e| e.into_inner());
            let rule = rules.get_mut(point)?;
            rule.hits += 1;
            let due = match rule.when {
                When::Every => true,
                When::Nth(n) => rule.hits == n,
                When::From(n) => rule.hits >= n,
            };
            if !due {
                return None;
            }
            rule.action
        };
        match action {
            Action::Kill => {
                tracing::warn!(point, "{ENV}: killing the process");
                // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
                unsafe {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                }
                None
            }
            Action::Delay(d) => {
                std::thread::sleep(d);
                None
            }
            Action::Fail => {
                tracing::warn!(point, "{ENV}: injecting a failure");
                Some(Fault::Fail)
            }
        }
    }
}

/// The name of the variable that arms the points (test builds only).
#[cfg(feature = "fault-injection")]
pub use enabled::ENV;

/// Marks a fault-injection point. Under the `fault-injection` feature it
/// does what `SLUICE_FAULTS` says for `point`; otherwise nothing.
#[cfg(feature = "fault-injection")]
pub fn reached(point: &str) -> Option<Fault> {
    enabled::reached(point)
}

/// Marks a fault-injection point; this build has no fault injection.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn reached(_point: &str) -> Option<Fault> {
    None
}
