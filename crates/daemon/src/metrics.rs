//! Prometheus `/metrics` for the daemons (`*.metrics_listen`).
//!
//! Each scrape builds a fresh [`Registry`] from the daemon's live state
//! (its `render` function), so a gauge is never stale and nothing but the
//! daemon's own counters outlives a scrape. The text is prometheus-client's
//! OpenMetrics encoding, served over HTTP/1 by hyper.
//!
//! ```no_run
//! # async fn demo(stop: tokio_util::sync::CancellationToken) -> std::io::Result<()> {
//! use pgwarden_daemon::metrics;
//! let listener = metrics::bind("127.0.0.1:9931".parse().unwrap()).await?;
//! tokio::spawn(metrics::serve(listener, |r| {
//!     metrics::gauge(r, "pgwarden_demo_up", "Always 1.", 1);
//! }, stop));
//! # Ok(())
//! # }
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
pub use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The content type of the OpenMetrics text format.
pub const CONTENT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// A scraper gets this long per connection.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Labels of one series, as (name, value) pairs.
pub type Labels = Vec<(String, String)>;

/// Binds the metrics address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `GET /metrics` on `listener` until `stop` fires, each answer
/// rendered by `render` into a fresh registry. Other paths get 404, other
/// methods 405.
pub async fn serve<F>(listener: TcpListener, render: F, stop: CancellationToken)
where
    F: Fn(&mut Registry) + Send + Sync + 'static,
{
    let render = Arc::new(render);
    while let Some(stream) = accept(&listener, &stop, "metrics").await {
        let render = Arc::clone(&render);
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let body = respond(&req, |r| render(r));
                async move { Ok::<_, Infallible>(body) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                () = stop.cancelled() => {}
                _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn) => {}
            }
        });
    }
}

/// The next connection on an HTTP `listener`, or `None` once `stop`
/// fires; a failed accept (out of descriptors...) is logged as `what`'s
/// and retried after a pause.
pub async fn accept(
    listener: &TcpListener,
    stop: &CancellationToken,
    what: &str,
) -> Option<tokio::net::TcpStream> {
    loop {
        tokio::select! {
            () = stop.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => return Some(stream),
                Err(e) => {
                    tracing::debug!(error = %e, "{what}: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// The registry in the OpenMetrics text format, as `/metrics` serves it.
pub fn to_text(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    encode(&mut text, registry)?;
    Ok(text)
}

/// What `/metrics` answers with `render`: a fresh registry, rendered by
/// `render`, in the OpenMetrics text format.
pub fn rendered(render: impl FnOnce(&mut Registry)) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    render(&mut registry);
    to_text(&registry)
}

/// The answer to one request.
fn respond(req: &Request<Incoming>, render: impl Fn(&mut Registry)) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, text: String| {
        let mut r = Response::new(Full::new(Bytes::from(text)));
        *r.status_mut() = status;
        r
    };
    if req.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "not found: try /metrics\n".into());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
        r.headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let text = match rendered(render) {
        Ok(t) => t,
        Err(e) => {
            return reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode the metrics: {e}\n"),
            );
        }
    };
    let mut r = reply(StatusCode::OK, text);
    r.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(CONTENT),
    );
    r
}

/// prometheus-client ends every help text with a period itself.
fn help_text(help: &str) -> &str {
    help.trim_end_matches('.')
}

/// A label value escaped as the text format requires (prometheus-client
/// writes them as given): backslash, double quote and newline. Values come
/// from clients (database and user names), so this is not optional.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn escaped(labels: Labels) -> Labels {
    labels.into_iter().map(|(k, v)| (k, escape(&v))).collect()
}

/// Registers a counter the daemon keeps (a clone shares its value).
pub fn counter(registry: &mut Registry, name: &str, help: &str, counter: &Counter) {
    registry.register(name, help_text(help), counter.clone());
}

/// Registers an integer gauge with `value`.
pub fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    registry.register(name, help_text(help), g);
}

/// Registers a floating-point gauge with `value`.
pub fn gauge_f64(registry: &mut Registry, name: &str, help: &str, value: f64) {
    let g = Gauge::<f64, AtomicU64>::default();
    g.set(value);
    registry.register(name, help_text(help), g);
}

/// Defines a `pub fn $name(registry, name, help, series)` that registers a
/// family of `$metric`s with one series per `(labels, value)` of `series`,
/// each series' metric given its value by `$metric::$set`.
macro_rules! family {
    ($(#[$doc:meta])* $name:ident, $value:ty, $metric:ty, $set:ident) => {
        $(#[$doc])*
        pub fn $name(
            registry: &mut Registry,
            name: &str,
            help: &str,
            series: impl IntoIterator<Item = (Labels, $value)>,
        ) {
            let family = Family::<Labels, $metric>::default();
            for (labels, value) in series {
                family.get_or_create(&escaped(labels)).$set(value);
            }
            registry.register(name, help_text(help), family);
        }
    };
}

family!(
    /// Registers an integer gauge with one series per `(labels, value)`.
    gauges, i64, Gauge, set
);
family!(
    /// Registers a counter with one series per `(labels, total)`: totals the
    /// daemon keeps elsewhere (per pool, say), rendered as counters.
    counters, u64, Counter, inc_by
);
family!(
    /// Registers a floating-point gauge with one series per `(labels, value)`.
    gauges_f64, f64, Gauge<f64, AtomicU64>, set
);

/// `[("backend", "0"), ("name", "pg0")]` from string pairs.
pub fn labels<const N: usize>(pairs: [(&str, String); N]) -> Labels {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// `request` (a method and a path) with `headers`, on a connection the
    /// server closes after answering; the whole answer.
    async fn call(addr: SocketAddr, request: &str, headers: &str) -> String {
        get(
            addr,
            &format!("{request} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n"),
        )
        .await
    }

    #[tokio::test]
    async fn serves_fresh_values_in_the_openmetrics_format() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let hits = Counter::default();
        let scraped = hits.clone();
        tokio::spawn(serve(
            listener,
            move |r| {
                scraped.inc();
                counter(r, "demo_scrapes", "Scrapes so far.", &scraped);
                gauge(r, "demo_up", "Always 1.", 1);
                gauges_f64(
                    r,
                    "demo_lag_seconds",
                    "Lag per backend.",
                    [(
                        labels([("backend", "0".into()), ("name", "pg\"0\n\\".into())]),
                        1.5,
                    )],
                );
            },
            stop.clone(),
        ));
        let first = call(addr, "GET /metrics", "").await;
        assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
        assert!(first.contains("application/openmetrics-text"), "{first}");
        assert!(
            first.contains("# HELP demo_up Always 1.\n# TYPE demo_up gauge\ndemo_up 1\n"),
            "{first}"
        );
        assert!(first.contains("demo_scrapes_total 1\n"), "{first}");
        assert!(
            first.contains("demo_lag_seconds{backend=\"0\",name=\"pg\\\"0\\n\\\\\"} 1.5\n"),
            "{first}"
        );
        assert!(first.ends_with("# EOF\n"), "{first}");
        let second = call(addr, "GET /metrics", "").await;
        assert!(second.contains("demo_scrapes_total 2\n"), "{second}");
        assert_eq!(hits.get(), 2);

        let other = call(addr, "GET /", "").await;
        assert!(other.starts_with("HTTP/1.1 404 "), "{other}");
        let post = call(addr, "POST /metrics", "Content-Length: 0\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        let garbage = get(addr, "\x00\x01garbage\r\n\r\n").await;
        assert!(!garbage.contains("200 OK"), "{garbage}");

        stop.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "still serving after stop"
        );
    }
}
