//! The checkpoint store, on `object_store`.
//!
//! Layout under a store URL and a run name:
//!
//! ```text
//! <store>/<run>/ckpt/step-<N>/<shard>.safetensors   one object per shard
//! <store>/<run>/ckpt/step-<N>/COMMIT                manifest, written last, create-only
//! ```
//!
//! A step exists only once its `COMMIT` does. The manifest names every shard with
//! its size and sha256; [`CheckpointStore::load_latest`] walks the commits from the
//! newest down and takes the first whose shards all verify, warning about each one
//! it skips. Writing `COMMIT` with a create-only put means two writers of the same
//! step cannot both succeed. [`CheckpointStore::save_async`] uploads on a
//! background runtime so training continues while bytes move.
//!
//! This module knows nothing about models: shards are named byte blobs, and the
//! helpers [`encode_tensors`] / [`decode_tensors`] convert named tensors to and from
//! safetensors.

use crate::error::StoreError;
pub use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use tch::{Kind, Tensor};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

/// Manifest format version written by this build.
pub const FORMAT_VERSION: u32 = 1;

/// One shard as listed in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShardEntry {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// The `COMMIT` manifest of one checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub step: u64,
    pub world_size: usize,
    /// Hash of the job spec that wrote it: a resumed run can tell it is the same job.
    pub spec_hash: String,
    pub created_unix_ms: u64,
    pub shards: Vec<ShardEntry>,
}

/// A named blob to store in a checkpoint.
#[derive(Debug, Clone)]
pub struct Shard {
    pub name: String,
    pub data: Bytes,
}

/// A verified checkpoint read back from the store.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub manifest: Manifest,
    pub shards: BTreeMap<String, Bytes>,
    /// Newer commits that failed verification and were skipped, with the reason.
    pub skipped: Vec<(u64, String)>,
}

/// What a save needs besides the shards.
#[derive(Debug, Clone)]
pub struct SaveMeta {
    pub step: u64,
    pub world_size: usize,
    pub spec_hash: String,
}

/// Checkpoints of one run in one object store.
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    url: String,
    run_prefix: Path,
    runtime: Arc<Runtime>,
    /// The run's directory when the store is local: object stores have no
    /// directories, but a file system keeps empty ones after their objects go.
    local_dir: Option<std::path::PathBuf>,
}

/// A checkpoint upload running in the background.
pub struct PendingSave {
    step: u64,
    handle: JoinHandle<Result<Vec<Bytes>, StoreError>>,
    runtime: Arc<Runtime>,
}

impl PendingSave {
    pub fn step(&self) -> u64 {
        self.step
    }
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
    /// Blocks until the upload and its commit are done, and hands back the shard
    /// buffers so the next snapshot can reuse their (already mapped) memory.
    pub fn wait(self) -> Result<Vec<Bytes>, StoreError> {
        match self.runtime.block_on(self.handle) {
            Ok(r) => r,
            Err(e) => Err(StoreError::Background(e.to_string())),
        }
    }
}

