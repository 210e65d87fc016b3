//! Kubernetes bearer tokens, checked in process the way kube-rbac-proxy
//! checks them: a `TokenReview` asks the API server whose token it is, a
//! `SubjectAccessReview` whether that user may `get` the request's path as
//! a non-resource URL (`/metrics`, `/api/v1/metrics/pod/web-0`), which RBAC
//! grants with `nonResourceURLs`. A ServiceMonitor sends its Prometheus's
//! service-account token; nothing else needs to be issued or rotated.
//!
//! Each answer is remembered, by the SHA-256 of the token and the path
//! (never the token itself), for a minute when allowed and 10 s when
//! refused, so that a scraper costs the API server two requests a minute,
//! not two a scrape, and a revoked token or binding stops working within
//! the minute. An API server that cannot be asked is a refusal that is not
//! remembered: fail closed, and try again on the next request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// How long an allowed token and path are let through without asking again.
pub const ALLOWED_FOR: Duration = Duration::from_secs(60);
/// How long a refused one is refused without asking again.
pub const REFUSED_FOR: Duration = Duration::from_secs(10);
/// Answers past this many are forgotten all at once: a bound on memory,
/// whatever tokens clients send.
const REMEMBERED_MAX: usize = 256;

/// The API server's word on a token and a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Not a token the API server recognises (expired, revoked, another
    /// cluster's, not a token at all).
    Unauthenticated {
        why: String,
    },
    /// A real user, who may not get this path.
    Forbidden {
        user: String,
        why: String,
    },
}

#[derive(Debug, Error)]
#[error("asking the Kubernetes API server for a {review}: {source}")]
pub struct ReviewError {
    review: &'static str,
    #[source]
    source: kube::Error,
}

pub struct TokenReviewer {
    client: Client,
    remembered: Mutex<HashMap<[u8; 32], (Verdict, Instant)>>,
}

impl TokenReviewer {
    /// Reviews through `client`, whose own identity (the sidecar's service
    /// account) needs `create` on `tokenreviews` and `subjectaccessreviews`.
    pub fn new(client: Client) -> TokenReviewer {
        TokenReviewer { client, remembered: Mutex::new(HashMap::new()) }
    }

    /// May the bearer of `token` get `path`?
    pub async fn check(&self, token: &str, path: &str) -> Result<Verdict, ReviewError> {
        let key: [u8; 32] = Sha256::new()
            .chain_update(token.as_bytes())
            .chain_update([0])
            .chain_update(path.as_bytes())
            .finalize()
            .into();
        let now = Instant::now();
        if let Some((verdict, until)) = self.remembered.lock().expect("not poisoned").get(&key) {
            if now < *until {
                return Ok(verdict.clone());
            }
        }
        let verdict = self.review(token, path).await?;
        let keep = if verdict == Verdict::Allowed { ALLOWED_FOR } else { REFUSED_FOR };
        let mut remembered = self.remembered.lock().expect("not poisoned");
        if remembered.len() >= REMEMBERED_MAX {
            remembered.clear();
        }
        remembered.insert(key, (verdict.clone(), now + keep));
        Ok(verdict)
    }

    async fn review(&self, token: &str, path: &str) -> Result<Verdict, ReviewError> {
        let asked = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_string()), audiences: None },
            ..Default::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &asked)
            .await
            .map_err(|source| ReviewError { review: "TokenReview", source })?;
        let status = reviewed.status.unwrap_or_default();
        let user = match (status.authenticated, status.user) {
            (Some(true), Some(user)) => user,
            _ => {
                let why = status.error.unwrap_or_else(|| "the API server does not recognise the token".into());
                return Ok(Verdict::Unauthenticated { why });
            }
        };
        let name = user.username.clone().unwrap_or_default();
        let asked = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(path.to_string()),
                    verb: Some("get".into()),
                }),
                resource_attributes: None,
            },
            ..Default::default()
        };
        let answered = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &asked)
            .await
            .map_err(|source| ReviewError { review: "SubjectAccessReview", source })?;
        let status = answered.status.unwrap_or_default();
        if status.allowed {
            return Ok(Verdict::Allowed);
        }
        let why = status
            .reason
            .filter(|r| !r.is_empty())
            .or(status.evaluation_error)
            .unwrap_or_else(|| "no RBAC rule grants it".into());
        Ok(Verdict::Forbidden { user: name, why })
    }
}

#[cfg(any(test, feature = "fake-kube-api"))]
pub mod fake_api {
    //! An API server that answers the two reviews from a table: enough of
    //! Kubernetes for the sidecar's checks, on a real socket.

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use axum::extract::State;
    use axum::routing::post;
    use axum::{Json, Router};
    use serde_json::{json, Value};

