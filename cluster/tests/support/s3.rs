//! A real S3-protocol server for tests: `s3s-fs` (installed into `.tools/` by
//! scripts/setup.sh, or `$KILN_S3S_FS`) on a free loopback port, killed on drop.
//! Shared by `cluster/tests` and the end-to-end tests in `tests/` (`#[path]`).
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "kiln";
pub const SECRET_KEY: &str = "kiln-secret";

pub struct S3Server {
    child: Child,
    pub endpoint: String,
    /// Where the server keeps buckets: `<root>/<bucket>/<key>`.
    pub root: tempfile::TempDir,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl S3Server {
    /// The variables a process needs to use this server for `s3://` URLs.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
        ]
    }
}

fn s3s_fs_binary() -> PathBuf {
    if let Ok(p) = std::env::var("KILN_S3S_FS") {
        return PathBuf::from(p);
    }
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // The workspace root is this crate's directory or its parent.
    [here.join(".tools/bin/s3s-fs"), here.join("../.tools/bin/s3s-fs")]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| here.join(".tools/bin/s3s-fs"))
}

/// Starts a server with one empty bucket.
pub fn start_s3(bucket: &str) -> S3Server {
    let bin = s3s_fs_binary();
    assert!(bin.exists(), "{} not found: run scripts/setup.sh (it installs the s3s-fs server)", bin.display());
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join(bucket)).unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(&bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(root.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "s3s-fs did not start on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    S3Server { child, endpoint: format!("http://127.0.0.1:{port}"), root }
}

/// Points this process's `s3://` URLs at `endpoint`.
pub fn set_s3_env(endpoint: &str) {
    std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    std::env::set_var("AWS_ENDPOINT_URL", endpoint);
    std::env::set_var("AWS_ALLOW_HTTP", "true");
    std::env::set_var("AWS_REGION", "us-east-1");
}
