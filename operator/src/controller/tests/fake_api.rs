//! A recorded, in-memory Kubernetes API server for reconcile tests (the
//! kube-rs way: a `tower_test` mock service behind a real `kube::Client`).
//! It understands what the controller sends: server-side apply and merge
//! patches, GET, label-selected LIST, DELETE and event creation; it keeps the
//! objects and a transcript of every request.

use http::{Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

const COLLECTIONS: [&str; 8] = [
    "pods",
    "configmaps",
    "jobs",
    "deployments",
    "services",
    "poddisruptionbudgets",
    "events",
    "postgreswriters",
];

#[derive(Default)]
pub struct FakeApi {
    objects: Mutex<BTreeMap<String, Value>>,
    transcript: Mutex<Vec<String>>,
    counter: Mutex<u64>,
}

impl FakeApi {
    /// A client talking to a new fake server (served by a background task).
    pub fn start() -> (Client, Arc<FakeApi>) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = Arc::new(FakeApi::default());
        let server = api.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let response = server.handle(request).await;
                respond.send_response(response);
            }
        });
        (Client::new(service, "default"), api)
    }

    pub fn seed(&self, path: &str, object: Value) {
        self.objects
            .lock()
            .unwrap()
            .insert(path.to_string(), object);
    }

    pub fn object(&self, path: &str) -> Option<Value> {
        self.objects.lock().unwrap().get(path).cloned()
    }

    /// Requests so far as "METHOD path", then cleared.
    pub fn take_transcript(&self) -> Vec<String> {
        std::mem::take(&mut *self.transcript.lock().unwrap())
    }

    fn next_id(&self) -> u64 {
        let mut c = self.counter.lock().unwrap();
        *c += 1;
        *c
    }

    async fn handle(&self, request: Request<Body>) -> Response<Body> {
        let method = request.method().to_string();
        let path = request.uri().path().to_string();
        let query = request.uri().query().unwrap_or("").to_string();
        let body = request
            .into_body()
            .collect_bytes()
            .await
            .unwrap_or_default();
        self.transcript
            .lock()
            .unwrap()
            .push(format!("{method} {path}"));
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap_or(Value::Null)
        };
        let last = path.rsplit('/').next().unwrap_or("");
        let is_collection = COLLECTIONS.contains(&last);
        match method.as_str() {
            "PATCH" if path.ends_with("/status") => {
                let key = path.trim_end_matches("/status").to_string();
                let mut objects = self.objects.lock().unwrap();
                let stored = objects.entry(key).or_insert_with(|| json!({}));
                merge(stored, &body);
                respond(StatusCode::OK, stored.clone())
            }
            "PATCH" => {
                let id = self.next_id();
                let mut objects = self.objects.lock().unwrap();
                let mut object = body;
                if let Some(existing) = objects.get(&path) {
                    if let Some(status) = existing.get("status") {
                        object["status"] = status.clone();
                    }
                    object["metadata"]["uid"] = existing["metadata"]["uid"].clone();
                } else {
                    object["metadata"]["uid"] = json!(format!("uid-{id}"));
                }
                object["metadata"]["resourceVersion"] = json!(id.to_string());
                objects.insert(path, object.clone());
                respond(StatusCode::OK, object)
            }
            "GET" if is_collection => {
                let selector: Vec<(String, String)> = query
                    .split('&')
                    .filter_map(|kv| kv.strip_prefix("labelSelector="))
                    .flat_map(|s| decode(s).split(',').map(str::to_string).collect::<Vec<_>>())
                    .filter_map(|kv| {
                        kv.split_once('=')
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                    })
                    .collect();
                let objects = self.objects.lock().unwrap();
                let items: Vec<Value> = objects
                    .iter()
                    .filter(|(k, _)| {
                        k.starts_with(&format!("{path}/")) && !k[path.len() + 1..].contains('/')
                    })
                    .map(|(_, v)| v.clone())
                    .filter(|v| {
                        selector
                            .iter()
                            .all(|(k, want)| v["metadata"]["labels"][k] == json!(want))
                    })
                    .collect();
                respond(
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            "GET" => match self.object(&path) {
                Some(object) => respond(StatusCode::OK, object),
                None => not_found(),
            },
            "DELETE" => match self.objects.lock().unwrap().remove(&path) {
                Some(_) => respond(
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "Status", "status": "Success"}),
                ),
                None => not_found(),
            },
            "POST" => {
                let id = self.next_id();
                let mut object = body;
                let name = object["metadata"]["name"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("event-{id}"));
                object["metadata"]["name"] = json!(name);
                object["metadata"]["uid"] = json!(format!("uid-{id}"));
                let mut objects = self.objects.lock().unwrap();
                let key = format!("{path}/{name}");
                if objects.contains_key(&key) {
                    return respond(
                        StatusCode::CONFLICT,
                        json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "AlreadyExists", "code": 409, "message": "already exists"}),
                    );
                }
                objects.insert(key, object.clone());
                respond(StatusCode::CREATED, object)
            }
            _ => respond(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"kind": "Status", "code": 405}),
            ),
        }
    }

    /// Events recorded so far: (type, reason).
    pub fn events(&self) -> Vec<(String, String)> {
        self.objects
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.contains("/events/"))
            .map(|(_, e)| {
                (
                    e["type"].as_str().unwrap_or("").to_string(),
                    e["reason"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}

fn decode(s: &str) -> String {
    let mut out = Vec::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn respond(status: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

fn not_found() -> Response<Body> {
    respond(
        StatusCode::NOT_FOUND,
        json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}
