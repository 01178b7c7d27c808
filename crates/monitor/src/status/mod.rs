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
                      img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'";
/// A plain request's connection gets this long.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Event streams open at once, at most: each is a task and a few KiB.
const MAX_STREAMS: usize = 32;
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
        {
            let s = state.borrow_and_update();
            lock(&ring).record(&s, crate::timeline::now_ms());
        }
        tokio::select! {
            () = stop.cancelled() => return,
            changed = state.changed() => if changed.is_err() { return },
        }
    }
}

/// Serves the page on `listener` until `stop`.
pub async fn serve(listener: TcpListener, sources: Sources, stop: CancellationToken) {
    let streams = Arc::new(Semaphore::new(MAX_STREAMS));
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "status page: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (sources, stop, streams) = (sources.clone(), stop.clone(), Arc::clone(&streams));
        tokio::spawn(async move {
            // An event stream lives as long as its reader; a plain request
            // gets CONNECTION_TIMEOUT.
            let streaming = Arc::new(std::sync::atomic::AtomicBool::new(false));
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
                        if !streaming.load(std::sync::atomic::Ordering::Relaxed) {
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
    streaming: &std::sync::atomic::AtomicBool,
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
        "/api/cluster" => json_reply(&json::state_json(&sources.state.borrow())),
        "/api/history" => json_reply(&json::history_json(&sources.history.borrow())),
        "/api/lag" => json_reply(&lock(&sources.lag).to_json()),
        "/api/watchdog" => json_reply(&watchdog(sources)),
        "/api/events" => match Arc::clone(streams).try_acquire_owned() {
            Ok(permit) => {
                streaming.store(true, std::sync::atomic::Ordering::Relaxed);
                events(sources.clone(), permit, stop.clone())
            }
            Err(_) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many event streams open; try again later\n",
            ),
        },
        "/metrics" if sources.metrics.is_some() => match sources.metrics.as_ref().map(|m| m()) {
            Some(Ok(t)) => reply(StatusCode::OK, pgwarden_daemon::metrics::CONTENT, t),
            _ => text(
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
    let initial = serde_json::json!({
        "cluster": json::state_json(&sources.state.borrow()),
        "history": json::history_json(&sources.history.borrow()),
        "lag": lock(&sources.lag).to_json(),
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
    json::watchdog_json(sources.watchdog_enabled, sources.watchdog.borrow().as_ref())
}

/// The event stream: each source's JSON at once, then whenever it changes
/// (changes within [`COALESCE`] sent as one), until the reader leaves.
fn events(
    mut s: Sources,
    permit: tokio::sync::OwnedSemaphorePermit,
    stop: CancellationToken,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    tokio::spawn(async move {
        let _permit = permit;
        let (mut state, mut history, mut wd) = (true, true, true);
        loop {
            let mut out = String::new();
            if state {
                event(
                    &mut out,
                    "cluster",
                    &json::state_json(&s.state.borrow_and_update()),
                );
            }
            if history {
                event(
                    &mut out,
                    "history",
                    &json::history_json(&s.history.borrow_and_update()),
                );
            }
            if wd {
                let v = json::watchdog_json(
                    s.watchdog_enabled,
                    s.watchdog.borrow_and_update().as_ref(),
                );
                event(&mut out, "watchdog", &v);
            }
            if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
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
                    if tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
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
    let mut r = Response::new(BodyExt::boxed(body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
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
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
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
