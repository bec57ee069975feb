//! How one Concord service reaches another (the registry, for the services that follow it and
//! record custody changes in it), and how a service follows its own change log to act on it
//! elsewhere: the pieces the facilities' and the requests' relays share.

use std::future::Future;
use std::time::Duration;

use concord_proto::r#type::v1::ChangeEvent;
use concord_proto::registry::v1::registry_service_client::RegistryServiceClient;
use futures::StreamExt;

use crate::auth::{HeaderCredentials, Principal, Purpose, Scope};
use crate::client::TracedChannel;
use crate::error::Result;
use crate::outbox::{self, WatchParams, WatchTuning};
use crate::server::Shutdown;
use crate::storage::{Db, SqlxResultExt, Tx};

/// How a service reaches another (the registry, or for the gateway every service).
#[derive(Debug, Clone)]
pub struct ServiceLink {
    /// `https://host:port` (or `http://` in tests).
    pub uri: String,
    /// Mutual TLS as this service's identity.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// Send this principal as metadata: only for a registry that trusts metadata (tests of
    /// services in plaintext). With mutual TLS the certificate names the service.
    pub principal: Option<Principal>,
}

/// Identifies the calling service (as [`ServiceLink::principal`] says), or forwards the
/// principal of the partner it acts for, and states a purpose on every call.
#[derive(Debug, Clone)]
pub struct LinkCredentials {
    principal: Option<Principal>,
    purpose: String,
}

impl tonic::service::Interceptor for LinkCredentials {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        match &self.principal {
            Some(p) => {
                HeaderCredentials::new(p.clone()).with_purpose(self.purpose.clone()).call(req)
            }
            None => Purpose(self.purpose.clone()).call(req),
        }
    }
}

/// A registry client over a [`ServiceLink`].
pub type RegistryClient = RegistryServiceClient<
    tonic::service::interceptor::InterceptedService<TracedChannel, LinkCredentials>,
>;

impl ServiceLink {
    /// A registry client connected now, as this service, stating `purpose` on every call.
    pub async fn registry(&self, purpose: &str) -> anyhow::Result<RegistryClient> {
        let channel = crate::client::connect(&self.uri, self.tls.clone()).await?;
        Ok(self.client(channel, self.principal.clone(), purpose))
    }

    /// A channel that connects on its first call and reconnects by itself: for calls made
    /// on behalf of partners (each with [`ServiceLink::registry_forwarding`], or
    /// [`HeaderCredentials`] for other services).
    pub fn channel(&self) -> anyhow::Result<TracedChannel> {
        crate::client::connect_lazy(&self.uri, self.tls.clone())
    }

    /// A client over `channel` that forwards `principal` (the partner this service acts
    /// for) and its `purpose`: the registry then answers exactly what that partner may see.
    /// The service must be one of the registry's trusted forwarders.
    pub fn registry_forwarding(
        &self,
        channel: TracedChannel,
        principal: &Principal,
        purpose: &str,
    ) -> RegistryClient {
        self.client(channel, Some(principal.clone()), purpose)
    }

    fn client(
        &self,
        channel: TracedChannel,
        principal: Option<Principal>,
        purpose: &str,
    ) -> RegistryClient {
        RegistryServiceClient::with_interceptor(
            channel,
            LinkCredentials { principal, purpose: purpose.to_string() },
        )
    }
}

/// The cursor after the last event `consumer` applied (empty: from the start). Each service
/// keeps its consumers' cursors in its own `consumer_cursors` table.
pub async fn cursor(db: &Db, consumer: &str) -> Result<String> {
    let c: Option<String> =
        sqlx::query_scalar("SELECT cursor FROM consumer_cursors WHERE consumer = $1")
            .bind(consumer)
            .fetch_optional(db.reader())
            .await
            .db()?;
    Ok(c.unwrap_or_default())
}

/// Stores `consumer`'s cursor, in the transaction that applied the events before it. A
/// cursor never moves back: where another replica of the consumer stored a later one
/// already, it stays (the compare is in the statement, so two replicas committing at once
/// keep the later).
pub async fn save_cursor(tx: &mut Tx, consumer: &str, cursor: &str) -> Result<()> {
    let seq: i64 = cursor.parse().map_err(|_| {
        crate::error::Error::internal(anyhow::anyhow!("'{cursor}' is not a change log cursor"))
    })?;
    sqlx::query(
        "INSERT INTO consumer_cursors (consumer, cursor) VALUES ($1, $2) \
         ON CONFLICT (consumer) DO UPDATE SET cursor = excluded.cursor \
         WHERE CAST(COALESCE(NULLIF(consumer_cursors.cursor, ''), '-1') AS BIGINT) < $3",
    )
    .bind(consumer)
    .bind(cursor)
    .bind(seq)
    .execute(tx.conn())
    .await
    .db()?;
    Ok(())
}

