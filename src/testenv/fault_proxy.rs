//! An HTTP proxy in front of moto that injects EC2-shaped faults and records every request.
//!
//! EC2 speaks the Query protocol: each request is a form-encoded POST whose `Action` field names
//! the operation, so faults are programmed per action and per call. Each test starts its own
//! proxy (cheap, in-process) in front of the shared moto, so fault rules and request logs never
//! leak between tests.
//!
//! A request that no fault answers goes through the AWS rules of `aws_rules` (always on: one
//! EIP per private IP, `PrivateIpAddress` honoured, eventual consistency, filter limit, instance
//! state, IAM denials), which answer from moto. This module is the transport.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::aws_rules::{self, Call, Displacement, RuleSettings};

/// A fault the proxy can inject.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// HTTP 503 with EC2's `RequestLimitExceeded` error body (throttling).
    Throttle,
    /// HTTP 500 with an `InternalError` body.
    ServerError,
    /// Forward the request after this extra delay.
    Latency(Duration),
    /// Forward the request at once (it takes effect) and hold the answer back this long: a
    /// client whose attempt times out does not know that its request happened.
    SlowAnswer(Duration),
    /// Drop the connection without an answer.
    Reset,
    /// Never answer (the client's timeout must fire).
    Hang,
    /// HTTP 400 with this EC2 error code: a definite refusal.
    Definite(String),
}

/// When a rule applies: an action (or any), and how many more matching calls (or forever).
#[derive(Clone, Debug)]
pub struct FaultRule {
    pub action: Option<String>,
    pub remaining: Option<u32>,
    /// Skip this many matching calls before the rule starts firing.
    pub skip: u32,
    pub fault: Fault,
}

impl FaultRule {
    /// `fault` on every call of `action`, until cleared.
    pub fn always(action: &str, fault: Fault) -> Self {
        Self {
            action: Some(action.into()),
            remaining: None,
            skip: 0,
            fault,
        }
    }
    /// `fault` on the next `n` calls of `action`.
    pub fn times(action: &str, n: u32, fault: Fault) -> Self {
        Self {
            action: Some(action.into()),
            remaining: Some(n),
            skip: 0,
            fault,
        }
    }
    /// `fault` on every call of every action, until cleared.
    pub fn everything(fault: Fault) -> Self {
        Self {
            action: None,
            remaining: None,
            skip: 0,
            fault,
        }
    }
}

/// One request as the proxy saw it.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub at: Instant,
    pub action: String,
    pub params: BTreeMap<String, String>,
    /// The injected fault, if any (None = answered by the AWS rules, from moto).
    pub fault: Option<Fault>,
    /// HTTP status returned to the client (0 for reset/hang, and while the answer is pending).
    pub status: u16,
    /// Which request of this proxy it was (0, 1, ...; not reset by `clear_log`).
    pub seq: u64,
    /// When it was passed on to EC2 (it may take effect from then on); `None` if it never was.
    pub forwarded_at: Option<Instant>,
    /// When its answer left for the client (which may have stopped waiting: EC2 carries out
    /// and answers a forwarded request either way); `None` while pending, or for a hang or a
    /// reset.
    pub answered_at: Option<Instant>,
}

impl RequestRecord {
    /// While this request could take effect at EC2 without its sender knowing the outcome:
    /// from its forwarding to its answer (open-ended if it was forwarded and never answered).
    /// `None` if it never reached EC2.
    pub fn in_flight(&self) -> Option<(Instant, Option<Instant>)> {
        self.forwarded_at.map(|from| (from, self.answered_at))
    }
}

/// EC2's published token buckets, emulated so a client that overspends sees
/// `RequestLimitExceeded` exactly as it would on AWS.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    pub capacity: f64,
    pub refill_per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(capacity: f64, refill_per_sec: f64) -> Self {
        Self {
            capacity,
            refill_per_sec,
            tokens: capacity,
            last: Instant::now(),
        }
    }
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.refill_per_sec).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Actions EC2 counts against the mutating bucket (the ones feip sends).
pub const MUTATING_ACTIONS: &[&str] = &["AssociateAddress", "DisassociateAddress"];

