//! The HTTP endpoint: `/metrics`, `/healthz`, `/readyz` and the JSON API
//! under `/api/v1/` (see [`crate::export::api`]).

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::watch};

use crate::export::{api::Api, metrics::Metrics};

/// Serves `/metrics`, `/healthz` (alive), `/readyz` (200 once every core
/// hook is attached and the event reader runs, 503 before) and the API
/// until dropped.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    api: Arc<Api>,
    ready: Arc<std::sync::atomic::AtomicBool>,
) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("metrics endpoint: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        let api = api.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                let api = api.clone();
                let is_ready = ready.load(std::sync::atomic::Ordering::Relaxed);
                async move { Ok::<_, Infallible>(respond(&req, &metrics, &api, is_ready)) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!("metrics connection ended: {e}");
            }
        });
    }
}

fn respond(
    req: &Request<hyper::body::Incoming>,
    metrics: &Metrics,
    api: &Api,
    ready: bool,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let (status, ctype, body) = match path {
        "/metrics" => (200, "text/plain; version=0.0.4", metrics.render()),
        "/healthz" => (200, "text/plain", b"ok\n".to_vec()),
        "/readyz" if ready => (200, "text/plain", b"ok\n".to_vec()),
        "/readyz" => (503, "text/plain", b"starting\n".to_vec()),
        _ if path.starts_with("/api/") => {
            let (status, body) = api.respond(path, req.uri().query());
            (status, "application/json", body)
        }
        _ => (
            404,
            "text/plain",
            b"not found; try /metrics or /api/v1/verdicts\n".to_vec(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

/// Binds the metrics endpoint; an error names the address.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on --metrics-addr {addr}"))
}

/// Serves the endpoint until `stop` changes.
pub async fn task(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    api: Arc<Api>,
    ready: Arc<std::sync::atomic::AtomicBool>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    tokio::select! {
        _ = serve(listener, metrics, api, ready) => {}
        _ = stop.changed() => {}
    }
    Ok(())
}