/// Builds the object store for a URL: `file:///abs/dir`, a plain path (relative to
/// the current directory), `memory://`, or `s3://bucket[/prefix]` (credentials,
/// region and a custom endpoint from the usual `AWS_*` variables; plain HTTP when
/// `AWS_ALLOW_HTTP=true`). Returns the store and the prefix inside it.
pub fn open_store(url: &str) -> Result<(Arc<dyn ObjectStore>, Path), StoreError> {
    let bad = |reason: &str| StoreError::BadUrl { url: url.to_string(), reason: reason.to_string() };
    if url.trim().is_empty() {
        return Err(bad("it is empty"));
    }
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r),
        None => ("file".to_string(), url),
    };
    match scheme.as_str() {
        "file" => {
            let dir = std::path::PathBuf::from(rest);
            let dir = if dir.is_absolute() { dir } else { std::env::current_dir()?.join(dir) };
            std::fs::create_dir_all(&dir).map_err(|e| StoreError::BadUrl {
                url: url.to_string(),
                reason: format!("cannot create directory {}: {e}", dir.display()),
            })?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                .map_err(|source| StoreError::Unusable { url: url.to_string(), source })?;
            Ok((Arc::new(fs), Path::default()))
        }
        "memory" => Ok((Arc::new(object_store::memory::InMemory::new()), Path::from(rest))),
        "s3" => {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("an s3:// URL needs a bucket: s3://bucket/prefix"));
            }
            let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
            if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
                b = b.with_region("us-east-1");
            }
            if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
                b = b.with_endpoint(endpoint);
            }
            // Fail within seconds, not minutes, when the endpoint is down: a training run
            // should stop at start-up with a clear error rather than hang in retries.
            b = b.with_retry(object_store::RetryConfig {
                max_retries: 3,
                retry_timeout: std::time::Duration::from_secs(20),
                ..Default::default()
            });
            let s3 = b.build().map_err(|source| StoreError::Unusable { url: url.to_string(), source })?;
            Ok((Arc::new(s3), Path::from(prefix)))
        }
        other => Err(StoreError::UnknownScheme { scheme: other.to_string(), url: url.to_string() }),
    }
}

/// The local directory that holds run `run` when `url` names a file store (a plain
/// path or `file://`), so callers can tell whether a local file already lives in
/// the store.
pub fn local_run_dir(url: &str, run: &str) -> Option<std::path::PathBuf> {
    let rest = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("file") => rest,
        Some(_) => return None,
        None => url,
    };
    let dir = std::path::PathBuf::from(rest);
    let dir = if dir.is_absolute() { dir } else { std::env::current_dir().ok()?.join(dir) };
    Some(dir.join(run))
}

fn join(base: &Path, rel: &str) -> Path {
    let mut p = base.clone();
    for part in rel.split('/').filter(|s| !s.is_empty()) {
        p = p.clone().join(part);
    }
    p
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn is_exists(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. })
}

impl CheckpointStore {
    /// Opens the checkpoints of `run` in the store at `url`. Nothing is written.
    pub fn open(url: &str, run: &str) -> Result<Self, StoreError> {
        validate_run_name(run).map_err(|reason| StoreError::BadUrl { url: url.to_string(), reason })?;
        let (store, prefix) = open_store(url)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kiln-ckpt")
            .enable_all()
            .build()?;
        Ok(CheckpointStore {
            store,
            url: url.to_string(),
            run_prefix: join(&prefix, run),
            runtime: Arc::new(runtime),
            local_dir: local_run_dir(url, run),
        })
    }

