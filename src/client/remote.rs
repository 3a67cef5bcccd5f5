//! The HTTP calls of the command-line client.

use std::time::Duration;

use serde_json::Value;

use super::Connection;

/// How long the tail waits before reconnecting after its connection dropped.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no credentials: set AUDITOR_TOKEN to an API token, or AUDITOR_USER and AUDITOR_PASSWORD"
    )]
    NoCredentials,
    #[error("`{0}` is not a server URL (e.g. https://audit.example.com)")]
    BadUrl(String),
    #[error("{0}")]
    Usage(String),
    #[error("cannot read the CA certificate {path}: {reason}")]
    CaCert { path: String, reason: String },
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the server refused: {status} {code}{}: {message}", field_note(.field))]
    Refused {
        status: u16,
        code: String,
        /// The parameter or field at fault, when the server names one.
        field: Option<String>,
        message: String,
    },
    #[error("the server's answer is not what this client understands: {0}")]
    Protocol(String),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

enum Credentials {
    Bearer(String),
    Basic { user: String, password: String },
}

impl Credentials {
    /// From the environment, so that no secret appears in a command line (`ps` shows those).
    fn from_env() -> Result<Self, ClientError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        match (
            var("AUDITOR_TOKEN"),
            var("AUDITOR_USER"),
            var("AUDITOR_PASSWORD"),
        ) {
            (Some(token), None, None) => Ok(Self::Bearer(token)),
            (None, Some(user), Some(password)) => Ok(Self::Basic { user, password }),
            // Acting as someone other than the caller meant is worse than not acting.
            (Some(_), _, _) => Err(ClientError::Usage(
                "both AUDITOR_TOKEN and AUDITOR_USER or AUDITOR_PASSWORD are set; unset the \
                 ones not meant for this command"
                    .into(),
            )),
            (None, Some(_), None) => Err(ClientError::Usage(
                "AUDITOR_USER is set without AUDITOR_PASSWORD; set both, or AUDITOR_TOKEN alone"
                    .into(),
            )),
            (None, None, Some(_)) => Err(ClientError::Usage(
                "AUDITOR_PASSWORD is set without AUDITOR_USER; set both, or AUDITOR_TOKEN alone"
                    .into(),
            )),
            (None, None, None) => Err(ClientError::NoCredentials),
        }
    }
}

/// `url` with anything between `://` and an `@` of its authority hidden, parseable or not.
fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

/// One page of a query.
pub struct Page {
    pub events: Vec<Value>,
    pub next_cursor: Option<String>,
}

/// A server, with the credentials to call it.
pub struct Remote {
    base: reqwest::Url,
    tenant: Option<String>,
    credentials: Credentials,
    http: reqwest::Client,
}

