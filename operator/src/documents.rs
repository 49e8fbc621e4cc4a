//! OpenAPI documents that workflows name by URL (`openapi.url`), fetched for the compile step.
//!
//! Reconciles come in bursts (every status write is a watch event), so each URL's outcome is kept
//! for [`DOCUMENT_TTL`]: a burst fetches it once, and a changed document is served by the first
//! reconcile after that, at the latest at the periodic resync.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::reconcile::lock;

/// How long one fetch of a URL, headers and body, may take.
pub const DOCUMENT_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest document accepted, as in the data plane's folder mode.
pub const MAX_DOCUMENT_BYTES: usize = 8 * 1024 * 1024;
/// How long a fetched document (or why it could not be fetched) is reused.
pub const DOCUMENT_TTL: Duration = Duration::from_secs(60);

type Fetched = Result<String, String>;

/// Fetches documents with one pooled client, and remembers each outcome for a while.
pub struct DocumentFetcher {
    client: reqwest::Client,
    recent: Mutex<HashMap<String, (Instant, Fetched)>>,
}

impl Default for DocumentFetcher {
    fn default() -> Self {
        Self::new()
    }
}

impl DocumentFetcher {
    pub fn new() -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(DOCUMENT_FETCH_TIMEOUT)
                .build()
                .expect("a client with a timeout builds"),
            recent: Mutex::default(),
        }
    }

    /// Each URL's document, or why it could not be fetched (the compile step puts that reason in
    /// the workflow's status). URLs not fetched recently are fetched concurrently.
    pub async fn fetch(&self, urls: &[String]) -> BTreeMap<String, Fetched> {
        let now = Instant::now();
        let mut documents = BTreeMap::new();
        let mut stale = Vec::new();
        {
            let mut recent = lock(&self.recent);
            recent.retain(|_, (at, _)| now.duration_since(*at) < DOCUMENT_TTL);
            for url in urls {
                match recent.get(url) {
                    Some((_, fetched)) => {
                        documents.insert(url.clone(), fetched.clone());
                    }
                    None => stale.push(url),
                }
            }
        }
        let fetched = futures::future::join_all(stale.iter().map(|url| self.fetch_one(url))).await;
        let mut recent = lock(&self.recent);
        for (url, result) in stale.into_iter().zip(fetched) {
            if let Err(reason) = &result {
                tracing::warn!(url = %url, reason = %reason, "cannot fetch an OpenAPI document");
            }
            recent.insert(url.clone(), (now, result.clone()));
            documents.insert(url.clone(), result);
        }
        documents
    }

    async fn fetch_one(&self, url: &str) -> Fetched {
        let mut response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| describe(&e))?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e))? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        String::from_utf8(body).map_err(|_| "the document is not UTF-8".into())
    }
}

fn too_large() -> String {
    format!("the document is larger than {MAX_DOCUMENT_BYTES} bytes")
}

/// reqwest's own message says only "error sending request"; the causes say why.
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        format!("no answer within {}s", DOCUMENT_FETCH_TIMEOUT.as_secs())
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::fixtures::{document_server, openapi_doc};

    #[tokio::test]
    async fn documents_are_fetched_once_per_burst_and_failures_say_why() {
        let (base, hits) = document_server().await;
        let fetcher = DocumentFetcher::new();
        let urls = [
            format!("{base}/openapi.json"),
            format!("{base}/missing"),
            format!("{base}/huge"),
        ];
        let first = fetcher.fetch(&urls).await;
        let doc: serde_json::Value =
            serde_json::from_str(first[&urls[0]].as_ref().unwrap()).unwrap();
        assert_eq!(doc, openapi_doc());
        assert_eq!(first[&urls[1]], Err("HTTP 404 Not Found".to_owned()));
        assert_eq!(
            first[&urls[2]],
            Err("the document is larger than 8388608 bytes".to_owned())
        );
        assert_eq!(hits.load(Ordering::SeqCst), 3);

        // The next reconciles of the burst reuse the outcomes.
        assert_eq!(fetcher.fetch(&urls).await, first);
        assert_eq!(hits.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_unreachable_server_is_named_in_the_reason() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("http://127.0.0.1:{port}/openapi.json");
        let fetched = DocumentFetcher::new()
            .fetch(std::slice::from_ref(&url))
            .await;
        let reason = fetched[&url].as_ref().unwrap_err();
        assert!(reason.contains("127.0.0.1"), "{reason}");
        assert!(reason.to_lowercase().contains("connect"), "{reason}");
    }
}
