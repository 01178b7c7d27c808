//! The read-only status page (`monitor.http_listen`, off by default): the
//! cluster at a glance in a browser, served by the monitor itself and
//! needing nothing else (no CDN, no fonts: it works offline).
//!
//! - `GET /`: one self-contained HTML page ([`PAGE`]): the topology, a lag
//!   chart per standby, the failover history, the watchdog's view; live.
//! - `GET /api/cluster`: the cluster state, as `pgwardenctl status --json`.
//! - `GET /api/history`: the failover history, as `pgwardenctl history --json`.
//! - `GET /api/lag`: per standby, one lag sample per check, the last hour.
//! - `GET /api/watchdog`: this node's watchdog: leader, term, quorum, the
//!   delegate IP and its holder.
//! - `GET /api/events`: Server-Sent Events `cluster`, `history` and
//!   `watchdog`, each the JSON above, whenever it changes.
//! - `GET /metrics` as well when `http_listen` is `metrics_listen`.
//!
//! Nothing here can change the cluster: every other method is refused
//! (405), and what is shown holds no secret (no passwords, no keys, no
//! connection strings).

mod lag;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use pgwarden_proto::json;
use pgwarden_proto::v1::{ClusterState, FailoverRecord, WatchdogStatus};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

pub use lag::LagRing;

/// The page, embedded in the binary.
pub const PAGE: &str = include_str!("page.html");
/// Where the page takes the state it is served with.
const INITIAL: &str = "\"$INITIAL$\"";
/// What the page may load: nothing from anywhere else.
const POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                      img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
                      frame-ancestors 'none'";
/// A plain request's connection gets this long.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Event streams open at once, at most: each is a task and a few KiB.
const MAX_STREAMS: usize = 32;
/// Connections open at once, at most (event streams included).
const MAX_CONNECTIONS: usize = 64;
/// A reader that takes no event for this long is gone: its stream ends.
const STALLED: Duration = Duration::from_secs(30);
/// Changes closer together than this go out as one event (the state is
/// published at every check of every backend).
const COALESCE: Duration = Duration::from_millis(200);
/// A comment this often keeps proxies from closing an idle stream.
const KEEPALIVE: Duration = Duration::from_secs(15);

type Body = BoxBody<Bytes, Infallible>;

/// What the page shows, live.
#[derive(Clone)]
pub struct Sources {
    /// The published cluster state.
    pub state: watch::Receiver<ClusterState>,
    /// The failover history.
    pub history: watch::Receiver<Vec<FailoverRecord>>,
    /// Whether this node runs with a watchdog (`watchdog.enabled`).
    pub watchdog_enabled: bool,
    /// The watchdog's last status (`None`: not heard from).
    pub watchdog: watch::Receiver<Option<WatchdogStatus>>,
    /// The lag samples ([`sample_lag`] fills them).
    pub lag: Arc<Mutex<LagRing>>,
    /// With the metrics on the same listener: renders `/metrics`.
    pub metrics: Option<Arc<dyn Fn() -> Result<String, std::fmt::Error> + Send + Sync>>,
}

/// Binds `addr` and serves the page until `stop`. A bind failure is logged
/// and the monitor runs without it: a status page is never worth a failover.
pub async fn spawn(addr: SocketAddr, sources: Sources, stop: CancellationToken) {
    tokio::spawn(sample_lag(
        sources.state.clone(),
        Arc::clone(&sources.lag),
        stop.clone(),
    ));
    match TcpListener::bind(addr).await {
        Ok(listener) => {
            tracing::info!(%addr, "status page served");
            tokio::spawn(serve(listener, sources, stop));
        }
        Err(e) => {
            tracing::warn!(%addr, error = %e, "monitor.http_listen: cannot serve the status page; running without");
        }
    }
}

/// Takes a lag sample of every standby at each check, until `stop`.
pub async fn sample_lag(
    mut state: watch::Receiver<ClusterState>,
    ring: Arc<Mutex<LagRing>>,
    stop: CancellationToken,
) {
    loop {
        // Cloned first: the lock below never waits with the state's read
        // guard held (the deciding loop publishes through it).
        let s = state.borrow_and_update().clone();
        lock(&ring).record(&s, crate::timeline::now_ms());
        tokio::select! {
            () = stop.cancelled() => return,
            changed = state.changed() => if changed.is_err() { return },
        }
    }
}

