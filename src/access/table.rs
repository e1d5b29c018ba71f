//! THE route × role table: which roles may call each endpoint, and which per-job check
//! follows. Data, like upstream's `server/tests/permissions.json` (whose role sets it
//! copies, in upstream's order, so the 403 message names them as upstream does), plus
//! flinger's routes upstream lacks and the ownership checks upstream lacks.
//!
//! The access layer looks a request up by method and *matched route pattern* (axum's
//! `MatchedPath`, e.g. `/v1/job/{id}`); a route with no row for the method is refused
//! (405), so a new route is closed until it is listed here.

use crate::model::access::Role;

/// Who may call an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Roles {
    /// Anyone, with or without a token.
    Public,
    /// Callers whose role is one of these.
    Only(&'static [Role]),
}

/// The check that follows the role check, for endpoints about one job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Nothing more.
    None,
    /// The caller must be the job's submitter, or a manager or admin (jobs submitted
    /// anonymously have no owner and pass).
    JobOwner,
    /// The caller must be the agent credential the job was dispatched to.
    JobAgent,
    /// The agent must name itself with the `agent_name` cookie (401 otherwise), so
    /// `exclude_agents` cannot be dodged by omitting it.
    AgentCookie,
    /// An agent credential may change an agent's record only if no other agent
    /// credential that still exists wrote it last (managers and admins may always).
    AgentRecord,
    /// `/`: public as the version text; a request for the dashboard's overview page it
    /// shows browsers (one accepting `text/html`) is checked as [`OVERVIEW`].
    Overview,
}

/// One row: method, route pattern, roles, check.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    /// HTTP method.
    pub method: &'static str,
    /// The route pattern as registered in `http::router`.
    pub path: &'static str,
    /// Who may call it.
    pub roles: Roles,
    /// What is checked next.
    pub check: Check,
}

use Role::{Admin as A, Agent as G, Contributor as C, Manager as M};

const AMC: Roles = Roles::Only(&[A, M, C]);
const AMG: Roles = Roles::Only(&[A, M, G]);
const AM: Roles = Roles::Only(&[A, M]);
const ALL: Roles = Roles::Only(&[A, M, C, G]);
const AGENT: Roles = Roles::Only(&[G]);
const ADMIN: Roles = Roles::Only(&[A]);
const PUBLIC: Roles = Roles::Public;

const fn rule(method: &'static str, path: &'static str, roles: Roles, check: Check) -> Rule {
    Rule {
        method,
        path,
        roles,
        check,
    }
}

