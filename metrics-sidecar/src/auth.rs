//! Who may read what the sidecar serves: the probes always (a kubelet has
//! neither a client certificate nor a password, and a liveness probe that
//! gets `401` restarts a healthy sidecar), everything else only with what
//! the web config demands — a verified client certificate, basic-auth
//! credentials that match a bcrypt hash, or both — and, with `--kube-auth`,
//! a Kubernetes bearer token whose user RBAC lets get the path
//! ([`crate::token_review`]). Where both passwords and tokens are accepted,
//! either one will do.
//!
//! bcrypt is slow on purpose (tens of milliseconds a check), so a check
//! runs off the async workers, one at a time, and credentials that passed
//! are remembered by their SHA-256 (never in clear) so that a scraper
//! pays once, not every scrape.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::token_review::{TokenReviewer, Verdict};
use crate::web_config::{ClientAuth, WebConfig};

/// Paths answered to anyone.
pub const OPEN_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// Remembered credentials past this many are forgotten all at once: a
/// bound on memory, whatever a client sends.
const REMEMBERED_MAX: usize = 64;

/// What a request's connection brings to the check, put on every request
/// by `serve`: the gate in force when the connection was accepted (a
/// reloaded web config applies from the next connection on), and whether
/// the client presented a certificate (the TLS layer only admits ones that
/// chain to the client CA).
#[derive(Clone)]
pub struct ConnectionAuth {
    pub gate: Arc<Gate>,
    pub peer_certificate: bool,
}

pub struct Gate {
    client_auth: ClientAuth,
    users: BTreeMap<String, String>,
    /// Checked against for unknown users, so that a wrong name takes as
    /// long as a wrong password and names cannot be probed by timing.
    decoy_hash: String,
    remembered: Mutex<HashSet<[u8; 32]>>,
    checking: Semaphore,
    /// Bearer tokens, reviewed by the API server; `None`: not accepted.
    tokens: Option<Arc<TokenReviewer>>,
}

impl Gate {
    /// The web config's checks, and bearer tokens where `tokens` reviews
    /// them.
    pub fn new(config: &WebConfig, tokens: Option<Arc<TokenReviewer>>) -> Gate {
        // At the users' cost, so that the decoy takes as long as they do.
        let decoy_hash = match config.users.values().filter_map(|h| bcrypt_cost(h)).max() {
            None => String::new(),
            Some(cost) => bcrypt::hash("iogate decoy", cost).expect("bcrypt hashes any password at a valid cost"),
        };
        Gate {
            client_auth: config.client_auth,
            users: config.users.clone(),
            decoy_hash,
            remembered: Mutex::new(HashSet::new()),
            checking: Semaphore::new(1),
            tokens,
        }
    }

    /// Whether this gate lets every request through.
    pub fn is_open(&self) -> bool {
        self.users.is_empty() && self.client_auth != ClientAuth::RequireAndVerify && self.tokens.is_none()
    }

    /// What a request must bring besides a certificate, in the words a
    /// refusal uses.
    fn credentials_wanted(&self) -> Option<&'static str> {
        match (!self.users.is_empty(), self.tokens.is_some()) {
            (true, true) => Some("basic-auth credentials or a Kubernetes bearer token are required"),
            (true, false) => Some("basic-auth credentials are required"),
            (false, true) => Some("a Kubernetes bearer token is required"),
            (false, false) => None,
        }
    }

    async fn password_matches(&self, user: &str, password: &str) -> bool {
        let hash = self.users.get(user).cloned();
        let key: [u8; 32] = Sha256::new()
            .chain_update(user.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .chain_update([0])
            .chain_update(hash.as_deref().unwrap_or("").as_bytes())
            .finalize()
            .into();
        if hash.is_some() && self.remembered.lock().expect("not poisoned").contains(&key) {
            return true;
        }
        let Ok(_slot) = self.checking.acquire().await else { return false };
        let known = hash.is_some();
        let against = hash.unwrap_or_else(|| self.decoy_hash.clone());
        let password = password.to_string();
        let matched = tokio::task::spawn_blocking(move || bcrypt::verify(password, &against).unwrap_or(false))
            .await
            .unwrap_or(false)
            && known;
        if matched {
            let mut remembered = self.remembered.lock().expect("not poisoned");
            if remembered.len() >= REMEMBERED_MAX {
                remembered.clear();
            }
            remembered.insert(key);
        }
        matched
    }
}

/// The cost in a bcrypt hash (`$2y$10$…` → 10).
fn bcrypt_cost(hash: &str) -> Option<u32> {
    hash.split('$').nth(2)?.parse().ok()
}

/// What the `Authorization` header carries.
enum Credentials {
    Basic { user: String, password: String },
    Bearer(String),
}