/// Serves the page on `listener` until `stop`.
pub async fn serve(listener: TcpListener, sources: Sources, stop: CancellationToken) {
    let streams = Arc::new(Semaphore::new(MAX_STREAMS));
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    while let Some(stream) = pgwarden_daemon::metrics::accept(&listener, &stop, "status page").await
    {
        // Past the cap, a connection is closed at once: the monitor's own
        // descriptors (its checks) come first.
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let (sources, stop, streams) = (sources.clone(), stop.clone(), Arc::clone(&streams));
        tokio::spawn(async move {
            let _permit = permit;
            // An event stream lives as long as its reader reads; otherwise a
            // connection gets CONNECTION_TIMEOUT.
            let streaming = Arc::new(AtomicUsize::new(0));
            let flag = Arc::clone(&streaming);
            let conn_stop = stop.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let r = respond(&req, &sources, &streams, &conn_stop, &flag);
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let deadline = tokio::time::sleep(CONNECTION_TIMEOUT);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = &mut conn => return,
                    () = &mut deadline => {
                        if streaming.load(Ordering::Relaxed) == 0 {
                            return;
                        }
                        deadline.as_mut().reset(tokio::time::Instant::now() + CONNECTION_TIMEOUT);
                    }
                }
            }
        });
    }
}

/// The answer to one request.
fn respond(
    req: &Request<Incoming>,
    sources: &Sources,
    streams: &Arc<Semaphore>,
    stop: &CancellationToken,
    streaming: &Arc<AtomicUsize>,
) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "read-only: GET only\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/" | "/index.html" => {
            let mut r = reply(StatusCode::OK, "text/html; charset=utf-8", page(sources));
            r.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(POLICY),
            );
            r
        }
        // Each source cloned, then written out: no lock or read guard is
        // held while the JSON is made.
        "/api/cluster" => {
            let state = sources.state.borrow().clone();
            json_reply(&json::state_json(&state))
        }
        "/api/history" => {
            let history = sources.history.borrow().clone();
            json_reply(&json::history_json(&history))
        }
        "/api/lag" => {
            let ring = lock(&sources.lag).clone();
            json_reply(&ring.to_json())
        }
        "/api/watchdog" => json_reply(&watchdog(sources)),
        // HEAD: the headers an event stream would have, and no stream.
        "/api/events" if req.method() == Method::HEAD => events_head(Response::new(empty())),
        "/api/events" => match Arc::clone(streams).try_acquire_owned() {
            Ok(permit) => events(sources.clone(), permit, stop.clone(), Arc::clone(streaming)),
            Err(_) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many event streams open; try again later\n",
            ),
        },
        "/metrics" if let Some(metrics) = &sources.metrics => match metrics() {
            Ok(t) => reply(StatusCode::OK, pgwarden_daemon::metrics::CONTENT, t),
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the metrics\n",
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found: try / or /api/cluster\n"),
    }
}

/// The page with the current state in it (drawn before any request of
/// its own; a reader that runs no script, or runs it before its fetches
/// return, sees the same).
fn page(sources: &Sources) -> String {
    let (state, history) = (
        sources.state.borrow().clone(),
        sources.history.borrow().clone(),
    );
    let ring = lock(&sources.lag).clone();
    let initial = serde_json::json!({
        "cluster": json::state_json(&state),
        "history": json::history_json(&history),
        "lag": ring.to_json(),
        "watchdog": watchdog(sources),
    });
    PAGE.replacen(INITIAL, &script_safe(&initial), 1)
}

/// JSON that can sit inside a `<script>` element: `<` only appears in
/// strings, where `\u003c` means the same, so no `</script>` or `<!--`
/// in a backend's reason can end or confuse the element.
fn script_safe(v: &serde_json::Value) -> String {
    v.to_string().replace('<', "\\u003c")
}

