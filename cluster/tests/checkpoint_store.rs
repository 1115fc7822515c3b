//! One checkpoint-store suite, run on `memory://`, `file://` and a real S3-protocol
//! server (s3s-fs, installed by scripts/setup.sh) on loopback.

use bytes::Bytes;
use kiln_cluster::checkpoint::{decode_tensors, encode_tensors, CheckpointStore, SaveMeta, Shard};
use kiln_cluster::StoreError;
use std::net::TcpListener;
use std::process::Command;


fn meta(step: u64) -> SaveMeta {
    SaveMeta { step, world_size: 2, spec_hash: "abc".into() }
}

fn shards(step: u64) -> Vec<Shard> {
    vec![
        Shard { name: "model.safetensors".into(), data: Bytes::from(vec![step as u8; 1000 + step as usize]) },
        Shard { name: "meta.json".into(), data: Bytes::from(format!("{{\"step\":{step}}}")) },
    ]
}

/// The suite every backend runs. `url` must point at an empty location.
fn suite(url: &str) {
    let run = "suite-run";
    let store = CheckpointStore::open(url, run).unwrap();
    store.check_writable().unwrap();
    assert!(store.load_latest().unwrap().is_none(), "a new run has no checkpoint");

    // Round trip of two steps, one of them in the background.
    store.save(meta(5), shards(5)).unwrap();
    let handed_back = store.save_async(meta(10), shards(10)).wait().unwrap();
    assert_eq!(handed_back.len(), 2, "the upload hands its shard buffers back for reuse");
    assert_eq!(handed_back[0], Bytes::from(vec![10u8; 1010]));
    let loaded = store.load_latest().unwrap().unwrap();
    assert_eq!(loaded.manifest.step, 10);
    assert_eq!(loaded.manifest.world_size, 2);
    assert_eq!(loaded.shards["model.safetensors"], Bytes::from(vec![10u8; 1010]));
    assert!(loaded.skipped.is_empty());

    // Create-only commit: a second writer of step 10 is refused, and step 10 is intact.
    let second = store.with_run(run).unwrap();
    match second.save(meta(10), shards(11)) {
        Err(StoreError::AlreadyCommitted { step: 10, .. }) => {}
        other => panic!("second writer must be refused, got {other:?}"),
    }
    assert_eq!(store.load_latest().unwrap().unwrap().shards["model.safetensors"], Bytes::from(vec![10u8; 1010]));

    // A tampered shard makes the loader fall back to the previous commit.
    store.put_object("ckpt/step-0000000010/model.safetensors", Bytes::from(vec![99u8; 1010])).unwrap();
    let loaded = store.load_latest().unwrap().unwrap();
    assert_eq!(loaded.manifest.step, 5);
    assert_eq!(loaded.skipped.len(), 1);
    assert!(loaded.skipped[0].1.contains("sha256"), "{:?}", loaded.skipped);

    // A truncated shard is caught too.
    store.save(meta(15), shards(15)).unwrap();
    store.put_object("ckpt/step-0000000015/model.safetensors", Bytes::from(vec![15u8; 10])).unwrap();
    assert_eq!(store.load_latest().unwrap().unwrap().manifest.step, 5);

    // Shards without a COMMIT (a crash before the commit) are never resumed, and are
    // cleaned up by retention once a newer commit exists.
    store.put_object("ckpt/step-0000000018/model.safetensors", Bytes::from_static(b"half")).unwrap();
    store.save(meta(20), shards(20)).unwrap();
    store.save(meta(25), shards(25)).unwrap();
    assert_eq!(store.committed_steps().unwrap(), vec![25, 20, 15, 10, 5]);
    let deleted = store.retain(2).unwrap();
    assert_eq!(deleted, vec![5, 10, 15, 18]);
    assert_eq!(store.committed_steps().unwrap(), vec![25, 20]);
    assert_eq!(store.load_latest().unwrap().unwrap().manifest.step, 25);

    // Tensors survive the safetensors round trip bit for bit.
    let t = tch::Tensor::randn([3, 4], (tch::Kind::Float, tch::Device::Cpu));
    let b = tch::Tensor::arange(5, (tch::Kind::Int64, tch::Device::Cpu));
    let h = tch::Tensor::randn([7], (tch::Kind::BFloat16, tch::Device::Cpu));
    let bytes = encode_tensors(&[("w".into(), t.shallow_clone()), ("b".into(), b.shallow_clone()), ("h".into(), h.shallow_clone())]).unwrap();
    let back = decode_tensors(&bytes).unwrap();
    assert_eq!(back.len(), 3);
    assert!(back[0].1.equal(&b) && back[1].1.equal(&h) && back[2].1.equal(&t));
}

