//! A real headless Chromium, driven over the Chrome DevTools Protocol (CDP).
//!
//! [`Browser::launch`] starts Debian's `chromium` (or `$TIDINGS_CHROMIUM`)
//! with a fresh profile in a temp dir and `--remote-debugging-port=0`, reads
//! the port it picked from `<profile>/DevToolsActivePort`, and connects to the
//! browser's DevTools WebSocket. [`Browser::new_page`] opens a tab and attaches
//! to it (flattened sessions over the one connection); a [`Page`] navigates,
//! evaluates JavaScript, polls for a condition, and records every uncaught
//! exception and console/log error the page produced.
//!
//! The browser's whole process group is killed, and its temp dir removed, when
//! the [`Browser`] is dropped, also when a test panics.

use std::{
    collections::HashMap,
    fs::File,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use futures_util::{stream::SplitSink, SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::{net::TcpStream, sync::oneshot, task::JoinHandle};
use tokio_tungstenite::{tungstenite::Message, MaybeTlsStream, WebSocketStream};

use crate::{gateway::temp_path, PATIENCE};

/// How long [`Page::wait_for`] polls before it gives up.
pub const WAIT: Duration = Duration::from_secs(20);

/// The Chromium executable: `$TIDINGS_CHROMIUM`, else `chromium` on `PATH`,
/// else `/usr/bin/chromium`. Panics with a clear message if there is none.
pub fn chromium_path() -> PathBuf {
    if let Some(p) = std::env::var_os("TIDINGS_CHROMIUM") {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "TIDINGS_CHROMIUM is set to {}, which does not exist (unset it to use Debian's \
             `chromium`, which CI's .ci/run installs)",
            p.display()
        );
        return p;
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("chromium"))
                .find(|p| p.is_file())
        })
        .unwrap_or_default();
    let p = on_path.unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        p.exists(),
        "chromium not found (not on PATH, no /usr/bin/chromium): the browser tests need a real \
         headless Chromium. Install Debian's package with `apt-get install -y chromium` (CI's \
         .ci/run installs it) or point TIDINGS_CHROMIUM at a Chromium executable."
    );
    p
}

type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;
type Reply = Result<Value, Value>;

/// One DevTools WebSocket connection: requests matched to replies by id,
/// events kept in arrival order.
struct Conn {
    sink: tokio::sync::Mutex<Sink>,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    events: Mutex<Vec<Value>>,
}

impl Conn {
    /// Sends one command (to a page session if `session` is given) and
    /// waits for its result.
    async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = s.into();
        }
        let sent = self
            .sink
            .lock()
            .await
            .send(Message::text(msg.to_string()))
            .await;
        if let Err(e) = sent {
            self.pending.lock().unwrap().remove(&id);
            return Err(format!("{method}: could not send to DevTools: {e}"));
        }
        match tokio::time::timeout(PATIENCE, rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(format!("{method} failed: {e}")),
            Ok(Err(_)) => Err(format!("{method}: the DevTools connection closed")),
            Err(_) => {
                self.pending.lock().unwrap().remove(&id);
                Err(format!("{method}: no answer within {PATIENCE:?}"))
            }
        }
    }

    /// Reads the connection until it closes, dispatching replies and events.
    async fn read(
        self: Arc<Self>,
        mut stream: futures_util::stream::SplitStream<WebSocketStream<MaybeTlsStream<TcpStream>>>,
    ) {
        while let Some(Ok(msg)) = stream.next().await {
            let Message::Text(text) = msg else { continue };
            let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                continue;
            };
            if let Some(id) = v.get("id").and_then(Value::as_u64) {
                let tx = self.pending.lock().unwrap().remove(&id);
                if let Some(tx) = tx {
                    let reply = match v.get("error") {
                        Some(e) => Err(e.clone()),
                        None => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
                    };
                    let _ = tx.send(reply);
                }
            } else if v.get("method").is_some() {
                self.events.lock().unwrap().push(v);
            }
        }
        // Wake everyone still waiting: their senders drop.
        self.pending.lock().unwrap().clear();
    }
}

/// The Chromium process and its temp dir; killed and removed on drop.
struct Proc {
    child: Child,
    dir: PathBuf,
}

impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("chromium.log")).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // The child leads its own process group (renderers, GPU and zygote
        // processes included): kill all of it.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Chromium's crash handlers start their own sessions, so they leave
        // the group; they are known by their database in our temp dir.
        let strays = processes_mentioning(&self.dir);
        if !strays.is_empty() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .args(strays.iter().map(u32::to_string))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        // Children of the group may take a moment to die and release files.
        for _ in 0..20 {
            if std::fs::remove_dir_all(&self.dir).is_ok() || !self.dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The ids of the processes whose command line mentions `dir`.
fn processes_mentioning(dir: &Path) -> Vec<u32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| cmd.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

/// A running headless Chromium with a DevTools connection to it.
pub struct Browser {
    conn: Arc<Conn>,
    reader: JoinHandle<()>,
    proc: Proc,
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Browser {
    /// Starts headless Chromium with a fresh profile and connects to it.
    /// Panics (with Chromium's output) if it does not come up.
    pub async fn launch() -> Browser {
        let exe = chromium_path();
        let dir = temp_path("chromium");
        let profile = dir.join("profile");
        std::fs::create_dir_all(&profile).expect("create the chromium temp dir");
        let log = File::create(dir.join("chromium.log")).expect("create chromium.log");
        let mut cmd = Command::new(&exe);
        cmd.args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-breakpad",
            "--disable-crash-reporter",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        // Keep its caches and config inside the temp dir too.
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log handle"))
        .stderr(log)
        .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {}: {e}", exe.display()));
        let mut proc = Proc { child, dir };

        let ws_url = wait_for_devtools(&mut proc, &profile).await;
        let ws =
            match tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(&ws_url)).await {
                Ok(Ok((ws, _))) => ws,
                Ok(Err(e)) => panic!(
                    "could not connect to Chromium's DevTools at {ws_url}: {e}\nits output:\n{}",
                    proc.log()
                ),
                Err(_) => panic!(
                    "Chromium's DevTools at {ws_url} did not answer\nits output:\n{}",
                    proc.log()
                ),
            };
        let (sink, stream) = ws.split();
        let conn = Arc::new(Conn {
            sink: tokio::sync::Mutex::new(sink),
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            events: Mutex::new(Vec::new()),
        });
        let reader = tokio::spawn(conn.clone().read(stream));
        Browser { conn, reader, proc }
    }

    /// Everything Chromium printed so far.
    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// Opens a new tab at `about:blank` and attaches to it, with the
    /// `Runtime`, `Log` and `Page` domains enabled so that errors are recorded.
    pub async fn new_page(&self) -> Page {
        let call = |method: &'static str, params: Value| async move {
            self.conn
                .call(None, method, params)
                .await
                .unwrap_or_else(|e| panic!("{e}\nChromium's output:\n{}", self.log()))
        };
        let target = call("Target.createTarget", json!({ "url": "about:blank" })).await;
        let target_id = target["targetId"].as_str().expect("targetId").to_owned();
        let attached = call(
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        )
        .await;
        let session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_owned();
        let page = Page {
            conn: self.conn.clone(),
            session,
        };
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            page.call(domain, json!({})).await;
        }
        page
    }
}