#[derive(Default)]
struct State {
    rules: Vec<FaultRule>,
    log: Vec<RequestRecord>,
    next_seq: u64,
    mutating_bucket: Option<TokenBucket>,
    describe_addresses_bucket: Option<TokenBucket>,
    aws: RuleSettings,
    displacements: Vec<Displacement>,
    /// Rules for requests whose form parameter (name, value) matches (`inject_where`).
    scoped: Vec<(String, String, FaultRule)>,
}

/// A running fault proxy; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port forwarding to `upstream` (e.g. moto's URL).
    pub async fn start(upstream: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let upstream = Upstream {
            client: HttpClient::builder(TokioExecutor::new()).build_http(),
            base: upstream.trim_end_matches('/').into(),
        };
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (st, upstream) = (st.clone(), upstream.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, st.clone(), upstream.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, state, task })
    }

    /// The URL clients use as their EC2 endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn inject(&self, rule: FaultRule) {
        self.lock().rules.push(rule);
    }

    /// Removes every fault rule (the request log stays).
    pub fn clear_faults(&self) {
        self.lock().rules.clear();
        self.lock().scoped.clear();
    }

    /// `rule`'s fault on every matching call whose form parameter `param` is `value` (one
    /// address's `AllocationId`, say), until cleared; `remaining` and `skip` are ignored.
    pub fn inject_where(&self, param: &str, value: &str, rule: FaultRule) {
        self.lock().scoped.push((param.into(), value.into(), rule));
    }

    /// Emulates EC2's per-account buckets: mutating actions burst 50 refill 5/s,
    /// DescribeAddresses burst 100 refill 20/s. Overspending gets `RequestLimitExceeded`.
    pub fn enable_ec2_budget(&self) {
        let mut s = self.lock();
        s.mutating_bucket = Some(TokenBucket::new(50.0, 5.0));
        s.describe_addresses_bucket = Some(TokenBucket::new(100.0, 20.0));
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock().log.clone()
    }

    /// Number of requests recorded so far (an index for `requests_since`).
    pub fn log_len(&self) -> usize {
        self.lock().log.len()
    }

    /// The requests recorded from index `from` on: cheaper than `requests()` on a long log
    /// (benchmarks read it repeatedly while thousands of requests accumulate).
    pub fn requests_since(&self, from: usize) -> Vec<RequestRecord> {
        self.lock()
            .log
            .get(from..)
            .map(<[RequestRecord]>::to_vec)
            .unwrap_or_default()
    }

    /// Number of requests of `action` so far (faulted or not).
    pub fn count(&self, action: &str) -> usize {
        self.lock()
            .log
            .iter()
            .filter(|r| r.action == action)
            .count()
    }

    /// Forgets the request log.
    pub fn clear_log(&self) {
        self.lock().log.clear();
    }

    /// The addresses AWS's one-EIP-per-private-IP rule disassociated because a request through
    /// this proxy associated another address at their (ENI, private IP), in order.
    pub fn displacements(&self) -> Vec<Displacement> {
        self.lock().displacements.clone()
    }

    /// How long DescribeAddresses keeps reporting an address's previous association after a
    /// mutation through this proxy (default `aws_rules::DEFAULT_CONSISTENCY_LAG`; zero: none).
    pub fn set_consistency_lag(&self, lag: Duration) {
        self.lock().aws.lag = lag;
    }

    /// Answers every later `action` with HTTP 403 `UnauthorizedOperation`, as IAM does for an
    /// action the policy does not allow, until `allow(action)`.
    pub fn deny(&self, action: &str) {
        self.lock().aws.denied.insert(action.to_string());
    }

    /// Undoes `deny(action)`.
    pub fn allow(&self, action: &str) {
        self.lock().aws.denied.remove(action);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type ProxyResponse = Response<Full<Bytes>>;

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    upstream: Upstream,
) -> Result<ProxyResponse, std::io::Error> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let params: BTreeMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let action = params.get("Action").cloned().unwrap_or_default();
    let now = Instant::now();

    let (fault, seq, lag, denied) = {
        let mut s = state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let scoped = s.scoped.iter().find(|(k, v, r)| {
            params.get(k) == Some(v) && r.action.as_deref().is_none_or(|a| a == action)
        });
        let mut fault = match scoped {
            Some((_, _, r)) => Some(r.fault.clone()),
            None => pick_fault(&mut s.rules, &action),
        };
        if fault.is_none() {
            let bucket = if MUTATING_ACTIONS.contains(&action.as_str()) {
                s.mutating_bucket.as_mut()
            } else if action == "DescribeAddresses" {
                s.describe_addresses_bucket.as_mut()
            } else {
                None
            };
            if let Some(b) = bucket
                && !b.take(now)
            {
                fault = Some(Fault::Throttle);
            }
        }
        let status = match &fault {
            Some(Fault::Throttle) => 503,
            Some(Fault::ServerError) => 500,
            Some(Fault::Definite(_)) => 400,
            // Forwarded: the answer's status is filled in when it comes.
            Some(Fault::Reset | Fault::Hang | Fault::Latency(_) | Fault::SlowAnswer(_)) | None => 0,
        };
        let seq = s.next_seq;
        s.next_seq += 1;
        s.log.push(RequestRecord {
            at: now,
            action: action.clone(),
            params: params.clone(),
            fault: fault.clone(),
            status,
            seq,
            forwarded_at: None,
            answered_at: matches!(
                fault,
                Some(Fault::Throttle | Fault::ServerError | Fault::Definite(_))
            )
            .then_some(now),
        });
        (
            fault,
            seq,
            s.aws.lag,
            s.aws.denied.contains(action.as_str()),
        )
    };

    match fault {
        Some(Fault::Throttle) => Ok(error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "RequestLimitExceeded",
            "Request limit exceeded.",
        )),
        Some(Fault::ServerError) => Ok(error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "An internal error has occurred.",
        )),
        Some(Fault::Definite(code)) => Ok(error_response(
            StatusCode::BAD_REQUEST,
            &code,
            "Refused by the feip fault proxy.",
        )),
        Some(Fault::Reset) => Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "injected reset",
        )),
        Some(Fault::Hang) => {
            futures::future::pending::<()>().await;
            Err(std::io::Error::other("unreachable"))
        }
        Some(Fault::Latency(_) | Fault::SlowAnswer(_)) | None => {
            // EC2 carries out a request it received whether or not its caller still waits
            // (a client that timed out does not cancel the call), so the rest runs in a task
            // of its own: dropping this handler when the client hangs up does not stop it.
            let carried_out = tokio::spawn(carry_out(
                Forwarded {
                    method: parts.method,
                    headers: parts.headers,
                    path: parts
                        .uri
                        .path_and_query()
                        .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
                    action,
                    params,
                    body,
                    fault,
                    seq,
                    lag,
                    denied,
                },
                state,
                upstream,
            ));
            carried_out.await.map_err(std::io::Error::other)?
        }
    }
}

