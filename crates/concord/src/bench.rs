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
//! rounds (median ratio and range).

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use concord_platform::auth::HeaderCredentials;
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
    /// Internal: run the servers for DATABASE_URL and print their addresses.
    #[arg(long, hide = true)]
    serve: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(url) = &args.serve {
        return tokio::runtime::Runtime::new()?.block_on(serve(url.clone()));
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

async fn serve(url: String) -> anyhow::Result<()> {
    let log_filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    let telemetry = concord_platform::config::TelemetryConfig { log_filter, ..Default::default() };
    let _guard = concord_platform::telemetry::init("concord-bench", &telemetry)?;
    let (_trigger, shutdown) = Shutdown::new();
    // The per-agency rate limit stays on (its check is part of every call's cost) but high
    // enough that one load-generating agency is never refused.
    let cfg = concord_platform::config::ServerConfig {
        rate_limit_per_agency: 1e9,
        rate_burst_per_agency: 1e9,
        ..Default::default()
    };
    let (svc, _db) = concord_registry::build(&url, &cfg, shutdown.clone()).await?;
    let registry = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("REGISTRY {}", registry.local_addr()?);
    println!("ECHO {}", echo.local_addr()?);
    let auth = Arc::new(concord_platform::auth::HeaderAuthenticator);
    let reg = tokio::spawn(async move {
        concord_platform::server::serve(registry, Services::new().with(svc), auth, &cfg, shutdown)
            .await
    });
    let bare = tonic::transport::Server::builder()
        .add_service(Echo::default())
        .serve_with_incoming(concord_platform::server::incoming(echo));
    tokio::select! {
        r = reg => r??,
        r = bare => r?,
    }
    Ok(())
}

// ---- load side ------------------------------------------------------------------------------

struct Servers {
    child: Child,
    registry: String,
    echo: String,
}

impl Drop for Servers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_servers(url: &str) -> anyhow::Result<Servers> {
    let exe = std::env::current_exe()?;
    let pinned = Command::new("taskset").arg("--version").output().is_ok();
    let mut cmd = if pinned {
        let mut c = Command::new("taskset");
        c.arg("-c").arg("1").arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    let mut child =
        cmd.arg("--serve").arg(url).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()?;
    let out = child.stdout.take().context("child stdout")?;
    let mut lines = BufReader::new(out).lines();
    let mut registry = String::new();
    let mut echo = String::new();
    for _ in 0..2 {
        let line = lines.next().context("servers exited before printing their addresses")??;
        match line.split_once(' ') {
            Some(("REGISTRY", a)) => registry = format!("http://{a}"),
            Some(("ECHO", a)) => echo = format!("http://{a}"),
            _ => anyhow::bail!("unexpected line from servers: {line}"),
        }
    }
    eprintln!(
        "servers on {registry} and {echo} ({})",
        if pinned { "pinned to core 1" } else { "not pinned" }
    );
    Ok(Servers { child, registry, echo })
}

type Client = RegistryServiceClient<
    tonic::service::interceptor::InterceptedService<Channel, HeaderCredentials>,
>;

async fn client(uri: &str) -> anyhow::Result<Client> {
    let ch = Channel::from_shared(uri.to_string())?.connect().await?;
    Ok(RegistryServiceClient::with_interceptor(
        ch,
        HeaderCredentials(concord_testkit::coordinator()),
    )
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
    Ok(counts.iter().sum::<u64>() as f64 / started.elapsed().as_secs_f64())
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
        let servers = spawn_servers(&url)?;
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
    }
    Ok(())
}
