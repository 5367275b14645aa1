//! vipvisor-server: the application layer ([`vipvisor_api::App`]) over HTTP, for
//! `vipvisor serve` (and, later, the controller's `--serve` and the web UI).
//!
//! - REST JSON under `/api/v1`; bodies in the pools file's shape where one exists (a pool
//!   is `{"name", "addresses", …options}`); every error is `{"code", "message"}` with the
//!   status its [`ErrorCode`] maps to.
//! - Bearer tokens (`vipvisor token create`): every `/api/v1` request needs one; `viewer`
//!   reads, `admin` also writes. The token is checked **before** anything of the request
//!   is read or validated, and a write is audited as `token:NAME`.
//!
//! Owns: routes, authentication, the mapping of query strings and bodies to the API's
//! types. Must not: hold application logic (it calls `App`), or log a token.

pub mod hypervisor;
pub mod metrics;

use std::net::{IpAddr, SocketAddr};

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use tracing::{info, warn};
use vipvisor_api::allocations::{AllocationQuery, MAX_PAGE};
use vipvisor_api::events::EventQuery;
use vipvisor_api::tokens::{Caller, Role};
use vipvisor_api::{ApiError, App, ErrorCode};
use vipvisor_model::{AllocRequest, Pool, PoolName, ServiceKey, Timestamp};

/// The largest request body read.
pub const MAX_BODY: usize = 1 << 20;

/// Every error's body.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable: front ends branch on it (`invalid_value`, `unknown_pool`, `unauthenticated`, …).
    pub code: String,
    /// Names the bad value and what was expected.
    pub message: String,
    /// The request field it is about (`name`, `addresses`, …), when it is about one.
    pub field: Option<String>,
}

/// What a login code buys.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct LoginAnswer {
    pub token: String,
    pub role: Role,
    pub expires_in_s: u64,
}

/// A pool as the API (and the pools file) writes it: `{"name", "addresses", …options}`,
/// one flat object (the model flattens `PoolOptions` into it). Documentation only; the
/// test `the_pool_schema_has_every_key_of_a_pool` keeps it in step with the model.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Pool)]
#[allow(dead_code)]
pub struct PoolSchema {
    /// A DNS label.
    #[schema(pattern = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")]
    name: String,
    /// CIDRs (`192.0.2.0/28`), ranges (`198.51.100.10-198.51.100.20`) or addresses.
    addresses: Vec<String>,
    /// Hand the pool's addresses out to services that name neither a pool nor an address (default true).
    auto_assign: Option<bool>,
    /// Skip IPv4 addresses ending in .0 and .255 (default false).
    avoid_buggy_ips: Option<bool>,
    /// Namespaces allowed to use the pool (default: all).
    namespaces: Option<Vec<String>>,
    /// Namespace labels required to use the pool.
    namespace_selector: Option<std::collections::BTreeMap<String, String>>,
    /// Service labels required to use the pool.
    service_selector: Option<std::collections::BTreeMap<String, String>>,
    /// Lower numbers are tried first.
    priority: Option<u32>,
    /// Which MAC answers for the pool's addresses: `node` (the owner's, default) or
    /// `virtual` (each VIP's own, which moves with it).
    mac: Option<vipvisor_model::MacMode>,
}

/// A pool with its usage per family: the pool's keys plus `families`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(as = PoolView)]
#[allow(dead_code)]
pub struct PoolViewSchema {
    name: String,
    addresses: Vec<String>,
    auto_assign: bool,
    avoid_buggy_ips: bool,
    namespaces: Vec<String>,
    namespace_selector: std::collections::BTreeMap<String, String>,
    service_selector: std::collections::BTreeMap<String, String>,
    priority: Option<u32>,
    mac: vipvisor_model::MacMode,
    families: Vec<vipvisor_api::FamilyStats>,
}

/// The OpenAPI 3 document of the API, generated from the handlers and types above.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    info(title = "vipvisor API", description = "LoadBalancer VIPs for on-prem Kubernetes: pools, allocations, events. Bearer tokens: `vipvisor token create`."),
    paths(whoami, list_pools, get_pool, create_pool, put_pool, delete_pool, pool_detail, list_allocations, allocate, release, events, stream, login, owners, ownership, vip, pending, explain, grants, hypervisor::view, hypervisor::apply, hypervisor::revert),
    components(schemas(ErrorBody, LoginAnswer, LoginBody, AllocBody, PoolSchema, PoolViewSchema, History, hypervisor::HypervisorView, hypervisor::NodeDiagnosis, hypervisor::ApplyBody, hypervisor::ApplyAnswer, hypervisor::PlannedGrant, hypervisor::RevertBody)),
    modifiers(&Bearer),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as served and committed (docs/openapi.json).
pub fn openapi_json() -> String {
    use utoipa::OpenApi as _;
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc.to_pretty_json().unwrap_or_default() + "\n"
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

/// An [`ApiError`] as an HTTP answer: `{code, message}` with its status.
pub(crate) struct HttpError(pub(crate) ApiError);

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        HttpError(e)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = Json(serde_json::to_value(&self.0).unwrap_or_default());
        if status == StatusCode::UNAUTHORIZED {
            return (status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response();
        }
        (status, body).into_response()
    }
}

