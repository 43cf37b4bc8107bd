//! A small HTTP client for the API, used by agents, the demo and the command line.

use serde_json::Value;

/// An answer the server refused, with its error envelope unpacked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{status} {code}: {message}{}", field.as_ref().map(|f| format!(" (field `{f}`)")).unwrap_or_default())]
    Api {
        status: u16,
        code: String,
        message: String,
        field: Option<String>,
    },
    #[error("cannot reach the server: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("writing the answer: {0}")]
    Write(#[from] std::io::Error),
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            ClientError::Transport(_) | ClientError::Write(_) => None,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    pub fn new(base: &str, token: &str) -> Client {
        Client {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .expect("a default HTTP client builds"),
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        }
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        answer(response).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.post_with_key(path, body, None).await
    }

    pub async fn post_with_key(
        &self,
        path: &str,
        body: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body);
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        answer(request.send().await?).await
    }

    /// GETs a long answer (an export, a report) into `out` as it arrives, with no time
    /// limit but the server's; returns how many bytes were written.
    pub async fn download(
        &self,
        path: &str,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<u64, ClientError> {
        let mut response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(std::time::Duration::from_secs(24 * 3600))
            .send()
            .await?;
        if !response.status().is_success() {
            return answer(response).await.map(|_| 0);
        }
        let mut written = 0;
        while let Some(chunk) = response.chunk().await? {
            out.write_all(&chunk)?;
            written += chunk.len() as u64;
        }
        out.flush()?;
        Ok(written)
    }

    /// POSTs with an empty body and returns the answer as text (signed notes).
    pub async fn post_text(&self, path: &str) -> Result<String, ClientError> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        if response.status().is_success() {
            return Ok(response.text().await?);
        }
        answer(response).await.map(|v| v.to_string())
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let response = self
            .http
            .put(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await?;
        answer(response).await
    }

    /// Every item of a paged list, following `next` until the end.
    pub async fn all_pages(&self, path: &str, items: &str) -> Result<Vec<Value>, ClientError> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let separator = if path.contains('?') { '&' } else { '?' };
            let url = match &after {
                Some(a) => format!("{path}{separator}limit=1000&after={a}"),
                None => format!("{path}{separator}limit=1000"),
            };
            let page = self.get(&url).await?;
            all.extend(page[items].as_array().cloned().unwrap_or_default());
            match &page["next"] {
                Value::Null => return Ok(all),
                Value::String(s) => after = Some(s.clone()),
                other => after = Some(other.to_string()),
            }
        }
    }
}

async fn answer(response: reqwest::Response) -> Result<Value, ClientError> {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status < 400 {
        return Ok(body);
    }
    let error = &body["error"];
    Err(ClientError::Api {
        status,
        code: error["code"].as_str().unwrap_or("unknown").to_owned(),
        message: error["message"].as_str().unwrap_or("no message").to_owned(),
        field: error["field"].as_str().map(str::to_owned),
    })
}
