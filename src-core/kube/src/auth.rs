//! `controller --serve-auth kubernetes`: the served API authenticates callers with their
//! own Kubernetes token (TokenReview) and authorises them with SubjectAccessReview on the
//! virtual resource `api.vipvisor.io`: `update` makes an admin, `get` a viewer. Answers
//! are cached for a few seconds per token (by its hash), so the change stream and a page's
//! calls do not ask the apiserver each time. The token is never logged or returned.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::{Api, PostParams};
use vipvisor_api::tokens::{hash, Caller, Role};
use vipvisor_api::{ApiError, ErrorCode};

/// How long an answer is reused.
pub const CACHE_FOR: Duration = Duration::from_secs(10);
/// At most this many tokens are remembered (oldest answers go first).
const CACHE_MAX: usize = 1024;
/// The API group and resource of the virtual resource the roles are checked on.
pub const GROUP: &str = "vipvisor.io";
pub const RESOURCE: &str = "api";

type Answer = Result<Option<Caller>, ApiError>;

pub struct KubeAuth {
    client: kube::Client,
    cache: Mutex<HashMap<String, (Answer, Instant)>>,
}

impl std::fmt::Debug for KubeAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeAuth").finish_non_exhaustive()
    }
}

impl KubeAuth {
    pub fn new(client: kube::Client) -> KubeAuth {
        KubeAuth { client, cache: Mutex::default() }
    }

    async fn allowed(&self, spec: &SubjectAccessReviewSpec, verb: &str) -> Result<bool, ApiError> {
        let mut spec = spec.clone();
        spec.resource_attributes = Some(ResourceAttributes {
            group: Some(GROUP.into()),
            resource: Some(RESOURCE.into()),
            verb: Some(verb.into()),
            ..ResourceAttributes::default()
        });
        let sar = SubjectAccessReview { spec, ..SubjectAccessReview::default() };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let r = api.create(&PostParams::default(), &sar).await.map_err(|e| unavailable("SubjectAccessReview", &e))?;
        Ok(r.status.is_some_and(|s| s.allowed))
    }

    async fn ask(&self, token: &str) -> Answer {
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_owned()), ..TokenReviewSpec::default() },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let r = api.create(&PostParams::default(), &review).await.map_err(|e| unavailable("TokenReview", &e))?;
        let Some(status) = r.status.filter(|s| s.authenticated == Some(true)) else { return Ok(None) };
        let Some(user) = status.user else { return Ok(None) };
        let name = user.username.clone().unwrap_or_default();
        let spec = SubjectAccessReviewSpec {
            user: user.username,
            groups: user.groups,
            uid: user.uid,
            extra: user.extra,
            ..SubjectAccessReviewSpec::default()
        };
        let role = if self.allowed(&spec, "update").await? {
            Role::Admin
        } else if self.allowed(&spec, "get").await? {
            Role::Viewer
        } else {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "Kubernetes user {name:?} may not use the vipvisor API; expected `get` (read) or `update` (write) on {RESOURCE}.{GROUP}, as the ClusterRoles vipvisor-viewer and vipvisor-admin grant"
                ),
            ));
        };
        Ok(Some(Caller { name: format!("k8s:{name}"), role }))
    }
}

fn unavailable(what: &str, e: &kube::Error) -> ApiError {
    ApiError::new(
        ErrorCode::AuthUnavailable,
        format!("the Kubernetes {what} did not answer: {}; retrying later may work", crate::Safe(e)),
    )
}

impl vipvisor_server::ExternalAuth for KubeAuth {
    fn authenticate<'a>(&'a self, token: &'a str) -> futures::future::BoxFuture<'a, Answer> {
        Box::pin(async move {
            let key = hash(token);
            let now = Instant::now();
            {
                let cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some((answer, at)) = cache.get(&key) {
                    if now.duration_since(*at) < CACHE_FOR {
                        return answer.clone();
                    }
                }
            }
            let answer = self.ask(token).await;
            // An apiserver that did not answer is asked again next time.
            if !matches!(&answer, Err(e) if e.code == ErrorCode::AuthUnavailable) {
                let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                cache.retain(|_, (_, at)| now.duration_since(*at) < CACHE_FOR);
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
                cache.insert(key, (answer.clone(), now));
            }
            answer
        })
    }
}