pub(crate) type Answer<T> = Result<Json<T>, HttpError>;

fn invalid(message: String) -> HttpError {
    HttpError(ApiError::new(ErrorCode::InvalidValue, message))
}

/// A JSON body, read whole (bounded) and parsed here so that a bad one is an
/// `invalid_value` naming the field, like every other validation error.
pub(crate) fn body<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, HttpError> {
    serde_json::from_slice(bytes).map_err(|e| invalid(format!("invalid {what} body: {e}")))
}

/// The one-time login code `serve` prints, and the sessions it opened (in memory only: a
/// restart logs everybody out).
#[derive(Debug, Default)]
pub struct Logins {
    /// The SHA-256 of the code and when it expires; taken on first use.
    code: std::sync::Mutex<Option<(String, std::time::Instant)>>,
    sessions: std::sync::Mutex<std::collections::HashMap<String, (Caller, std::time::Instant)>>,
}

/// How long the printed login code is valid.
pub const LOGIN_CODE_FOR: std::time::Duration = std::time::Duration::from_secs(600);
/// How long a session opened with it lasts.
pub const SESSION_FOR: std::time::Duration = std::time::Duration::from_secs(12 * 3600);
/// Session tokens start with this (API tokens with `vv_`).
const SESSION_PREFIX: &str = "vvs_";

fn locked<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Logins {
    /// A new one-time code (replacing any earlier one), valid for [`LOGIN_CODE_FOR`].
    pub fn new_code(&self) -> String {
        let code = vipvisor_api::tokens::random_secret();
        *locked(&self.code) = Some((vipvisor_api::tokens::hash(&code), std::time::Instant::now() + LOGIN_CODE_FOR));
        code
    }

    /// Trades the code for an admin session token, once.
    fn exchange(&self, code: &str) -> Option<String> {
        let mut slot = locked(&self.code);
        match slot.as_ref() {
            Some((h, until)) if *h == vipvisor_api::tokens::hash(code) && std::time::Instant::now() < *until => {}
            _ => return None,
        }
        *slot = None;
        let token = format!("{SESSION_PREFIX}{}", vipvisor_api::tokens::random_secret());
        let caller = Caller { name: "login".into(), role: Role::Admin };
        let now = std::time::Instant::now();
        let mut sessions = locked(&self.sessions);
        sessions.retain(|_, (_, until)| *until > now);
        sessions.insert(vipvisor_api::tokens::hash(&token), (caller, now + SESSION_FOR));
        Some(token)
    }

    fn session(&self, token: &str) -> Option<Caller> {
        if !token.starts_with(SESSION_PREFIX) {
            return None;
        }
        let sessions = locked(&self.sessions);
        sessions
            .get(&vipvisor_api::tokens::hash(token))
            .filter(|(_, until)| *until > std::time::Instant::now())
            .map(|(c, _)| c.clone())
    }
}

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub app: App,
    pub logins: std::sync::Arc<Logins>,
    pub sources: Sources,
}

/// The Services that want an address, as `(request, warnings about its annotations)`:
/// the controller knows them (its Service cache); `vipvisor serve` alone does not.
pub type PendingSource = std::sync::Arc<dyn Fn() -> Vec<(AllocRequest, Vec<String>)> + Send + Sync>;

/// Authenticates bearer tokens with someone else instead of the store's own tokens (in
/// cluster: Kubernetes TokenReview, then SubjectAccessReview for the role). `Ok(None)`:
/// not a token it knows (401); an `Err` with [`ErrorCode::Forbidden`]: known but with no
/// role (403). It must never log or return the token.
pub trait ExternalAuth: Send + Sync {
    fn authenticate<'a>(&'a self, token: &'a str) -> futures::future::BoxFuture<'a, Result<Option<Caller>, ApiError>>;
}

/// What the host process knows beyond the store.
#[derive(Clone, Default)]
pub struct Sources {
    pub pending: Option<PendingSource>,
    /// Replaces the store's tokens (and the printed login code) when set.
    pub auth: Option<std::sync::Arc<dyn ExternalAuth>>,
    /// The providers of a provider file: `/api/v1/hypervisor…`.
    pub hypervisor: Option<std::sync::Arc<vipvisor_hypervisor::Hypervisors>>,
    /// Where the requests are counted (`serve`'s `/metrics`).
    pub metrics: Option<metrics::Metrics>,
    /// Print a one-time login URL on stdout at start (`vipvisor serve`, for the person who
    /// started it; never the controller, whose stdout is its pod's log).
    pub print_login: bool,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("pending", &self.pending.is_some())
            .field("auth", &self.auth.is_some())
            .field("hypervisor", &self.hypervisor.is_some())
            .field("metrics", &self.metrics.is_some())
            .finish()
    }
}

