//! S3-compatible object storage (AWS S3, Ceph RGW, MinIO, Garage, Wasabi, B2) as a
//! backend, through the `object_store` crate on a small tokio runtime owned by the
//! backend, behind the same synchronous trait as a local folder.
//!
//! Repository URLs follow restic's: `s3:https://HOST[:PORT]/BUCKET[/PREFIX]`,
//! `s3:http://127.0.0.1:9000/BUCKET/PREFIX`, or `s3://BUCKET/PREFIX` for AWS itself.
//! Credentials and region come from the usual AWS variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_DEFAULT_REGION`). Requests go
//! path-style when the endpoint is an IP address or has a port (a self-hosted store), else
//! virtual-host style; `--option s3.bucket-lookup=path|dns` decides otherwise.
//!
//! Transient faults (5xx, 429, timeouts, dropped connections, bodies cut short) are retried
//! with exponential backoff for up to [`RETRY_TIMEOUT`] (`--option s3.retry-timeout`); an
//! error that survives the retries names the object. A listing is read to its end or fails: a partial listing is never returned.
//! New objects that must not exist yet (locks) are written with `If-None-Match: *`.

use super::Backend;
use crate::repo::files::Listed;
use crate::{Error, Result};
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path as ObjPath;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions, ObjectStore, PutMode, PutOptions,
    PutPayload, RetryConfig,
};
use std::time::Duration;

/// How long one request is retried before its error is reported, by default.
pub const RETRY_TIMEOUT: Duration = Duration::from_secs(120);

/// What a repository URL and `--option s3.*` say about the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct S3Config {
    /// `https://host:port` (None for AWS itself).
    pub endpoint: Option<String>,
    pub bucket: String,
    /// Key prefix of the repository inside the bucket ("" for the bucket's root).
    pub prefix: String,
    pub path_style: bool,
    pub storage_class: Option<String>,
    pub region: Option<String>,
    /// A PEM file of the CA that signed the endpoint's certificate.
    pub ca_file: Option<String>,
    /// Conditional writes (`If-None-Match`) for objects that must not exist yet; off for
    /// stores without them (then a HEAD, with a race window, guards locks).
    pub conditional_put: bool,
    /// How long a failing request is retried before its error is reported.
    pub retry_timeout: Duration,
}

