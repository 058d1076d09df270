//! `graph.html` in a real browser: `attrib` on the tiny fixture model, then the page opened in
//! headless Chromium and driven over the DevTools protocol. It must load without console
//! errors, exceptions or network requests; hovering over a node must show its tooltip, a click
//! must pin it, and the edge slider must hide edges. A screenshot is saved for people to look
//! at (`target/graph-html-screenshot.png`).
//!
//! The browser test needs Chromium (`chromium` on the PATH, or `ATTRIB_CHROMIUM=/path/to/it`),
//! so it is ignored by default; `.ci/run` runs it with
//! `cargo test --test html_browser -- --ignored`. The test without a browser always runs.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The longest any single wait (a reply, an event, a condition) may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A Chromium talking DevTools protocol over `--remote-debugging-pipe`: commands go to its fd 3
/// and replies and events come from its fd 4, each a JSON message ended by a NUL byte.
struct Browser {
    child: Child,
    commands: std::io::PipeWriter,
    messages: Receiver<Value>,
    next_id: u64,
    /// Every event received so far, in order.
    events: Vec<Value>,
    /// Where the browser's stdout and stderr go, shown when something fails.
    log: PathBuf,
}

impl Browser {
    /// Starts `exe` headless with a fresh profile in `profile`.
    fn launch(exe: &str, profile: &Path) -> Browser {
        let (cmd_read, commands) = std::io::pipe().expect("pipe");
        let (replies, reply_write) = std::io::pipe().expect("pipe");
        let (r, w) = (cmd_read.as_raw_fd(), reply_write.as_raw_fd());
        let log = profile.join("chromium.log");
        let out = std::fs::File::create(&log).expect("create the browser log");
        let mut command = Command::new(exe);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-pipe",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--disable-crash-reporter",
                "--disable-breakpad",
                "--hide-scrollbars",
                "--mute-audio",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup the log"))
            .stderr(out);
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec. The pipe
        // ends are first copied to fds ≥ 10 (without close-on-exec), so that putting one at 3
        // cannot clobber the other before it is moved to 4.
        unsafe {
            command.pre_exec(move || {
                let r = libc::fcntl(r, libc::F_DUPFD, 10);
                let w = libc::fcntl(w, libc::F_DUPFD, 10);
                if r < 0 || w < 0 || libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {exe} (set ATTRIB_CHROMIUM): {e}"));
        // The child holds its own copies; closing ours lets the reader see EOF when it exits.
        drop(cmd_read);
        drop(reply_write);

        let (tx, messages) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(replies);
            loop {
                let mut message = Vec::new();
                match reader.read_until(0, &mut message) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if message.last() == Some(&0) {
                            message.pop();
                        }
                        let value = serde_json::from_slice(&message).unwrap_or_else(
                            |e| json!({ "unparsable": e.to_string(), "text": String::from_utf8_lossy(&message) }),
                        );
                        if tx.send(value).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Browser {
            child,
            commands,
            messages,
            next_id: 0,
            events: Vec::new(),
            log,
        }
    }

    /// The browser's output so far, for failure messages.
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The next message, or a panic after [`TIMEOUT`] or when the browser has gone.
    fn receive(&mut self, waiting_for: &str) -> Value {
        match self.messages.recv_timeout(TIMEOUT) {
            Ok(v) => v,
            Err(RecvTimeoutError::Timeout) => {
                panic!("no {waiting_for} within {TIMEOUT:?}\n{}", self.log_text())
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!(
                    "the browser closed its pipe while waiting for {waiting_for}\n{}",
                    self.log_text()
                )
            }
        }
    }

    /// Sends a command (to the page's `session`, or to the browser) and returns its id.
    fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> u64 {
        self.next_id += 1;
        let mut message = json!({ "id": self.next_id, "method": method, "params": params });
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .unwrap_or_else(|e| panic!("sending {method}: {e}\n{}", self.log_text()));
        self.next_id
    }

    /// Sends a command and waits for its result, keeping the events that arrive meanwhile.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.send(session, method, params);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            assert!(Instant::now() < deadline, "no reply to {method}");
            let message = self.receive(method);
            if message["id"].as_u64() == Some(id) {
                if let Some(error) = message.get("error") {
                    panic!("{method} failed: {error}");
                }
                return message["result"].clone();
            }
            if message.get("method").is_some() {
                self.events.push(message);
            }
        }
    }

    /// Waits for an event `method` of `session` among the events from index `since` on.
    fn wait_event(&mut self, session: &str, method: &str, since: usize) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        let matches = |e: &Value| e["method"] == method && e["sessionId"] == session;
        loop {
            if let Some(e) = self.events[since..].iter().find(|e| matches(e)) {
                return e.clone();
            }
            assert!(Instant::now() < deadline, "no {method} event");
            let message = self.receive(method);
            if message.get("method").is_some() {
                self.events.push(message);
            }
        }
    }

    /// Evaluates `expression` in the page and returns its value; a thrown exception fails.
    fn eval(&mut self, session: &str, expression: &str) -> Value {
        let result = self.call(
            Some(session),
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression}\nthrew {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Evaluates `expression` until it is `true`, failing after [`TIMEOUT`].
    fn wait_until(&mut self, session: &str, expression: &str, what: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while self.eval(session, expression) != json!(true) {
            assert!(
                Instant::now() < deadline,
                "{what}: never true: {expression}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Dispatches a mouse event of `kind` at (`x`, `y`) in the page's viewport.
    fn mouse(&mut self, session: &str, kind: &str, x: f64, y: f64) {
        let mut params = json!({ "type": kind, "x": x, "y": y });
        if kind != "mouseMoved" {
            params["button"] = json!("left");
            params["clickCount"] = json!(1);
        }
        self.call(Some(session), "Input.dispatchMouseEvent", params);
    }

    /// The console errors, log errors and uncaught exceptions received so far.
    fn errors(&self) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| match e["method"].as_str() {
                Some("Runtime.exceptionThrown") => true,
                Some("Runtime.consoleAPICalled") => {
                    matches!(e["params"]["type"].as_str(), Some("error" | "assert"))
                }
                Some("Log.entryAdded") => e["params"]["entry"]["level"] == "error",
                _ => false,
            })
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A `file://` URL for an absolute path.
fn file_url(path: &Path) -> String {
    let mut url = String::from("file://");
    for b in path.to_str().expect("a UTF-8 path").bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                url.push(b as char)
            }
            _ => url.push_str(&format!("%{b:02X}")),
        }
    }
    url
}

/// The target folder: `CARGO_TARGET_DIR` (relative to the crate if relative) or `target/`.
fn target_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => manifest.join(dir),
        None => manifest.join("target"),
    }
}

/// The centre of the first DAG node box other than the target, scrolled into view:
/// `(id, x, y)` in viewport pixels.
fn node_centre(browser: &mut Browser, session: &str) -> (String, f64, f64) {
    let v = browser.eval(
        session,
        r#"(() => {
            const r = document.querySelector('#dag rect[id^="node-"]:not(#node-logits)');
            r.scrollIntoView({ block: 'center' });
            const b = r.getBoundingClientRect();
            return { id: r.id.slice(5), x: b.left + b.width / 2, y: b.top + b.height / 2 };
        })()"#,
    );
    (
        v["id"].as_str().expect("a node box").to_owned(),
        v["x"].as_f64().unwrap(),
        v["y"].as_f64().unwrap(),
    )
}