#[test]
fn memory_store_suite() {
    suite("memory://");
}

#[test]
fn file_store_suite() {
    let dir = tempfile::tempdir().unwrap();
    suite(&format!("file://{}", dir.path().display()));
    // Retention leaves no empty step directories behind on a file system.
    let mut left: Vec<String> = std::fs::read_dir(dir.path().join("suite-run/ckpt"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, vec!["step-0000000020", "step-0000000025"]);
    // A plain path is a file store too.
    let rel = dir.path().join("plain");
    let s = CheckpointStore::open(rel.to_str().unwrap(), "r").unwrap();
    s.check_writable().unwrap();
}

#[path = "support/s3.rs"]
mod s3;
use s3::{set_s3_env, start_s3};

/// All S3 cases share one test so the process-wide AWS_* variables never race.
#[test]
fn s3_store_suite_and_crash_before_commit() {
    let server = start_s3("ckpt");
    set_s3_env(&server.endpoint);
    suite("s3://ckpt/prefix");
    crash_before_commit_leaves_nothing_resumable("s3://ckpt/crash");

    // An endpoint nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::env::set_var("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"));
    let s = CheckpointStore::open("s3://ckpt/x", "r").unwrap();
    let err = s.check_writable().unwrap_err();
    assert!(err.to_string().contains("not usable"), "{err}");
}

#[test]
fn file_crash_before_commit() {
    let dir = tempfile::tempdir().unwrap();
    crash_before_commit_leaves_nothing_resumable(&format!("file://{}", dir.path().display()));
}

/// A child process (this test binary again) saves step 10 after a commit at step 5
/// and is killed with SIGKILL between its shards and its COMMIT.
fn crash_before_commit_leaves_nothing_resumable(url: &str) {
    let store = CheckpointStore::open(url, "crash").unwrap();
    store.save(meta(5), shards(5)).unwrap();
    for point in ["between-shards", "before-commit"] {
        let status = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child_entry_point", "--nocapture"])
            .env("KILN_TEST_CRASH_URL", url)
            .env("KILN_FAULT", format!("ckpt-crash:{point}"))
            .status()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "the child must die by SIGKILL at {point}");
        let loaded = store.load_latest().unwrap().unwrap();
        assert_eq!(loaded.manifest.step, 5, "half-written step 10 must not be resumable");
        assert_eq!(store.committed_steps().unwrap(), vec![5]);
    }
}

#[test]
fn crash_child_entry_point() {
    let Ok(url) = std::env::var("KILN_TEST_CRASH_URL") else {
        return; // only does work when started by crash_before_commit_leaves_nothing_resumable
    };
    let store = CheckpointStore::open(&url, "crash").unwrap();
    let _ = store.save(meta(10), shards(10));
    unreachable!("the fault point must have killed this process");
}

#[test]
fn bad_urls_and_names_are_refused_with_clear_errors() {
    let e = CheckpointStore::open("ftp://host/x", "r").err().unwrap();
    assert!(e.to_string().contains("scheme 'ftp'"), "{e}");
    let e = CheckpointStore::open("s3://", "r").err().unwrap();
    assert!(e.to_string().contains("needs a bucket"), "{e}");
    let e = CheckpointStore::open("memory://", "../escape").err().unwrap();
    assert!(e.to_string().contains("run name"), "{e}");
    let e = CheckpointStore::open("file:///proc/kiln-cannot-write-here", "r").err().unwrap();
    assert!(e.to_string().contains("cannot create directory"), "{e}");
}