/// Runs `attempt` until `shutdown`, again after it ends or fails, with a backoff that grows
/// from 200 ms to 30 s while attempts fail quickly and starts over after one that ran a while
/// (a stream the other side ended to renew its authorization, say).
pub async fn retry_forever<F, Fut>(what: &'static str, mut shutdown: Shutdown, mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    const FIRST: Duration = Duration::from_millis(200);
    let mut backoff = FIRST;
    loop {
        let started = tokio::time::Instant::now();
        tokio::select! {
            r = attempt() => {
                if r.is_ok() || started.elapsed() > Duration::from_secs(30) {
                    backoff = FIRST;
                }
                match r {
                    Err(e) if e.downcast_ref::<tonic::Status>().is_some_and(|s| s.code() == tonic::Code::Unavailable) => {
                        tracing::debug!(error = %e, "{what}: stream ended; resuming");
                    }
                    Err(e) => tracing::warn!(error = %e, retry_ms = backoff.as_millis() as u64, "{what}: retrying"),
                    Ok(()) => {}
                }
            }
            () = shutdown.wait() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.wait() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Follows this service's own change log from `consumer`'s stored cursor, giving `handle`
/// each event of `event_types` in order, until the log's stream ends. `handle` stores the
/// cursor ([`save_cursor`]) in the transaction that records what it did; an error ends the
/// attempt, and the event is read again on the next (see [`retry_forever`]).
pub async fn follow_own<H, Fut>(
    db: &Db,
    consumer: &str,
    event_types: &[&str],
    shutdown: Shutdown,
    mut handle: H,
) -> anyhow::Result<()>
where
    H: FnMut(ChangeEvent) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let params = WatchParams {
        cursor: cursor(db, consumer).await?,
        start_at_end: false,
        event_types: event_types.iter().map(|t| t.to_string()).collect(),
        scope: Scope::All,
    };
    let mut stream =
        Box::pin(outbox::watch(db.clone(), params, WatchTuning::default(), shutdown).await?);
    while let Some(e) = stream.next().await {
        let e = e?;
        if !e.bookmark {
            handle(e).await?;
        }
    }
    Ok(())
}

/// Follows the registry's change stream from `consumer`'s stored cursor until it ends,
/// giving `apply` each batch of events that arrived together (bookmarks included, so the
/// cursor moves past them too). `apply` stores the cursor after the batch
/// ([`save_cursor`]) in the transaction that applies it, so a restart resumes exactly after
/// the last batch applied.
pub async fn follow_registry<A, Fut>(
    db: &Db,
    link: &ServiceLink,
    consumer: &str,
    purpose: &str,
    mut apply: A,
) -> anyhow::Result<()>
where
    A: FnMut(Vec<ChangeEvent>) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut client = link.registry(purpose).await?;
    let from = cursor(db, consumer).await?;
    let stream = client
        .watch_changes(concord_proto::registry::v1::WatchChangesRequest {
            cursor: from,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut chunks = stream.ready_chunks(512);
    while let Some(batch) = chunks.next().await {
        let events: Vec<ChangeEvent> = batch
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter_map(|m| m.event)
            .collect();
        apply(events).await?;
    }
    Ok(())
}

/// Records that a projection applies version `version` of `person` (the number in the
/// registry's etag), unless it applied a later one already (another replica ahead, say):
/// false then, and the snapshot must change nothing. Each projection keeps its own
/// `person_versions` table.
///
/// One statement: the compare and the write are atomic, so of two replicas claiming at once
/// the one with the older version sees the newer's claim (PostgreSQL re-reads the row it
/// waited for) and gets false.
pub async fn claim_version(tx: &mut Tx, person: &str, version: i64) -> Result<bool> {
    let claimed: Option<i64> = sqlx::query_scalar(
        "INSERT INTO person_versions (person_id, version) VALUES ($1, $2) \
         ON CONFLICT (person_id) DO UPDATE SET version = excluded.version \
         WHERE person_versions.version <= excluded.version \
         RETURNING version",
    )
    .bind(person)
    .bind(version)
    .fetch_optional(tx.conn())
    .await
    .db()?;
    Ok(claimed.is_some())
}

/// The version in a registry etag (`"7"`), 0 if there is none.
pub fn etag_version(etag: &str) -> i64 {
    etag.trim_matches('"').parse().unwrap_or(0)
}

/// Relays retry a failed call: when the other side could not be reached or was busy, however
/// long; when it refused in a way that may pass (credentials or policy being fixed, an
/// internal error), this many times (with the backoff of [`retry_forever`], about seven
/// minutes), then the refusal is recorded, so one bad row cannot hold up the rest for ever.
pub const MAX_ATTEMPTS: i64 = 20;

/// The other side could not be reached or was busy: retry however long.
pub fn is_unreachable(s: &tonic::Status) -> bool {
    use tonic::Code::*;
    matches!(s.code(), Unavailable | DeadlineExceeded | ResourceExhausted | Aborted | Cancelled)
}

/// A refusal that may pass: retry [`MAX_ATTEMPTS`] times.
pub fn is_transient(s: &tonic::Status) -> bool {
    use tonic::Code::*;
    matches!(s.code(), Internal | Unknown | Unauthenticated | PermissionDenied)
}
