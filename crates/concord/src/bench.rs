//! `concord-bench`: the performance figures of the registry, as ratios measured in one run.
//!
//! Run it pinned to one core; it starts the servers as a child process pinned to the other
//! (`taskset`), as the quality bars ask:
//!
//! ```text
//! cargo build --release -p concord
//! taskset -c 0 target/release/concord-bench --people 100000 --backends sqlite,postgres
//! ```
//!
//! Scenarios, per backend: bulk import of synthetic people (people per second), then name
//! search latency over them (p50, p99), then GetPerson throughput against a bare tonic
//! server answering the same payload without storage or layers, interleaved over several
//! rounds (median ratio and range); then the cost of security: GetPerson and search
//! throughput over mutual TLS with the policy, scope, redaction and read auditing, against
//! the same registry in plaintext with none of them. Last, the gateway (`--gateway`, on by
//! default; `--gateway-only` skips the rest): the whole suite as `concord serve` runs it, with
//! GetPerson passed through the gateway against the same call made to the registry directly
//! (throughput, and the p90 latency the gateway adds under moderate load, also with the two
//! taking turns in 250 ms slices so both meet the same moments of the disk), and the case file
//! against the bare echo. The pass-through is measured with the suite's own gateway, which
//! shares the services' core, and with a second gateway in its own process on the load
//! generator's core, as deployed (its own pods, not the services' CPU). While that second
//! gateway carries the calls, the CPU time each process uses per call is read from `/proc`
//! (10 ms ticks, over windows of seconds):
//! what the gateway costs per passed-through call, against what the services cost per direct
//! call, and the throughput ratio those costs would give on one shared core. The floor of a
//! pass-through is measured beside it: a bare tonic forwarder on mutual TLS, with none of the
//! gateway's own work, in both places (the services' process and the second gateway's) in
//! throughput, and in the second gateway's process also in CPU per call and added p90.

/// mimalloc: the servers allocate per call (headers, spans, messages); it is faster than
/// the system allocator under this load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use concord_platform::auth::{HeaderCredentials, Purpose};
use concord_platform::server::{Services, Shutdown};
use concord_proto::registry::v1 as pb;
use concord_proto::registry::v1::registry_service_client::RegistryServiceClient;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

#[derive(Parser, Debug)]
#[command(name = "concord-bench")]
struct Args {
    /// People to import before searching.
    #[arg(long, default_value_t = 100_000)]
    people: usize,
    /// Backends to measure, comma separated: sqlite, postgres.
    #[arg(long, default_value = "sqlite,postgres")]
    backends: String,
    /// Administrative PostgreSQL URL; a fresh database is created under it.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pg_url: String,
    /// Search queries per backend.
    #[arg(long, default_value_t = 2000)]
    queries: usize,
    /// Rounds of the interleaved throughput comparison.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds per scenario per round.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Requests in flight during throughput runs.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Measure only the gateway's figures.
    #[arg(long)]
    gateway_only: bool,
    /// Only GetPerson, for `--seconds`, through `gateway` (the suite's, the default),
    /// `own-gateway`, `forwarder` (the bare one in the suite's process), `own-forwarder`, or
    /// `none` (made directly): a steady load to profile a process under (`perf record -p
    /// <pid>`; the pids are printed).
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "gateway")]
    profile_pass_through: Option<String>,
    /// The same for case files.
    #[arg(long, hide = true)]
    profile_case_file: bool,
    /// Each of the case file's backend calls alone, made to its service directly, for
    /// `--seconds` each: where a case file's cost lies.
    #[arg(long, hide = true)]
    case_file_parts: bool,
    /// Calls in flight for the gateway's added latency ("moderate load").
    #[arg(long, default_value_t = 4)]
    latency_concurrency: usize,
    /// Another build of concord-bench whose gateway is measured beside this build's, in
    /// the same rounds and in the same place (its own process on the load generator's core):
    /// throughput and CPU per passed-through call, for an A/B comparison of a gateway change
    /// that one run's noise would otherwise hide.
    #[arg(long)]
    baseline: Option<std::path::PathBuf>,
    /// Internal: run the servers for DATABASE_URL and print their addresses.
    #[arg(long, hide = true)]
    serve: Option<String>,
    /// Internal: the demo PKI folder the servers use.
    #[arg(long, hide = true)]
    pki: Option<std::path::PathBuf>,
    /// Internal: run only a gateway in front of the suite's registry, facilities and requests
    /// services at these comma-separated URLs (the suite's folder is --pki), and print its
    /// address.
    #[arg(long, hide = true)]
    serve_gateway: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(url) = &args.serve {
        let pki = args.pki.clone().context("--serve needs --pki")?;
        return tokio::runtime::Runtime::new()?.block_on(serve(url.clone(), pki));
    }
    if let Some(urls) = &args.serve_gateway {
        let suite = args.pki.clone().context("--serve-gateway needs --pki")?;
        return tokio::runtime::Runtime::new()?.block_on(serve_gateway(urls, suite));
    }
    // The load generator runs on one thread: it is pinned to one core.
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(run(args))
}

// ---- server side (child process) ------------------------------------------------------------

/// A bare tonic service that answers `/concord.bench.Echo/Get` with a stored `Person` and
/// stores one with `/concord.bench.Echo/Set`: the physical limit for GetPerson.
#[derive(Clone, Default)]
struct Echo {
    payload: Arc<RwLock<pb::Person>>,
}

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "concord.bench.Echo";
}

struct EchoGet(Arc<RwLock<pb::Person>>);
impl tonic::server::UnaryService<pb::GetPersonRequest> for EchoGet {
    type Response = pb::Person;
    type Future = std::future::Ready<Result<tonic::Response<pb::Person>, tonic::Status>>;
    fn call(&mut self, _: tonic::Request<pb::GetPersonRequest>) -> Self::Future {
        let p = self.0.read().map(|p| p.clone()).unwrap_or_default();
        std::future::ready(Ok(tonic::Response::new(p)))
    }
}

struct EchoSet(Arc<RwLock<pb::Person>>);
impl tonic::server::UnaryService<pb::Person> for EchoSet {
    type Response = pb::Person;
    type Future = std::future::Ready<Result<tonic::Response<pb::Person>, tonic::Status>>;
    fn call(&mut self, req: tonic::Request<pb::Person>) -> Self::Future {
        let p = req.into_inner();
        if let Ok(mut slot) = self.0.write() {
            *slot = p.clone();
        }
        std::future::ready(Ok(tonic::Response::new(p)))
    }
}

type BoxFut<T> = Pin<Box<dyn std::future::Future<Output = Result<T, Infallible>> + Send>>;

