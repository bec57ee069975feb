//! `concord`: runs the Concord suite. `concord serve` runs every service on SQLite files
//! under ./data; `concord serve --target registry` runs one.

use clap::{Parser, Subcommand};
use concord_platform::server::Shutdown;

#[derive(Parser)]
#[command(
    name = "concord",
    version,
    about = "Coordination of detainees, facilities and diplomatic requests"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the suite, or one service of it, until SIGTERM or Ctrl-C.
    Serve(concord::Config),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Command::Serve(cfg) = Cli::parse().command;
    let telemetry = concord_platform::telemetry::init("concord", &cfg.telemetry)?;
    let (trigger, shutdown) = Shutdown::new();
    trigger.on_signals();
    let (running, served) = concord::start(&cfg, shutdown).await?;
    if let Some(addr) = running.registry {
        tracing::info!(%addr, database = %redact(&cfg.registry_database_url()), "registry ready");
    }
    let result = served.await;
    telemetry.shutdown();
    result
}

/// Drops the password from a database URL before it is logged.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_string(),
    }
}