fn watchdog(sources: &Sources) -> serde_json::Value {
    let status = sources.watchdog.borrow().clone();
    json::watchdog_json(sources.watchdog_enabled, status.as_ref())
}

/// The event stream: each source's JSON at once, then whenever it changes
/// (changes within [`COALESCE`] sent as one), until the reader leaves or
/// stops reading (an event not taken within [`STALLED`] ends it). While it
/// runs, `live` counts it (its connection then has no timeout).
fn events(
    mut s: Sources,
    permit: tokio::sync::OwnedSemaphorePermit,
    stop: CancellationToken,
    live: Arc<AtomicUsize>,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    live.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        let _permit = permit;
        let _live = Live(live);
        let send = |b: Bytes| {
            let tx = tx.clone();
            async move { matches!(tokio::time::timeout(STALLED, tx.send(b)).await, Ok(Ok(()))) }
        };
        let (mut state, mut history, mut wd) = (true, true, true);
        loop {
            let mut out = String::new();
            if state {
                let v = s.state.borrow_and_update().clone();
                event(&mut out, "cluster", &json::state_json(&v));
            }
            if history {
                let v = s.history.borrow_and_update().clone();
                event(&mut out, "history", &json::history_json(&v));
            }
            if wd {
                let v = s.watchdog.borrow_and_update().clone();
                event(
                    &mut out,
                    "watchdog",
                    &json::watchdog_json(s.watchdog_enabled, v.as_ref()),
                );
            }
            if !out.is_empty() && !send(Bytes::from(out)).await {
                return;
            }
            (state, history, wd) = (false, false, false);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tx.closed() => return,
                r = s.state.changed() => { if r.is_err() { return } state = true }
                r = s.history.changed() => { if r.is_err() { return } history = true }
                r = s.watchdog.changed() => { if r.is_err() { return } wd = true }
                () = tokio::time::sleep(KEEPALIVE) => {
                    if !send(Bytes::from_static(b": keep-alive\n\n")).await {
                        return;
                    }
                    continue;
                }
            }
            tokio::time::sleep(COALESCE).await;
            state |= s.state.has_changed().unwrap_or(false);
            history |= s.history.has_changed().unwrap_or(false);
            wd |= s.watchdog.has_changed().unwrap_or(false);
        }
    });
    let body =
        StreamBody::new(ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b))));
    events_head(Response::new(BodyExt::boxed(body)))
}

/// Counts a live event stream down when it ends.
struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An event stream's headers on `r`.
fn events_head(mut r: Response<Body>) -> Response<Body> {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn empty() -> Body {
    BodyExt::boxed(Full::new(Bytes::new()))
}

/// Appends one Server-Sent Event (JSON has no raw newline: one data line).
fn event(out: &mut String, name: &str, data: &serde_json::Value) {
    out.push_str("event: ");
    out.push_str(name);
    out.push_str("\ndata: ");
    out.push_str(&data.to_string());
    out.push_str("\n\n");
}

fn json_reply(v: &serde_json::Value) -> Response<Body> {
    let mut r = reply(StatusCode::OK, "application/json", v.to_string());
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    reply(status, "text/plain; charset=utf-8", body.into())
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(BodyExt::boxed(Full::new(Bytes::from(body))));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn lock(ring: &Mutex<LagRing>) -> std::sync::MutexGuard<'_, LagRing> {
    ring.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        assert!(PAGE.contains("<html"));
        for needle in ["http://", "https://", "//cdn", "@import", "<link"] {
            assert!(!PAGE.contains(needle), "the page refers to {needle}");
        }
    }

    #[test]
    fn the_served_state_cannot_end_its_script_element() {
        assert_eq!(PAGE.matches(INITIAL).count(), 1);
        let v = serde_json::json!({"reason": "</script><script>alert(1)</script><!--"});
        let safe = script_safe(&v);
        assert!(!safe.contains('<'), "{safe}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&safe).unwrap(), v);
    }

    #[test]
    fn an_event_is_one_data_line() {
        let mut out = String::new();
        event(&mut out, "cluster", &serde_json::json!({"reason": "a\nb"}));
        assert_eq!(out, "event: cluster\ndata: {\"reason\":\"a\\nb\"}\n\n");
    }
}
