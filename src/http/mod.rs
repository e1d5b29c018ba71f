//! HTTP: the route table and the handlers, thin adapters from requests to actor messages.
//!
//! - `wire`: the Testflinger JSON shapes and query/cookie syntax; `schema`: upstream's job
//!   schema (submit-time validation) as data.
//! - `respond`: responses, body limits, and the one mapping of errors to HTTP.
//! - `jobs`, `results`, `agents`: handlers, named after Testflinger's `api/v1.py`.
//! - `events`: job events for webhooks (recorded here, delivered by `actors::webhooks`).
//! - `dash`: the web dashboard (HTML pages, static files) and the log follow stream.
//! - `logbody`: log answers streamed from the fragments in bounded chunks (log GET, follow).
//! - `meta`: `/metrics`, `/openapi.json`, and [`meta::Routes`], the route table below
//!   (every `.route` goes through it, so the OpenAPI document lists it).
//! - `front`: the one middleware every request passes (log line, panic guard, minimum
//!   body rate, JSON errors, request metrics, agent contact).

pub mod agents;
pub mod auth;
pub mod dash;
pub mod events;
pub mod front;
pub mod jobs;
pub mod logbody;
pub mod meta;
pub mod queues;
pub mod respond;
pub mod results;
pub mod schema;
pub mod transfer;
pub mod upload;
pub mod wire;

use axum::middleware;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use tower_http::normalize_path::NormalizePath;

use crate::actors::Services;
use crate::error::Error;

/// What `GET /v1/` answers (the agents' health check reads only the status).
pub fn version_text() -> String {
    format!(
        "Testflinger Server v{} (flinger)",
        env!("CARGO_PKG_VERSION")
    )
}

async fn home() -> Response {
    respond::text(version_text())
}

async fn not_found() -> Error {
    Error::NotFound("Not found: no such endpoint".into())
}

/// The HTTP service the server runs: [`router`] behind trailing-slash normalisation.
pub type App = NormalizePath<Router>;

/// Every route answers the same with a trailing slash as without (upstream's Flask app sets
/// `strict_slashes = False`). The slash is trimmed *before* routing: a `Router::layer`
/// runs after the route was chosen and could not change which one matches.
pub fn app(services: Services) -> App {
    NormalizePath::trim_trailing_slash(router(services))
}

/// The whole route table (without trailing-slash normalisation: serve [`app`]).
pub fn router(services: Services) -> Router {
    use self::agents::*;
    use self::auth::*;
    use self::jobs::*;
    use self::meta::*;
    use self::queues::*;
    use self::results::*;
    let (routes, templates) = Routes::default()
        .route("/", get(dash::home_or_overview))
        .route("/v1", get(home))
        .route("/v1/job", post(job_post).get(job_get))
        .route("/v1/job/search", get(job_search))
        .route("/v1/job/{id}", get(job_get_id).delete(job_delete))
        .route(
            "/v1/job/{id}/attachments",
            post(attachments_post).get(attachments_get),
        )
        .route("/v1/job/{id}/position", get(job_position_get))
        .route("/v1/job/{id}/action", post(action_post))
        .route(
            "/v1/job/{id}/events",
            post(events::job_events_post).get(events::job_events_get),
        )
        .route("/v1/result/{id}", post(result_post).get(result_get))
        .route("/v1/result/{id}/output", post(output_post).get(output_get))
        .route(
            "/v1/result/{id}/artifact",
            post(artifact_post).get(artifact_get),
        )
        .route("/v1/result/{id}/log/{kind}", post(log_post).get(log_get))
        .route("/v1/agents/queues", post(queues_post).get(queues_get))
        .route("/v1/agents/images", post(images_post))
        .route("/v1/agents/images/{queue}", get(images_get))
        .route("/v1/agents/data", get(agents_get_all))
        .route(
            "/v1/agents/data/{name}",
            post(agents_post).get(agents_get_one).delete(agents_delete),
        )
        .route(
            "/v1/agents/provision_logs/{name}",
            post(agents_provision_logs_post),
        )
        .route("/v1/queues/wait_times", get(queue_wait_times_get))
        .route("/v1/queues/{queue}/agents", get(queues_agents_get))
        .route("/v1/queues/{queue}/jobs", get(queue_jobs_get))
        .route("/v1/oauth2/token", post(token_post))
        .route("/v1/oauth2/refresh", post(refresh_post))
        .route("/v1/oauth2/revoke", post(revoke_post))
        .route("/v1/client-permissions", get(clients_get))
        .route(
            "/v1/client-permissions/{client_id}",
            get(client_get).put(client_put).delete(client_delete),
        )
        .route("/v1/restricted-queues", get(restricted_queues_get))
        .route(
            "/v1/restricted-queues/{queue}",
            get(restricted_queue_get)
                .post(restricted_queue_post)
                .delete(restricted_queue_delete),
        )
        .route(
            "/v1/secrets/{client_id}/{*path}",
            axum::routing::put(secrets_put).delete(secrets_delete),
        )
        .route("/metrics", get(metrics_get))
        .route_doc("/openapi.json")
        .route(crate::ha::READY_PATH, get(crate::ha::ready_single))
        .route("/v1/result/{id}/log/{kind}/follow", get(dash::log_follow))
        .route("/queues", get(dash::queues_page))
        .route("/queues/{queue}", get(dash::queue_page))
        .route("/agents", get(dash::agents_page))
        .route("/agents/{name}", get(dash::agent_page))
        .route("/jobs", get(dash::jobs_page))
        .route("/jobs/{id}", get(dash::job_page))
        .route("/jobs/{id}/cancel", post(dash::cancel_form))
        .route("/static/{file}", get(dash::static_file))
        .finish();
    // Handlers read their own bodies within their own limits (`respond::read_body`,
    // uploads) and use no axum body extractor, so axum's default body limit (2 MB, a
    // non-JSON answer) never applies and needs no layer of its own.
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(|| async {
            Error::MethodNotAllowed("Method Not Allowed".into())
        })
        // Log line, panic guard, minimum body rate, JSON errors, request metrics, agent
        // contact and access control, in that order from the outside in: one layer (see
        // `front`).
        .layer(middleware::from_fn_with_state(
            front::Front {
                services: services.clone(),
                rate: transfer::MinRate {
                    bytes: services.config.min_transfer_bytes,
                    window: services.config.transfer_window,
                },
                routes: templates,
            },
            front::front,
        ))
        .with_state(services)
}
