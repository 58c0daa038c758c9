//! The receiver on the Lambda runtime, behind API Gateway (HTTP API v2 or REST v1).
//!
//! `lambda_http` decodes base64 bodies with an `expect`, so a body marked base64 that does not
//! decode would crash the invocation. We look at the raw event first and answer such a request
//! with a clear 400; everything else goes through `lambda_http`'s own adapter unchanged, so the
//! signature is checked over `req.body().as_ref()`: the exact bytes, text or binary.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine as _;
use lambda_http::aws_lambda_events::apigw::ApiGatewayProxyResponse;
use lambda_http::lambda_runtime::{self, LambdaEvent};
use lambda_http::request::{LambdaRequest, RequestContext};
use lambda_http::{service_fn, Adapter, Body, Request, RequestExt, Response, Service};
use serde::Serialize;

use super::{Inbound, Outcome, Receiver};
use crate::clock::Clock;
use crate::queue::EventQueue;

/// What the function returns to API Gateway.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Reply {
    /// `lambda_http`'s own response for the request's origin (its type is not exported).
    Http(serde_json::Value),
    Refused(Box<ApiGatewayProxyResponse>),
}

/// True when the event says its body is base64 and the body does not decode.
pub fn has_undecodable_body(event: &serde_json::Value) -> bool {
    let flagged = event
        .get("isBase64Encoded")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    match (flagged, event.get("body").and_then(serde_json::Value::as_str)) {
        (true, Some(b)) => base64::engine::general_purpose::STANDARD.decode(b).is_err(),
        _ => false,
    }
}

fn refused(outcome: &Outcome) -> ApiGatewayProxyResponse {
    let mut resp = ApiGatewayProxyResponse::default();
    resp.status_code = i64::from(outcome.status().as_u16());
    resp.headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp.body = Some(Body::Text(outcome.body()));
    resp
}

fn source_ip(req: &Request) -> Option<IpAddr> {
    let ip = match req.request_context_ref()? {
        RequestContext::ApiGatewayV2(ctx) => ctx.http.source_ip.as_deref(),
        RequestContext::ApiGatewayV1(ctx) => ctx.identity.source_ip.as_deref(),
        _ => None,
    };
    ip.and_then(|s| s.parse().ok())
}

/// Handle one `lambda_http` request.
pub async fn handle_request<Q: EventQueue, C: Clock>(receiver: &Receiver<Q, C>, req: Request) -> Response<Body> {
    let inbound = Inbound {
        method: req.method(),
        path: req.uri().path(),
        headers: req.headers(),
        body: req.body().as_ref(),
        source_ip: source_ip(&req),
    };
    receiver.handle(inbound).await.into_response::<String>().map(Body::Text)
}

/// Handle one raw Lambda event.
pub async fn handle_event<Q: EventQueue, C: Clock>(
    receiver: Arc<Receiver<Q, C>>,
    event: LambdaEvent<serde_json::Value>,
) -> Result<Reply, lambda_runtime::Error> {
    let LambdaEvent { payload, context } = event;
    if has_undecodable_body(&payload) {
        let outcome = Outcome::BadRequest("body is marked base64 but does not decode");
        let (log_outcome, log_status) = outcome.log_fields();
        tracing::warn!(
            outcome = log_outcome,
            status = log_status,
            reason = outcome.public_message(),
            "webhook refused"
        );
        return Ok(Reply::Refused(Box::new(refused(&outcome))));
    }
    let request: LambdaRequest = serde_json::from_value(payload)?;
    let inner = service_fn(move |req: Request| {
        let receiver = receiver.clone();
        async move { Ok::<_, Infallible>(handle_request(&receiver, req).await) }
    });
    let mut adapter: Adapter<'_, Response<Body>, _> = Adapter::from(inner);
    let resp = adapter.call(LambdaEvent::new(request, context)).await?;
    Ok(Reply::Http(serde_json::to_value(resp)?))
}

