//! The dashboard in a real headless Chromium (Debian's, driven through chromedriver's WebDriver
//! API): it loads without console errors, shows every datanode and the leader, and shows a
//! killed node as dead without a reload. A screenshot goes to target/dashboard.png.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{http_request_with_body, wait_for};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A chromedriver process with one headless Chromium session; both end on drop.
struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Self {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(binary).exists(),
                "{binary} is missing: `apt-get install chromium chromium-driver` (tools/test does)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        // In a process group of its own, so that drop ends the Chromium it starts too.
        let driver = Command::new(CHROMEDRIVER)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_for(
            "chromedriver ready",
            Duration::from_secs(20),
            || async move {
                let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
                drop(stream);
                let (code, body) = http_request_with_body(addr, "GET", "/status", "").await;
                (code == 200 && body.contains("\"ready\":true")).then_some(())
            },
        )
        .await;
        let profile = tempfile::tempdir().expect("a profile directory");
        // The flags that keep Chromium quiet on a machine without a network (see the env notes).
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1400,1100",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain(std::iter::once(format!(
            "--user-data-dir={}",
            profile.path().display()
        )))
        .collect::<Vec<_>>();
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
            "goog:loggingPrefs": { "browser": "ALL" },
        }}});
        let mut browser = Self {
            driver,
            addr,
            session: String::new(),
            _profile: profile,
        };
        let created = browser.call("POST", "/session", &capabilities).await;
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
            .to_owned();
        browser
    }

    /// One WebDriver command; returns its `value`.
    async fn call(&self, method: &str, path: &str, body: &Value) -> Value {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let (code, answer) = http_request_with_body(self.addr, method, path, &body).await;
        let answer: Value = serde_json::from_str(&answer)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}: {answer}"));
        assert_eq!(code, 200, "WebDriver {method} {path}: {answer}");
        answer["value"].clone()
    }

    async fn session_call(&self, method: &str, path: &str, body: &Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.call(method, &path, body).await
    }

    async fn open(&self, url: &str) {
        self.session_call("POST", "/url", &json!({ "url": url }))
            .await;
    }

    /// Runs `script` (a function body) in the page; returns what it returns.
    async fn eval(&self, script: &str) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            &json!({ "script": script, "args": [] }),
        )
        .await
    }

    /// Browser console entries logged since the last call.
    async fn console(&self) -> Vec<Value> {
        self.session_call("POST", "/se/log", &json!({ "type": "browser" }))
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    async fn screenshot(&self, path: &std::path::Path) {
        use base64_png::decode;
        let encoded = self.session_call("GET", "/screenshot", &Value::Null).await;
        let png = decode(encoded.as_str().expect("a base64 screenshot"));
        std::fs::write(path, png).expect("write the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: chromedriver and every Chromium process it started.
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Base64 for the screenshot (the standard alphabet WebDriver uses), to keep the tests free of
/// another dependency.
mod base64_png {
    pub fn decode(text: &str) -> Vec<u8> {
        let value = |c: u8| -> Option<u32> {
            Some(match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                _ => return None,
            } as u32)
        };
        let digits: Vec<u32> = text.bytes().filter_map(value).collect();
        let mut out = Vec::with_capacity(digits.len() * 3 / 4);
        for chunk in digits.chunks(4) {
            let mut n = 0u32;
            for (i, d) in chunk.iter().enumerate() {
                n |= d << (18 - 6 * i);
            }
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
        }
        out
    }

    #[test]
    fn decodes_padded_and_unpadded_text() {
        assert_eq!(decode("aGVsbG8="), b"hello");
        assert_eq!(decode("aGVsbG8h"), b"hello!");
    }
}

/// The node tiles the page shows: (id, state).
async fn tiles(browser: &Browser) -> Vec<(u64, String)> {
    let value = browser
        .eval(
            "return [...document.querySelectorAll('#nodes .node')]\
             .map(n => [Number(n.dataset.nodeId), n.dataset.state]);",
        )
        .await;
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|pair| Some((pair[0].as_u64()?, pair[1].as_str()?.to_owned())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_cluster_and_follows_a_node_death() {
    let (_fixture, mut cluster, _table, _route) =
        crate::failover::cluster_with_table(crate::failover::config(), 3, "dashboard", 6, 2).await;
    let browser = Browser::start().await;
    let url = format!("http://{}/dashboard?refresh=250", cluster.server.http_addr);
    browser.open(&url).await;

    // Every node, alive; the leader; the table; the heatmap.
    let shown = wait_for("three live node tiles", Duration::from_secs(15), || async {
        let tiles = tiles(&browser).await;
        (tiles.len() == 3 && tiles.iter().all(|(_, state)| state == "alive")).then_some(tiles)
    })
    .await;
    assert_eq!(
        shown.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let leader = browser
        .eval("const m = document.querySelector('.member.leader'); return m && m.textContent;")
        .await;
    assert!(
        leader.as_str().is_some_and(|t| t.contains("leader")),
        "the leader is marked: {leader}"
    );
    let table = browser
        .eval("return document.querySelector('#tables').textContent;")
        .await;
    assert!(
        table
            .as_str()
            .is_some_and(|t| t.contains("greptime.public.dashboard")),
        "{table}"
    );
    wait_for("heatmap cells", Duration::from_secs(10), || async {
        let cells = browser
            .eval("return document.querySelectorAll('#heatmap rect').length;")
            .await;
        (cells.as_u64().unwrap_or(0) >= 3).then_some(())
    })
    .await;

    // A node dies: its tile turns dead without a reload (a marker set now must survive).
    browser
        .eval("window.__sameDocument = true; return true;")
        .await;
    let killed = cluster.nodes.remove(1);
    let killed_id = killed.node_id();
    drop(killed);
    wait_for(
        "the killed node shown dead",
        Duration::from_secs(20),
        || async {
            let tiles = tiles(&browser).await;
            tiles
                .iter()
                .any(|(id, state)| *id == killed_id && state == "dead")
                .then_some(())
        },
    )
    .await;
    let same = browser.eval("return window.__sameDocument === true;").await;
    assert_eq!(
        same,
        json!(true),
        "the page updated itself, without a reload"
    );

    let errors: Vec<Value> = browser
        .console()
        .await
        .into_iter()
        .filter(|entry| entry["level"] == "SEVERE")
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");

    let screenshot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard.png");
    browser.screenshot(&screenshot).await;
    let png = std::fs::read(&screenshot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
}