/// Every route of `http::router`.
pub const TABLE: &[Rule] = &[
    rule("GET", "/", PUBLIC, Check::Overview),
    rule("GET", "/v1", PUBLIC, Check::None),
    // Resubmission ownership is decided by the registry (it needs the job id in the body).
    rule("POST", "/v1/job", AMC, Check::None),
    rule("GET", "/v1/job", AGENT, Check::AgentCookie),
    rule("GET", "/v1/job/search", AMC, Check::None),
    rule("GET", "/v1/job/{id}", AMC, Check::None),
    // flinger's operator route (upstream has none): with access control off it is
    // loopback-only (checked by the handler); with it on, the admin role.
    rule("DELETE", "/v1/job/{id}", ADMIN, Check::None),
    rule("POST", "/v1/job/{id}/attachments", AMC, Check::JobOwner),
    rule("GET", "/v1/job/{id}/attachments", AGENT, Check::JobAgent),
    rule("GET", "/v1/job/{id}/position", AMC, Check::None),
    rule("POST", "/v1/job/{id}/action", AMC, Check::JobOwner),
    rule("POST", "/v1/job/{id}/events", AGENT, Check::JobAgent),
    // flinger's delivery view of a job's events: whoever may read the job, and its agent.
    rule("GET", "/v1/job/{id}/events", ALL, Check::None),
    rule("POST", "/v1/result/{id}", AGENT, Check::JobAgent),
    rule("GET", "/v1/result/{id}", ALL, Check::None),
    rule("POST", "/v1/result/{id}/output", AGENT, Check::JobAgent),
    rule("GET", "/v1/result/{id}/output", AMC, Check::None),
    rule("POST", "/v1/result/{id}/artifact", AGENT, Check::JobAgent),
    rule("GET", "/v1/result/{id}/artifact", AMC, Check::None),
    rule("POST", "/v1/result/{id}/log/{kind}", AGENT, Check::JobAgent),
    rule("GET", "/v1/result/{id}/log/{kind}", AMC, Check::None),
    rule("POST", "/v1/agents/queues", AMG, Check::None),
    rule("GET", "/v1/agents/queues", AMC, Check::None),
    rule("POST", "/v1/agents/images", AMG, Check::None),
    rule("GET", "/v1/agents/images/{queue}", AMC, Check::None),
    rule("GET", "/v1/agents/data", AMC, Check::None),
    rule("POST", "/v1/agents/data/{name}", AMG, Check::AgentRecord),
    rule("GET", "/v1/agents/data/{name}", ALL, Check::None),
    // flinger's operator route (upstream has none): managers and admins, who may already
    // rewrite any agent's record; with access control off, loopback only (the handler).
    rule("DELETE", "/v1/agents/data/{name}", AM, Check::None),
    // The job named in the body must be the caller's (checked by the handler).
    rule(
        "POST",
        "/v1/agents/provision_logs/{name}",
        AGENT,
        Check::AgentRecord,
    ),
    rule("GET", "/v1/queues/wait_times", AMC, Check::None),
    rule("GET", "/v1/queues/{queue}/agents", AMC, Check::None),
    rule("GET", "/v1/queues/{queue}/jobs", AMC, Check::None),
    rule("POST", "/v1/oauth2/token", PUBLIC, Check::None),
    rule("POST", "/v1/oauth2/refresh", PUBLIC, Check::None),
    rule("POST", "/v1/oauth2/revoke", ADMIN, Check::None),
    rule("GET", "/v1/client-permissions", AM, Check::None),
    rule("GET", "/v1/client-permissions/{client_id}", AM, Check::None),
    rule("PUT", "/v1/client-permissions/{client_id}", AM, Check::None),
    rule(
        "DELETE",
        "/v1/client-permissions/{client_id}",
        ADMIN,
        Check::None,
    ),
    rule("GET", "/v1/restricted-queues", AMC, Check::None),
    rule("GET", "/v1/restricted-queues/{queue}", AMC, Check::None),
    rule("POST", "/v1/restricted-queues/{queue}", AM, Check::None),
    rule("DELETE", "/v1/restricted-queues/{queue}", AM, Check::None),
    // The client id in the path must be the caller's (checked by the handler).
    rule("PUT", "/v1/secrets/{client_id}/{*path}", AMC, Check::None),
    rule(
        "DELETE",
        "/v1/secrets/{client_id}/{*path}",
        AMC,
        Check::None,
    ),
    // flinger's own: metrics, the API document, the dashboard. Pages and metrics show
    // what the JSON reads they mirror show (contributor rights); the document and the
    // dashboard's static files hold no data.
    rule("GET", "/metrics", AMC, Check::None),
    rule("GET", "/openapi.json", PUBLIC, Check::None),
    // Readiness for load balancers: the node's role, the leader and the term.
    rule("GET", "/v1/ready", PUBLIC, Check::None),
    rule("GET", "/static/{file}", PUBLIC, Check::None),
    rule("GET", "/v1/result/{id}/log/{kind}/follow", AMC, Check::None),
    rule("GET", "/queues", AMC, Check::None),
    rule("GET", "/queues/{queue}", AMC, Check::None),
    rule("GET", "/agents", AMC, Check::None),
    rule("GET", "/agents/{name}", AMC, Check::None),
    rule("GET", "/jobs", AMC, Check::None),
    rule("GET", "/jobs/{id}", AMC, Check::None),
    // The dashboard's cancel button: the same rights as the cancel action.
    rule("POST", "/jobs/{id}/cancel", AMC, Check::JobOwner),
];

/// `GET /` when it answers the dashboard's overview: the dashboard pages' rule (the
/// overview lists queues, agents and the newest jobs, as `/queues` and `/jobs` do).
pub const OVERVIEW: Rule = rule("GET", "/", AMC, Check::None);

/// Routes whose GET changes state: the pop (dispatches a job) and the legacy `/output`
/// read (marks the output read). Browsers treat GETs as harmless, so these are refused
/// to other sites' pages like writes (`origin`).
pub const CHANGING_READS: &[&str] = &["/v1/job", "/v1/result/{id}/output"];

