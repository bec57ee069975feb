//! `concord`: runs the Concord suite. `concord serve` runs every service on SQLite files
//! under ./data; `concord serve --target registry` (or `facilities`) runs one.

/// mimalloc: the servers allocate per call (headers, spans, messages); it is faster than
/// the system allocator under this load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    Serve(Box<concord::Config>),
    /// Verify or export a service's tamper-evident audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Certificates for trying Concord out where its services run apart (Kubernetes).
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create one demo CA, a server certificate for every service and the demo agencies'
    /// client certificates and directory in a new folder, to be shared by every service (for
    /// example as the Kubernetes Secrets the manifests mount), and print the commands that
    /// load them. Demonstration only: the CA's key is written next to them. A folder that
    /// already holds a PKI is kept as it is.
    Demo {
        /// The folder to create (it must not exist, be empty, or hold a PKI already).
        #[arg(long)]
        dir: std::path::PathBuf,
        /// The names the services are dialled by, all in the one server certificate; by
        /// default every name of the Kubernetes Services in namespace `concord` (short,
        /// namespaced, cluster.local, headless) and localhost for `kubectl port-forward`.
        #[arg(long, value_delimiter = ',', default_values_t = demo_server_names())]
        server_names: Vec<String>,
        /// More names, added to --server-names: the gateway's external DNS name, which
        /// partners dial.
        #[arg(long, value_delimiter = ',')]
        extra_names: Vec<String>,
    },
}

/// Every name a client in the cluster may dial a service by, in namespace `concord`.
fn demo_server_names() -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    // The gateway is a Deployment, without a headless Service.
    for s in [
        "concord-registry",
        "concord-registry-headless",
        "concord-facilities",
        "concord-facilities-headless",
        "concord-requests",
        "concord-requests-headless",
        "concord-gateway",
    ] {
        names.push(s.to_string());
        names.push(format!("{s}.concord.svc"));
        names.push(format!("{s}.concord.svc.cluster.local"));
    }
    names
}