impl S3Config {
    /// Parses `s3:https://host/bucket/prefix`, `s3:http://…`, `s3://bucket/prefix`, and
    /// applies `options` (`s3.storage-class`, `s3.bucket-lookup`, `s3.region`,
    /// `s3.ca-file`, `s3.conditional-put`, `s3.retry-timeout`).
    pub fn parse(url: &str, options: &[(String, String)]) -> Result<S3Config> {
        let bad = |why: &str| {
            Error::Usage(format!(
                "{url:?} is not an S3 repository URL ({why}); use s3:https://HOST/BUCKET/PREFIX, \
                 s3:http://127.0.0.1:9000/BUCKET/PREFIX or s3://BUCKET/PREFIX"
            ))
        };
        let rest = url
            .strip_prefix("s3:")
            .ok_or_else(|| bad("no s3: prefix"))?;
        let (endpoint, path) = if let Some(p) = rest.strip_prefix("//") {
            (None, p)
        } else {
            let (scheme, r) = rest
                .split_once("://")
                .filter(|(s, _)| *s == "http" || *s == "https")
                .ok_or_else(|| bad("the endpoint must start with http:// or https://"))?;
            let (host, p) = r.split_once('/').ok_or_else(|| bad("no bucket"))?;
            if host.is_empty() {
                return Err(bad("no host"));
            }
            (Some(format!("{scheme}://{host}")), p)
        };
        let mut parts = path.trim_matches('/').splitn(2, '/');
        let bucket = parts.next().unwrap_or("").to_string();
        if bucket.is_empty() {
            return Err(bad("no bucket"));
        }
        let prefix = parts.next().unwrap_or("").trim_matches('/').to_string();
        let host = endpoint
            .as_deref()
            .and_then(|e| e.split("://").nth(1))
            .unwrap_or("");
        let ip_or_port = host.parse::<std::net::IpAddr>().is_ok()
            || host
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            || host.starts_with('[');
        let mut c = S3Config {
            path_style: ip_or_port,
            endpoint,
            bucket,
            prefix,
            conditional_put: true,
            retry_timeout: RETRY_TIMEOUT,
            ..Default::default()
        };
        for (k, v) in options {
            match k.as_str() {
                "s3.storage-class" => c.storage_class = Some(v.clone()),
                "s3.region" => c.region = Some(v.clone()),
                "s3.ca-file" => c.ca_file = Some(v.clone()),
                "s3.bucket-lookup" => {
                    c.path_style = match v.as_str() {
                        "path" => true,
                        "dns" => false,
                        "auto" => ip_or_port,
                        _ => {
                            return Err(Error::Usage(format!(
                                "s3.bucket-lookup={v}: use auto, dns or path"
                            )))
                        }
                    }
                }
                "s3.retry-timeout" => {
                    let secs = crate::cli::parse_wait(v).map_err(Error::Usage)?;
                    c.retry_timeout = Duration::from_secs(secs.max(1) as u64);
                }
                "s3.conditional-put" => {
                    c.conditional_put = match v.as_str() {
                        "true" | "yes" | "1" => true,
                        "false" | "no" | "0" => false,
                        _ => {
                            return Err(Error::Usage(format!(
                                "s3.conditional-put={v}: use true or false"
                            )))
                        }
                    }
                }
                _ if k.starts_with("s3.") => {
                    return Err(Error::Usage(format!(
                        "unknown option {k}; S3 repositories know s3.storage-class, \
                         s3.bucket-lookup, s3.region, s3.ca-file, s3.conditional-put, s3.retry-timeout"
                    )))
                }
                _ => {}
            }
        }
        Ok(c)
    }

    pub fn location(&self) -> String {
        let p = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("/{}", self.prefix)
        };
        match &self.endpoint {
            Some(e) => format!("s3:{e}/{}{p}", self.bucket),
            None => format!("s3://{}{p}", self.bucket),
        }
    }
}

pub struct S3Backend {
    store: AmazonS3,
    rt: tokio::runtime::Runtime,
    config: S3Config,
}

impl S3Backend {
    pub fn open(config: S3Config) -> Result<S3Backend> {
        let mut client = ClientOptions::new()
            .with_timeout(Duration::from_secs(120))
            .with_connect_timeout(Duration::from_secs(15));
        if let Some(ca) = &config.ca_file {
            let pem =
                std::fs::read(ca).map_err(|e| Error::io(format!("reading CA file {ca}"), e))?;
            let cert = object_store::Certificate::from_pem(&pem)
                .map_err(|e| Error::Usage(format!("CA file {ca}: {e}")))?;
            client = client.with_root_certificate(cert);
        }
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_virtual_hosted_style_request(!config.path_style)
            .with_client_options(client)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(200),
                    max_backoff: Duration::from_secs(15),
                    base: 2.0,
                },
                max_retries: 12,
                retry_timeout: config.retry_timeout,
            })
            .with_conditional_put(if config.conditional_put {
                S3ConditionalPut::ETagMatch
            } else {
                S3ConditionalPut::Disabled
            });
        if let Some(e) = &config.endpoint {
            b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
        }
        if let Some(r) = &config.region {
            b = b.with_region(r);
        } else if std::env::var_os("AWS_DEFAULT_REGION").is_none()
            && std::env::var_os("AWS_REGION").is_none()
        {
            b = b.with_region("us-east-1");
        }
        let store = b
            .build()
            .map_err(|e| Error::Usage(format!("S3 repository {}: {e}", config.location())))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("cairn-s3")
            .build()
            .map_err(|e| Error::io("starting the S3 client's runtime", e))?;
        Ok(S3Backend { store, rt, config })
    }

    fn path(&self, name: &str) -> ObjPath {
        if self.config.prefix.is_empty() {
            ObjPath::from(name)
        } else {
            ObjPath::from(format!("{}/{name}", self.config.prefix))
        }
    }

    /// An error that outlived the retries, or that no retry can help: names the object
    /// and says what to do.
    fn err(&self, what: &str, name: &str, e: object_store::Error) -> Error {
        let advice = match &e {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => "check AWS_ACCESS_KEY_ID, \
                 AWS_SECRET_ACCESS_KEY and the bucket's policy"
                .to_string(),
            e if transient(e) => format!(
                "retried for up to {} s; check that the store is reachable and healthy, \
                 or allow longer with --option s3.retry-timeout=10m",
                self.config.retry_timeout.as_secs()
            ),
            _ => "the store refused the request; check the repository URL and --option values"
                .to_string(),
        };
        Error::io(
            format!("{what} {name} in {}", self.config.location()),
            std::io::Error::other(format!("{e} ({advice})")),
        )
    }

    fn put_opts(&self, mode: PutMode) -> PutOptions {
        let mut attributes = Attributes::new();
        if let Some(c) = &self.config.storage_class {
            attributes.insert(Attribute::StorageClass, c.clone().into());
        }
        PutOptions {
            mode,
            attributes,
            ..Default::default()
        }
    }
}