fn credentials(request: &Request) -> Option<Credentials> {
    let value = request.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        let token = rest.trim();
        return (!token.is_empty()).then(|| Credentials::Bearer(token.to_string()));
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
    let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some(Credentials::Basic { user: user.to_string(), password: password.to_string() })
}

fn refused(status: StatusCode, why: impl Into<String>, basic: bool) -> Response {
    let mut response = (status, format!("{}\n", why.into())).into_response();
    if basic {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Basic realm=\"iogate\""));
    }
    response
}

fn unauthorized(why: impl Into<String>, basic: bool) -> Response {
    refused(StatusCode::UNAUTHORIZED, why, basic)
}

/// The API server's word on a bearer token, as the response to send when
/// it is not a yes.
async fn token_refusal(tokens: &TokenReviewer, token: &str, path: &str) -> Option<Response> {
    match tokens.check(token, path).await {
        Ok(Verdict::Allowed) => None,
        Ok(Verdict::Unauthenticated { why }) => {
            Some(unauthorized(format!("the bearer token was not accepted: {why}"), false))
        }
        Ok(Verdict::Forbidden { user, why }) => {
            Some(refused(StatusCode::FORBIDDEN, format!("{user} may not get {path}: {why}"), false))
        }
        Err(e) => {
            tracing::warn!("refusing a request with a bearer token: {e}");
            Some(refused(StatusCode::SERVICE_UNAVAILABLE, format!("the bearer token could not be checked: {e}"), false))
        }
    }
}