fn pki(command: PkiCommand) -> anyhow::Result<()> {
    use concord_platform::pki;
    match command {
        PkiCommand::Demo { dir, server_names, extra_names } => {
            let names: Vec<&str> =
                server_names.iter().chain(&extra_names).map(|n| n.trim()).collect();
            anyhow::ensure!(
                names.iter().all(|n| !n.is_empty()),
                "--server-names or --extra-names has an empty name"
            );
            let holds_pki = dir.join("ca.pem").exists();
            if dir.exists() && !dir.is_dir() {
                anyhow::bail!(
                    "{} is not a folder: give a new folder for the demo PKI",
                    dir.display()
                );
            }
            if !holds_pki && dir.read_dir().is_ok_and(|mut d| d.next().is_some()) {
                anyhow::bail!(
                    "{} is not empty and holds no PKI: give a new folder for the demo PKI",
                    dir.display()
                );
            }
            if !holds_pki && dir.exists() {
                // An empty folder: the new PKI is moved into its place.
                std::fs::remove_dir(&dir).map_err(|e| {
                    anyhow::anyhow!("replacing the empty folder {}: {e}", dir.display())
                })?;
            }
            let made = pki::ensure_demo(&dir, &names, &pki::demo_agencies())?;
            let d = made.dir.display();
            if made.created {
                println!(
                    "Created a demo CA, a server certificate for {} and credentials for the agencies {} under {d}.",
                    names.join(", "),
                    pki::demo_agencies().iter().map(|a| a.id.as_str()).collect::<Vec<_>>().join(", "),
                );
            } else {
                println!(
                    "{d} already holds a PKI (ca.pem): kept as it is, with the names it was made for (the names given now are not applied)."
                );
            }
            println!("For the Kubernetes manifests (deploy/kubernetes), in namespace concord:");
            let server = made.server();
            println!(
                "  kubectl -n concord create secret generic concord-tls --type=kubernetes.io/tls --from-file=tls.crt='{}' --from-file=tls.key='{}' --from-file=ca.crt='{}'",
                server.cert.display(),
                server.key.display(),
                server.ca.display()
            );
            println!(
                "  kubectl -n concord create configmap concord-agencies --from-file=agencies.toml='{}'",
                made.directory().display()
            );
            for service in ["concord-facilities", "concord-requests", "concord-gateway"] {
                let files = made.agency(service);
                println!(
                    "  kubectl -n concord create secret tls {service}-client --cert='{}' --key='{}'",
                    files.cert.display(),
                    files.key.display()
                );
            }
            println!(
                "Demonstration only: the CA's key ({d}/ca.key) can mint any agency's certificate."
            );
        }
    }
    Ok(())
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute the hash chain; exit 1 if any entry was altered, removed or reordered.
    Verify {
        /// The service database (sqlite://... or postgres://...).
        #[arg(long, env = "CONCORD_AUDIT_DATABASE_URL")]
        database_url: String,
        /// A head published earlier, as SEQ:HASH, to also detect entries removed at the end.
        #[arg(long)]
        head: Option<String>,
    },
    /// Print entries after a position as JSON lines, for oversight bodies; the last line's
    /// seq and hash are the head to publish.
    Export {
        /// The service database (sqlite://... or postgres://...).
        #[arg(long, env = "CONCORD_AUDIT_DATABASE_URL")]
        database_url: String,
        /// Print entries after this position.
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
}

async fn audit(command: AuditCommand) -> anyhow::Result<()> {
    use concord_platform::audit::{self, Head, Verdict};
    use concord_platform::storage::{Db, DbOptions, Migrations};
    match command {
        AuditCommand::Verify { database_url, head } => {
            let expected = match head {
                None => None,
                Some(h) => {
                    let (seq, hash) = h
                        .split_once(':')
                        .ok_or_else(|| anyhow::anyhow!("--head must be SEQ:HASH"))?;
                    Some(Head { seq: seq.parse()?, hash: hash.to_string() })
                }
            };
            let db = Db::connect(&database_url, Migrations::NONE, DbOptions::default()).await?;
            match audit::verify(&db, expected.as_ref()).await? {
                Verdict::Intact(h) => {
                    println!("audit log intact: {} entries, head {}:{}", h.seq, h.seq, h.hash)
                }
                Verdict::Broken { seq, reason } => {
                    println!("audit log BROKEN at entry {seq}: {reason}");
                    std::process::exit(1);
                }
            }
        }
        AuditCommand::Export { database_url, after } => {
            let db = Db::connect(&database_url, Migrations::NONE, DbOptions::default()).await?;
            let mut after = after;
            loop {
                let batch = audit::export(&db, after, 10_000).await?;
                let Some(last) = batch.last() else { break };
                after = last.seq;
                for e in &batch {
                    println!("{}", serde_json::to_string(e)?);
                }
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = match Cli::parse().command {
        Command::Serve(cfg) => cfg,
        Command::Audit { command } => return audit(command).await,
        Command::Pki { command } => return pki(command),
    };
    let telemetry = concord_platform::telemetry::init("concord", &cfg.telemetry)?;
    let (trigger, shutdown) = Shutdown::new();
    trigger.on_signals();
    let (running, served) = concord::start(&cfg, shutdown).await?;
    if let Some(addr) = running.registry {
        tracing::info!(%addr, database = %redact(&cfg.registry_database_url()), "registry ready");
    }
    if let Some(addr) = running.facilities {
        let database = redact(&cfg.facilities_database_url());
        tracing::info!(%addr, %database, "facilities ready");
    }
    if let Some(addr) = running.requests {
        let database = redact(&cfg.requests_database_url());
        tracing::info!(%addr, %database, "requests ready");
    }
    if let Some(addr) = running.gateway {
        tracing::info!(%addr, "gateway ready");
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