/// The rule for `method` on route `path`, if listed. `HEAD` is checked as `GET` (axum
/// answers it with the GET handler).
pub fn lookup(method: &str, path: &str) -> Option<&'static Rule> {
    let method = if method == "HEAD" { "GET" } else { method };
    TABLE.iter().find(|r| r.path == path && r.method == method)
}

/// The `Allow` header of route `path` (`None` for a path no row names): its methods in
/// upstream's (Flask's) spelling, sorted and joined with `, `, with `HEAD` beside `GET`
/// (except on the reads that change state, whose HEAD is refused) and `OPTIONS`, which
/// `http::front` answers on every route.
pub fn allowed(path: &str) -> Option<String> {
    let mut methods: Vec<&str> = TABLE
        .iter()
        .filter(|r| r.path == path)
        .map(|r| r.method)
        .collect();
    if methods.is_empty() {
        return None;
    }
    if methods.contains(&"GET") && !CHANGING_READS.contains(&path) {
        methods.push("HEAD");
    }
    methods.push("OPTIONS");
    methods.sort_unstable();
    Some(methods.join(", "))
}

/// The roles of a rule, as upstream's 403 names them.
pub fn role_list(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Upstream's permissions.json, copied from `../shared/reference/upstream-permissions.json`
    /// (server/tests/permissions.json at fe381ff2): every row here must have the same roles
    /// in [`TABLE`].
    const UPSTREAM: &str = r#"{
  "/v1/agents/data": {"GET": ["CONTRIBUTOR", "MANAGER", "ADMIN"]},
  "/v1/agents/data/<agent_name>": {"POST": ["AGENT", "MANAGER", "ADMIN"], "GET": ["AGENT", "CONTRIBUTOR", "MANAGER", "ADMIN"]},
  "/v1/agents/images": {"POST": ["AGENT", "MANAGER", "ADMIN"]},
  "/v1/agents/images/<queue_name>": {"GET": ["CONTRIBUTOR", "MANAGER", "ADMIN"]},
  "/v1/agents/provision_logs/<agent_name>": {"POST": ["AGENT"]},
  "/v1/agents/queues": {"POST": ["AGENT", "MANAGER", "ADMIN"], "GET": ["CONTRIBUTOR", "MANAGER", "ADMIN"]},
  "/v1/client-permissions/<client_id>": {"DELETE": ["ADMIN"], "GET": ["MANAGER", "ADMIN"], "PUT": ["MANAGER", "ADMIN"]},
  "/v1/client-permissions": {"GET": ["MANAGER", "ADMIN"]},
  "/v1/job": {"GET": ["AGENT"], "POST": ["CONTRIBUTOR", "MANAGER", "ADMIN"]},
  "/v1/job/<job_id>": {"GET": ["CONTRIBUTOR", "MANAGER", "ADMIN"]},
  "/v1/job/<job_id>/action": {"POST": ["CONTRIBUTOR", "MANAGER", "ADMIN"]},
  "/v1/job/<job_id>/attachments": {"GET": ["AGENT"], "POST": ["CONTRIBUTOR", "MANAGER", "ADMIN"]},
  "/v1/job/<job_id>/events": {"POST": ["AGENT"]},
  "/v1/job/<job_id>/position": {"GET": ["CONTRIBUTOR", "MANAGER", "ADMIN"]},
  "/v1/job/search": {"GET": ["CONTRIBUTOR", "MANAGER", "ADMIN"]},
  "/v1/oauth2/revoke": {"POST": ["ADMIN"]},
  "/v1/queues/<queue_name>/agents": {"GET": ["CONTRIBUTOR", "MANAGER", "ADMIN"]},
  "/v1/queues/<queue_name>/jobs": {"GET": ["CONTRIBUTOR", "MANAGER", "ADMIN"]},
  "/v1/queues/wait_times": {"GET": ["CONTRIBUTOR", "MANAGER", "ADMIN"]},
  "/v1/restricted-queues": {"GET": ["CONTRIBUTOR", "MANAGER", "ADMIN"]},
  "/v1/restricted-queues/<queue_name>": {"GET": ["CONTRIBUTOR", "MANAGER", "ADMIN"], "DELETE": ["MANAGER", "ADMIN"], "POST": ["MANAGER", "ADMIN"]},
  "/v1/result/<job_id>": {"POST": ["AGENT"], "GET": ["AGENT", "CONTRIBUTOR", "MANAGER", "ADMIN"]},
  "/v1/result/<job_id>/artifact": {"POST": ["AGENT"], "GET": ["CONTRIBUTOR", "MANAGER", "ADMIN"]},
  "/v1/result/<job_id>/log/<log_type>": {"POST": ["AGENT"], "GET": ["CONTRIBUTOR", "MANAGER", "ADMIN"]},
  "/v1/secrets/<client_id>/<path>": {"DELETE": ["CONTRIBUTOR", "MANAGER", "ADMIN"], "PUT": ["CONTRIBUTOR", "MANAGER", "ADMIN"]}
}"#;

    fn ours(path: &str) -> String {
        // `<job_id>` → `{id}`, `<queue_name>` → `{queue}`, ...
        path.split('/')
            .map(|seg| match seg {
                "<job_id>" => "{id}",
                "<queue_name>" => "{queue}",
                "<agent_name>" => "{name}",
                "<client_id>" => "{client_id}",
                "<log_type>" => "{kind}",
                "<path>" => "{*path}",
                other => other,
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    #[test]
    fn every_upstream_row_has_the_same_roles_here() {
        let upstream: serde_json::Value = serde_json::from_str(UPSTREAM).unwrap();
        let mut rows = 0;
        for (path, methods) in upstream.as_object().unwrap() {
            for (method, roles) in methods.as_object().unwrap() {
                let rule = lookup(method, &ours(path))
                    .unwrap_or_else(|| panic!("{method} {path} is not in the table"));
                let mut want: Vec<Role> = roles
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| Role::parse(&r.as_str().unwrap().to_lowercase()).unwrap())
                    .collect();
                let Roles::Only(have) = rule.roles else {
                    panic!("{method} {path} is public here");
                };
                let mut have = have.to_vec();
                want.sort();
                have.sort();
                assert_eq!(have, want, "{method} {path}");
                rows += 1;
            }
        }
        assert_eq!(rows, 37);
    }

    /// `http::front` authorises exactly the requests whose method and route have a row
    /// (any other the router refuses), so a routed method without a row would be let
    /// through unchecked. The OpenAPI test holds the router to the document
    /// (`observe::every_route_is_documented_and_every_documented_route_exists`); this
    /// holds the document to the table, both ways.
    #[test]
    fn every_documented_operation_has_a_row_and_every_row_is_documented() {
        use crate::http::meta::path_shape;
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../http/openapi.json")).unwrap();
        let mut documented = Vec::new();
        for (path, operations) in doc["paths"].as_object().unwrap() {
            // The router sees `/v1/` as `/v1` (trailing slashes are trimmed first).
            let path = match path.strip_suffix('/') {
                Some(trimmed) if !trimmed.is_empty() => trimmed,
                _ => path,
            };
            for method in operations.as_object().unwrap().keys() {
                let method = method.to_uppercase();
                let row = TABLE
                    .iter()
                    .find(|r| r.method == method && path_shape(r.path) == path_shape(path));
                let row = row.unwrap_or_else(|| panic!("{method} {path} has no row"));
                assert_eq!(lookup(&method, row.path).map(|r| r.path), Some(row.path));
                documented.push((method, path_shape(path)));
            }
        }
        for row in TABLE {
            assert!(
                documented.contains(&(row.method.to_owned(), path_shape(row.path))),
                "{} {} is not documented",
                row.method,
                row.path
            );
        }
        assert_eq!(lookup("HEAD", "/v1/job").map(|r| r.method), Some("GET"));
        assert!(lookup("PATCH", "/v1/job").is_none());
        assert!(lookup("GET", crate::http::meta::UNMATCHED).is_none());
        assert_eq!(allowed("/v1/job").as_deref(), Some("GET, OPTIONS, POST"));
        assert_eq!(
            allowed("/v1/job/{id}").as_deref(),
            Some("DELETE, GET, HEAD, OPTIONS")
        );
        assert_eq!(allowed(crate::http::meta::UNMATCHED), None);
    }

    #[test]
    fn rows_are_unique() {
        for (i, a) in TABLE.iter().enumerate() {
            for b in &TABLE[i + 1..] {
                assert!(
                    !(a.method == b.method && a.path == b.path),
                    "{} {} listed twice",
                    a.method,
                    a.path
                );
            }
        }
    }
}