/// Whether sending the request again may help. object_store maps 404, 409, 412, 401 and
/// 403 to their own variants; everything else (5xx after its own retries, a dropped
/// connection, a body cut short, a response that does not parse) arrives as `Generic`.
/// Among those, a 4xx other than timeout and throttling is the request's own fault.
fn transient(e: &object_store::Error) -> bool {
    let object_store::Error::Generic { source, .. } = e else {
        return false;
    };
    let text = source.to_string();
    let code = text
        .find("status code: ")
        .and_then(|i| text.get(i + 13..i + 16));
    !matches!(code, Some(c) if c.starts_with('4') && c != "408" && c != "429")
}

impl S3Backend {
    /// Runs one request until it succeeds, fails for good, or [`S3Config::retry_timeout`]
    /// has passed. object_store already retries 5xx and throttling responses, but not a
    /// PUT whose connection dropped after the request was sent (it cannot know the PUT is
    /// idempotent) nor a response body cut short. Every cairn object is content-addressed
    /// or written once under a random name, so sending it again is safe.
    fn retrying<T, F, Fut>(&self, mut op: F) -> std::result::Result<T, object_store::Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, object_store::Error>>,
    {
        let start = std::time::Instant::now();
        let mut wait = Duration::from_millis(100);
        loop {
            match self.rt.block_on(op()) {
                Err(e) if transient(&e) && start.elapsed() + wait < self.config.retry_timeout => {
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                r => return r,
            }
        }
    }

    fn put_mode(
        &self,
        name: &str,
        data: &[u8],
        mode: PutMode,
    ) -> std::result::Result<(), object_store::Error> {
        let p = self.path(name);
        let payload = PutPayload::from(bytes::Bytes::copy_from_slice(data));
        self.retrying(|| {
            self.store
                .put_opts(&p, payload.clone(), self.put_opts(mode.clone()))
        })
        .map(|_| ())
    }
}

impl Backend for S3Backend {
    fn location(&self) -> String {
        self.config.location()
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        let p = self.path(name);
        self.retrying(|| async { self.store.get(&p).await?.bytes().await })
            .map(|b| b.to_vec())
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => Error::io(
                    format!("reading {name} in {}", self.config.location()),
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no such object"),
                ),
                e => self.err("reading", name, e),
            })
    }

    fn get_range(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let p = self.path(name);
        let end = offset + len as u64;
        let b = self
            .retrying(|| self.store.get_range(&p, offset..end))
            .map_err(|e| self.err("reading", name, e))?;
        if b.len() != len {
            return Err(Error::corrupt(
                name,
                format!("object is truncated: {len} bytes at offset {offset} are past its end"),
            ));
        }
        Ok(b.to_vec())
    }

    fn put(&self, name: &str, data: &[u8]) -> Result<()> {
        self.put_mode(name, data, PutMode::Overwrite)
            .map_err(|e| self.err("writing", name, e))
    }

    fn put_new(&self, name: &str, data: &[u8]) -> Result<bool> {
        if !self.config.conditional_put {
            if self.size(name)?.is_some() {
                return Ok(false);
            }
            self.put(name, data)?;
            return Ok(true);
        }
        match self.put_mode(name, data, PutMode::Create) {
            Ok(()) => Ok(true),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => {
                // A retry after a lost response finds the object its first attempt made:
                // that is a success, told apart by the bytes.
                Ok(self.get(name).is_ok_and(|b| b == data))
            }
            Err(e) => Err(self.err("creating", name, e)),
        }
    }

    fn list(&self, dir: &str) -> Result<Vec<Listed>> {
        let p = self.path(dir);
        let skip = if self.config.prefix.is_empty() {
            0
        } else {
            self.config.prefix.len() + 1
        };
        let metas: Vec<object_store::ObjectMeta> = self
            .retrying(|| self.store.list(Some(&p)).try_collect())
            .map_err(|e| self.err("listing", dir, e))?;
        let mut out: Vec<Listed> = metas
            .into_iter()
            .filter_map(|m| {
                let full = m.location.as_ref();
                let name = full.get(skip..)?.to_string();
                let last = name.rsplit('/').next()?;
                (!last.starts_with('.')).then_some(Listed { name, size: m.size })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn size(&self, name: &str) -> Result<Option<u64>> {
        Ok(self.head(name)?.map(|m| m.size))
    }

    fn modified(&self, name: &str) -> Result<Option<std::time::SystemTime>> {
        Ok(self.head(name)?.map(|m| m.last_modified.into()))
    }

    fn delete(&self, name: &str) -> Result<()> {
        let p = self.path(name);
        match self.retrying(|| self.store.delete(&p)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("deleting", name, e)),
        }
    }

    fn parallel_writes(&self) -> usize {
        3
    }
}

impl S3Backend {
    fn head(&self, name: &str) -> Result<Option<object_store::ObjectMeta>> {
        let p = self.path(name);
        match self.retrying(|| self.store.head(&p)) {
            Ok(m) => Ok(Some(m)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("inspecting", name, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_options() {
        let c = S3Config::parse("s3:http://127.0.0.1:9000/bkt/a/b", &[]).unwrap();
        assert_eq!(
            (
                c.endpoint.as_deref(),
                c.bucket.as_str(),
                c.prefix.as_str(),
                c.path_style
            ),
            (Some("http://127.0.0.1:9000"), "bkt", "a/b", true)
        );
        assert_eq!(c.location(), "s3:http://127.0.0.1:9000/bkt/a/b");
        let c = S3Config::parse("s3:https://s3.example.net/backups/cairn", &[]).unwrap();
        assert!(!c.path_style);
        let c = S3Config::parse(
            "s3://bucket",
            &[("s3.storage-class".into(), "STANDARD_IA".into())],
        )
        .unwrap();
        assert_eq!(
            (c.endpoint, c.prefix.as_str(), c.storage_class.as_deref()),
            (None, "", Some("STANDARD_IA"))
        );
        let opts = [("s3.bucket-lookup".to_string(), "path".to_string())];
        assert!(
            S3Config::parse("s3:https://s3.example.net/b", &opts)
                .unwrap()
                .path_style
        );
        assert!(S3Config::parse("s3:ftp://x/b", &[]).is_err());
        assert!(S3Config::parse("s3:https://host", &[]).is_err());
        assert!(S3Config::parse("s3:https://h/b", &[("s3.nope".into(), "1".into())]).is_err());
    }
}
