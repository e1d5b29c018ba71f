//! Endpoints about the server itself: `GET /metrics` (Prometheus), `GET /openapi.json`
//! (OpenAPI 3), and [`Routes`], the route table that
//! records every path it routes so the OpenAPI document cannot leave one out.
//!
//! How the document stays true to the router: the operations are written down in
//! `openapi.json` beside this file (those shared with upstream Testflinger copied from
//! upstream's own document, so they agree in paths, methods and shapes; flinger's own
//! tagged `flinger`). At start-up every path the router was given through [`Routes`] is
//! merged in: a route nobody documented appears with no operations. The integration test
//! `openapi::every_route_is_documented_and_every_documented_route_exists` asks the
//! server, for every path of the document, which methods it allows (the `Allow` header of
//! a 405) and requires exactly the documented ones; so an undocumented route, a
//! documented route that does not exist, or a method missing on either side fails it.

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::Router;
use serde_json::{Map, Value};

use super::respond::json_bytes;
use crate::actors::Services;
use crate::error::Error;
use crate::model::FastSet;

/// The hand-written operations (see the module docs).
const DOCUMENTED: &str = include_str!("openapi.json");

/// The route label of requests no route matched.
pub const UNMATCHED: &str = "unmatched";

/// A [`Router`] that records each path it is given, for the OpenAPI document.
#[derive(Default)]
pub struct Routes {
    /// The router being built.
    router: Router<Services>,
    /// Every path given to [`Routes::route`], in order.
    paths: Vec<&'static str>,
    /// The OpenAPI document, set by [`Routes::finish`] (it lists routes given after the
    /// one that serves it), read by that route's handler.
    doc: Arc<OnceLock<ApiDoc>>,
}

impl Routes {
    /// Routes `path` to `method_router` and records it.
    pub fn route(mut self, path: &'static str, method_router: MethodRouter<Services>) -> Routes {
        self.paths.push(path);
        self.router = self.router.route(path, method_router);
        self
    }

    /// Routes `GET path` to the OpenAPI document of every route given to this router
    /// (before or after this one).
    pub fn route_doc(self, path: &'static str) -> Routes {
        let doc = self.doc.clone();
        self.route(path, get(move || openapi_get(doc)))
    }

    /// The router and the set of its route templates (the values request metrics may
    /// label a route with, see `http::front`); the OpenAPI document is made here.
    pub fn finish(self) -> (Router<Services>, Arc<FastSet<&'static str>>) {
        // Only `finish` sets it, once per `Routes`.
        let _ = self.doc.set(ApiDoc::new(&self.paths));
        let templates = self.paths.iter().copied().collect();
        (self.router, Arc::new(templates))
    }
}

/// `{name}` segments made anonymous, so `/v1/job/{id}` (the router) and
/// `/v1/job/{job_id}` (upstream's document) are the same path.
pub fn path_shape(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            if seg.starts_with('{') && seg.ends_with('}') {
                "{}"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The OpenAPI document, serialised once.
pub struct ApiDoc(bytes::Bytes);

impl ApiDoc {
    /// The documented operations with every routed path merged in.
    fn new(routed: &[&str]) -> ApiDoc {
        let mut doc: Value =
            serde_json::from_str(DOCUMENTED).expect("src/http/openapi.json is valid JSON");
        doc["info"]["version"] = Value::from(env!("CARGO_PKG_VERSION"));
        let paths = doc["paths"]
            .as_object_mut()
            .expect("the document has paths");
        for path in routed {
            let shape = path_shape(path);
            if !paths.keys().any(|p| path_shape(p) == shape) {
                // Undocumented: listed with no operations, so the drift test names it.
                paths.insert((*path).to_owned(), Value::Object(Map::new()));
            }
        }
        ApiDoc(bytes::Bytes::from(
            serde_json::to_vec(&doc).expect("JSON values serialise"),
        ))
    }
}

/// `GET /openapi.json`: the OpenAPI 3 document of every route.
async fn openapi_get(doc: Arc<OnceLock<ApiDoc>>) -> Response {
    match doc.get() {
        Some(doc) => json_bytes(StatusCode::OK, doc.0.clone()),
        // Not reachable: the router is handed out by `Routes::finish`, which sets it.
        None => Error::Internal("the OpenAPI document was not made".into()).into_response(),
    }
}

/// `GET /metrics`: every metric in the OpenMetrics text format (which Prometheus reads).
pub async fn metrics_get(State(svc): State<Services>) -> Response {
    let mut response = Response::new(svc.metrics.encode().into());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_shapes_ignore_parameter_names() {
        assert_eq!(path_shape("/v1/job/{id}/log/{kind}"), "/v1/job/{}/log/{}");
        assert_eq!(
            path_shape("/v1/job/{job_id}/log/{log_type}"),
            "/v1/job/{}/log/{}"
        );
        assert_eq!(path_shape("/v1/"), "/v1/");
    }

    #[test]
    fn an_undocumented_route_is_listed_without_operations() {
        let doc = ApiDoc::new(&["/v1/job/{id}", "/v1/not-documented/{x}"]);
        let doc: Value = serde_json::from_slice(&doc.0).unwrap();
        assert_eq!(
            doc["paths"]["/v1/not-documented/{x}"],
            serde_json::json!({})
        );
        assert!(doc["paths"]["/v1/job/{job_id}"]["get"].is_object());
        assert!(doc["paths"].get("/v1/job/{id}").is_none());
    }
}
