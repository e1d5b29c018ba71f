//! The bare hyper 1 server the report compares against ("HTTP and nothing
//! else" on the same box, in the same run). It runs as a separate process:
//! this binary re-executed as the hidden `baseline-server` subcommand, so it
//! is measured like flinger (its own process, its own runtime, its RSS).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::client::{is_loopback_ip, JSON_CT};

/// Every answer: a submit-shaped JSON, so the client's checks pass.
const BASELINE_BODY: &[u8] = br#"{"job_id":"00000000-0000-0000-0000-000000000000"}"#;

/// Serves every request with the same small JSON after reading its body whole
/// (as any real handler must), on a default multi-thread runtime with
/// keep-alive. Returns only on a setup failure.
pub fn serve(bind: SocketAddr) -> ExitCode {
    if !is_loopback_ip(bind.ip()) {
        eprintln!("baseline-server: refusing non-loopback bind {bind}");
        return ExitCode::from(3);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("baseline-server: {e}");
            return ExitCode::from(3);
        }
    };
    rt.block_on(async move {
        let listener = match TcpListener::bind(bind).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("baseline-server: cannot bind {bind}: {e}");
                return ExitCode::from(3);
            }
        };
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(_) => {
                    // Transient (e.g. out of descriptors): back off, go on.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    let mut resp = Response::new(Full::new(Bytes::from_static(BASELINE_BODY)));
                    resp.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON_CT));
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}