impl axum::extract::FromRef<Ctx> for App {
    fn from_ref(c: &Ctx) -> App {
        c.app.clone()
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    code: String,
}

/// `POST /api/v1/login {"code"}`: the printed one-time code for a session token.
#[utoipa::path(post, path = "/api/v1/login", tag = "auth", security(()), request_body = LoginBody, responses((status = 200, body = LoginAnswer), (status = 400, body = ErrorBody), (status = 401, description = "invalid, expired or used code", body = ErrorBody)))]
async fn login(State(ctx): State<Ctx>, bytes: axum::body::Bytes) -> Answer<LoginAnswer> {
    let b: LoginBody = body(&bytes, "login")?;
    match ctx.logins.exchange(&b.code) {
        Some(token) => {
            info!("a login code was used");
            Ok(Json(LoginAnswer { token, role: Role::Admin, expires_in_s: SESSION_FOR.as_secs() }))
        }
        None => Err(HttpError(ApiError::new(
            ErrorCode::Unauthenticated,
            "invalid, expired or used login code; expected the one `vipvisor serve` printed (restart it for a new one)",
        ))),
    }
}

/// The routes. `ctx.app` is the application as the server's own actor; each request acts
/// as its token.
pub fn router(ctx: Ctx) -> Router {
    let metrics = ctx.sources.metrics.clone();
    let open = Router::new()
        .route("/login", axum::routing::post(login))
        .route("/openapi.json", get(openapi))
        .with_state(ctx.clone());
    let api = Router::new()
        .route("/whoami", get(whoami))
        .route("/pools", get(list_pools).post(create_pool))
        .route("/pools/{name}", get(get_pool).put(put_pool).delete(delete_pool))
        .route("/pools/{name}/detail", get(pool_detail))
        .route("/owners", get(owners))
        .route("/ownership", get(ownership))
        .route("/vips/{address}", get(vip))
        .route("/pending", get(pending))
        .route("/explain", axum::routing::post(explain))
        .route("/grants", get(grants))
        .route("/hypervisor", get(hypervisor::view))
        .route("/hypervisor/apply", axum::routing::post(hypervisor::apply))
        .route("/hypervisor/revert", axum::routing::post(hypervisor::revert))
        .route("/allocations", get(list_allocations).post(allocate))
        .route("/allocations/{namespace}/{name}", axum::routing::delete(release))
        .route("/events", get(events))
        .route("/events/stream", get(stream))
        .fallback(not_found)
        .route_layer(middleware::from_fn_with_state(ctx.clone(), authenticate))
        .with_state(ctx);
    Router::new()
        .nest("/api/v1", open.merge(api))
        .fallback(ui)
        .layer(middleware::from_fn_with_state(metrics, metrics::observe))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

mod assets {
    include!(concat!(env!("OUT_DIR"), "/ui_assets.rs"));
}

/// Whether the binary carries the web UI (built before it: `npm --prefix ui run build`).
pub fn has_ui() -> bool {
    assets::ASSETS.iter().any(|(p, _)| *p == "index.html")
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "json" => "application/json",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The web UI: its files by path, and `index.html` for every other path (the UI routes
/// in the browser). Hashed files under `assets/` are cached for good.
async fn ui(uri: axum::http::Uri) -> Response {
    let path = uri.path().trim_start_matches('/');
    if path.starts_with("api/") {
        return not_found().await.into_response();
    }
    let find = |p: &str| assets::ASSETS.iter().find(|(name, _)| *name == p).map(|(_, b)| *b);
    let (name, bytes) = match find(path) {
        Some(b) if !path.is_empty() => (path, b),
        _ => match find("index.html") {
            Some(b) => ("index.html", b),
            None => {
                return (
                    StatusCode::NOT_FOUND,
                    [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                    "this vipvisor was built without its web UI; expected `npm --prefix ui ci && npm --prefix ui run build` before `cargo build` (the API is under /api/v1)\n",
                )
                    .into_response()
            }
        },
    };
    let cache = if name.starts_with("assets/") { "public, max-age=31536000, immutable" } else { "no-cache" };
    (
        [
            (header::CONTENT_TYPE, content_type(name)),
            (header::CACHE_CONTROL, cache),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (
                header::HeaderName::from_static("content-security-policy"),
                "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
            ),
        ],
        bytes,
    )
        .into_response()
}

async fn not_found() -> HttpError {
    HttpError(ApiError::new(
        ErrorCode::NotFound,
        "no such route; expected one under /api/v1 (see /api/v1/openapi.json)",
    ))
}

/// Checks the bearer token before anything else of the request is looked at.
async fn authenticate(State(ctx): State<Ctx>, mut req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token else {
        return HttpError(ApiError::new(
            ErrorCode::Unauthenticated,
            "no token; expected an Authorization: Bearer header with a token from `vipvisor token create`",
        ))
        .into_response();
    };
    let looked_up = match (&ctx.sources.auth, ctx.logins.session(token)) {
        (Some(external), _) => external.authenticate(token).await,
        (None, Some(c)) => Ok(Some(c)),
        (None, None) => ctx.app.authenticate(token).await,
    };
    let caller = match looked_up {
        Ok(Some(c)) => c,
        Ok(None) => {
            let expected = if ctx.sources.auth.is_some() {
                "unknown token; expected a Kubernetes token (checked by TokenReview)"
            } else {
                "unknown or revoked token; expected one from `vipvisor token create`"
            };
            return HttpError(ApiError::new(ErrorCode::Unauthenticated, expected)).into_response();
        }
        Err(e) => return HttpError(e).into_response(),
    };
    let reads = matches!(*req.method(), Method::GET | Method::HEAD);
    if !reads && caller.role < Role::Admin {
        return HttpError(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "token {:?} is a viewer; expected an admin token to {} {}",
                caller.name,
                req.method(),
                req.uri().path()
            ),
        ))
        .into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[utoipa::path(get, path = "/api/v1/whoami", tag = "auth", responses((status = 200, body = Caller), (status = 400, description = "invalid_value: a bad value, named", body = ErrorBody), (status = 401, description = "unauthenticated", body = ErrorBody)))]
async fn whoami(Extension(caller): Extension<Caller>) -> Json<Caller> {
    Json(caller)
}

#[utoipa::path(get, path = "/api/v1/pools", tag = "pools", responses((status = 200, body = Vec<PoolViewSchema>), (status = 400, description = "invalid_value: a bad value, named", body = ErrorBody), (status = 401, description = "unauthenticated", body = ErrorBody)))]
async fn list_pools(State(app): State<App>) -> Answer<Vec<vipvisor_api::pools::PoolView>> {
    Ok(Json(app.pools().await?))
}

fn pool_name(name: &str) -> Result<PoolName, HttpError> {
    name.parse::<PoolName>().map_err(|e| HttpError(ApiError::from(e)))
}

#[utoipa::path(get, path = "/api/v1/pools/{name}", tag = "pools", params(("name" = String, Path, description = "the pool")), responses((status = 200, body = PoolViewSchema), (status = 404, description = "unknown_pool", body = ErrorBody), (status = 400, description = "invalid_value: a bad value, named", body = ErrorBody), (status = 401, description = "unauthenticated", body = ErrorBody)))]
async fn get_pool(State(app): State<App>, Path(name): Path<String>) -> Answer<vipvisor_api::pools::PoolView> {
    Ok(Json(app.pool(&pool_name(&name)?).await?))
}

#[utoipa::path(post, path = "/api/v1/pools", tag = "pools", request_body = PoolSchema, responses((status = 201, body = vipvisor_api::ConfigReport), (status = 409, description = "pool_exists", body = ErrorBody), (status = 400, description = "invalid_value: a bad value, named", body = ErrorBody), (status = 401, description = "unauthenticated", body = ErrorBody), (status = 403, description = "forbidden: a viewer writing", body = ErrorBody)))]
async fn create_pool(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<DryRun>, axum::extract::rejection::QueryRejection>,
    bytes: axum::body::Bytes,
) -> Result<(StatusCode, Json<vipvisor_api::ConfigReport>), HttpError> {
    let Query(q) = q.map_err(|e| invalid(format!("invalid query: {e}")))?;
    let pool: Pool = pool_body(&bytes)?;
    let r = app.as_caller(&caller).put_pool(pool, false, q.dry_run).await?;
    Ok((if q.dry_run { StatusCode::OK } else { StatusCode::CREATED }, Json(r)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DryRun {
    /// Check and report only; nothing is written.
    #[serde(default)]
    dry_run: bool,
}

/// A pool body; a bad one is `invalid_value` on the field serde names, if it names one.
fn pool_body(bytes: &[u8]) -> Result<Pool, HttpError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let msg = e.to_string();
        // A value the model refused says what it was ("invalid pool name …"); a shape
        // error names the key (missing field `addresses`).
        let by_value = [
            ("pool name", "name"),
            ("address block", "addresses"),
            ("namespace", "namespaces"),
            ("label", "selectors"),
        ]
        .into_iter()
        .find(|(what, _)| msg.contains(&format!("invalid {what}")))
        .map(|(_, f)| f);
        let field = by_value.or_else(|| {
            [
                "addresses",
                "name",
                "namespaces",
                "namespace_selector",
                "service_selector",
                "priority",
                "auto_assign",
                "avoid_buggy_ips",
            ]
            .into_iter()
            .find(|f| msg.contains(&format!("`{f}`")))
        });
        let mut err = ApiError::new(ErrorCode::InvalidValue, format!("invalid pool body: {msg}"));
        if let Some(f) = field {
            err = err.on(f);
        }
        HttpError(err)
    })
}

#[utoipa::path(put, path = "/api/v1/pools/{name}", tag = "pools", params(("name" = String, Path), ("dry_run" = Option<bool>, Query, description = "check and report only")), request_body = PoolSchema, responses((status = 200, body = vipvisor_api::ConfigReport), (status = 409, description = "would_strand: allocations it no longer covers", body = ErrorBody), (status = 400, description = "invalid_value: a bad value, named", body = ErrorBody), (status = 401, description = "unauthenticated", body = ErrorBody), (status = 403, description = "forbidden: a viewer writing", body = ErrorBody)))]
async fn put_pool(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    q: Result<Query<DryRun>, axum::extract::rejection::QueryRejection>,
    bytes: axum::body::Bytes,
) -> Answer<vipvisor_api::ConfigReport> {
    let Query(q) = q.map_err(|e| invalid(format!("invalid query: {e}")))?;
    let name = pool_name(&name)?;
    let pool: Pool = pool_body(&bytes)?;
    if pool.name != name {
        return Err(HttpError(
            ApiError::new(
                ErrorCode::InvalidValue,
                format!(
                    "invalid name {:?}; expected the pool of the path, {:?} (a pool is not renamed)",
                    pool.name.as_str(),
                    name.as_str()
                ),
            )
            .on("name"),
        ));
    }
    Ok(Json(app.as_caller(&caller).put_pool(pool, true, q.dry_run).await?))
}

#[utoipa::path(get, path = "/api/v1/pools/{name}/detail", tag = "pools", params(("name" = String, Path)), responses((status = 200, body = vipvisor_api::views::PoolDetail), (status = 404, description = "unknown_pool", body = ErrorBody), (status = 400, description = "invalid_value: a bad value, named", body = ErrorBody), (status = 401, description = "unauthenticated", body = ErrorBody)))]
async fn pool_detail(State(app): State<App>, Path(name): Path<String>) -> Answer<vipvisor_api::views::PoolDetail> {
    Ok(Json(app.pool_detail(&pool_name(&name)?).await?))
}

#[utoipa::path(get, path = "/api/v1/owners", tag = "owners", responses((status = 200, description = "who announces each VIP now", body = Vec<vipvisor_api::OwnerSpan>), (status = 400, description = "invalid_value: a bad value, named", body = ErrorBody), (status = 401, description = "unauthenticated", body = ErrorBody)))]
async fn owners(State(app): State<App>) -> Answer<Vec<vipvisor_api::OwnerSpan>> {
    Ok(Json(app.owners().await?))
}

/// Ownership over time: the swimlanes.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct History {
    pub spans: Vec<vipvisor_api::OwnerSpan>,
    pub failovers: Vec<vipvisor_api::views::Failover>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryParams {
    address: Option<String>,
    /// Unix milliseconds.
    since_ms: Option<i64>,
    limit: Option<u32>,
}

fn address(a: &str) -> Result<IpAddr, HttpError> {
    a.parse::<IpAddr>().map_err(|_| invalid(format!("invalid address {a:?}; expected an IPv4 or IPv6 address")))
}

#[utoipa::path(get, path = "/api/v1/ownership", tag = "owners", params(("address" = Option<String>, Query), ("since_ms" = Option<i64>, Query, description = "stretches open at or ending after this time (Unix ms)"), ("limit" = Option<u32>, Query, description = "the newest N stretches, 1 to 10000, default 1000")), responses((status = 200, body = History), (status = 400, description = "invalid_value: a bad value, named", body = ErrorBody), (status = 401, description = "unauthenticated", body = ErrorBody)))]
async fn ownership(
    State(app): State<App>,
    q: Result<Query<HistoryParams>, axum::extract::rejection::QueryRejection>,
) -> Answer<History> {
    let Query(q) = q.map_err(|e| invalid(format!("invalid query: {e}")))?;
    let addr = q.address.as_deref().map(address).transpose()?;
    let limit = q.limit.unwrap_or(1000);
    if limit == 0 || limit > 10_000 {
        return Err(invalid(format!("invalid limit {limit}; expected 1 to 10000")));
    }
    let (spans, failovers) = app.ownership_history(addr, q.since_ms, limit).await?;
    Ok(Json(History { spans, failovers }))
}

#[utoipa::path(get, path = "/api/v1/vips/{address}", tag = "owners", params(("address" = String, Path)), responses((status = 200, body = vipvisor_api::views::VipView), (status = 400, description = "invalid_value: a bad value, named", body = ErrorBody), (status = 401, description = "unauthenticated", body = ErrorBody)))]
async fn vip(State(app): State<App>, Path(a): Path<String>) -> Answer<vipvisor_api::views::VipView> {
    Ok(Json(app.vip(address(&a)?).await?))
}

#[utoipa::path(get, path = "/api/v1/pending", tag = "allocations", responses((status = 200, description = "the Services without an address and why, per pool (the controller knows them; `serve` alone lists none)", body = Vec<vipvisor_api::views::Pending>), (status = 400, description = "invalid_value: a bad value, named", body = ErrorBody), (status = 401, description = "unauthenticated", body = ErrorBody)))]
async fn pending(State(ctx): State<Ctx>) -> Answer<Vec<vipvisor_api::views::Pending>> {
    let Some(source) = &ctx.sources.pending else { return Ok(Json(vec![])) };
    let mut out = Vec::new();
    for (req, warnings) in source() {
        if ctx.app.allocation(&req.service).await?.is_some() {
            continue;
        }
        let mut p = ctx.app.explain(&req).await?;
        p.warnings = warnings;
        out.push(p);
    }
    Ok(Json(out))
}

#[utoipa::path(post, path = "/api/v1/explain", tag = "allocations", request_body = AllocBody, responses((status = 200, description = "why this request would get no address, per pool (a dry run: nothing is written)", body = vipvisor_api::views::Pending), (status = 400, description = "invalid_value: a bad value, named", body = ErrorBody), (status = 401, description = "unauthenticated", body = ErrorBody), (status = 403, description = "forbidden: a viewer writing", body = ErrorBody)))]
async fn explain(State(app): State<App>, bytes: axum::body::Bytes) -> Answer<vipvisor_api::views::Pending> {
    let req = alloc_request(&bytes)?;
    Ok(Json(app.explain(&req).await?))
}

#[utoipa::path(get, path = "/api/v1/grants", tag = "hypervisor", responses((status = 200, description = "the hypervisor grants vipvisor holds, per VM NIC", body = Vec<vipvisor_api::views::GrantView>), (status = 400, description = "invalid_value: a bad value, named", body = ErrorBody), (status = 401, description = "unauthenticated", body = ErrorBody)))]
async fn grants(State(app): State<App>) -> Answer<Vec<vipvisor_api::views::GrantView>> {
    Ok(Json(app.grants().await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteParams {
    #[serde(default)]
    force: bool,
}

#[utoipa::path(delete, path = "/api/v1/pools/{name}", tag = "pools", params(("name" = String, Path), ("force" = Option<bool>, Query, description = "release the pool's allocations")), responses((status = 200, body = vipvisor_api::ConfigReport), (status = 404, body = ErrorBody), (status = 409, description = "would_strand", body = ErrorBody), (status = 400, description = "invalid_value: a bad value, named", body = ErrorBody), (status = 401, description = "unauthenticated", body = ErrorBody), (status = 403, description = "forbidden: a viewer writing", body = ErrorBody)))]
async fn delete_pool(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    q: Result<Query<DeleteParams>, axum::extract::rejection::QueryRejection>,
) -> Answer<vipvisor_api::ConfigReport> {
    let Query(q) = q.map_err(|e| invalid(format!("invalid query: {e}")))?;
    Ok(Json(app.as_caller(&caller).delete_pool(&pool_name(&name)?, q.force).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    pool: Option<String>,
    namespace: Option<String>,
    address: Option<String>,
    offset: Option<usize>,
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/api/v1/allocations", tag = "allocations", params(("pool" = Option<String>, Query), ("namespace" = Option<String>, Query), ("address" = Option<String>, Query), ("offset" = Option<usize>, Query), ("limit" = Option<usize>, Query, description = "1 to 10000, default 100")), responses((status = 200, body = vipvisor_api::allocations::Page<vipvisor_model::Allocation>), (status = 400, description = "invalid_value: a bad value, named", body = ErrorBody), (status = 401, description = "unauthenticated", body = ErrorBody)))]
async fn list_allocations(
    State(app): State<App>,
    q: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Answer<vipvisor_api::allocations::Page<vipvisor_model::Allocation>> {
    let Query(q) = q.map_err(|e| invalid(format!("invalid query: {e}")))?;
    let address = match q.address.as_deref() {
        Some(a) => Some(
            a.parse::<IpAddr>()
                .map_err(|_| invalid(format!("invalid address {a:?}; expected an IPv4 or IPv6 address")))?,
        ),
        None => None,
    };
    let query = AllocationQuery {
        pool: q.pool,
        namespace: q.namespace,
        address,
        offset: q.offset.unwrap_or(0),
        limit: q.limit.unwrap_or(100).min(MAX_PAGE + 1),
    };
    Ok(Json(app.allocations_page(&query).await?))
}

/// `POST /api/v1/allocations`: what `vipvisor alloc request` asks.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AllocBody {
    /// `namespace/name`.
    service: String,
    #[serde(default)]
    pool: Option<String>,
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    addresses: Vec<IpAddr>,
    /// `ipv4`, `ipv6`, `dual` or `prefer-dual` (default: the addresses' families, else IPv4).
    #[serde(default)]
    family: Option<vipvisor_model::FamilyRequest>,
}

#[utoipa::path(post, path = "/api/v1/allocations", tag = "allocations", request_body = AllocBody, responses((status = 200, body = vipvisor_api::allocations::Allocated), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, description = "pool_exhausted, no_eligible_pool, …", body = ErrorBody), (status = 400, description = "invalid_value: a bad value, named", body = ErrorBody), (status = 401, description = "unauthenticated", body = ErrorBody), (status = 403, description = "forbidden: a viewer writing", body = ErrorBody)))]
async fn allocate(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    bytes: axum::body::Bytes,
) -> Answer<vipvisor_api::allocations::Allocated> {
    let req = alloc_request(&bytes)?;
    Ok(Json(app.as_caller(&caller).allocate(&req).await?))
}

fn alloc_request(bytes: &[u8]) -> Result<AllocRequest, HttpError> {
    let b: AllocBody = body(bytes, "allocation")?;
    let service = service_key(&b.service)?;
    let mut req = AllocRequest::new(service);
    req.addresses = b.addresses;
    req.pool = b.pool.as_deref().map(pool_name).transpose()?;
    req.family = b.family;
    Ok(req)
}

fn service_key(s: &str) -> Result<ServiceKey, HttpError> {
    let (ns, name) =
        s.split_once('/').ok_or_else(|| invalid(format!("invalid service {s:?}; expected namespace/name")))?;
    ServiceKey::new(ns, name).map_err(|e| HttpError(ApiError::from(e)))
}

#[utoipa::path(delete, path = "/api/v1/allocations/{namespace}/{name}", tag = "allocations", params(("namespace" = String, Path), ("name" = String, Path)), responses((status = 200, body = vipvisor_api::allocations::ReleaseResult), (status = 400, description = "invalid_value: a bad value, named", body = ErrorBody), (status = 401, description = "unauthenticated", body = ErrorBody), (status = 403, description = "forbidden: a viewer writing", body = ErrorBody)))]
async fn release(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path((namespace, name)): Path<(String, String)>,
) -> Answer<vipvisor_api::allocations::ReleaseResult> {
    let key = ServiceKey::new(&namespace, &name).map_err(|e| HttpError(ApiError::from(e)))?;
    Ok(Json(app.as_caller(&caller).release(&key, None).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventParams {
    /// RFC 3339.
    since: Option<String>,
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/events", tag = "events", params(("since" = Option<String>, Query, description = "RFC 3339"), ("limit" = Option<u32>, Query)), responses((status = 200, body = Vec<vipvisor_api::Event>), (status = 400, description = "invalid_value: a bad value, named", body = ErrorBody), (status = 401, description = "unauthenticated", body = ErrorBody)))]
async fn events(
    State(app): State<App>,
    q: Result<Query<EventParams>, axum::extract::rejection::QueryRejection>,
) -> Answer<Vec<vipvisor_api::Event>> {
    let Query(q) = q.map_err(|e| invalid(format!("invalid query: {e}")))?;
    let since = match q.since.as_deref() {
        Some(s) => Some(
            humantime::parse_rfc3339_weak(s)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| Timestamp(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
                .ok_or_else(|| invalid(format!("invalid since {s:?}; expected an RFC 3339 time")))?,
        ),
        None => None,
    };
    Ok(Json(app.events(EventQuery { since, limit: q.limit }).await?))
}

/// How often the change feed looks at the store (another process may have written it).
const FEED_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// `GET /api/v1/events/stream`: server-sent events, one per audit event (`event:` its
/// kind, `id:` its id, `data:` the event as JSON), from after `Last-Event-ID` (a client
/// that reconnects misses nothing) or from now. Changes by any process on the same store
/// are seen: the store is asked every 100 ms.
#[utoipa::path(get, path = "/api/v1/events/stream", tag = "events", params(("Last-Event-ID" = Option<i64>, Header, description = "resume after this event")), responses((status = 200, description = "server-sent events: event = the kind, id = the event id, data = the event (JSON)", content_type = "text/event-stream", body = String), (status = 400, description = "invalid_value: a bad value, named", body = ErrorBody), (status = 401, description = "unauthenticated", body = ErrorBody)))]
async fn stream(
    State(ctx): State<Ctx>,
    headers: axum::http::HeaderMap,
) -> Result<
    axum::response::sse::Sse<impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>>,
    HttpError,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let app = ctx.app.clone();
    let guard = metrics::StreamGuard::new(&ctx.sources.metrics);
    let after = match headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        Some(v) => v
            .trim()
            .parse::<i64>()
            .map_err(|_| invalid(format!("invalid Last-Event-ID {v:?}; expected an event id")))?,
        None => app.last_event_id().await?,
    };
    // First a `ready` event carrying the position, so that a client that reconnects
    // before any change arrived still resumes from here (Last-Event-ID) and misses nothing.
    let ready = Event::default().id(after.to_string()).event("ready").data("{}");
    let ready = futures::stream::once(async move { Ok::<_, std::convert::Infallible>(ready) });
    let feed = futures::stream::unfold(
        (app, after, Vec::<vipvisor_api::Event>::new(), guard),
        |(app, mut after, mut queued, guard)| async move {
            loop {
                if !queued.is_empty() {
                    let e = queued.remove(0);
                    after = e.id;
                    let data = serde_json::to_string(&e).unwrap_or_default();
                    let ev = Event::default().id(e.id.to_string()).event(e.kind.clone()).data(data);
                    return Some((Ok(ev), (app, after, queued, guard)));
                }
                match app.events_after(after, 500).await {
                    Ok(new) if !new.is_empty() => queued = new,
                    Ok(_) => tokio::time::sleep(FEED_EVERY).await,
                    Err(e) => {
                        warn!(error = %e.message, "the change feed cannot read the store");
                        tokio::time::sleep(FEED_EVERY * 10).await;
                    }
                }
            }
        },
    );
    use futures::StreamExt as _;
    Ok(Sse::new(ready.chain(feed)).keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15))))
}

/// TLS from certificate files (PEM): the chain and its private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// The largest certificate or key file read.
const MAX_PEM: u64 = 1 << 20;

/// A rustls server configuration from `t`. Errors name the file, never its contents.
pub fn tls_config(t: &TlsFiles) -> Result<std::sync::Arc<rustls::ServerConfig>, ApiError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |m: String| ApiError::new(ErrorCode::InvalidValue, m);
    let cert_pem = vipvisor_api::files::read_bounded(&t.cert, MAX_PEM, "--tls-cert")?;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&cert_pem).collect::<Result<_, _>>().map_err(|_| {
            bad(format!("--tls-cert {}: not PEM certificates; expected a CERTIFICATE chain", t.cert.display()))
        })?;
    if certs.is_empty() {
        return Err(bad(format!(
            "--tls-cert {}: no certificate in it; expected a PEM CERTIFICATE chain",
            t.cert.display()
        )));
    }
    let key_pem = vipvisor_api::files::read_bounded(&t.key, MAX_PEM, "--tls-key")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
        bad(format!(
            "--tls-key {}: no private key in it; expected a PEM (PKCS#8, RSA or EC) private key",
            t.key.display()
        ))
    })?;
    let mut cfg =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                bad(format!(
                    "--tls-cert {} and --tls-key {} do not make a server certificate: {e}",
                    t.cert.display(),
                    t.key.display()
                ))
            })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(std::sync::Arc::new(cfg))
}

/// TCP with TLS: handshakes run concurrently (bounded to 10 s each), so a slow client
/// holds up nobody; a failed one is logged and dropped.
struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, SocketAddr)>,
    local: SocketAddr,
    _acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    fn new(tcp: tokio::net::TcpListener, cfg: std::sync::Arc<rustls::ServerConfig>) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
        let task = tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, local, _acceptor: task })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The acceptor never stops while the listener lives.
            None => std::future::pending().await,
        }
    }
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Binds `addr` and serves until `shutdown`, with TLS when `tls` is given.
pub async fn serve(
    addr: SocketAddr,
    app: App,
    extra: Router,
    tls: Option<TlsFiles>,
    sources: Sources,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    let tls = tls.as_ref().map(tls_config).transpose()?;
    let logins = std::sync::Arc::new(Logins::default());
    let ctx = Ctx { app, logins: logins.clone(), sources };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ApiError::new(ErrorCode::InvalidValue, format!("cannot listen on {addr}: {e}")))?;
    let local = listener.local_addr().map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    info!(%local, "serving the API on {scheme}://{local}/api/v1");
    if tls.is_none() && !local.ip().is_loopback() {
        warn!(%local, "listening beyond loopback without TLS (--tls-cert, --tls-key): tokens travel in clear text");
    }
    // The login URL goes to stdout, for the person who started the server, not to the log.
    // With an external authenticator there is none: the identity provider decides.
    if ctx.sources.auth.is_none() && ctx.sources.print_login {
        println!(
            "log in at {scheme}://{local}/login?code={} (valid {} minutes, once)",
            logins.new_code(),
            LOGIN_CODE_FOR.as_secs() / 60
        );
    }
    let routes = router(ctx).merge(extra);
    let stopped = |e: std::io::Error| ApiError::new(ErrorCode::Internal, format!("the HTTP server stopped: {e}"));
    match tls {
        Some(cfg) => {
            let l = TlsListener::new(listener, cfg).map_err(stopped)?;
            axum::serve(l, routes).with_graceful_shutdown(shutdown).await.map_err(stopped)
        }
        None => axum::serve(listener, routes).with_graceful_shutdown(shutdown).await.map_err(stopped),
    }
}

