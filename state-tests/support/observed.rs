//! The three long-running commands wired into one pipeline for the
//! observability tests (Harbor and Alertmanager webhooks into `sluice
//! ingest`, a topology through dedup, debounce and a gate, `sluice commit`
//! on a bare repository), and Debian's Prometheus scraping them.

use std::process::Stdio;

use super::metrics::{http_get, metrics_address};
use super::pipeline::*;
use super::*;

pub const HARBOR_TOKEN: &str = "sentinel-harbor-token-7f3a";

/// The pieces of one pipeline: a bare repository, the three commands'
/// configs, and the topics.
pub struct Pipeline {
    pub dir: tempfile::TempDir,
    pub bare: std::path::PathBuf,
    pub port: u16,
}

impl Pipeline {
    /// Harbor and Alertmanager endpoints, a topology through dedup,
    /// debounce (`quiet`) and an alert gate, and a committer on `main`.
    pub fn new(name: &str, quiet: &str) -> Pipeline {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let app = unique(name);
        let (harbor, am, intents) = (
            format!("{app}-harbor"),
            format!("{app}-am"),
            format!("{app}-intents"),
        );
        create_topics(&[(&harbor, 2), (&am, 2), (&intents, 2)]);
        let bare = deploy_repo(d, "harbor.example.com/team/api:v0");
        let mut seed = String::new();
        for svc in ["web", "worker"] {
            seed.push_str(&format!("---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {svc}\nspec:\n  template:\n    spec:\n      containers:\n        - name: {svc}\n          image: harbor.example.com/team/{svc}:v0 # {{\"sluice\": \"{svc}\"}}\n"));
        }
        let seed_dir = d.join("seed");
        std::fs::write(seed_dir.join("envs/prod/more.yaml"), seed).unwrap();
        git(&seed_dir, &["add", "-A"]);
        git(&seed_dir, &["commit", "--quiet", "-m", "more services"]);
        git(&seed_dir, &["push", "--quiet", "origin", "main"]);
        let port = free_port();
        std::fs::write(
            d.join("ingest.toml"),
            format!(
                "[listen]\naddress = \"127.0.0.1:{port}\"\n\n[kafka]\nbrokers = \"{brokers}\"\n\n\
                 [[endpoints]]\nname = \"harbor\"\ntopic = \"{harbor}\"\nformat = \"harbor\"\n\
                 auth = {{ type = \"header\", token = {{ env = \"HARBOR_TOKEN\" }} }}\n\n\
                 [[endpoints]]\nname = \"alertmanager\"\ntopic = \"{am}\"\nformat = \"alertmanager\"\n\
                 auth = {{ type = \"header\", token = {{ env = \"HARBOR_TOKEN\" }} }}\n",
                brokers = brokers()
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("topology.toml"),
            format!(
                "[app]\nid = \"{app}\"\n\n\
                 [[sources]]\nname = \"images\"\ntopic = \"{harbor}\"\nkind = \"image\"\nformat = \"harbor\"\nenvironment = \"prod\"\n\n\
                 [[sources]]\nname = \"alerts\"\ntopic = \"{am}\"\nkind = \"alert\"\nformat = \"alertmanager\"\n\n\
                 [[operators]]\nname = \"dedup\"\ntype = \"dedup\"\ninput = \"images\"\nkey = [\"service\", \"digest\"]\nttl = \"10m\"\n\n\
                 [[operators]]\nname = \"debounce\"\ntype = \"debounce\"\ninput = \"dedup\"\nkey = [\"service\"]\nquiet = \"{quiet}\"\n\n\
                 [[operators]]\nname = \"gate\"\ntype = \"alert_gate\"\nimages = \"debounce\"\nalerts = \"alerts\"\nblock_on = [\"critical\"]\nrollback_on = []\n\n\
                 [[sinks]]\nname = \"intents\"\ninput = \"gate\"\ntopic = \"{intents}\"\n"
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("commit.toml"),
            format!(
                "[repository]\nurl = \"file://{}\"\n\n[author]\nname = \"Sluice\"\nemail = \"sluice@example.com\"\n\n\
                 [batch]\nwindow = \"300ms\"\n\n\
                 [kafka]\ntopic = \"{intents}\"\ngroup = \"{app}-committer\"\ndead_letter_topic = \"{intents}.dead\"\n\n\
                 [[environments]]\nname = \"prod\"\nbranch = \"main\"\ndirectory = \"envs/prod\"\n",
                bare.display()
            ),
        )
        .unwrap();
        Pipeline { dir, bare, port }
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// Starts `sluice ingest`, `run` and `commit` with `--metrics-addr` and
    /// the environment `env`; returns them with their metrics addresses.
    pub fn start(&self, env: &[(&str, &str)]) -> Vec<(std::process::Child, String)> {
        let d = self.dir.path();
        let brokers = brokers();
        let work = d.join("work");
        let commands: [(&str, Vec<&str>); 3] = [
            ("ingest", vec!["ingest", self.s("ingest.toml")]),
            (
                "run",
                vec![
                    "run",
                    self.s("topology.toml"),
                    "--brokers",
                    &brokers,
                    "--state-dir",
                    self.s("state"),
                    "--commit-interval-ms",
                    "100",
                ],
            ),
            (
                "commit",
                vec![
                    "commit",
                    self.s("commit.toml"),
                    "--brokers",
                    &brokers,
                    "--work-dir",
                    work.to_str().unwrap(),
                ],
            ),
        ];
        commands
            .into_iter()
            .map(|(name, args)| {
                let mut child = sluice_cmd()
                    .env("HARBOR_TOKEN", HARBOR_TOKEN)
                    .envs(env.iter().copied())
                    .arg("-v")
                    .args(&args)
                    .args(["--metrics-addr", "127.0.0.1:0"])
                    .stdout(Stdio::piped())
                    .stderr(std::fs::File::create(d.join(format!("{name}.log"))).unwrap())
                    .spawn()
                    .unwrap();
                let addr = metrics_address(&mut child);
                (child, addr)
            })
            .collect()
    }

    fn s(&self, name: &str) -> &str {
        // The temp dir lives as long as self: leak a copy of the path string.
        Box::leak(
            self.path(name)
                .to_string_lossy()
                .into_owned()
                .into_boxed_str(),
        )
    }

    pub fn logs(&self) -> String {
        ["ingest.log", "run.log", "commit.log"]
            .iter()
            .map(|f| {
                format!(
                    "--- {f}\n{}",
                    std::fs::read_to_string(self.path(f)).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &str) -> u16 {
        let mut all = vec![("Authorization", HARBOR_TOKEN)];
        all.extend_from_slice(headers);
        post(self.port, path, &all, body)
    }

    pub fn image_of(&self, service: &str) -> String {
        let file = if service == "api" {
            "api.yaml"
        } else {
            "more.yaml"
        };
        let text = git(&self.bare, &["show", &format!("main:envs/prod/{file}")]);
        let mut lines = text
            .lines()
            .skip_while(|l| !l.contains(&format!("name: {service}")));
        let line = lines.find(|l| l.contains("image:")).unwrap_or_default();
        line.split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned()
    }
}

pub fn harbor_push_of(service: &str, tag: &str, digest: &str) -> String {
    harbor_push(tag, digest)
        .replace("team/api", &format!("team/{service}"))
        .replace("\"name\":\"api\"", &format!("\"name\":\"{service}\""))
}

/// Percent-encodes a query parameter.
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Debian's `prometheus`, scraping the three commands every second.
pub struct Prometheus {
    pub child: std::process::Child,
    pub addr: String,
}

impl Prometheus {
    pub fn start(dir: &std::path::Path, targets: &[(&str, &str)]) -> Prometheus {
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
            ));
        }
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("Debian's prometheus is installed (.ci/setup installs it)");
        Prometheus { child, addr }
    }

    /// The series an instant query returns.
    pub fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let (status, body) = http_get(
            &self.addr,
            &format!("/api/v1/query?query={}", url_encode(promql)),
        );
        assert_eq!(status, 200, "{promql}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Whether every target's last scrape succeeded.
    pub fn all_up(&self, jobs: usize) -> bool {
        let up = self.query("up == 1");
        up.len() == jobs
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