impl tower::Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFut<Self::Response>;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let payload = self.payload.clone();
        Box::pin(async move {
            Ok(match req.uri().path() {
                "/concord.bench.Echo/Get" => {
                    tonic::server::Grpc::new(tonic_prost::ProstCodec::<
                        pb::Person,
                        pb::GetPersonRequest,
                    >::default())
                    .unary(EchoGet(payload), req)
                    .await
                }
                "/concord.bench.Echo/Set" => {
                    tonic::server::Grpc::new(
                        tonic_prost::ProstCodec::<pb::Person, pb::Person>::default(),
                    )
                    .unary(EchoSet(payload), req)
                    .await
                }
                _ => tonic::Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

async fn serve(url: String, pki_dir: std::path::PathBuf) -> anyhow::Result<()> {
    let log_filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    let telemetry = concord_platform::config::TelemetryConfig { log_filter, ..Default::default() };
    let _guard = concord_platform::telemetry::init("concord-bench", &telemetry)?;
    let (_trigger, shutdown) = Shutdown::new();
    let suite_shutdown = shutdown.clone();
    // The per-agency rate limit stays on (its check is part of every call's cost) but high
    // enough that one load-generating agency is never refused.
    let cfg = concord_platform::config::ServerConfig {
        rate_limit_per_agency: 1e9,
        rate_burst_per_agency: 1e9,
        ..Default::default()
    };
    let db = concord_platform::storage::Db::connect(
        &url,
        concord_registry::store::MIGRATIONS,
        concord_platform::storage::DbOptions::default(),
    )
    .await?;
    let store = concord_registry::store::Store::new(db);
    let policy = Arc::new(concord_platform::policy::Policy::embedded());
    let enforced_registry =
        concord_registry::Registry::new(store.clone(), policy.clone(), shutdown.clone());
    let enforced = concord_registry::server(enforced_registry.clone(), &cfg);
    let enforced_plain = concord_registry::server(enforced_registry, &cfg);
    let bare = concord_registry::server(
        concord_registry::Registry::new(store, policy, shutdown.clone())
            .unenforced_for_benchmarks(),
        &cfg,
    );
    let pki = concord_platform::pki::ensure_demo(
        &pki_dir,
        &["localhost"],
        &concord_platform::pki::demo_agencies(),
    )?;
    let secure = concord_platform::server::Security {
        authenticator: Arc::new(concord_platform::auth::EdgeAuthenticator {
            mtls: Some(concord_platform::pki::CertificateAuthenticator::new(
                concord_platform::pki::Directory::from_file(&pki.directory())?,
            )),
            oidc: None,
            forwarders: vec![],
        }),
        tls: Some(pki.server().server_config()?),
    };
    let plain = concord_platform::server::Security {
        authenticator: Arc::new(concord_platform::auth::HeaderAuthenticator),
        tls: None,
    };
    let plain2 = plain.clone();
    let registry = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let secured = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let policed = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("REGISTRY {}", registry.local_addr()?);
    println!("SECURED {}", secured.local_addr()?);
    println!("POLICED {}", policed.local_addr()?);
    println!("ECHO {}", echo.local_addr()?);
    let cfg2 = cfg.clone();
    let shutdown2 = shutdown.clone();
    let cfg3 = cfg.clone();
    let shutdown3 = shutdown.clone();
    let pol = tokio::spawn(async move {
        concord_platform::server::serve(
            policed,
            Services::new().with(enforced_plain),
            plain2,
            &cfg3,
            shutdown3,
        )
        .await
    });
    let reg = tokio::spawn(async move {
        concord_platform::server::serve(registry, Services::new().with(bare), plain, &cfg, shutdown)
            .await
    });
    let sec = tokio::spawn(async move {
        concord_platform::server::serve(
            secured,
            Services::new().with(enforced),
            secure,
            &cfg2,
            shutdown2,
        )
        .await
    });
    let bare = tonic::transport::Server::builder()
        .add_service(Echo::default())
        .serve_with_incoming(concord_platform::server::incoming(echo));
    // The whole suite as `concord serve` runs it (mutual TLS with its own demo PKI, SQLite),
    // for the gateway's figures.
    let mut suite = concord::Config::with_data_dir(pki_dir.with_file_name("suite"));
    for a in [
        &mut suite.registry_addr,
        &mut suite.facilities_addr,
        &mut suite.requests_addr,
        &mut suite.gateway_addr,
    ] {
        *a = "127.0.0.1:0".parse()?;
    }
    suite.server.rate_limit_per_agency = 1e9;
    suite.server.rate_burst_per_agency = 1e9;
    let (running, served) = concord::start(&suite, suite_shutdown).await?;
    println!("SUITE {}", running.registry.context("suite registry")?);
    println!("FACILITIES {}", running.facilities.context("suite facilities")?);
    println!("REQUESTS {}", running.requests.context("suite requests")?);
    println!("GATEWAY {}", running.gateway.context("suite gateway")?);
    let bare_hop = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("FORWARDER {}", bare_hop.local_addr()?);
    let registry_url =
        format!("https://localhost:{}", running.registry.context("suite registry")?.port());
    let suite_pki = concord_platform::pki::DemoPki { dir: suite.demo_pki_dir(), created: false };
    let fwd = forwarder(bare_hop, suite_pki, &registry_url);
    tokio::select! {
        r = fwd => r?,
        r = reg => r??,
        r = sec => r??,
        r = pol => r??,
        r = bare => r?,
        r = served => r?,
    }
    Ok(())
}

/// A gateway alone, as deployed (its own process, in front of the services at `urls`: registry,
/// facilities, requests), with the suite's PKI under `suite`.
async fn serve_gateway(urls: &str, suite: std::path::PathBuf) -> anyhow::Result<()> {
    let log_filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    let telemetry = concord_platform::config::TelemetryConfig { log_filter, ..Default::default() };
    let _guard = concord_platform::telemetry::init("concord-bench-gateway", &telemetry)?;
    let (_trigger, shutdown) = Shutdown::new();
    let mut cfg = concord::Config::with_data_dir(suite);
    let mut urls = urls.split(',').map(str::to_string);
    cfg.registry_url = urls.next();
    cfg.facilities_url = urls.next();
    cfg.requests_url = urls.next();
    cfg.target = concord::Target::Gateway;
    cfg.gateway_addr = "127.0.0.1:0".parse()?;
    cfg.server.rate_limit_per_agency = 1e9;
    cfg.server.rate_burst_per_agency = 1e9;
    let suite_pki = concord_platform::pki::DemoPki { dir: cfg.demo_pki_dir(), created: false };
    let registry = cfg.registry_url.clone().context("no registry URL")?;
    let (running, served) = concord::start(&cfg, shutdown).await?;
    println!("GATEWAY {}", running.gateway.context("gateway")?);
    let bare_hop = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("FORWARDER {}", bare_hop.local_addr()?);
    tokio::select! {
        r = forwarder(bare_hop, suite_pki, &registry) => r,
        r = served => r,
    }
}

/// The floor of a pass-through: a bare tonic server on mutual TLS (the suite's certificate,
/// the platform's TLS accept loop) that sends every registry call on to `registry` over a
/// tonic channel on mutual TLS as the gateway (its certificate), with `fr-mfa`'s principal
/// in `x-concord-*` metadata. None of the gateway's own work: no identification of the
/// caller, policy of the edge, rate limit, admission, deadline, metrics, spans, retries or
/// JSON edge. Serves on `listener` until the process ends.
async fn forwarder(
    listener: tokio::net::TcpListener,
    suite_pki: concord_platform::pki::DemoPki,
    registry: &str,
) -> anyhow::Result<()> {
    let principal = concord_platform::pki::Directory::from_file(&suite_pki.directory())?
        .get("fr-mfa")
        .cloned()
        .context("fr-mfa is not in the suite's directory")?;
    let channel = tonic::transport::Endpoint::from_shared(registry.to_string())?
        .tcp_nodelay(true)
        .tls_config(suite_pki.agency("concord-gateway").client_config("localhost")?)?
        .connect_lazy();
    let tls = suite_pki.server().server_config()?.with_alpn(false);
    tonic::transport::Server::builder()
        .add_service(Forwarder { channel, credentials: HeaderCredentials::new(principal) })
        .serve_with_incoming(concord_platform::server::tls_incoming(listener, tls))
        .await?;
    Ok(())
}

/// See [`forwarder`].
#[derive(Clone)]
struct Forwarder {
    channel: Channel,
    credentials: HeaderCredentials,
}

impl tonic::server::NamedService for Forwarder {
    const NAME: &'static str = "concord.registry.v1.RegistryService";
}

impl tower::Service<http::Request<tonic::body::Body>> for Forwarder {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFut<Self::Response>;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        use tower::ServiceExt;
        self.credentials.apply_headers(req.headers_mut());
        let channel = self.channel.clone();
        Box::pin(async move {
            Ok(match channel.oneshot(req).await {
                Ok(res) => res.map(tonic::body::Body::new),
                Err(e) => tonic::Status::unavailable(e.to_string()).into_http(),
            })
        })
    }
}

// ---- load side ------------------------------------------------------------------------------

struct Servers {
    child: Killed,
    /// The registry without security (plaintext, trusted metadata, no policy or audit).
    registry: String,
    /// The same registry behind mutual TLS, the policy and the audit log.
    secured: String,
    /// The policy and the audit log without TLS (trusted metadata): separates their cost.
    policed: String,
    echo: String,
    pki: concord_platform::pki::DemoPki,
    /// The suite's registry and gateway (mutual TLS with `suite_pki`).
    suite_registry: String,
    suite_facilities: String,
    suite_requests: String,
    gateway: String,
    suite_pki: concord_platform::pki::DemoPki,
    /// A second gateway in front of the same suite, in its own process on the load
    /// generator's core (as deployed: the gateway in its own pods, not on the services' CPU).
    own_gateway: String,
    own_child: Killed,
    /// A bare mutual-TLS forwarder to the suite's registry (see [`forwarder`]), in the
    /// suite's process, and one in the second gateway's process.
    forwarder: String,
    own_forwarder: String,
    /// A gateway of another build (`--baseline`), run as the second one is.
    baseline: Option<Baseline>,
}

/// See [`Servers::baseline`].
struct Baseline {
    child: Killed,
    gateway: String,
}

/// A child process, killed when this is dropped: when the bench ends, and when it fails
/// while starting the others.
struct Killed(Child);

impl Killed {
    fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `exe` pinned to `core` where `taskset` exists.
fn pinned(exe: &std::path::Path, core: u32) -> (Command, bool) {
    if Command::new("taskset").arg("--version").output().is_ok() {
        let mut c = Command::new("taskset");
        c.arg("-c").arg(core.to_string()).arg(exe);
        (c, true)
    } else {
        (Command::new(exe), false)
    }
}

/// The lines a child prints.
type Printed = std::io::Lines<BufReader<std::process::ChildStdout>>;

/// `exe` with `args`, pinned to `core` where `taskset` exists (and whether it is), and the
/// lines it prints.
fn start(
    exe: &std::path::Path,
    core: u32,
    args: &[&std::ffi::OsStr],
) -> anyhow::Result<(Killed, Printed, bool)> {
    let (mut cmd, is_pinned) = pinned(exe, core);
    let mut child = Killed(cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()?);
    let out = child.0.stdout.take().context("no stdout from the child")?;
    Ok((child, BufReader::new(out).lines(), is_pinned))
}

fn spawn_servers(
    url: &str,
    pki_dir: &std::path::Path,
    baseline: Option<&std::path::Path>,
) -> anyhow::Result<Servers> {
    let pki = concord_platform::pki::ensure_demo(
        pki_dir,
        &["localhost"],
        &concord_platform::pki::demo_agencies(),
    )?;
    let exe = std::env::current_exe()?;
    let (child, mut lines, is_pinned) =
        start(&exe, 1, &["--serve".as_ref(), url.as_ref(), "--pki".as_ref(), pki_dir.as_ref()])?;
    let mut registry = String::new();
    let mut echo = String::new();
    let mut secured = String::new();
    let mut policed = String::new();
    let mut suite_registry = String::new();
    let mut gateway = String::new();
    let (mut facilities, mut requests) = (String::new(), String::new());
    let mut forwarder = String::new();
    for _ in 0..9 {
        let line = lines.next().context("servers exited before printing their addresses")??;
        match line.split_once(' ') {
            Some(("REGISTRY", a)) => registry = format!("http://{a}"),
            Some(("ECHO", a)) => echo = format!("http://{a}"),
            Some(("SECURED", a)) => secured = format!("https://{a}"),
            Some(("POLICED", a)) => policed = format!("http://{a}"),
            Some(("SUITE", a)) => suite_registry = format!("https://localhost:{}", port(a)?),
            Some(("GATEWAY", a)) => gateway = format!("https://localhost:{}", port(a)?),
            Some(("FACILITIES", a)) => facilities = format!("https://localhost:{}", port(a)?),
            Some(("REQUESTS", a)) => requests = format!("https://localhost:{}", port(a)?),
            Some(("FORWARDER", a)) => forwarder = format!("https://localhost:{}", port(a)?),
            _ => anyhow::bail!("unexpected line from servers: {line}"),
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    let suite_dir = pki_dir.with_file_name("suite");
    let suite_urls = format!("{suite_registry},{facilities},{requests}");
    let (own_child, own_gateway, own_forwarder) =
        spawn_gateway(&exe, &suite_urls, &suite_dir, true)?;
    let baseline = match baseline {
        Some(exe) => {
            let (child, gateway, _) = spawn_gateway(exe, &suite_urls, &suite_dir, false)
                .with_context(|| format!("starting the baseline gateway {}", exe.display()))?;
            Some(Baseline { child, gateway })
        }
        None => None,
    };
    eprintln!(
        "servers on {registry} and {echo} ({})",
        if is_pinned { "pinned to core 1" } else { "not pinned" }
    );
    let suite_pki = concord_platform::pki::DemoPki { dir: suite_dir.join("pki"), created: false };
    Ok(Servers {
        child,
        registry,
        secured,
        policed,
        echo,
        pki,
        suite_registry,
        suite_facilities: facilities,
        suite_requests: requests,
        gateway,
        suite_pki,
        own_gateway,
        own_child,
        forwarder,
        own_forwarder,
        baseline,
    })
}

/// A gateway alone (`--serve-gateway`) from the binary `exe`, pinned to the load generator's
/// core, in front of the suite's services at `suite_urls`: the process, the gateway's address
/// and that of the bare forwarder beside it. Builds before the forwarder print no address
/// for it: with `forwarder` false only the gateway's is awaited (what else the process
/// prints is read and dropped, so it never writes to a closed pipe).
fn spawn_gateway(
    exe: &std::path::Path,
    suite_urls: &str,
    suite_dir: &std::path::Path,
    forwarder: bool,
) -> anyhow::Result<(Killed, String, String)> {
    let args =
        ["--serve-gateway".as_ref(), suite_urls.as_ref(), "--pki".as_ref(), suite_dir.as_ref()];
    let (child, mut lines, _) = start(exe, 0, &args)?;
    let (mut gateway, mut bare) = (String::new(), String::new());
    while gateway.is_empty() || (forwarder && bare.is_empty()) {
        let line = lines.next().context("the gateway exited")??;
        match line.split_once(' ') {
            Some(("GATEWAY", a)) => gateway = format!("https://localhost:{}", port(a)?),
            Some(("FORWARDER", a)) => bare = format!("https://localhost:{}", port(a)?),
            _ => anyhow::bail!("unexpected line from the gateway: {line}"),
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    Ok((child, gateway, bare))
}

fn port(addr: &str) -> anyhow::Result<u16> {
    Ok(addr.parse::<std::net::SocketAddr>()?.port())
}

/// Trusted metadata (plaintext registry) or a purpose only (mutual TLS names the caller).
#[derive(Clone)]
enum Creds {
    Header(HeaderCredentials),
    Purpose(Purpose),
}

impl tonic::service::Interceptor for Creds {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        match self {
            Creds::Header(h) => h.call(req),
            Creds::Purpose(p) => p.call(req),
        }
    }
}

type Client =
    RegistryServiceClient<tonic::service::interceptor::InterceptedService<Channel, Creds>>;

const PURPOSE: &str = "concord benchmark";

async fn client(uri: &str) -> anyhow::Result<Client> {
    let ch = Channel::from_shared(uri.to_string())?.connect().await?;
    let creds =
        Creds::Header(HeaderCredentials::new(concord_testkit::coordinator()).with_purpose(PURPOSE));
    Ok(RegistryServiceClient::with_interceptor(ch, creds)
        .max_decoding_message_size(16 * 1024 * 1024))
}

/// A client of the secured registry holding `agency`'s demo certificate.
async fn secure_client(s: &Servers, agency: &str) -> anyhow::Result<Client> {
    let ch = concord_testkit::tls_channel_to(&s.pki, &s.secured, agency).await?;
    Ok(RegistryServiceClient::with_interceptor(ch, Creds::Purpose(Purpose(PURPOSE.into())))
        .max_decoding_message_size(16 * 1024 * 1024))
}

async fn import(c: &mut Client, people: usize) -> anyhow::Result<f64> {
    let mut rng = SmallRng::seed_from_u64(7);
    let rows: Vec<pb::ImportPersonsRequest> = (0..people)
        .map(|i| pb::ImportPersonsRequest {
            person: Some(concord::synthetic::person(&mut rng)),
            request_id: format!("bench-{i}"),
        })
        .collect();
    let started = Instant::now();
    // Streams of 10,000 rows, as a partner's batch job would send them.
    let mut created = 0;
    for chunk in rows.chunks(10_000) {
        let r = c.import_persons(futures::stream::iter(chunk.to_vec())).await?.into_inner();
        anyhow::ensure!(
            r.errors.is_empty(),
            "import rejected rows: {:?}",
            &r.errors[..r.errors.len().min(3)]
        );
        created += r.created_count;
    }
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(created as usize == people, "created {created} of {people}");
    Ok(people as f64 / secs)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Makes one search query.
type QueryMaker = fn(&mut SmallRng) -> String;

async fn search(
    c: &mut Client,
    queries: usize,
    make: QueryMaker,
) -> anyhow::Result<(Duration, Duration, f64)> {
    let mut rng = SmallRng::seed_from_u64(11);
    let mut lat = Vec::with_capacity(queries);
    let mut results = 0usize;
    for _ in 0..queries {
        let q = make(&mut rng);
        let started = Instant::now();
        let r = c
            .search_persons(pb::SearchPersonsRequest {
                query: q,
                page_size: 20,
                ..Default::default()
            })
            .await?;
        lat.push(started.elapsed());
        results += r.into_inner().results.len();
    }
    lat.sort();
    Ok((percentile(&lat, 0.5), percentile(&lat, 0.99), results as f64 / queries as f64))
}

/// Completed calls per second with `concurrency` calls in flight for `secs`.
async fn throughput<F, Fut>(concurrency: usize, secs: u64, call: F) -> anyhow::Result<f64>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    Ok(counted(concurrency, secs, call).await?.0)
}

/// The CPU time the process `pid` has used so far, all its threads, those that have ended
/// included (user and system time from `/proc/<pid>/stat`, in clock ticks); `None` where
/// there is no `/proc`.
fn cpu_time(pid: u32) -> Option<Duration> {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let per_second = *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100)
    });
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (in parentheses, which may hold spaces): the state (field 3),
    // ..., utime (14) and stime (15).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_nanos(ticks * 1_000_000_000 / per_second.max(1)))
}

/// The CPU time each of `pids` used per call while `run` made its calls, in microseconds, and
/// the calls per second `run` measured.
async fn cpu_per_call<Fut>(pids: &[u32], run: Fut) -> anyhow::Result<(f64, Vec<Option<f64>>)>
where
    Fut: std::future::Future<Output = anyhow::Result<(f64, u64)>>,
{
    let before: Vec<_> = pids.iter().map(|p| cpu_time(*p)).collect();
    let (rps, calls) = run.await?;
    let per_call = pids
        .iter()
        .zip(before)
        .map(|(p, b)| {
            let used = cpu_time(*p)?.checked_sub(b?)?;
            Some(used.as_secs_f64() * 1e6 / calls.max(1) as f64)
        })
        .collect();
    Ok((rps, per_call))
}

/// Calls per second made by `concurrency` workers calling `call` for `secs`, and how many
/// calls were made.
async fn counted<F, Fut>(concurrency: usize, secs: u64, call: F) -> anyhow::Result<(f64, u64)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let workers = (0..concurrency).map(|w| {
        let call = &call;
        async move {
            let mut n = 0u64;
            let mut i = w;
            while Instant::now() < deadline {
                call(i).await?;
                n += 1;
                i += concurrency;
            }
            anyhow::Ok(n)
        }
    });
    let counts = futures::future::try_join_all(workers).await?;
    let calls = counts.iter().sum::<u64>();
    Ok((calls as f64 / started.elapsed().as_secs_f64(), calls))
}

async fn get_vs_echo(s: &Servers, args: &Args) -> anyhow::Result<()> {
    let mut c = client(&s.registry).await?;
    let names: Vec<String> = c
        .list_persons(pb::ListPersonsRequest { page_size: 1000, ..Default::default() })
        .await?
        .into_inner()
        .persons
        .into_iter()
        .map(|p| p.name)
        .collect();
    anyhow::ensure!(!names.is_empty(), "no people to get");
    let sample = c.get_person(pb::GetPersonRequest { name: names[0].clone() }).await?.into_inner();
    let echo_ch = Channel::from_shared(s.echo.clone())?.connect().await?;
    let mut echo = tonic::client::Grpc::new(echo_ch.clone());
    echo.ready().await?;
    echo.unary::<pb::Person, pb::Person, _>(
        tonic::Request::new(sample.clone()),
        PathAndQuery::from_static("/concord.bench.Echo/Set"),
        tonic_prost::ProstCodec::default(),
    )
    .await?;
    eprintln!("payload: {} bytes per Person", prost::Message::encoded_len(&sample));
    let mut ratios = Vec::new();
    for round in 0..args.rounds {
        let echo_rps = throughput(args.concurrency, args.seconds, |i| {
            let mut g = tonic::client::Grpc::new(echo_ch.clone());
            let name = names[i % names.len()].clone();
            async move {
                g.ready().await?;
                g.unary::<pb::GetPersonRequest, pb::Person, _>(
                    tonic::Request::new(pb::GetPersonRequest { name }),
                    PathAndQuery::from_static("/concord.bench.Echo/Get"),
                    tonic_prost::ProstCodec::default(),
                )
                .await?;
                Ok(())
            }
        })
        .await?;
        let get_rps = throughput(args.concurrency, args.seconds, |i| {
            let mut c = c.clone();
            let name = names[i % names.len()].clone();
            async move {
                c.get_person(pb::GetPersonRequest { name }).await?;
                Ok(())
            }
        })
        .await?;
        eprintln!(
            "round {round}: echo {echo_rps:.0}/s, GetPerson {get_rps:.0}/s, ratio {:.2}",
            get_rps / echo_rps
        );
        ratios.push(get_rps / echo_rps);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "GetPerson vs bare tonic echo (same payload, {} in flight, {} rounds): median {:.2}x, range {:.2}-{:.2}",
        args.concurrency,
        args.rounds,
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    );
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    for backend in args.backends.split(',').map(str::trim).filter(|b| !b.is_empty()) {
        let dir = tempfile::tempdir()?;
        let url = match backend {
            "sqlite" => format!("sqlite://{}", dir.path().join("bench.db").display()),
            "postgres" => {
                let name = format!("concord_bench_{}", uuid::Uuid::new_v4().simple());
                let mut conn =
                    <sqlx::PgConnection as sqlx::Connection>::connect(&args.pg_url).await?;
                sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
                let base = args.pg_url.rsplit_once('/').map_or(args.pg_url.as_str(), |(b, _)| b);
                format!("{base}/{name}")
            }
            other => anyhow::bail!("unknown backend {other}"),
        };
        let servers = spawn_servers(&url, &dir.path().join("pki"), args.baseline.as_deref())?;
        if args.gateway_only {
            gateway::cost(&servers, &args).await?;
            return Ok(());
        }
        let mut c = client(&servers.registry).await?;
        let rate = import(&mut c, args.people).await?;
        println!("[{backend}] import of {} people: {rate:.0} people/s", args.people);
        if backend == "postgres" {
            // As after any bulk load: fresh planner statistics (autovacuum would get there
            // later on its own).
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await?;
            sqlx::query("ANALYZE").execute(&mut conn).await?;
        }
        let kinds: [(&str, QueryMaker); 2] = [
            ("given + family name", concord::synthetic::query),
            ("one given name", concord::synthetic::one_word_query),
        ];
        for (kind, make) in kinds {
            let (p50, p99, avg) = search(&mut c, args.queries, make).await?;
            println!(
                "[{backend}] name search ({kind}) over {} people, {} queries: p50 {:.2} ms, p99 {:.2} ms ({avg:.1} results per page)",
                args.people,
                args.queries,
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3
            );
        }
        println!("[{backend}] GetPerson:");
        get_vs_echo(&servers, &args).await?;
        println!("[{backend}] cost of security:");
        security_cost(&servers, &args).await?;
        if backend == "sqlite" {
            gateway::cost(&servers, &args).await?;
        }
    }
    Ok(())
}

/// One scenario of [`security_cost`]: a client and what it calls.
struct Variant {
    label: &'static str,
    client: Client,
    names: Vec<String>,
}

/// GetPerson and search throughput with mutual TLS, the policy, scope, redaction and read
/// auditing, against the plaintext registry with none of them, interleaved over the rounds.
async fn security_cost(s: &Servers, args: &Args) -> anyhow::Result<()> {
    let mut bare = client(&s.registry).await?;
    let list = |c: &mut Client, filter: &str| {
        let mut c = c.clone();
        let filter = filter.to_string();
        async move {
            anyhow::Ok(
                c.list_persons(pb::ListPersonsRequest {
                    page_size: 1000,
                    filter,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .persons
                .into_iter()
                .map(|p| p.name)
                .collect::<Vec<_>>(),
            )
        }
    };
    let everyone = list(&mut bare, "").await?;
    let french = list(&mut bare, "nationality = \"FR\"").await?;
    anyhow::ensure!(!french.is_empty(), "no French nationals in the synthetic data");
    let variants = [
        Variant {
            label: "plaintext, no policy, no audit (coordinator)",
            client: bare,
            names: everyone.clone(),
        },
        Variant {
            label: "plaintext + policy + audit (coordinator)",
            client: client(&s.policed).await?,
            names: everyone.clone(),
        },
        Variant {
            label: "mTLS + policy + audit (coordinator)",
            client: secure_client(s, "coalition-coordinator").await?,
            names: everyone,
        },
        Variant {
            label: "mTLS + policy + audit + nationals scope (fr-mfa)",
            client: secure_client(s, "fr-mfa").await?,
            names: french,
        },
    ];
    type Scenario = (&'static str, fn(Client, String, usize) -> BoxCall);
    let scenarios: [Scenario; 2] = [
        ("GetPerson", |mut c, name, _| {
            Box::pin(async move {
                c.get_person(pb::GetPersonRequest { name }).await?;
                Ok(())
            })
        }),
        ("SearchPersons", |mut c, _, i| {
            Box::pin(async move {
                let mut rng = SmallRng::seed_from_u64(i as u64);
                let query = concord::synthetic::query(&mut rng);
                c.search_persons(pb::SearchPersonsRequest {
                    query,
                    page_size: 20,
                    ..Default::default()
                })
                .await?;
                Ok(())
            })
        }),
    ];
    for (scenario, call) in scenarios {
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
        for _ in 0..args.rounds {
            for (v, out) in variants.iter().zip(rates.iter_mut()) {
                let rps = throughput(args.concurrency, args.seconds, |i| {
                    call(v.client.clone(), v.names[i % v.names.len()].clone(), i)
                })
                .await?;
                out.push(rps);
            }
        }
        let base: Vec<f64> = rates[0].clone();
        for (v, r) in variants.iter().zip(&rates) {
            let mut ratios: Vec<f64> = r.iter().zip(&base).map(|(a, b)| a / b).collect();
            ratios.sort_by(f64::total_cmp);
            let mut sorted = r.clone();
            sorted.sort_by(f64::total_cmp);
            println!(
                "  {scenario} {}: median {:.0}/s, {:.2}x of plaintext (range {:.2}-{:.2})",
                v.label,
                sorted[sorted.len() / 2],
                ratios[ratios.len() / 2],
                ratios[0],
                ratios[ratios.len() - 1]
            );
        }
    }
    Ok(())
}

type BoxCall = Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>>>>;

/// The gateway's figures.
mod gateway {
    use super::*;
    use concord_proto::facilities::v1 as fac;
    use concord_proto::facilities::v1::facilities_service_client::FacilitiesServiceClient;
    use concord_proto::gateway::v1 as gw;
    use concord_proto::gateway::v1::gateway_service_client::GatewayServiceClient;
    use concord_proto::requests::v1 as rq;
    use concord_proto::requests::v1::requests_service_client::RequestsServiceClient;
    use tonic::service::interceptor::InterceptedService;

    type With = InterceptedService<Channel, Purpose>;

    /// Families seeded (a mother and a child each); every tenth is named in a request.
    const FAMILIES: usize = 100;

    async fn channel(s: &Servers, uri: &str, agency: &str) -> anyhow::Result<Channel> {
        concord_testkit::tls_channel_to(&s.suite_pki, uri, agency).await
    }

    fn purpose() -> Purpose {
        Purpose(PURPOSE.into())
    }

    fn person(name: &str, year: i32, child: bool) -> pb::Person {
        pb::Person {
            names: vec![pb::PersonName {
                full_name: name.into(),
                kind: pb::NameKind::Primary as i32,
                script: "Latn".into(),
            }],
            sex: pb::Sex::Female as i32,
            birth_date: Some(concord_proto::r#type::v1::ApproximateDate {
                year,
                precision: concord_proto::r#type::v1::DatePrecision::Year as i32,
                ..Default::default()
            }),
            nationalities: vec![pb::Nationality {
                state: "FR".into(),
                basis: pb::NationalityBasis::Claimed as i32,
                ..Default::default()
            }],
            category: if child {
                pb::PersonCategory::Child as i32
            } else {
                pb::PersonCategory::AdultFemale as i32
            },
            identity_confidence: pb::IdentityConfidence::Medium as i32,
            ..Default::default()
        }
    }

    /// Mothers of French families held at al-hol, with their children and some requests,
    /// made through the gateway.
    async fn seed(s: &Servers) -> anyhow::Result<Vec<String>> {
        let mut camp = FacilitiesServiceClient::with_interceptor(
            channel(s, &s.gateway, "custodial-authority").await?,
            purpose(),
        );
        camp.create_facility(fac::CreateFacilityRequest {
            facility_id: "al-hol".into(),
            facility: Some(fac::Facility {
                display_name: "al-Hol".into(),
                kind: fac::FacilityKind::Camp as i32,
                location: Some(fac::Location {
                    latitude: 36.37,
                    longitude: 40.99,
                    region: String::new(),
                }),
                sections: vec![fac::Section {
                    section_id: "annex".into(),
                    display_name: "Annex".into(),
                    capacities: vec![fac::Capacity {
                        sex: fac::PlaceSex::Female as i32,
                        age_band: fac::AgeBand::Adult as i32,
                        places: 10_000,
                    }],
                }],
                ..Default::default()
            }),
            custodian_agency: "custodial-authority".into(),
            request_id: "bench-al-hol".into(),
        })
        .await?;
        let mut cell: RegistryServiceClient<With> = RegistryServiceClient::with_interceptor(
            channel(s, &s.gateway, "coalition-coordinator").await?,
            purpose(),
        );
        let mut fr = RequestsServiceClient::with_interceptor(
            channel(s, &s.gateway, "fr-mfa").await?,
            purpose(),
        );
        let mut mothers = Vec::with_capacity(FAMILIES);
        for i in 0..FAMILIES {
            let mut admitted = Vec::new();
            for (name, year, child) in [
                (format!("Amina Haddad {i}"), 1990, false),
                (format!("Maryam Haddad {i}"), 2017, true),
            ] {
                let p = cell
                    .create_person(pb::CreatePersonRequest {
                        person: Some(person(&name, year, child)),
                        request_id: String::new(),
                    })
                    .await?
                    .into_inner();
                cell.admit_person(pb::AdmitPersonRequest {
                    name: p.name.clone(),
                    facility_id: "al-hol".into(),
                    section_id: "annex".into(),
                    transition: Some(pb::CustodyTransition {
                        reason: "intake".into(),
                        source: "camp registration".into(),
                        ..Default::default()
                    }),
                })
                .await?;
                admitted.push(p.name);
            }
            cell.create_relationship(pb::CreateRelationshipRequest {
                relationship: Some(pb::Relationship {
                    person: admitted[1].clone(),
                    related_person: admitted[0].clone(),
                    kind: pb::RelationshipKind::Parent as i32,
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await?;
            if i % 10 == 0 {
                let subjects = admitted
                    .iter()
                    .map(|p| rq::Subject { person: p.clone(), ..Default::default() });
                fr.create_request(rq::CreateRequestRequest {
                    request: Some(rq::Request {
                        r#type: rq::RequestType::Repatriation as i32,
                        requested_state: "IQ".into(),
                        custodial_authority: "custodial-authority".into(),
                        receiving_state: "FR".into(),
                        subjects: subjects.collect(),
                        summary: "Repatriation of a mother and her daughter".into(),
                        ..Default::default()
                    }),
                    request_id: String::new(),
                })
                .await?;
            }
            mothers.push(admitted.swap_remove(0));
        }
        Ok(mothers)
    }

    /// Latencies of calls made with `concurrency` in flight for `secs`.
    async fn latencies<F, Fut>(
        concurrency: usize,
        secs: u64,
        call: F,
    ) -> anyhow::Result<Vec<Duration>>
    where
        F: Fn(usize) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>>,
    {
        latencies_for(concurrency, Duration::from_secs(secs), call).await
    }

    /// [`latencies`] for `span`.
    async fn latencies_for<F, Fut>(
        concurrency: usize,
        span: Duration,
        call: F,
    ) -> anyhow::Result<Vec<Duration>>
    where
        F: Fn(usize) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>>,
    {
        let deadline = Instant::now() + span;
        let workers = (0..concurrency).map(|w| {
            let call = &call;
            async move {
                let mut lat = Vec::new();
                let mut i = w;
                while Instant::now() < deadline {
                    let started = Instant::now();
                    call(i).await?;
                    lat.push(started.elapsed());
                    i += concurrency;
                }
                anyhow::Ok(lat)
            }
        });
        let mut all: Vec<Duration> =
            futures::future::try_join_all(workers).await?.into_iter().flatten().collect();
        all.sort();
        Ok(all)
    }

    fn median(v: &mut [f64]) -> (f64, f64, f64) {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    }

    /// How long each turn lasts when direct and passed-through calls take turns.
    const SLICE: Duration = Duration::from_millis(250);

    /// One case file of `person`, through `files`.
    async fn case_file(
        mut files: GatewayServiceClient<With>,
        person: String,
    ) -> anyhow::Result<()> {
        files.get_case_file(gw::GetCaseFileRequest { person }).await?;
        Ok(())
    }

    /// Each backend call of a case file alone, made directly to its service as fr-mfa, and
    /// the case file itself through the gateway.
    async fn parts(s: &Servers, args: &Args, mothers: &[String]) -> anyhow::Result<()> {
        let reg: RegistryServiceClient<With> = RegistryServiceClient::with_interceptor(
            channel(s, &s.suite_registry, "fr-mfa").await?,
            purpose(),
        );
        let fac_c = FacilitiesServiceClient::with_interceptor(
            channel(s, &s.suite_facilities, "fr-mfa").await?,
            purpose(),
        );
        let req_c = RequestsServiceClient::with_interceptor(
            channel(s, &s.suite_requests, "fr-mfa").await?,
            purpose(),
        );
        let files = GatewayServiceClient::with_interceptor(
            channel(s, &s.gateway, "fr-mfa").await?,
            purpose(),
        );
        let pick = |i: usize| mothers[i % mothers.len()].clone();
        let (n, secs) = (args.concurrency, args.seconds);
        let rps = throughput(n, secs, |i| {
            let mut c = reg.clone();
            let name = pick(i);
            async move {
                c.get_person(pb::GetPersonRequest { name }).await?;
                Ok(())
            }
        })
        .await?;
        println!("GetPerson: {rps:.0}/s");
        let rps = throughput(n, secs, |i| {
            let mut c = reg.clone();
            let parent = pick(i);
            async move {
                c.list_relationships(pb::ListRelationshipsRequest { parent }).await?;
                Ok(())
            }
        })
        .await?;
        println!("ListRelationships: {rps:.0}/s");
        let rps = throughput(n, secs, |i| {
            let mut c = reg.clone();
            let parent = pick(i);
            async move {
                c.list_custody_events(pb::ListCustodyEventsRequest {
                    parent,
                    page_size: 1000,
                    page_token: String::new(),
                })
                .await?;
                Ok(())
            }
        })
        .await?;
        println!("ListCustodyEvents: {rps:.0}/s");
        let rps = throughput(n, secs, |i| {
            let mut c = req_c.clone();
            let person = pick(i);
            async move {
                c.list_requests(rq::ListRequestsRequest {
                    person,
                    page_size: 100,
                    ..Default::default()
                })
                .await?;
                Ok(())
            }
        })
        .await?;
        println!("ListRequests (person): {rps:.0}/s");
        let rps = throughput(n, secs, |_| {
            let mut c = fac_c.clone();
            async move {
                c.get_facility(fac::GetFacilityRequest { name: "facilities/al-hol".into() })
                    .await?;
                Ok(())
            }
        })
        .await?;
        println!("GetFacility: {rps:.0}/s");
        let rps = throughput(n, secs, |i| case_file(files.clone(), pick(i))).await?;
        println!("GetCaseFile through the gateway: {rps:.0}/s");
        Ok(())
    }

    /// This build's gateway against `base`'s, each in its own process on the load
    /// generator's core, taking turns (which goes first alternates by round): throughput and
    /// CPU per passed-through GetPerson.
    async fn ab(
        s: &Servers,
        args: &Args,
        mothers: &[String],
        base: &Baseline,
    ) -> anyhow::Result<()> {
        let client = |uri: String| async move {
            anyhow::Ok(RegistryServiceClient::with_interceptor(
                channel(s, &uri, "fr-mfa").await?,
                purpose(),
            ))
        };
        let this: RegistryServiceClient<With> = client(s.own_gateway.clone()).await?;
        let that: RegistryServiceClient<With> = client(base.gateway.clone()).await?;
        let get = |c: &RegistryServiceClient<With>, i: usize| {
            let mut c = c.clone();
            let name = mothers[i % mothers.len()].clone();
            async move {
                c.get_person(pb::GetPersonRequest { name }).await?;
                anyhow::Ok(())
            }
        };
        let measure = |c: &RegistryServiceClient<With>, pid: u32| {
            let c = c.clone();
            async move {
                let (rps, cpu) =
                    cpu_per_call(&[pid], counted(args.concurrency, args.seconds, |i| get(&c, i)))
                        .await?;
                anyhow::Ok((rps, cpu.first().copied().flatten()))
            }
        };
        let (mut rps_ratio, mut cpu_ratio, mut cpu_this, mut cpu_that) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..args.rounds {
            let (a, b) = if round % 2 == 0 {
                let a = measure(&this, s.own_child.id()).await?;
                (a, measure(&that, base.child.id()).await?)
            } else {
                let b = measure(&that, base.child.id()).await?;
                (measure(&this, s.own_child.id()).await?, b)
            };
            eprintln!(
                "round {round}: this build {:.0}/s, {:.1} us per call; the baseline {:.0}/s, {:.1} us per call",
                a.0,
                a.1.unwrap_or(f64::NAN),
                b.0,
                b.1.unwrap_or(f64::NAN)
            );
            rps_ratio.push(a.0 / b.0);
            if let (Some(x), Some(y)) = (a.1, b.1) {
                cpu_ratio.push(x / y);
                cpu_this.push(x);
                cpu_that.push(y);
            }
        }
        let (m, lo, hi) = median(&mut rps_ratio);
        println!("[a/b] throughput through this build's gateway / the baseline's: median {m:.3}x, range {lo:.3}-{hi:.3}");
        if !cpu_ratio.is_empty() {
            let (m, lo, hi) = median(&mut cpu_ratio);
            let (x, _, _) = median(&mut cpu_this);
            let (y, _, _) = median(&mut cpu_that);
            println!("[a/b] gateway CPU per passed-through GetPerson: this build {x:.1} us, the baseline {y:.1} us; per round this/baseline median {m:.3}x, range {lo:.3}-{hi:.3}");
        }
        Ok(())
    }

    /// GetPerson through the gateway against the same call to the registry, and the case
    /// file against the bare echo, interleaved over the rounds (with `--baseline`, only the
    /// A/B of the two gateways).
    pub async fn cost(s: &Servers, args: &Args) -> anyhow::Result<()> {
        let mothers = seed(s).await?;
        let direct: RegistryServiceClient<With> = RegistryServiceClient::with_interceptor(
            channel(s, &s.suite_registry, "fr-mfa").await?,
            purpose(),
        );
        let via: RegistryServiceClient<With> = RegistryServiceClient::with_interceptor(
            channel(s, &s.gateway, "fr-mfa").await?,
            purpose(),
        );
        let via_own: RegistryServiceClient<With> = RegistryServiceClient::with_interceptor(
            channel(s, &s.own_gateway, "fr-mfa").await?,
            purpose(),
        );
        let bare: RegistryServiceClient<With> = RegistryServiceClient::with_interceptor(
            channel(s, &s.forwarder, "fr-mfa").await?,
            purpose(),
        );
        let bare_own: RegistryServiceClient<With> = RegistryServiceClient::with_interceptor(
            channel(s, &s.own_forwarder, "fr-mfa").await?,
            purpose(),
        );
        let files = GatewayServiceClient::with_interceptor(
            channel(s, &s.gateway, "fr-mfa").await?,
            purpose(),
        );
        let sample =
            direct.clone().get_person(pb::GetPersonRequest { name: mothers[0].clone() }).await?;
        let echo_ch = Channel::from_shared(s.echo.clone())?.connect().await?;
        let mut echo = tonic::client::Grpc::new(echo_ch.clone());
        echo.ready().await?;
        echo.unary::<pb::Person, pb::Person, _>(
            tonic::Request::new(sample.into_inner()),
            PathAndQuery::from_static("/concord.bench.Echo/Set"),
            tonic_prost::ProstCodec::default(),
        )
        .await?;
        let check = files
            .clone()
            .get_case_file(gw::GetCaseFileRequest { person: mothers[0].clone() })
            .await?
            .into_inner();
        anyhow::ensure!(
            check.parts.iter().all(|p| p.code == "OK") && !check.requests.is_empty(),
            "an incomplete case file: {:?}",
            check.parts
        );
        let get = |c: &RegistryServiceClient<With>, i: usize| {
            let mut c = c.clone();
            let name = mothers[i % mothers.len()].clone();
            async move {
                c.get_person(pb::GetPersonRequest { name }).await?;
                anyhow::Ok(())
            }
        };
        if args.profile_case_file {
            eprintln!("servers' pid: {}", s.child.id());
            let rps = throughput(args.concurrency, args.seconds, |i| {
                case_file(files.clone(), mothers[i % mothers.len()].clone())
            })
            .await?;
            println!("[gateway] case files: {rps:.0}/s");
            return Ok(());
        }
        if args.case_file_parts {
            return parts(s, args, &mothers).await;
        }
        if let Some(target) = &args.profile_pass_through {
            eprintln!("servers' pid: {}, own gateway's: {}", s.child.id(), s.own_child.id());
            let through = match target.as_str() {
                "gateway" => &via,
                "own-gateway" => &via_own,
                "forwarder" => &bare,
                "own-forwarder" => &bare_own,
                "none" => &direct,
                other => anyhow::bail!("no pass-through '{other}' to profile"),
            };
            let rps = throughput(args.concurrency, args.seconds, |i| get(through, i)).await?;
            println!("[gateway] GetPerson through {target}: {rps:.0}/s");
            return Ok(());
        }
        if let Some(b) = &s.baseline {
            return ab(s, args, &mothers, b).await;
        }
        let (mut pass, mut file_vs_echo, mut added) = (Vec::new(), Vec::new(), Vec::new());
        let (mut p90_direct, mut p90_via) = (Vec::new(), Vec::new());
        let (mut pass_own, mut added_own) = (Vec::new(), Vec::new());
        let (mut added_sliced, mut added_bare_sliced) = (Vec::new(), Vec::new());
        let (mut floor, mut floor_own, mut vs_floor) = (Vec::new(), Vec::new(), Vec::new());
        let (mut cpu_bare, mut cpu_behind_bare) = (Vec::new(), Vec::new());
        let (mut cpu_direct, mut cpu_behind, mut cpu_gateway) =
            (Vec::new(), Vec::new(), Vec::new());
        let (mut cpu_share, mut cpu_bound) = (Vec::new(), Vec::new());
        for round in 0..args.rounds {
            let echo_rps = throughput(args.concurrency, args.seconds, |i| {
                let mut g = tonic::client::Grpc::new(echo_ch.clone());
                let name = mothers[i % mothers.len()].clone();
                async move {
                    g.ready().await?;
                    g.unary::<pb::GetPersonRequest, pb::Person, _>(
                        tonic::Request::new(pb::GetPersonRequest { name }),
                        PathAndQuery::from_static("/concord.bench.Echo/Get"),
                        tonic_prost::ProstCodec::default(),
                    )
                    .await?;
                    Ok(())
                }
            })
            .await?;
            let (servers, own) = (s.child.id(), s.own_child.id());
            let (direct_rps, direct_cpu) = cpu_per_call(
                &[servers],
                counted(args.concurrency, args.seconds, |i| get(&direct, i)),
            )
            .await?;
            let via_rps = throughput(args.concurrency, args.seconds, |i| get(&via, i)).await?;
            let (own_rps, own_cpu) = cpu_per_call(
                &[servers, own],
                counted(args.concurrency, args.seconds, |i| get(&via_own, i)),
            )
            .await?;
            let bare_rps = throughput(args.concurrency, args.seconds, |i| get(&bare, i)).await?;
            let (bare_own_rps, bare_cpu) = cpu_per_call(
                &[servers, own],
                counted(args.concurrency, args.seconds, |i| get(&bare_own, i)),
            )
            .await?;
            floor.push(bare_rps / direct_rps);
            floor_own.push(bare_own_rps / direct_rps);
            vs_floor.push(via_rps / bare_rps);
            if let [Some(v), Some(f)] = bare_cpu[..] {
                cpu_bare.push(f);
                cpu_behind_bare.push(v);
            }
            if let ([Some(d)], [Some(v), Some(g)]) = (&direct_cpu[..], &own_cpu[..]) {
                cpu_direct.push(*d);
                cpu_behind.push(*v);
                cpu_gateway.push(*g);
                cpu_share.push(g / d);
                cpu_bound.push(d / (g + v));
            }
            let file_rps = throughput(args.concurrency, args.seconds, |i| {
                case_file(files.clone(), mothers[i % mothers.len()].clone())
            })
            .await?;
            let lat_direct =
                latencies(args.latency_concurrency, args.seconds, |i| get(&direct, i)).await?;
            let lat_via =
                latencies(args.latency_concurrency, args.seconds, |i| get(&via, i)).await?;
            let lat_own =
                latencies(args.latency_concurrency, args.seconds, |i| get(&via_own, i)).await?;
            let (d90, v90) = (percentile(&lat_direct, 0.9), percentile(&lat_via, 0.9));
            let o90 = percentile(&lat_own, 0.9);
            // The same in slices of SLICE taking turns, so the direct and the passed-through
            // calls meet the same moments of the registry's disk (its audited reads wait for
            // an fsync), which otherwise moves the direct p90 from round to round.
            let (mut sd, mut so, mut sb) = (Vec::new(), Vec::new(), Vec::new());
            let slices = (Duration::from_secs(args.seconds).as_millis() / SLICE.as_millis()).max(1);
            for _ in 0..slices {
                sd.extend(
                    latencies_for(args.latency_concurrency, SLICE, |i| get(&direct, i)).await?,
                );
                so.extend(
                    latencies_for(args.latency_concurrency, SLICE, |i| get(&via_own, i)).await?,
                );
                sb.extend(
                    latencies_for(args.latency_concurrency, SLICE, |i| get(&bare_own, i)).await?,
                );
            }
            sd.sort();
            so.sort();
            sb.sort();
            let sd90 = percentile(&sd, 0.9).as_secs_f64();
            added_sliced.push((percentile(&so, 0.9).as_secs_f64() - sd90) * 1e3);
            added_bare_sliced.push((percentile(&sb, 0.9).as_secs_f64() - sd90) * 1e3);
            eprintln!(
                "round {round}: echo {echo_rps:.0}/s, GetPerson direct {direct_rps:.0}/s, through the gateway {via_rps:.0}/s (own core {own_rps:.0}/s), through a bare forwarder {bare_rps:.0}/s (own core {bare_own_rps:.0}/s), case file {file_rps:.0}/s; p90 at {} in flight: direct {:.3} ms, gateway {:.3} ms (own core {:.3} ms)",
                args.latency_concurrency,
                d90.as_secs_f64() * 1e3,
                v90.as_secs_f64() * 1e3,
                o90.as_secs_f64() * 1e3
            );
            pass.push(via_rps / direct_rps);
            pass_own.push(own_rps / direct_rps);
            added_own.push((o90.as_secs_f64() - d90.as_secs_f64()) * 1e3);
            file_vs_echo.push(file_rps / echo_rps);
            added.push((v90.as_secs_f64() - d90.as_secs_f64()) * 1e3);
            p90_direct.push(d90.as_secs_f64() * 1e3);
            p90_via.push(v90.as_secs_f64() * 1e3);
        }
        let (m, lo, hi) = median(&mut pass);
        println!(
            "[gateway] GetPerson through the gateway vs direct (mTLS, policy, audit; {} in flight, {} rounds), the gateway on the services' core: median {m:.2}x, range {lo:.2}-{hi:.2}",
            args.concurrency, args.rounds
        );
        let (m, lo, hi) = median(&mut pass_own);
        println!(
            "[gateway] the same, the gateway in its own process on the load generator's core: median {m:.2}x, range {lo:.2}-{hi:.2}"
        );
        let (m, lo, hi) = median(&mut added);
        let (d, _, _) = median(&mut p90_direct);
        let (v, _, _) = median(&mut p90_via);
        println!(
            "[gateway] p90 latency at {} in flight: direct {d:.3} ms, through the gateway {v:.3} ms, added median {m:.3} ms (range {lo:.3}-{hi:.3})",
            args.latency_concurrency
        );
        let (m, lo, hi) = median(&mut added_own);
        println!(
            "[gateway] p90 latency added by the gateway in its own process: median {m:.3} ms (range {lo:.3}-{hi:.3})"
        );
        let (m, lo, hi) = median(&mut added_sliced);
        println!(
            "[gateway] the same, direct and passed-through calls taking turns in {} ms slices: median {m:.3} ms (range {lo:.3}-{hi:.3})",
            SLICE.as_millis()
        );
        let (m, lo, hi) = median(&mut added_bare_sliced);
        println!(
            "[gateway] floor: p90 latency added by a bare mutual-TLS forwarder in its own process, in the same slices: median {m:.3} ms (range {lo:.3}-{hi:.3})"
        );
        let (m, lo, hi) = median(&mut floor);
        println!(
            "[gateway] floor: GetPerson through a bare mutual-TLS forwarder (tonic; no identification, limits, metrics, spans or retries) vs direct, on the services' core: median {m:.2}x, range {lo:.2}-{hi:.2}"
        );
        let (m, lo, hi) = median(&mut floor_own);
        println!(
            "[gateway] floor: the same, the forwarder in its own process on the load generator's core: median {m:.2}x, range {lo:.2}-{hi:.2}"
        );
        let (m, lo, hi) = median(&mut vs_floor);
        println!(
            "[gateway] the gateway against that floor, both on the services' core: median {m:.2}x, range {lo:.2}-{hi:.2}"
        );
        if !cpu_bare.is_empty() {
            let (f, lo, hi) = median(&mut cpu_bare);
            let (v, _, _) = median(&mut cpu_behind_bare);
            println!(
                "[gateway] floor: CPU per GetPerson of the bare forwarder in its own process: {f:.0} us (range {lo:.0}-{hi:.0}); the services {v:.0} us per call it passed on"
            );
        }
        if !cpu_gateway.is_empty() {
            let (d, _, _) = median(&mut cpu_direct);
            let (v, _, _) = median(&mut cpu_behind);
            let (g, glo, ghi) = median(&mut cpu_gateway);
            let (share, _, _) = median(&mut cpu_share);
            let (bound, blo, bhi) = median(&mut cpu_bound);
            println!(
                "[gateway] CPU per GetPerson (all threads, /proc): the services {d:.0} us for a direct call, {v:.0} us for a passed-through one; the gateway in its own process {g:.0} us (range {glo:.0}-{ghi:.0}), {share:.2}x of a direct call; at these costs one shared core would give about {bound:.2}x of direct throughput (range {blo:.2}-{bhi:.2}; per-call costs fall when a core is saturated)"
            );
        }
        let (m, lo, hi) = median(&mut file_vs_echo);
        println!(
            "[gateway] case file (5 parts from 3 services) vs bare tonic echo: median {m:.2}x, range {lo:.2}-{hi:.2}"
        );
        Ok(())
    }
}