/// Run on the Lambda runtime until it stops.
pub async fn run<Q: EventQueue, C: Clock>(receiver: Arc<Receiver<Q, C>>) -> Result<(), lambda_runtime::Error> {
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        handle_event(receiver.clone(), event)
    }))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{EpochMillis, ManualClock};
    use crate::queue::MemoryQueue;
    use crate::signature::{signature_header, Verifier, DEFAULT_TOLERANCE};

    const T0: EpochMillis = EpochMillis(1_700_000_000_000);
    const BODY: &str =
        r#"{"id":"event_9","event":"dsync.group.updated","data":{"id":"directory_group_1","name":"Old"}}"#;

    fn receiver() -> Arc<Receiver<MemoryQueue, ManualClock>> {
        let v = Verifier::new(["whsec_l"], DEFAULT_TOLERANCE).expect("secret");
        Arc::new(Receiver::new(v, MemoryQueue::default(), ManualClock::at(T0)))
    }

    fn apigw_v2(body: &str, base64: bool, sig: &str) -> serde_json::Value {
        serde_json::json!({
            "version": "2.0",
            "routeKey": "POST /webhooks/workos",
            "rawPath": "/webhooks/workos",
            "rawQueryString": "",
            "headers": { "content-type": "application/json", "workos-signature": sig },
            "requestContext": {
                "accountId": "123456789012", "apiId": "api", "domainName": "x.execute-api.us-east-1.amazonaws.com",
                "domainPrefix": "x", "requestId": "r1", "routeKey": "POST /webhooks/workos", "stage": "$default",
                "time": "14/Nov/2023:22:13:20 +0000", "timeEpoch": 1700000000000u64,
                "http": { "method": "POST", "path": "/webhooks/workos", "protocol": "HTTP/1.1",
                          "sourceIp": "3.217.146.166", "userAgent": "WorkOS" }
            },
            "body": body,
            "isBase64Encoded": base64
        })
    }

    async fn invoke(r: Arc<Receiver<MemoryQueue, ManualClock>>, ev: serde_json::Value) -> serde_json::Value {
        let reply = handle_event(r, LambdaEvent::new(ev, lambda_runtime::Context::default()))
            .await
            .expect("reply");
        serde_json::to_value(reply).expect("serializable")
    }

    #[tokio::test]
    async fn text_and_base64_bodies_verify_over_the_same_bytes() {
        let sig = signature_header("whsec_l", T0, BODY.as_bytes());
        let r = receiver();
        let out = invoke(r.clone(), apigw_v2(BODY, false, &sig)).await;
        assert_eq!(out["statusCode"], 200, "{out}");
        let b64 = base64::engine::general_purpose::STANDARD.encode(BODY);
        let out = invoke(r.clone(), apigw_v2(&b64, true, &sig)).await;
        assert_eq!(out["statusCode"], 200, "{out}");
        let sent = r.queue().sent();
        assert_eq!(sent.len(), 2);
        assert!(sent.iter().all(|m| m.body == BODY));
    }

    #[tokio::test]
    async fn undecodable_base64_is_a_clear_400() {
        let r = receiver();
        let out = invoke(r.clone(), apigw_v2("%%% not base64 %%%", true, "t=1, v1=00")).await;
        assert_eq!(out["statusCode"], 400, "{out}");
        assert!(out["body"].as_str().unwrap_or("").contains("base64"));
        assert!(r.queue().sent().is_empty());
    }

    #[tokio::test]
    async fn bad_signature_is_401_through_the_lambda_path() {
        let r = receiver();
        let out = invoke(r.clone(), apigw_v2(BODY, false, "t=1700000000000, v1=00")).await;
        assert_eq!(out["statusCode"], 401);
        assert!(r.queue().sent().is_empty());
    }

    #[tokio::test]
    async fn source_ip_comes_from_the_request_context() {
        let sig = signature_header("whsec_l", T0, BODY.as_bytes());
        let v = Verifier::new(["whsec_l"], DEFAULT_TOLERANCE).expect("secret");
        let only = |ip: &str| {
            Arc::new(
                Receiver::new(v.clone(), MemoryQueue::default(), ManualClock::at(T0))
                    .with_allowed_ips(Some(vec![ip.parse().expect("ip")])),
            )
        };
        assert_eq!(
            invoke(only("3.217.146.166"), apigw_v2(BODY, false, &sig)).await["statusCode"],
            200
        );
        assert_eq!(
            invoke(only("9.9.9.9"), apigw_v2(BODY, false, &sig)).await["statusCode"],
            403
        );
    }
}