/// Runs `attrib` on the tiny fixture model into `out`; returns `attribution.json`.
fn run_attrib(out: &Path) -> Value {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-tied");
    let run = Command::new(env!("CARGO_BIN_EXE_attrib"))
        .arg("--model")
        .arg(&model)
        .args(["--prompt", "The capital of France is", "--lens", "--out"])
        .arg(out)
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .expect("run attrib");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("graph.html"), "{stderr}");
    serde_json::from_slice(&std::fs::read(out.join("attribution.json")).unwrap()).unwrap()
}

/// Without a browser: the binary writes `graph.html`, the same on every run, with the run's
/// data and nothing to fetch.
#[test]
fn attrib_writes_a_self_contained_graph_html() {
    let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let attribution = run_attrib(first.path());
    run_attrib(second.path());
    let page = std::fs::read_to_string(first.path().join("graph.html")).unwrap();
    assert_eq!(
        page,
        std::fs::read_to_string(second.path().join("graph.html")).unwrap()
    );
    for node in attribution["nodes"].as_array().unwrap() {
        let id = node["id"].as_str().unwrap();
        assert!(page.contains(&format!("\"id\":\"{id}\"")), "{id}");
    }
    let lens = attribution["lens"].as_array().unwrap();
    assert!(!lens.is_empty());
    assert_eq!(
        page.matches("<tr><td>").count() + page.matches("<tr class=\"first\"><td>").count(),
        lens.len()
    );
    let outside: Vec<&str> = page
        .match_indices("://")
        .filter(|&(at, _)| !page[at..].starts_with("://www.w3.org/"))
        .map(|(at, _)| page.get(at..at + 40).unwrap_or(&page[at..]))
        .collect();
    assert!(outside.is_empty(), "{outside:?}");
}