    /// `token` belongs to `user`, who may get the paths starting with `prefix`.
    pub struct Grant {
        pub token: &'static str,
        pub user: &'static str,
        pub prefix: &'static str,
    }

    pub struct FakeApi {
        pub url: String,
        pub reviews: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for FakeApi {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    struct Table {
        grants: Vec<Grant>,
        reviews: Arc<AtomicUsize>,
    }

    async fn token_review(State(t): State<Arc<Table>>, Json(body): Json<Value>) -> Json<Value> {
        t.reviews.fetch_add(1, Ordering::SeqCst);
        let token = body["spec"]["token"].as_str().unwrap_or_default();
        let status = match t.grants.iter().find(|g| g.token == token) {
            Some(g) => json!({"authenticated": true, "user": {"username": g.user, "groups": ["system:authenticated"]}}),
            None => json!({"authenticated": false, "error": "invalid bearer token"}),
        };
        Json(
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": body["spec"], "status": status}),
        )
    }

    async fn access_review(State(t): State<Arc<Table>>, Json(body): Json<Value>) -> Json<Value> {
        t.reviews.fetch_add(1, Ordering::SeqCst);
        let spec = &body["spec"];
        let (user, path, verb) = (
            spec["user"].as_str().unwrap_or_default(),
            spec["nonResourceAttributes"]["path"].as_str().unwrap_or_default(),
            spec["nonResourceAttributes"]["verb"].as_str().unwrap_or_default(),
        );
        let allowed = verb == "get" && t.grants.iter().any(|g| g.user == user && path.starts_with(g.prefix));
        Json(json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec,
            "status": {"allowed": allowed, "reason": if allowed { "" } else { "no binding" }}
        }))
    }

    pub async fn start(grants: Vec<Grant>) -> FakeApi {
        let reviews = Arc::new(AtomicUsize::new(0));
        let table = Arc::new(Table { grants, reviews: reviews.clone() });
        let app = Router::new()
            .route("/apis/authentication.k8s.io/v1/tokenreviews", post(token_review))
            .route("/apis/authorization.k8s.io/v1/subjectaccessreviews", post(access_review))
            .with_state(table);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeApi { url, reviews, task }
    }

    impl FakeApi {
        pub fn client(&self) -> kube::Client {
            kube::Client::try_from(kube::Config::new(self.url.parse().unwrap())).unwrap()
        }

        /// A kubeconfig naming this server, for a process to find it by
        /// `KUBECONFIG`.
        pub fn kubeconfig(&self) -> String {
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: sidecar\n  user: {{}}\n\
                 contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: sidecar\ncurrent-context: fake\n",
                self.url
            )
        }

        pub fn reviews(&self) -> usize {
            self.reviews.load(Ordering::SeqCst)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake_api::{start, Grant};
    use super::*;

    const PROMETHEUS: &str = "system:serviceaccount:monitoring:prometheus-k8s";

    #[tokio::test]
    async fn a_granted_token_gets_its_paths_only_and_answers_are_remembered() {
        let api = start(vec![Grant { token: "scraper", user: PROMETHEUS, prefix: "/metrics" }]).await;
        let reviewer = TokenReviewer::new(api.client());
        assert_eq!(reviewer.check("scraper", "/metrics").await.unwrap(), Verdict::Allowed);
        assert_eq!(api.reviews(), 2, "a TokenReview and a SubjectAccessReview");
        assert_eq!(reviewer.check("scraper", "/metrics").await.unwrap(), Verdict::Allowed);
        assert_eq!(api.reviews(), 2, "the second scrape is remembered");
        match reviewer.check("scraper", "/api/v1/metrics").await.unwrap() {
            Verdict::Forbidden { user, why } => assert_eq!((user.as_str(), why.as_str()), (PROMETHEUS, "no binding")),
            other => panic!("expected forbidden, found {other:?}"),
        }
        match reviewer.check("stolen", "/metrics").await.unwrap() {
            Verdict::Unauthenticated { why } => assert_eq!(why, "invalid bearer token"),
            other => panic!("expected unauthenticated, found {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_api_server_that_cannot_be_asked_is_an_error_not_a_verdict() {
        let api = start(Vec::new()).await;
        let client = api.client();
        drop(api);
        let reviewer = TokenReviewer::new(client);
        let e = reviewer.check("scraper", "/metrics").await.unwrap_err().to_string();
        assert!(e.starts_with("asking the Kubernetes API server for a TokenReview: "), "{e}");
        assert!(reviewer.remembered.lock().unwrap().is_empty(), "an error is not remembered");
    }
}
