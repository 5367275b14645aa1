//! The controller's fast tier: `reconcile` against a scripted API conversation (a
//! tower-test mock in place of the apiserver, as kube-rs's controller-rs does) and a real
//! store in a temporary directory. No apiserver needed; the real-apiserver tier is
//! tests/suites/controller.rs.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::reflector;
use kube::Client;
use vipvisor_api::App;
use vipvisor_kube::controller::{backoff, error_policy, reconcile, Ctx, Metrics, Phase, ReconcileError};
use vipvisor_kube::decide::ClassPolicy;
use vipvisor_model::Pool;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

async fn ctx(pool_blocks: &[&str]) -> (Arc<Ctx>, Handle, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let app =
        App::open(&format!("sqlite://{}/s.db", dir.path().display()), "test", Duration::from_secs(60)).await.unwrap();
    let pool =
        Pool::new("web".parse().unwrap(), pool_blocks.iter().map(|b| b.parse().unwrap()).collect(), Default::default())
            .unwrap();
    app.create_pool(pool).await.unwrap();
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (ns_reader, _ns_writer) = reflector::store::<Namespace>();
    let ctx = Ctx::new(client, app, ns_reader, ClassPolicy::default(), "test-1", Metrics::new());
    (Arc::new(ctx), handle, dir)
}

fn lb(name: &str) -> Arc<Service> {
    Arc::new(
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "default", "name": name, "uid": "0b4a-11", "resourceVersion": "7"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}
        }))
        .unwrap(),
    )
}

/// Answers the next request, which must be `method` on a path containing `path`; returns
/// the request body as JSON.
async fn expect(handle: &mut Handle, method: &str, path: &str, reply: serde_json::Value) -> serde_json::Value {
    let (req, send) = tokio::time::timeout(Duration::from_secs(1), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("expected {method} {path}, but no request came"))
        .expect("the client is gone");
    assert_eq!(req.method().as_str(), method, "request to {}", req.uri());
    assert!(req.uri().path().contains(path), "expected a path with {path}, got {}", req.uri());
    let body = req.into_body().collect_bytes().await.unwrap();
    send.send_response(Response::builder().status(200).body(Body::from(serde_json::to_vec(&reply).unwrap())).unwrap());
    if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body).unwrap()
    }
}

async fn no_request(handle: &mut Handle) {
    if let Ok(Some((req, _))) = tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await {
        panic!("no API call was expected, got {} {}", req.method(), req.uri());
    }
}

fn event_reply() -> serde_json::Value {
    serde_json::json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "e", "namespace": "default"}, "eventTime": "2026-12-01T00:00:00.000000Z"})
}

#[tokio::test]
async fn a_new_service_gets_its_status_and_one_event() {
    let (ctx, mut api, _dir) = ctx(&["192.0.2.0/30"]).await;
    ctx.set_phase(Phase::Leading);
    let svc = lb("web");
    let run = tokio::spawn(reconcile(svc.clone(), ctx.clone()));
    let patch = expect(
        &mut api,
        "PATCH",
        "/api/v1/namespaces/default/services/web/status",
        serde_json::to_value(&*svc).unwrap(),
    )
    .await;
    assert_eq!(
        patch,
        serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.0", "ipMode": "VIP"}]}}}),
        "the status carries the first address of the pool"
    );
    let ev = expect(&mut api, "POST", "/apis/events.k8s.io/v1/namespaces/default/events", event_reply()).await;
    assert_eq!(ev["reason"], "IPAllocated");
    assert!(ev["note"].as_str().unwrap().contains("192.0.2.0"), "{ev}");
    assert!(matches!(run.await.unwrap(), Ok(a) if a == Action::await_change()));
    no_request(&mut api).await;
}

#[tokio::test]
async fn a_standby_makes_no_call_and_writes_nothing() {
    let (ctx, mut api, _dir) = ctx(&["192.0.2.0/30"]).await;
    ctx.set_phase(Phase::Standby);
    let r = tokio::spawn(reconcile(lb("web"), ctx.clone()));
    no_request(&mut api).await;
    assert!(r.await.unwrap().is_ok());
    assert!(ctx.app.allocations().await.unwrap().is_empty(), "a standby allocates nothing");
}

#[tokio::test]
async fn exhaustion_is_one_event_not_a_retry_loop() {
    let (ctx, mut api, _dir) = ctx(&["192.0.2.0/32"]).await;
    ctx.set_phase(Phase::Leading);
    ctx.app.allocate(&vipvisor_model::AllocRequest::new("other/x".parse().unwrap())).await.unwrap();
    let svc = lb("web");
    let run = tokio::spawn(reconcile(svc.clone(), ctx.clone()));
    let ev = expect(&mut api, "POST", "/events", event_reply()).await;
    assert_eq!(ev["reason"], "AllocationFailed");
    assert!(ev["note"].as_str().unwrap().contains("pool exhausted"), "{ev}");
    assert!(run.await.unwrap().is_ok(), "a refusal is the Service's problem: no error, no retry");
    let again = tokio::spawn(reconcile(svc, ctx.clone()));
    no_request(&mut api).await;
    assert!(again.await.unwrap().is_ok(), "the same failure is not reported twice");
}

#[tokio::test]
async fn api_errors_are_retried_with_growing_backoff() {
    let (ctx, mut api, _dir) = ctx(&["192.0.2.0/30"]).await;
    ctx.set_phase(Phase::Leading);
    let svc = lb("web");
    let run = tokio::spawn(reconcile(svc.clone(), ctx.clone()));
    let (_, send) = api.next_request().await.unwrap();
    send.send_response(
        Response::builder()
            .status(500)
            .body(Body::from(br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"etcd down","reason":"InternalError","code":500}"#.to_vec()))
            .unwrap(),
    );
    let err = run.await.unwrap().unwrap_err();
    assert!(matches!(err, ReconcileError::Kube(_)), "{err}");
    let first = error_policy(svc.clone(), &err, ctx.clone());
    let second = error_policy(svc.clone(), &err, ctx.clone());
    assert_eq!(first, Action::requeue(backoff(1)));
    assert_eq!(second, Action::requeue(backoff(2)), "the second failure waits longer");
    assert!(backoff(2) > backoff(1));
}