/// The middleware `serve` puts in front of every route.
pub async fn check(request: Request, next: Next) -> Response {
    let Some(ConnectionAuth { gate, peer_certificate }) = request.extensions().get::<ConnectionAuth>().cloned() else {
        // Fail closed: a route served without `serve` has nobody checking.
        return (StatusCode::INTERNAL_SERVER_ERROR, "no access check on this connection\n").into_response();
    };
    if gate.is_open() || OPEN_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    if gate.client_auth == ClientAuth::RequireAndVerify && !peer_certificate {
        return unauthorized("a client certificate signed by the client CA is required", false);
    }
    let Some(wanted) = gate.credentials_wanted() else {
        return next.run(request).await;
    };
    let basic = !gate.users.is_empty();
    match (credentials(&request), &gate.tokens) {
        (Some(Credentials::Basic { user, password }), _) if basic => {
            if !gate.password_matches(&user, &password).await {
                return unauthorized("wrong user name or password", true);
            }
        }
        (Some(Credentials::Bearer(token)), Some(tokens)) => {
            if let Some(refusal) = token_refusal(tokens, &token, request.uri().path()).await {
                return refusal;
            }
        }
        _ => return unauthorized(wanted, basic),
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    use super::*;

    struct App {
        router: Router,
        gate: Arc<Gate>,
    }

    fn app(users: &[(&str, &str)], client_auth: ClientAuth) -> App {
        let config = WebConfig {
            client_auth,
            users: users.iter().map(|(u, p)| (u.to_string(), bcrypt::hash(p, 4).unwrap())).collect(),
            ..WebConfig::open()
        };
        let router = Router::new()
            .route("/metrics", get(|| async { "data" }))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(|| async { "ready" }))
            .layer(axum::middleware::from_fn(check));
        App { router, gate: Arc::new(Gate::new(&config, None)) }
    }

    async fn status(app: &App, path: &str, auth: Option<&str>, certificate: bool) -> StatusCode {
        let mut request = Request::get(path);
        if let Some(a) = auth {
            request = request.header(header::AUTHORIZATION, a);
        }
        let mut request = request.body(Body::empty()).unwrap();
        request.extensions_mut().insert(ConnectionAuth { gate: app.gate.clone(), peer_certificate: certificate });
        app.router.clone().oneshot(request).await.unwrap().status()
    }

    fn basic(user: &str, password: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
    }

    #[tokio::test]
    async fn basic_auth_admits_the_right_password_only_and_leaves_the_probes_open() {
        let app = app(&[("prometheus", "s3cret:with:colons")], ClientAuth::None);
        let right = basic("prometheus", "s3cret:with:colons");
        assert_eq!(status(&app, "/metrics", Some(&right), false).await, StatusCode::OK);
        // Remembered: the second time skips bcrypt, and still matches.
        assert_eq!(status(&app, "/metrics", Some(&right), false).await, StatusCode::OK);
        for wrong in [
            None,
            Some(basic("prometheus", "s3cret")),
            Some(basic("nobody", "s3cret:with:colons")),
            Some("Bearer abc".to_string()),
            Some("Basic !!notbase64".to_string()),
        ] {
            assert_eq!(status(&app, "/metrics", wrong.as_deref(), false).await, StatusCode::UNAUTHORIZED, "{wrong:?}");
        }
        assert_eq!(
            status(&app, "/nowhere", None, false).await,
            StatusCode::UNAUTHORIZED,
            "404s are not shown to strangers"
        );
        for probe in OPEN_PATHS {
            assert_eq!(status(&app, probe, None, false).await, StatusCode::OK, "{probe}");
        }
    }

    #[tokio::test]
    async fn a_required_certificate_is_enforced_per_request_except_for_the_probes() {
        let app = app(&[], ClientAuth::RequireAndVerify);
        assert_eq!(status(&app, "/metrics", None, false).await, StatusCode::UNAUTHORIZED);
        assert_eq!(status(&app, "/metrics", None, true).await, StatusCode::OK);
        assert_eq!(status(&app, "/healthz", None, false).await, StatusCode::OK);
        let both = app_with_both();
        assert_eq!(status(&both, "/metrics", Some(&basic("a", "b")), false).await, StatusCode::UNAUTHORIZED);
        assert_eq!(status(&both, "/metrics", None, true).await, StatusCode::UNAUTHORIZED);
        assert_eq!(status(&both, "/metrics", Some(&basic("a", "b")), true).await, StatusCode::OK);
    }

    fn app_with_both() -> App {
        app(&[("a", "b")], ClientAuth::RequireAndVerify)
    }

    #[tokio::test]
    async fn without_a_web_config_everything_is_open() {
        let app = app(&[], ClientAuth::None);
        assert_eq!(status(&app, "/metrics", None, false).await, StatusCode::OK);
    }

    #[test]
    fn the_decoy_costs_what_the_users_hashes_cost() {
        assert_eq!(bcrypt_cost(&bcrypt::hash("x", 5).unwrap()), Some(5));
        let config = WebConfig { users: [("a".into(), bcrypt::hash("x", 5).unwrap())].into(), ..WebConfig::open() };
        assert_eq!(bcrypt_cost(&Gate::new(&config, None).decoy_hash), Some(5));
    }

    #[tokio::test]
    async fn a_request_without_the_connections_check_is_refused() {
        let app = app(&[], ClientAuth::None);
        let request = Request::get("/metrics").body(Body::empty()).unwrap();
        assert_eq!(app.router.oneshot(request).await.unwrap().status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    async fn with_tokens(users: &[(&str, &str)], api: &crate::token_review::fake_api::FakeApi) -> App {
        let mut app = app(users, ClientAuth::None);
        let config = WebConfig {
            users: users.iter().map(|(u, p)| (u.to_string(), bcrypt::hash(p, 4).unwrap())).collect(),
            ..WebConfig::open()
        };
        app.gate = Arc::new(Gate::new(&config, Some(Arc::new(TokenReviewer::new(api.client())))));
        app
    }

    #[tokio::test]
    async fn a_bearer_token_is_let_through_where_rbac_grants_its_user_the_path() {
        use crate::token_review::fake_api::{start, Grant};
        let api = start(vec![Grant {
            token: "scraper",
            user: "system:serviceaccount:monitoring:prometheus",
            prefix: "/metrics",
        }])
        .await;
        let tokens = with_tokens(&[], &api).await;
        assert_eq!(status(&tokens, "/metrics", Some("Bearer scraper"), false).await, StatusCode::OK);
        assert_eq!(status(&tokens, "/api/v1/metrics", Some("Bearer scraper"), false).await, StatusCode::FORBIDDEN);
        for wrong in [None, Some("Bearer stolen"), Some("Bearer "), Some("Basic c2NyYXBlcjp4")] {
            assert_eq!(status(&tokens, "/metrics", wrong, false).await, StatusCode::UNAUTHORIZED, "{wrong:?}");
        }
        for probe in OPEN_PATHS {
            assert_eq!(status(&tokens, probe, None, false).await, StatusCode::OK, "{probe}");
        }
        // With passwords too, either will do.
        let both = with_tokens(&[("prometheus", "pw")], &api).await;
        assert_eq!(status(&both, "/metrics", Some(&basic("prometheus", "pw")), false).await, StatusCode::OK);
        assert_eq!(status(&both, "/metrics", Some("Bearer scraper"), false).await, StatusCode::OK);
        assert_eq!(status(&both, "/metrics", Some(&basic("prometheus", "no")), false).await, StatusCode::UNAUTHORIZED);
        // Tokens are not accepted where --kube-auth is off.
        let passwords_only = app(&[("prometheus", "pw")], ClientAuth::None);
        assert_eq!(status(&passwords_only, "/metrics", Some("Bearer scraper"), false).await, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn an_api_server_that_cannot_be_asked_refuses_with_503() {
        use crate::token_review::fake_api::start;
        let api = start(Vec::new()).await;
        let tokens = with_tokens(&[], &api).await;
        drop(api);
        assert_eq!(status(&tokens, "/metrics", Some("Bearer scraper"), false).await, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status(&tokens, "/healthz", None, false).await, StatusCode::OK);
    }
}