/// A request the proxy passes on to EC2, owned so that it outlives its client's connection,
/// with what the proxy decided for it: the injected fault, its log sequence number, the
/// consistency lag and whether the action is denied.
struct Forwarded {
    method: http::Method,
    headers: http::HeaderMap,
    path: String,
    action: String,
    params: BTreeMap<String, String>,
    body: Bytes,
    fault: Option<Fault>,
    seq: u64,
    lag: Duration,
    denied: bool,
}

/// Passes one request on to EC2 (after an injected latency), through the AWS rules, and
/// records when it was forwarded and when its answer left (after an injected hold-back).
async fn carry_out(
    req: Forwarded,
    state: Arc<Mutex<State>>,
    upstream: Upstream,
) -> Result<ProxyResponse, std::io::Error> {
    let (fault, seq) = (&req.fault, req.seq);
    if let Some(Fault::Latency(d)) = fault {
        tokio::time::sleep(*d).await;
    }
    update(&state, seq, |r| r.forwarded_at = Some(Instant::now()));
    let call = Call {
        method: &req.method,
        action: &req.action,
        params: &req.params,
        headers: &req.headers,
        path: &req.path,
        body: req.body.clone(),
    };
    let answer = aws_rules::answer(call, req.lag, req.denied, &upstream).await?;
    {
        let mut s = state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(r) = s.log.iter_mut().rev().find(|r| r.seq == seq) {
            r.status = answer.reply.status.as_u16();
        }
        s.displacements.extend(answer.displacements);
    }
    if let Some(Fault::SlowAnswer(d)) = fault {
        tokio::time::sleep(*d).await;
    }
    update(&state, seq, |r| r.answered_at = Some(Instant::now()));
    Ok(answer.reply.into_response())
}