#[test]
#[ignore = "needs chromium; .ci/run runs it"]
fn graph_html_works_in_headless_chromium() {
    let out = tempfile::tempdir().unwrap();
    let attribution = run_attrib(out.path());
    let page = out.path().join("graph.html");
    let url = file_url(&page);

    let profile = tempfile::tempdir().unwrap();
    let exe = std::env::var("ATTRIB_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
    let mut browser = Browser::launch(&exe, profile.path());

    let target = browser.call(None, "Target.createTarget", json!({ "url": "about:blank" }));
    let target_id = target["targetId"].as_str().expect("targetId").to_owned();
    let attached = browser.call(
        None,
        "Target.attachToTarget",
        json!({ "targetId": target_id, "flatten": true }),
    );
    let session = attached["sessionId"]
        .as_str()
        .expect("sessionId")
        .to_owned();
    let s = session.as_str();
    for domain in ["Runtime", "Log", "Page", "Network"] {
        browser.call(Some(s), &format!("{domain}.enable"), json!({}));
    }
    browser.call(
        Some(s),
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false }),
    );
    let since = browser.events.len();
    let navigated = browser.call(Some(s), "Page.navigate", json!({ "url": url }));
    assert!(navigated.get("errorText").is_none(), "{navigated}");
    browser.wait_event(s, "Page.loadEventFired", since);

    // The page shows the run: data for every node, one path per kept edge, the lens table.
    let nodes = attribution["nodes"].as_array().unwrap().len();
    let lens = attribution["lens"].as_array().unwrap().len();
    let shape = browser.eval(
        s,
        r#"({
            nodes: JSON.parse(document.getElementById('graph-data').textContent).nodes.length,
            edges: document.querySelectorAll('#dag path.edge').length,
            boxes: document.querySelectorAll('#dag rect[id^="node-"]').length,
            lens: document.querySelectorAll('#lens tbody tr').length,
            heatmap: document.querySelectorAll('#heatmap rect[id^="heatmap-cell-"]').length,
            tooltipHidden: document.getElementById('tooltip').hidden,
        })"#,
    );
    assert_eq!(shape["nodes"], json!(nodes), "{shape}");
    assert_eq!(shape["lens"], json!(lens), "{shape}");
    assert!(lens > 0 && nodes > 0);
    let tokens = attribution["tokens"].as_array().unwrap().len();
    assert_eq!(shape["heatmap"], json!(nodes * tokens), "{shape}");
    let total = shape["edges"].as_u64().unwrap();
    assert!(total >= 2, "{shape}");
    assert!(shape["boxes"].as_u64().unwrap() >= 2, "{shape}");
    assert_eq!(shape["tooltipHidden"], json!(true));

    // Hover: the tooltip appears with the node's id and numbers.
    let (id, x, y) = node_centre(&mut browser, s);
    browser.mouse(s, "mouseMoved", x, y);
    let shown = format!(
        r#"(() => {{
            const t = document.getElementById('tooltip');
            return !t.hidden && getComputedStyle(t).display !== 'none' && t.offsetWidth > 0
                && t.textContent.includes({id:?}) && t.textContent.includes('influence')
                && t.textContent.includes('strongest outputs');
        }})()"#
    );
    browser.wait_until(s, &shown, "tooltip after hovering");

    // Click: pinned, with the node's edges highlighted; the tooltip stays when the mouse leaves.
    browser.mouse(s, "mousePressed", x, y);
    browser.mouse(s, "mouseReleased", x, y);
    let pinned = format!(
        r#"(() => {{
            const dag = document.getElementById('dag');
            return dag.dataset.pinned === {id:?} && dag.classList.contains('pinned')
                && document.getElementById('tooltip').classList.contains('pinned')
                && document.querySelectorAll('#dag path.edge.hl').length > 0
                && document.getElementById('node-' + {id:?}).parentNode.classList.contains('pin');
        }})()"#
    );
    browser.wait_until(s, &pinned, "pinned after a click");
    browser.mouse(s, "mouseMoved", 5.0, 5.0);
    browser.wait_until(s, &shown, "pinned tooltip after the mouse left");

    // A screenshot of the whole page, pinned node and tooltip included.
    let metrics = browser.call(Some(s), "Page.getLayoutMetrics", json!({}));
    let size = &metrics["cssContentSize"];
    let shot = browser.call(
        Some(s),
        "Page.captureScreenshot",
        json!({
            "format": "png",
            "captureBeyondViewport": true,
            "clip": { "x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1 },
        }),
    );
    let png = base64_decode(shot["data"].as_str().expect("screenshot data"));
    assert!(png.len() > 1000, "{} bytes", png.len());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    std::fs::write(out.path().join("graph-html-screenshot.png"), &png).unwrap();
    let keep = target_dir().join("graph-html-screenshot.png");
    if let Some(dir) = keep.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&keep, &png).unwrap();
    eprintln!("screenshot: {}", keep.display());

    // Click the node again: unpinned.
    let (_, x, y) = node_centre(&mut browser, s);
    browser.mouse(s, "mousePressed", x, y);
    browser.mouse(s, "mouseReleased", x, y);
    browser.wait_until(
        s,
        "!('pinned' in document.getElementById('dag').dataset) \
         && document.querySelectorAll('#dag .dim, #dag .hl').length === 0",
        "unpinned after a second click",
    );

    // The slider hides weak edges and says how many are shown.
    let slide = |browser: &mut Browser, value: &str| -> (u64, u64, String) {
        let v = browser.eval(
            s,
            &format!(
                r#"(() => {{
                    const s = document.getElementById('edge-threshold');
                    s.value = {value:?};
                    s.dispatchEvent(new Event('input', {{ bubbles: true }}));
                    const c = document.getElementById('edge-count');
                    const visible = [...document.querySelectorAll('#dag path.edge')]
                        .filter(e => getComputedStyle(e).display !== 'none').length;
                    return {{ shown: Number(c.dataset.shown), visible, text: c.textContent }};
                }})()"#
            ),
        );
        (
            v["shown"].as_u64().unwrap(),
            v["visible"].as_u64().unwrap(),
            v["text"].as_str().unwrap().to_owned(),
        )
    };
    let (all, visible, text) = slide(&mut browser, "0");
    assert_eq!((all, visible), (total, total), "{text}");
    assert!(
        text.contains(&format!("{total} of {total} edges")),
        "{text}"
    );
    let (strongest, visible, text) = slide(&mut browser, "1");
    assert_eq!(strongest, visible, "{text}");
    assert!(strongest >= 1 && strongest < total, "{text}");
    assert!(
        text.contains(&format!("{strongest} of {total} edges")),
        "{text}"
    );
    let (half, _, _) = slide(&mut browser, "0.5");
    assert!(strongest <= half && half <= total);
    assert_eq!(slide(&mut browser, "0").0, total);

    // Nothing went wrong, and nothing but the page itself was requested.
    let errors = browser.errors();
    assert!(errors.is_empty(), "{errors:#?}");
    let requests: Vec<&str> = browser
        .events
        .iter()
        .filter(|e| e["method"] == "Network.requestWillBeSent")
        .filter_map(|e| e["params"]["request"]["url"].as_str())
        .collect();
    assert_eq!(requests, [url.as_str()]);

    // The error collection itself works: a console error and an uncaught exception show up.
    browser.eval(
        s,
        "console.error('probe'); setTimeout(() => { throw new Error('probe'); }); 0",
    );
    browser.wait_until(
        s,
        "new Promise(r => setTimeout(() => r(true), 100))",
        "a tick",
    );
    let probes = browser.errors().len();
    assert_eq!(probes, 2, "{:#?}", browser.errors());

    // Close the browser: politely, then by force if it lingers.
    browser.send(None, "Browser.close", json!({}));
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = browser.child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Standard base64 (with padding) → bytes.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a') as u32 + 26,
            b'0'..=b'9' => (c - b'0') as u32 + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {:?}", c as char),
        }
    };
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for chunk in text.as_bytes().chunks(4) {
        let digits: Vec<u32> = chunk
            .iter()
            .filter(|&&c| c != b'=')
            .map(|&c| value(c))
            .collect();
        let n = digits
            .iter()
            .enumerate()
            .fold(0, |n, (i, d)| n | d << (18 - 6 * i));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..digits.len().saturating_sub(1)]);
    }
    out
}