impl Remote {
    pub fn connect(connection: &Connection) -> Result<Self, ClientError> {
        let base = reqwest::Url::parse(connection.server.trim_end_matches('/'))
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https"))
            .ok_or_else(|| ClientError::BadUrl(without_userinfo(&connection.server)))?;
        // Credentials come from the environment alone: a URL's would be sent in their place
        // and shown in every error that names the server.
        if !base.username().is_empty() || base.password().is_some() {
            return Err(ClientError::Usage(format!(
                "the server URL `{}` carries credentials, which are not read from there; set \
                 AUDITOR_USER and AUDITOR_PASSWORD, or AUDITOR_TOKEN",
                without_userinfo(&connection.server)
            )));
        }
        crate::tls::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("auditor-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &connection.ca_cert {
            let ca_error = |reason: String| ClientError::CaCert {
                path: path.display().to_string(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
            let certificate =
                reqwest::Certificate::from_pem(&pem).map_err(|e| ca_error(e.to_string()))?;
            builder = builder.add_root_certificate(certificate);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(Self {
            base,
            tenant: connection.tenant.clone(),
            credentials: Credentials::from_env()?,
            http,
        })
    }

    fn request(&self, path: &str, pairs: &[(String, String)]) -> reqwest::RequestBuilder {
        let mut url = self.base.clone();
        url.set_path(&format!("{}{path}", self.base.path().trim_end_matches('/')));
        {
            let mut query = url.query_pairs_mut();
            for (name, value) in pairs {
                query.append_pair(name, value);
            }
            if let Some(tenant) = &self.tenant {
                query.append_pair("tenant", tenant);
            }
        }
        let url = match url.query() {
            Some("") => {
                let mut bare = url.clone();
                bare.set_query(None);
                bare
            }
            _ => url,
        };
        let request = self.http.get(url);
        match &self.credentials {
            Credentials::Bearer(token) => request.bearer_auth(token),
            Credentials::Basic { user, password } => request.basic_auth(user, Some(password)),
        }
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let response = request.send().await.map_err(|e| ClientError::Unreachable {
            url: self.base.to_string(),
            reason: crate::telemetry::error_chain(&e),
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let text = |key: &str| body["error"][key].as_str().unwrap_or("").to_owned();
        Err(ClientError::Refused {
            status,
            code: text("code"),
            field: body["error"]["field"].as_str().map(str::to_owned),
            message: text("message"),
        })
    }

    async fn json(&self, request: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        self.send(request)
            .await?
            .json()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// One page of `GET /events`.
    pub async fn query(
        &self,
        pairs: &[(String, String)],
        cursor: Option<&str>,
    ) -> Result<Page, ClientError> {
        let mut pairs = pairs.to_vec();
        if let Some(cursor) = cursor {
            pairs.push(("cursor".into(), cursor.to_owned()));
        }
        let mut page = self.json(self.request("/events", &pairs)).await?;
        let events = match page["events"].take() {
            Value::Array(events) => events,
            _ => return Err(ClientError::Protocol("no `events` in the page".into())),
        };
        Ok(Page {
            events,
            next_cursor: page["next_cursor"].as_str().map(str::to_owned),
        })
    }

    /// `GET /events/{id}`.
    pub async fn get(&self, id: &str) -> Result<Value, ClientError> {
        // Sent as typed, as one path segment: the server says what is wrong with it.
        let id = id.trim();
        if id.is_empty() {
            return Err(ClientError::Usage("an event id is required".into()));
        }
        let segment: String =
            percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).collect();
        self.json(self.request(&format!("/events/{segment}"), &[]))
            .await
    }

    /// Follows `GET /events/stream`, calling `each` with every event, reconnecting after the
    /// last one seen when the connection drops or the server says the tail lagged. Returns only
    /// on a refusal (bad filter, credentials) or when `each` fails.
    pub async fn tail(
        &self,
        pairs: &[(String, String)],
        after: Option<u64>,
        mut each: impl FnMut(&Value) -> Result<(), ClientError>,
    ) -> Result<(), ClientError> {
        let mut last = after;
        loop {
            let mut request = self.request("/events/stream", pairs);
            if let Some(last) = last {
                request = request.header("Last-Event-ID", last.to_string());
            }
            match self.send(request).await {
                Ok(mut response) => {
                    let mut frames = Frames::default();
                    while let Ok(Some(chunk)) = response.chunk().await {
                        for frame in frames.push(&chunk) {
                            if frame.event.is_none() && !frame.data.is_empty() {
                                let event: Value = serde_json::from_str(&frame.data)
                                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                                each(&event)?;
                            }
                            // The stream's first frame names where it began: a reconnection
                            // before any event resumes there too.
                            last = frame.id.and_then(|id| id.parse().ok()).or(last);
                        }
                    }
                }
                Err(refused @ ClientError::Refused { .. }) => return Err(refused),
                Err(error) => eprintln!("{error}; reconnecting"),
            }
            tokio::time::sleep(RECONNECT_AFTER).await;
        }
    }
}

/// Server-Sent Events frames, from chunks that may split them anywhere.
#[derive(Default)]
struct Frames {
    buffer: String,
}

#[derive(Debug, Default)]
struct Frame {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

impl Frames {
    fn push(&mut self, chunk: &[u8]) -> Vec<Frame> {
        self.buffer.push_str(&String::from_utf8_lossy(chunk));
        let mut frames = Vec::new();
        while let Some(end) = self.buffer.find("\n\n") {
            let text: String = self.buffer.drain(..end + 2).collect();
            let mut frame = Frame::default();
            for line in text.lines() {
                let Some((field, value)) = line.split_once(':') else {
                    continue;
                };
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "id" => frame.id = Some(value.to_owned()),
                    "event" => frame.event = Some(value.to_owned()),
                    "data" => frame.data.push_str(value),
                    _ => {}
                }
            }
            frames.push(frame);
        }
        frames
    }
}

fn field_note(field: &Option<String>) -> String {
    field
        .as_deref()
        .map_or_else(String::new, |field| format!(" (`{field}`)"))
}