#[cfg(test)]
mod tests {
    /// docs/openapi.json is what the code generates (`VIPVISOR_UPDATE_OPENAPI=1 cargo test
    /// -p vipvisor-server` rewrites it).
    #[test]
    fn the_committed_openapi_document_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        let now = super::openapi_json();
        if std::env::var_os("VIPVISOR_UPDATE_OPENAPI").is_some() {
            std::fs::write(path, &now).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == now,
            "docs/openapi.json is stale: run VIPVISOR_UPDATE_OPENAPI=1 cargo test -p vipvisor-server"
        );
        let v: serde_json::Value = serde_json::from_str(&now).unwrap();
        assert_eq!(v["openapi"].as_str().map(|s| s.starts_with("3.")), Some(true));
        // Every key a pool view serialises is in the documented schema, and no more.
        let pool = vipvisor_model::Pool::new(
            "web".parse().unwrap(),
            vec!["192.0.2.0/28".parse().unwrap()],
            Default::default(),
        )
        .unwrap();
        let view = serde_json::to_value(vipvisor_api::pools::PoolView { pool, families: vec![] }).unwrap();
        let mut keys: Vec<&String> = view.as_object().unwrap().keys().collect();
        keys.sort();
        let props = &v["components"]["schemas"]["PoolView"]["properties"];
        let mut documented: Vec<&String> = props.as_object().unwrap().keys().collect();
        documented.sort();
        assert_eq!(keys, documented, "PoolViewSchema and PoolView agree");
        let pool_props = v["components"]["schemas"]["Pool"]["properties"].as_object().unwrap();
        assert!(
            keys.iter().all(|k| *k == "families" || pool_props.contains_key(*k)),
            "PoolSchema has every key of a pool"
        );
        for p in ["/api/v1/pools", "/api/v1/allocations", "/api/v1/events", "/api/v1/events/stream", "/api/v1/login"] {
            assert!(v["paths"][p].is_object(), "{p} is documented");
        }
    }
}
