//! A broker of a test's own (`.ci/kafka-local` on ports of its own), for
//! tests that stop or restart it.

/// A broker of this test's own, so that stopping it disturbs no other test.
pub struct OwnBroker {
    pub env: Vec<(String, String)>,
    pub address: String,
    dir: std::path::PathBuf,
}

impl OwnBroker {
    /// Ports `base + 0..3` (plus a per-process offset), extra server.properties lines.
    pub fn start(dir: &std::path::Path, base: u16, extra_config: &str) -> OwnBroker {
        let port = base + (std::process::id() % 100) as u16 * 4;
        let env = vec![
            ("SLUICE_KAFKA_PORT".to_owned(), port.to_string()),
            (
                "SLUICE_KAFKA_CONTROLLER_PORT".to_owned(),
                (port + 1).to_string(),
            ),
            ("SLUICE_KAFKA_DIR".to_owned(), dir.display().to_string()),
            (
                "SLUICE_KAFKA_EXTRA_CONFIG".to_owned(),
                extra_config
                    .replace("@PORT@", &port.to_string())
                    .replace("@CONTROLLER_PORT@", &(port + 1).to_string())
                    .replace("@SASL_PORT@", &(port + 2).to_string()),
            ),
        ];
        let broker = OwnBroker {
            env,
            address: format!("127.0.0.1:{port}"),
            dir: dir.to_owned(),
        };
        broker.script(&["start"]);
        broker
    }

    /// The last lines of the broker's log (this start's, then the one
    /// before it), for a failing test to show what the broker went through.
    #[allow(dead_code)]
    pub fn log_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for name in ["kafka.log.prev", "kafka.log"] {
            let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- broker {name} ---\n"));
            out.push_str(&all[all.len().saturating_sub(lines)..].join("\n"));
            out.push('\n');
        }
        out
    }

    pub fn script(&self, args: &[&str]) {
        let out =
            std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/kafka-local"))
                .args(args)
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .output()
                .expect("kafka-local runs");
        assert!(
            out.status.success(),
            "kafka-local {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/kafka-local"))
            .arg("stop")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output();
    }
}
