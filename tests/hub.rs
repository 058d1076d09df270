//! A hub id is fetched through `HF_ENDPOINT` into `HF_HOME`'s cache: a server on 127.0.0.1
//! serves a fixture in the hub's URL layout (`/{repo}/resolve/main/{file}`, with the `etag`,
//! `x-repo-commit` and range answers hf-hub expects), then `attrib predict` runs on the id.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{fixture, reference};

const REPO: &str = "test-org/tiny-untied";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A content hash, for the etag (hf-hub names cached blobs by it).
fn etag(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h = (h ^ *b as u64).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

fn answer(mut stream: TcpStream, root: &Path) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut range_start: Option<usize> = None;
    let mut range_end: Option<usize> = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(spec) = lower.trim().strip_prefix("range: bytes=") {
            let (a, b) = spec.split_once('-').unwrap_or((spec, ""));
            range_start = a.parse().ok();
            range_end = b.parse().ok();
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("");
    let prefix = format!("/{REPO}/resolve/main/");
    let file = path.strip_prefix(&prefix).map(|f| root.join(f));
    let Some(bytes) = file
        .filter(|f| f.is_file())
        .and_then(|f| std::fs::read(f).ok())
    else {
        return stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    };
    let start = range_start.unwrap_or(0).min(bytes.len());
    let end = range_end
        .map(|e| e + 1)
        .unwrap_or(bytes.len())
        .min(bytes.len());
    let body = &bytes[start..end];
    let head = format!(
        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {}-{}/{}\r\netag: \"{}\"\r\nx-repo-commit: {COMMIT}\r\nConnection: close\r\n\r\n",
        body.len(),
        start,
        end.saturating_sub(1),
        bytes.len(),
        etag(&bytes)
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)
}

/// Serves `root` for at most `max_requests` connections, then stops.
fn serve(root: PathBuf, max_requests: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max_requests).flatten() {
            let _ = answer(stream, &root);
        }
    });
    address
}

#[test]
fn predict_on_a_hub_id_downloads_into_the_cache() {
    let endpoint = serve(fixture("tiny-untied"), 64);
    let home = tempfile::tempdir().unwrap();
    let case = &reference("tiny-untied").cases[1];
    let run = |endpoint: &str| {
        Command::new(env!("CARGO_BIN_EXE_attrib"))
            .args([
                "predict",
                "--model",
                REPO,
                "--prompt",
                &case.prompt,
                "--json",
            ])
            .env("HF_ENDPOINT", endpoint)
            .env("HF_HOME", home.path())
            .output()
            .unwrap()
    };
    let out = run(&endpoint);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<u32> = json["top_k"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap() as u32)
        .collect();
    let want: Vec<u32> = case.top5.iter().map(|t| t.id).collect();
    assert_eq!(ids, want);

    // The files sit in the hub cache layout Python uses.
    let snapshot = home
        .path()
        .join("hub/models--test-org--tiny-untied/snapshots")
        .join(COMMIT);
    for file in [
        "config.json",
        "tokenizer.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "chat_template.jinja",
    ] {
        assert!(snapshot.join(file).exists(), "{file} not cached");
    }

    // A second run is served from the cache: the endpoint may be gone.
    let out = run("http://127.0.0.1:9");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
