//! `/api/v1/hypervisor…` (when the host process was given a provider file): who each node
//! is on the hypervisor, what its NICs would drop for the VIPs being announced and why
//! (the providers' own diagnosis), and the fix as a dry-run diff, an apply and an undo —
//! the same calls as `vipvisor hypervisor diagnose|apply|revert`, recorded in the store
//! under the caller's name.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use vipvisor_api::tokens::Caller;
use vipvisor_api::{ApiError, App, ErrorCode};
use vipvisor_hypervisor::{blocks, Hypervisors, NicResult, NodeNic, ProviderInventory};
use vipvisor_provider::{Finding, Mac, Need};

use crate::{body, Answer, Ctx, ErrorBody, HttpError};

/// One node: its NICs on the hypervisor, what blocks the VIPs there, and the verdict.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NodeDiagnosis {
    pub node: String,
    /// The VIPs every candidate must be able to announce (those announced now).
    #[schema(value_type = Vec<String>)]
    pub vips: Vec<IpAddr>,
    #[schema(value_type = Vec<Object>)]
    pub nics: Vec<NodeNic>,
    /// The providers' findings: what is dropped, by which setting (and its current value),
    /// and the fix.
    #[schema(value_type = Vec<Object>)]
    pub findings: Vec<Finding>,
    /// `let through`, `dropped: …`, or why the node could not be looked at.
    pub verdict: String,
    pub blocked: bool,
}

/// The hypervisor side of the cluster.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HypervisorView {
    pub providers: Vec<String>,
    #[schema(value_type = Vec<Object>)]
    pub inventory: Vec<ProviderInventory>,
    pub nodes: Vec<NodeDiagnosis>,
}

/// `POST /api/v1/hypervisor/apply`: grant `vips` (default: those announced now) on the
/// NICs of `nodes` (default: every node looked at).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyBody {
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub vips: Vec<IpAddr>,
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Say what would change; change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What an apply would add to one NIC.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlannedGrant {
    pub node: String,
    pub provider: String,
    pub vm: String,
    pub mac: String,
    /// VIPs the NIC would be granted that it is not yet.
    #[schema(value_type = Vec<String>)]
    pub add: Vec<IpAddr>,
}

/// The answer of an apply: the plan (a dry run) or what each NIC did, for exactly these
/// VIPs and nodes (send them back to apply what was previewed).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApplyAnswer {
    pub dry_run: bool,
    #[schema(value_type = Vec<String>)]
    pub vips: Vec<IpAddr>,
    pub nodes: Vec<String>,
    /// Nodes left out because the hypervisor has no VM for them (only when `nodes` was
    /// not given), with the reason.
    pub skipped: Vec<(String, String)>,
    pub plan: Vec<PlannedGrant>,
    #[schema(value_type = Vec<Object>)]
    pub results: Vec<NicResult>,
}

/// `POST /api/v1/hypervisor/revert`: take back vipvisor's additions for `vip` (or all) on
/// `node` (or every node).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevertBody {
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub vip: Option<IpAddr>,
    #[serde(default)]
    pub node: Option<String>,
}

fn hv(ctx: &Ctx) -> Result<Arc<Hypervisors>, HttpError> {
    ctx.sources.hypervisor.clone().ok_or_else(|| {
        HttpError(ApiError::new(
            ErrorCode::NotFound,
            "no provider file: expected `vipvisor serve --providers FILE` (or the controller's --providers)",
        ))
    })
}

fn failed(e: impl std::fmt::Display) -> HttpError {
    HttpError(ApiError::new(ErrorCode::Internal, format!("the hypervisor call failed: {e}")))
}

/// The nodes to look at (owners now, and the file's mapped nodes), their MACs as the
/// speakers reported them, and the VIPs announced now.
async fn scope(
    app: &App,
    h: &Hypervisors,
) -> Result<(Vec<String>, BTreeMap<String, Vec<Mac>>, Vec<IpAddr>), HttpError> {
    let owners = app.owners().await?;
    let mut nodes: BTreeSet<String> = h.mapped_nodes().into_iter().collect();
    let mut macs: BTreeMap<String, Vec<Mac>> = BTreeMap::new();
    let mut vips = BTreeSet::new();
    for o in &owners {
        nodes.insert(o.node.clone());
        vips.insert(o.address);
        let list = macs.entry(o.node.clone()).or_default();
        for m in o.mac.split(',').filter_map(|m| m.trim().parse::<Mac>().ok()) {
            if !list.contains(&m) {
                list.push(m);
            }
        }
    }
    Ok((nodes.into_iter().collect(), macs, vips.into_iter().collect()))
}