    /// Another view of the same store (shares the in-memory backend for `memory://`).
    pub fn with_run(&self, run: &str) -> Result<Self, StoreError> {
        validate_run_name(run).map_err(|reason| StoreError::BadUrl { url: self.url.clone(), reason })?;
        let mut prefix = self.run_prefix.clone();
        let parts: Vec<_> = prefix.parts().collect();
        prefix = Path::from_iter(parts[..parts.len().saturating_sub(1)].iter().cloned());
        Ok(CheckpointStore {
            store: self.store.clone(),
            url: self.url.clone(),
            run_prefix: join(&prefix, run),
            runtime: self.runtime.clone(),
            local_dir: local_run_dir(&self.url, run),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Writes and deletes a probe object: fails early, before any training, when the
    /// store is unreachable, read-only or misconfigured.
    pub fn check_writable(&self) -> Result<(), StoreError> {
        let probe = self.run_prefix.clone().join(format!(".kiln-probe-{}-{}", std::process::id(), now_ms()));
        let store = self.store.clone();
        let url = self.url.clone();
        self.runtime.block_on(async move {
            store
                .put(&probe, PutPayload::from_static(b"probe"))
                .await
                .map_err(|source| StoreError::Unusable { url: url.clone(), source })?;
            store.delete(&probe).await.map_err(|source| StoreError::Unusable { url, source })
        })
    }

    fn step_dir(&self, step: u64) -> Path {
        self.run_prefix.clone().join("ckpt").clone().join(format!("step-{step:010}"))
    }

    /// Uploads the shards, then the manifest with a create-only put. Blocks.
    pub fn save(&self, meta: SaveMeta, shards: Vec<Shard>) -> Result<Manifest, StoreError> {
        let fut = save_task(self.store.clone(), self.step_dir(meta.step), meta, shards);
        self.runtime.block_on(fut).map(|(manifest, _)| manifest)
    }

    /// As [`CheckpointStore::save`], on the background runtime. The shards are
    /// already host-memory snapshots, so training may change its tensors at once.
    pub fn save_async(&self, meta: SaveMeta, shards: Vec<Shard>) -> PendingSave {
        let step = meta.step;
        let fut = save_task(self.store.clone(), self.step_dir(step), meta, shards);
        let handle = self.runtime.spawn(async move { fut.await.map(|(_, buffers)| buffers) });
        PendingSave { step, handle, runtime: self.runtime.clone() }
    }

    /// Steps that have a `COMMIT` object, newest first (not yet verified).
    pub fn committed_steps(&self) -> Result<Vec<u64>, StoreError> {
        let mut steps: Vec<u64> = self.all_step_dirs()?.into_iter().filter(|(_, c)| *c).map(|(s, _)| s).collect();
        steps.sort_unstable_by(|a, b| b.cmp(a));
        Ok(steps)
    }

    /// Every step directory with whether it is committed.
    fn all_step_dirs(&self) -> Result<Vec<(u64, bool)>, StoreError> {
        let prefix = self.run_prefix.clone().join("ckpt");
        let store = self.store.clone();
        let objects: Vec<object_store::ObjectMeta> = self
            .runtime
            .block_on(async move { store.list(Some(&prefix)).try_collect().await })
            .map_err(|source| StoreError::Object { path: self.run_prefix.to_string(), source })?;
        let mut steps: BTreeMap<u64, bool> = BTreeMap::new();
        for o in objects {
            let parts: Vec<String> = o.location.parts().map(|p| p.as_ref().to_string()).collect();
            let n = parts.len();
            if n < 2 {
                continue;
            }
            if let Some(step) = parts[n - 2].strip_prefix("step-").and_then(|s| s.parse::<u64>().ok()) {
                let committed = steps.entry(step).or_insert(false);
                *committed |= parts[n - 1] == "COMMIT";
            }
        }
        Ok(steps.into_iter().collect())
    }

    /// Reads and verifies one committed step.
    pub fn load_step(&self, step: u64) -> Result<(Manifest, BTreeMap<String, Bytes>), StoreError> {
        let dir = self.step_dir(step);
        let store = self.store.clone();
        self.runtime.block_on(async move {
            let commit = dir.clone().join("COMMIT");
            let raw = get_bytes(&*store, &commit).await.map_err(missing_is_corrupt)?;
            let manifest: Manifest = serde_json::from_slice(&raw)
                .map_err(|source| StoreError::Manifest { path: commit.to_string(), source })?;
            if manifest.step != step {
                return Err(StoreError::Corrupt {
                    path: commit.to_string(),
                    reason: format!("manifest says step {} in directory of step {step}", manifest.step),
                });
            }
            let mut shards = BTreeMap::new();
            for entry in &manifest.shards {
                let path = dir.clone().join(entry.name.as_str());
                let data = get_bytes(&*store, &path).await.map_err(missing_is_corrupt)?;
                if data.len() as u64 != entry.bytes {
                    return Err(StoreError::Corrupt {
                        path: path.to_string(),
                        reason: format!("{} bytes, manifest says {} (truncated?)", data.len(), entry.bytes),
                    });
                }
                let sum = sha256_hex(&data);
                if sum != entry.sha256 {
                    return Err(StoreError::Corrupt {
                        path: path.to_string(),
                        reason: format!("sha256 {sum} does not match the manifest's {}", entry.sha256),
                    });
                }
                shards.insert(entry.name.clone(), data);
            }
            Ok((manifest, shards))
        })
    }

    /// The newest committed checkpoint whose shards verify; newer ones that do not are
    /// skipped with a warning. `Ok(None)` when the run has no commit at all.
    pub fn load_latest(&self) -> Result<Option<Loaded>, StoreError> {
        let mut skipped = Vec::new();
        for step in self.committed_steps()? {
            match self.load_step(step) {
                Ok((manifest, shards)) => return Ok(Some(Loaded { manifest, shards, skipped })),
                // A timeout or a 5xx says nothing about the checkpoint: give up rather
                // than fall back to an older step (and set a good one aside).
                Err(e @ (StoreError::Object { .. } | StoreError::Runtime(_))) => return Err(e),
                Err(e) => {
                    tracing::warn!(step, error = %e, "checkpoint failed verification; falling back to the previous commit");
                    skipped.push((step, e.to_string()));
                }
            }
        }
        if skipped.is_empty() {
            Ok(None)
        } else {
            Err(StoreError::Corrupt {
                path: self.run_prefix.clone().join("ckpt").to_string(),
                reason: format!(
                    "every committed checkpoint failed verification: {}",
                    skipped.iter().map(|(s, e)| format!("step {s}: {e}")).collect::<Vec<_>>().join("; ")
                ),
            })
        }
    }

    /// Keeps the newest `keep` committed steps and deletes older ones, and any
    /// uncommitted step directory older than the newest commit (left by a crash).
    /// The COMMIT goes first so a half-deleted step is never resumable.
    pub fn retain(&self, keep: usize) -> Result<Vec<u64>, StoreError> {
        let dirs = self.all_step_dirs()?;
        let newest = dirs.iter().filter(|(_, c)| *c).map(|(s, _)| *s).max();
        let mut committed: Vec<u64> = dirs.iter().filter(|(_, c)| *c).map(|(s, _)| *s).collect();
        committed.sort_unstable_by(|a, b| b.cmp(a));
        let mut doomed: Vec<u64> = committed.iter().skip(keep.max(1)).copied().collect();
        if let Some(newest) = newest {
            doomed.extend(dirs.iter().filter(|(s, c)| !*c && *s < newest).map(|(s, _)| *s));
        }
        for &step in &doomed {
            let dir = self.step_dir(step);
            let store = self.store.clone();
            self.runtime
                .block_on(async move {
                    let _ = store.delete(&dir.clone().join("COMMIT")).await;
                    let objs: Vec<object_store::ObjectMeta> = store.list(Some(&dir)).try_collect().await?;
                    for o in objs {
                        store.delete(&o.location).await?;
                    }
                    Ok::<(), object_store::Error>(())
                })
                .map_err(|source| StoreError::Object { path: self.step_dir(step).to_string(), source })?;
            if let Some(dir) = &self.local_dir {
                // Only succeeds when empty, which is the point.
                let _ = std::fs::remove_dir(dir.join("ckpt").join(format!("step-{step:010}")));
            }
        }
        doomed.sort_unstable();
        Ok(doomed)
    }

    /// Takes a step out of the resumable set without destroying evidence: its COMMIT
    /// is copied to `COMMIT.corrupt` and removed, so the step can be written again.
    pub fn quarantine(&self, step: u64) -> Result<(), StoreError> {
        let dir = self.step_dir(step);
        let store = self.store.clone();
        self.runtime
            .block_on(async move {
                let commit = dir.clone().join("COMMIT");
                store.copy(&commit, &dir.clone().join("COMMIT.corrupt")).await?;
                store.delete(&commit).await
            })
            .map_err(|source| StoreError::Object { path: self.step_dir(step).to_string(), source })
    }

    /// Writes a small object under the run (metrics, reports); overwrites.
    pub fn put_object(&self, rel: &str, data: Bytes) -> Result<(), StoreError> {
        let path = join(&self.run_prefix, rel);
        let store = self.store.clone();
        self.runtime
            .block_on(async move { store.put(&path, PutPayload::from_bytes(data)).await.map(|_| ()) })
            .map_err(|source| StoreError::Object { path: join(&self.run_prefix, rel).to_string(), source })
    }

    /// Reads an object under the run.
    pub fn get_object(&self, rel: &str) -> Result<Bytes, StoreError> {
        let path = join(&self.run_prefix, rel);
        let store = self.store.clone();
        self.runtime.block_on(async move { get_bytes(&*store, &path).await })
    }
}

/// A missing object of a committed checkpoint means the checkpoint is damaged;
/// any other storage error is passed on as it is.
fn missing_is_corrupt(e: StoreError) -> StoreError {
    match e {
        StoreError::Object { path, source: object_store::Error::NotFound { .. } } => {
            StoreError::Corrupt { path, reason: "object is missing".into() }
        }
        other => other,
    }
}

async fn get_bytes(store: &dyn ObjectStore, path: &Path) -> Result<Bytes, StoreError> {
    let obj = store.get(path).await.map_err(|source| StoreError::Object { path: path.to_string(), source })?;
    obj.bytes().await.map_err(|source| StoreError::Object { path: path.to_string(), source })
}

async fn save_task(
    store: Arc<dyn ObjectStore>,
    dir: Path,
    meta: SaveMeta,
    shards: Vec<Shard>,
) -> Result<(Manifest, Vec<Bytes>), StoreError> {
    let commit = dir.clone().join("COMMIT");
    // A step that is already committed is never rewritten: its shards are what the
    // manifest vouches for.
    if store.head(&commit).await.is_ok() {
        return Err(StoreError::AlreadyCommitted { step: meta.step, path: commit.to_string() });
    }
    let mut entries = Vec::with_capacity(shards.len());
    let buffers: Vec<Bytes> = shards.iter().map(|s| s.data.clone()).collect();
    for shard in shards {
        let path = dir.clone().join(shard.name.as_str());
        entries.push(ShardEntry { name: shard.name.clone(), bytes: shard.data.len() as u64, sha256: sha256_hex(&shard.data) });
        store
            .put(&path, PutPayload::from_bytes(shard.data))
            .await
            .map_err(|source| StoreError::Object { path: path.to_string(), source })?;
        fault_point("between-shards");
    }
    let manifest = Manifest {
        format: FORMAT_VERSION,
        step: meta.step,
        world_size: meta.world_size,
        spec_hash: meta.spec_hash,
        created_unix_ms: now_ms(),
        shards: entries,
    };
    let body = serde_json::to_vec_pretty(&manifest)
        .map_err(|source| StoreError::Manifest { path: commit.to_string(), source })?;
    fault_point("before-commit");
    let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
    match store.put_opts(&commit, PutPayload::from(body), opts).await {
        Ok(_) => Ok((manifest, buffers)),
        Err(e) if is_exists(&e) => Err(StoreError::AlreadyCommitted { step: meta.step, path: commit.to_string() }),
        Err(source) => Err(StoreError::Object { path: commit.to_string(), source }),
    }
}

/// Test-only crash points: `KILN_FAULT=ckpt-crash:<point>` kills the process there
/// with SIGKILL, as a power cut would. Real parts cannot crash on demand between two
/// object writes, so this is the one mock the checkpoint tests use.
fn fault_point(point: &str) {
    if let Ok(spec) = std::env::var("KILN_FAULT") {
        if spec.split(',').any(|f| f.strip_prefix("ckpt-crash:") == Some(point)) {
            // SAFETY: raise() has no preconditions; SIGKILL ends the process here.
            unsafe {
                libc::raise(libc::SIGKILL);
            }
        }
    }
}

/// Rejects run names that could escape the run's prefix or confuse the layout.
pub fn validate_run_name(run: &str) -> Result<(), String> {
    if run.is_empty() || run.len() > 128 {
        return Err(format!("run name '{run}' must have 1 to 128 characters"));
    }
    if run == "." || run == ".." || !run.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(format!("run name '{run}' may only use letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

/// Serialises named tensors as safetensors, copying each tensor's bytes once,
/// straight into the output buffer: this copy is the whole training stall of an
/// asynchronous checkpoint, so it is kept to one pass over memory. The layout is
/// the safetensors format (8-byte header length, JSON header padded to 8 bytes,
/// then the data in header order); [`decode_tensors`] reads it with the reference
/// `safetensors` crate.
pub fn encode_tensors(named: &[(String, Tensor)]) -> Result<Bytes, StoreError> {
    encode_tensors_into(named, Vec::new())
}

/// As [`encode_tensors`], writing into `buf` (cleared first). Reusing the buffer of
/// an earlier checkpoint avoids faulting in fresh pages, which on many machines
/// costs more than the copy itself.
pub fn encode_tensors_into(named: &[(String, Tensor)], mut buf: Vec<u8>) -> Result<Bytes, StoreError> {
    let mut sorted: Vec<&(String, Tensor)> = named.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    let mut parts = Vec::with_capacity(sorted.len());
    for (name, t) in sorted {
        let dtype = match t.kind() {
            Kind::Float => "F32",
            Kind::Double => "F64",
            Kind::BFloat16 => "BF16",
            Kind::Half => "F16",
            Kind::Int => "I32",
            Kind::Int64 => "I64",
            Kind::Uint8 => "U8",
            Kind::Bool => "BOOL",
            k => return Err(StoreError::Encode { name: name.clone(), reason: format!("kind {k:?} not supported") }),
        };
        let host = t.to_device(tch::Device::Cpu).contiguous();
        let len = host.numel() * host.kind().elt_size_in_bytes();
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": dtype, "shape": host.size(), "data_offsets": [offset, offset + len] }),
        );
        offset += len;
        parts.push((host, len));
    }
    let mut head = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| StoreError::Encode { name: "<header>".into(), reason: e.to_string() })?;
    while head.len() % 8 != 0 {
        head.push(b' ');
    }
    buf.clear();
    buf.reserve(8 + head.len() + offset);
    let mut out = buf;
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend_from_slice(&head);
    for (host, len) in parts {
        if len > 0 {
            // SAFETY: `host` is a contiguous CPU tensor of exactly `len` bytes, alive here.
            out.extend_from_slice(unsafe { std::slice::from_raw_parts(host.data_ptr() as *const u8, len) });
        }
    }
    Ok(Bytes::from(out))
}

/// Turns buffers handed back by [`PendingSave::wait`] into reusable memory (those
/// still shared elsewhere are dropped).
pub fn reclaim(buffers: Vec<Bytes>) -> Vec<Vec<u8>> {
    buffers.into_iter().filter_map(|b| b.try_into_mut().ok().map(Vec::from)).collect()
}

/// Reads safetensors bytes back into named CPU tensors.
pub fn decode_tensors(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, StoreError> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| StoreError::Encode { name: "<file>".into(), reason: e.to_string() })?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let kind = match view.dtype() {
            safetensors::Dtype::F32 => Kind::Float,
            safetensors::Dtype::F64 => Kind::Double,
            safetensors::Dtype::BF16 => Kind::BFloat16,
            safetensors::Dtype::F16 => Kind::Half,
            safetensors::Dtype::I32 => Kind::Int,
            safetensors::Dtype::I64 => Kind::Int64,
            safetensors::Dtype::U8 => Kind::Uint8,
            safetensors::Dtype::BOOL => Kind::Bool,
            d => return Err(StoreError::Encode { name, reason: format!("dtype {d:?} not supported") }),
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        out.push((name, Tensor::f_from_data_size(view.data(), &shape, kind)?));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Whether a store lives inside one process (`memory://`), so ranks in other
/// processes cannot share it.
pub fn is_process_local(url: &str) -> bool {
    url.split_once("://").is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("memory"))
}

/// Checks a store URL's form without opening anything (for spec validation).
pub fn open_store_url_check(url: &str) -> Result<(), String> {
    if url.trim().is_empty() {
        return Err("the store URL is empty".into());
    }
    match url.split_once("://") {
        None => Ok(()),
        Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
            "file" | "memory" => Ok(()),
            "s3" if !rest.split('/').next().unwrap_or("").is_empty() => Ok(()),
            "s3" => Err(format!("'{url}' needs a bucket: s3://bucket/prefix")),
            other => Err(format!("scheme '{other}' in '{url}' is not supported; use file://, memory:// or s3://")),
        },
    }
}