/// Changes the log record of request `seq` (if still logged).
fn update(state: &Mutex<State>, seq: u64, change: impl FnOnce(&mut RequestRecord)) {
    let mut s = state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(r) = s.log.iter_mut().rev().find(|r| r.seq == seq) {
        change(r);
    }
}

fn pick_fault(rules: &mut Vec<FaultRule>, action: &str) -> Option<Fault> {
    let idx = rules
        .iter()
        .position(|r| r.action.as_deref().is_none_or(|a| a == action))?;
    let rule = &mut rules[idx];
    if rule.skip > 0 {
        rule.skip -= 1;
        return None;
    }
    let fault = rule.fault.clone();
    if let Some(n) = rule.remaining.as_mut() {
        *n = n.saturating_sub(1);
        if *n == 0 {
            rules.remove(idx);
        }
    }
    Some(fault)
}

/// moto, as the rules and the proxy reach it.
#[derive(Clone)]
pub(crate) struct Upstream {
    client: HttpClient<HttpConnector, Full<Bytes>>,
    base: Arc<str>,
}

/// An answer read in full, so the rules can inspect and rewrite it.
pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The same answer with another body (its length header dropped: hyper sets it).
    pub fn with_body(mut self, body: Bytes) -> Self {
        self.headers.remove(http::header::CONTENT_LENGTH);
        self.body = body;
        self
    }

    fn into_response(self) -> ProxyResponse {
        let mut resp = Response::new(Full::new(self.body));
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers;
        resp
    }
}

impl Upstream {
    /// moto's URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request as the client sent it (its headers carry the region moto answers for).
    pub async fn send(
        &self,
        method: &http::Method,
        headers: &http::HeaderMap,
        path: &str,
        body: Bytes,
    ) -> Result<Reply, std::io::Error> {
        let uri: hyper::Uri = format!("{}{path}", self.base)
            .parse()
            .map_err(std::io::Error::other)?;
        let mut req = Request::builder().method(method.clone()).uri(uri);
        for (k, v) in headers {
            if k != http::header::HOST {
                req = req.header(k, v);
            }
        }
        let req = req.body(Full::new(body)).map_err(std::io::Error::other)?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(std::io::Error::other)?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// A Query request of the rules' own (`form` without `Version`), with the client's headers.
    pub async fn query(
        &self,
        client_headers: &http::HeaderMap,
        form: &[(&str, &str)],
    ) -> Result<Reply, std::io::Error> {
        // The serializer is not Send: finish it before awaiting.
        let body = {
            let mut body = form_urlencoded::Serializer::new(String::new());
            body.append_pair("Version", "2016-11-15");
            for (k, v) in form {
                body.append_pair(k, v);
            }
            body.finish()
        };
        let mut headers = client_headers.clone();
        headers.remove(http::header::CONTENT_LENGTH);
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        self.send(&http::Method::POST, &headers, "/", Bytes::from(body))
            .await
    }
}

fn error_response(status: StatusCode, code: &str, message: &str) -> ProxyResponse {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>feip-fault-proxy</RequestID></Response>"
    );
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/xml;charset=UTF-8"),
    );
    resp
}