#[utoipa::path(get, path = "/api/v1/hypervisor", tag = "hypervisor", responses((status = 200, body = HypervisorView), (status = 404, description = "not_found: no provider file", body = ErrorBody), (status = 400, description = "invalid_value: a bad value, named", body = ErrorBody), (status = 401, description = "unauthenticated", body = ErrorBody)))]
pub(crate) async fn view(State(ctx): State<Ctx>) -> Answer<HypervisorView> {
    let h = hv(&ctx)?;
    let (nodes, macs, vips) = scope(&ctx.app, &h).await?;
    let inventory = h.inventory().await.map_err(failed)?;
    let need = Need::Announce { ips: vips.clone() };
    let mut out = Vec::new();
    for node in nodes {
        let mine = macs.get(&node).cloned().unwrap_or_default();
        let (nics, findings, verdict) = match h.nics(&node, &mine, &inventory) {
            Err(e) => (vec![], vec![], format!("not found on the hypervisor: {e}")),
            Ok(nics) if vips.is_empty() => (nics, vec![], "no VIP is announced".into()),
            Ok(nics) => match h.diagnose(std::slice::from_ref(&node), &macs, &need).await {
                Err(e) => (nics, vec![], format!("could not diagnose: {e}")),
                Ok(f) if blocks(&f) => {
                    let what: Vec<&str> = f.iter().map(|x| x.what.as_str()).collect();
                    (nics, f.clone(), format!("dropped: {}", what.join("; ")))
                }
                Ok(f) => (nics, f, "let through".into()),
            },
        };
        let blocked = verdict != "let through" && verdict != "no VIP is announced";
        out.push(NodeDiagnosis { node, vips: vips.clone(), nics, findings, verdict, blocked });
    }
    Ok(Json(HypervisorView { providers: h.provider_names(), inventory, nodes: out }))
}

#[utoipa::path(post, path = "/api/v1/hypervisor/apply", tag = "hypervisor", request_body = ApplyBody, responses((status = 200, body = ApplyAnswer), (status = 404, description = "not_found: no provider file", body = ErrorBody), (status = 400, description = "invalid_value: a bad value, named", body = ErrorBody), (status = 401, description = "unauthenticated", body = ErrorBody), (status = 403, description = "forbidden: a viewer writing", body = ErrorBody)))]
pub(crate) async fn apply(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    bytes: axum::body::Bytes,
) -> Answer<ApplyAnswer> {
    let b: ApplyBody = if bytes.is_empty() { ApplyBody::default() } else { body(&bytes, "apply")? };
    let h = hv(&ctx)?;
    let (all_nodes, macs, all_vips) = scope(&ctx.app, &h).await?;
    let vips = if b.vips.is_empty() { all_vips } else { b.vips };
    if vips.is_empty() {
        return Err(HttpError(
            ApiError::new(ErrorCode::InvalidValue, "no VIP to grant: none is announced; expected `vips`").on("vips"),
        ));
    }
    let inventory = h.inventory().await.map_err(failed)?;
    // Nodes the caller did not name are left out when the hypervisor has no VM for them (a
    // bare-metal owner); a named one that is not found is an error.
    let mut skipped = Vec::new();
    let nodes = if b.nodes.is_empty() {
        let mut found = Vec::new();
        for n in all_nodes {
            match h.nics(&n, macs.get(&n).map_or(&[][..], Vec::as_slice), &inventory) {
                Ok(_) => found.push(n),
                Err(e) => skipped.push((n, e.to_string())),
            }
        }
        found
    } else {
        b.nodes
    };
    if b.dry_run {
        let grants = ctx.app.store().grants().await.map_err(|e| HttpError(e.into()))?;
        let mut plan = Vec::new();
        for node in &nodes {
            let mine = macs.get(node).cloned().unwrap_or_default();
            let nics = h.nics(node, &mine, &inventory).map_err(|e| {
                HttpError(ApiError::new(ErrorCode::InvalidValue, format!("node {node:?}: {e}")).on("nodes"))
            })?;
            for n in nics {
                let mac = n.nic.mac.to_string();
                let have: BTreeSet<IpAddr> = grants
                    .iter()
                    .filter(|g| g.provider == n.provider && g.vm == n.nic.vm && g.mac == mac)
                    .flat_map(|g| g.vips.iter().copied())
                    .collect();
                let add: Vec<IpAddr> = vips.iter().filter(|v| !have.contains(v)).copied().collect();
                plan.push(PlannedGrant { node: node.clone(), provider: n.provider, vm: n.nic.vm, mac, add });
            }
        }
        return Ok(Json(ApplyAnswer { dry_run: true, vips, nodes, skipped, plan, results: vec![] }));
    }
    let app = ctx.app.as_caller(&caller);
    // (Virtual MACs are granted by the controller, which knows each VIP's MAC; this page
    // grants the VIPs themselves.)
    let results = h.apply(app.store(), &vips, &nodes, &macs, &Default::default()).await.map_err(failed)?;
    Ok(Json(ApplyAnswer { dry_run: false, vips, nodes, skipped, plan: vec![], results }))
}

#[utoipa::path(post, path = "/api/v1/hypervisor/revert", tag = "hypervisor", request_body = RevertBody, responses((status = 200, description = "what each NIC gave back", body = Vec<Object>), (status = 404, description = "not_found: no provider file", body = ErrorBody), (status = 400, description = "invalid_value: a bad value, named", body = ErrorBody), (status = 401, description = "unauthenticated", body = ErrorBody), (status = 403, description = "forbidden: a viewer writing", body = ErrorBody)))]
pub(crate) async fn revert(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    bytes: axum::body::Bytes,
) -> Answer<Vec<NicResult>> {
    let b: RevertBody = if bytes.is_empty() { RevertBody::default() } else { body(&bytes, "revert")? };
    let h = hv(&ctx)?;
    let app = ctx.app.as_caller(&caller);
    Ok(Json(h.revert(app.store(), b.vip, b.node.as_deref()).await.map_err(failed)?))
}
