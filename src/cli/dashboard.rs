//! `sluice dashboard`: prints the Grafana dashboard, built from the same
//! metric definitions the instruments are registered from.

use std::process::ExitCode;

use anyhow::Result;

#[derive(clap::Args)]
pub struct DashboardArgs {
    /// Print the PromQL of every panel, one `TITLE<TAB>QUERY` line each,
    /// instead of the dashboard's JSON.
    #[arg(long)]
    queries: bool,
}

pub fn run(args: DashboardArgs) -> Result<ExitCode> {
    let text = if args.queries {
        let mut out = String::new();
        for row in sluice::telemetry::dashboard::rows() {
            for panel in &row.panels {
                for q in &panel.queries {
                    out.push_str(&format!("{}\t{}\n", panel.title, q.expr));
                }
            }
        }
        out
    } else {
        let json = sluice::telemetry::dashboard::grafana_json();
        serde_json::to_string_pretty(&json)? + "\n"
    };
    super::print_stdout(&text)
}