/// Waits for `DevToolsActivePort` in the profile; returns the browser's
/// DevTools WebSocket URL.
async fn wait_for_devtools(proc: &mut Proc, profile: &Path) -> String {
    let file = profile.join("DevToolsActivePort");
    let deadline = Instant::now() + WAIT;
    loop {
        // First line: the port; second line: the browser target's path.
        if let Ok(body) = std::fs::read_to_string(&file) {
            let mut lines = body.lines();
            if let (Some(Ok(port)), Some(path)) = (
                lines.next().map(|l| l.trim().parse::<u16>()),
                lines.next().map(str::trim),
            ) {
                if path.starts_with("/devtools/browser/") {
                    return format!("ws://127.0.0.1:{port}{path}");
                }
            }
        }
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!(
                "Chromium exited ({status}) before opening DevTools; its output:\n{}",
                proc.log()
            );
        }
        if Instant::now() > deadline {
            panic!(
                "Chromium wrote no {} within {WAIT:?}; its output:\n{}",
                file.display(),
                proc.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One tab of a [`Browser`].
pub struct Page {
    conn: Arc<Conn>,
    session: String,
}

impl Page {
    /// Sends a CDP command to this page; panics if it fails.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        self.try_call(method, params)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Sends a CDP command to this page.
    pub async fn try_call(&self, method: &str, params: Value) -> Result<Value, String> {
        self.conn.call(Some(&self.session), method, params).await
    }

    /// Navigates to `url`; panics if the navigation fails outright (DNS,
    /// connection refused…). It does not wait for the load: poll with
    /// [`Page::wait_for`].
    pub async fn navigate(&self, url: &str) {
        let r = self.call("Page.navigate", json!({ "url": url })).await;
        if let Some(e) = r.get("errorText").and_then(Value::as_str) {
            panic!("navigating to {url} failed: {e}");
        }
    }

    /// Evaluates a JavaScript expression in the page (awaiting it if it is a
    /// promise) and returns its value as JSON; `Err` carries the exception
    /// or protocol error. `undefined` and non-JSON values come back as null.
    pub async fn eval(&self, expression: &str) -> Result<Value, String> {
        let r = self
            .try_call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await?;
        if let Some(ex) = r.get("exceptionDetails") {
            return Err(describe_exception(ex));
        }
        Ok(r["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    /// Polls `expression` until it yields a truthy value (within [`WAIT`])
    /// and returns that value. On timeout it panics, naming `what` and
    /// showing the last result, the page's text and its recorded errors.
    pub async fn wait_for(&self, what: &str, expression: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            // Errors (e.g. no document yet, mid-navigation) mean "not yet".
            let last = self.eval(expression).await;
            if let Ok(v) = &last {
                if truthy(v) {
                    return v.clone();
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {WAIT:?} waiting for {what}\n  expression: {expression}\n  \
                     last result: {last:?}\n  page URL: {}\n  page text:\n{}\n  page errors: {:#?}",
                    self.eval("location.href").await.unwrap_or_default(),
                    self.body_text().await,
                    self.errors(),
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The page's visible text (`document.body.innerText`), or a note saying
    /// why it could not be read.
    pub async fn body_text(&self) -> String {
        match self
            .eval("document.body ? document.body.innerText : '(no body)'")
            .await
        {
            Ok(Value::String(s)) => s,
            Ok(v) => v.to_string(),
            Err(e) => format!("(could not read the page text: {e})"),
        }
    }

    /// Every uncaught exception (`exception: …`), `console.error`/`assert`
    /// call (`console.error: …`) and browser log entry of level error
    /// (`log/<source>: …`, e.g. CSP violations and failed loads) this page
    /// produced so far.
    pub fn errors(&self) -> Vec<String> {
        let events = self.conn.events.lock().unwrap();
        events
            .iter()
            .filter(|e| e["sessionId"].as_str() == Some(self.session.as_str()))
            .filter_map(|e| {
                let p = &e["params"];
                match e["method"].as_str()? {
                    "Runtime.exceptionThrown" => Some(format!(
                        "exception: {}",
                        describe_exception(&p["exceptionDetails"])
                    )),
                    "Runtime.consoleAPICalled"
                        if matches!(p["type"].as_str(), Some("error" | "assert")) =>
                    {
                        let args: Vec<String> = p["args"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|a| match (&a["value"], &a["description"]) {
                                (Value::String(s), _) => s.clone(),
                                (Value::Null, Value::String(d)) => d.clone(),
                                (v, _) => v.to_string(),
                            })
                            .collect();
                        Some(format!(
                            "console.{}: {}",
                            p["type"].as_str()?,
                            args.join(" ")
                        ))
                    }
                    "Log.entryAdded" if p["entry"]["level"] == "error" => {
                        let entry = &p["entry"];
                        Some(format!(
                            "log/{}: {} ({})",
                            entry["source"].as_str().unwrap_or("?"),
                            entry["text"].as_str().unwrap_or(""),
                            entry["url"].as_str().unwrap_or(""),
                        ))
                    }
                    _ => None,
                }
            })
            .collect()
    }
}

/// A one-line account of a CDP `ExceptionDetails`.
fn describe_exception(ex: &Value) -> String {
    let what = ex["exception"]["description"]
        .as_str()
        .or_else(|| ex["exception"]["value"].as_str())
        .or_else(|| ex["text"].as_str())
        .unwrap_or("?");
    format!(
        "{what} (at {}:{}:{})",
        ex["url"].as_str().unwrap_or("<eval>"),
        ex["lineNumber"],
        ex["columnNumber"]
    )
}

/// JavaScript truthiness of a JSON value.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}
