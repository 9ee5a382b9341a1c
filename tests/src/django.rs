//! A real Django app (`tests/django/`) beside the gateway: it logs users in
//! with Django's auth, and with the `tidings` package (`clients/python`,
//! `tidings.contrib.django`) answers the gateway's whoami calls, issues
//! one-time tokens, and publishes to Redis.
//!
//! [`DjangoApp::start`] makes sure the virtualenv `tests/django/.venv` has
//! `tests/django/requirements.txt` and the package installed
//! (`tests/django/ensure-venv.sh`: locked against parallel runs, redone when
//! requirements.txt or the package's pyproject.toml changes), then
//! migrates a fresh sqlite database in a temp dir, creates the users `alice`
//! and `bob` (password [`PASSWORD`]; alice is in the group `editors`), and
//! runs `manage.py runserver --noreload` on a free loopback port. The server's
//! process group is killed, and the temp dir removed, on drop.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
};

use crate::{
    gateway::temp_path,
    http::{request, Response},
    redis::free_port,
};

/// Every test user's password.
pub const PASSWORD: &str = "tidings-test-password";

/// `tests/django`.
pub fn project_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("django")
}

/// Makes sure the virtualenv exists with the requirements installed (once per
/// test process; `ensure-venv.sh` holds a file lock against other processes)
/// and returns its python.
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let script = project_dir().join("ensure-venv.sh");
            let out = std::process::Command::new("sh")
                .arg(&script)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("could not run {}: {e}", script.display()));
            assert!(
                out.status.success(),
                "{} failed ({}): the Django tests need python3 (>= 3.10, with venv) and \
                 PyPI; its output:\n{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            let python = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
            assert!(python.exists(), "ensure-venv.sh printed {stdout:?}");
            python
        })
        .clone()
}

/// A logged-in Django session: its cookies, as a browser holds them.
#[derive(Debug, Clone)]
pub struct Session {
    /// The user's id (`str(user.pk)`), as whoami reports it.
    pub user_id: String,
    /// The `sessionid` cookie's value.
    pub sessionid: String,
    /// The `csrftoken` cookie's value (sent back as `X-CSRFToken` on POSTs).
    pub csrftoken: String,
}

impl Session {
    /// The `Cookie` header a browser sends for this origin.
    pub fn cookie(&self) -> String {
        format!("sessionid={}; csrftoken={}", self.sessionid, self.csrftoken)
    }
}

/// A running Django app. Killed on drop.
pub struct DjangoApp {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The test users' ids by username (`alice`, `bob`).
    pub users: HashMap<String, String>,
    logs: Arc<Mutex<String>>,
    _dir: TempDir,
}

impl DjangoApp {
    /// Starts the app with its own fresh database. It publishes to, and keeps
    /// one-time tokens (under `token_prefix`) in, the Redis at `redis_url`.
    pub async fn start(redis_url: &str, token_prefix: &str) -> DjangoApp {
        let python = tokio::task::spawn_blocking(python)
            .await
            .expect("venv setup");
        let dir = TempDir(temp_path("django"));
        std::fs::create_dir_all(&dir.0).expect("django temp dir");
        let env = [
            ("DEMO_DB", dir.0.join("db.sqlite3").display().to_string()),
            ("REDIS_URL", redis_url.to_owned()),
            ("DEMO_TOKEN_PREFIX", token_prefix.to_owned()),
            ("DJANGO_SETTINGS_MODULE", "demo.settings".to_owned()),
            ("PYTHONUNBUFFERED", "1".to_owned()),
        ];
        let command = |args: &[&str]| {
            let mut cmd = Command::new(&python);
            cmd.current_dir(project_dir())
                .arg("manage.py")
                .args(args)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null());
            cmd
        };

        let out = command(&["setup_test_db", "--password", PASSWORD])
            .output()
            .await
            .expect("run manage.py setup_test_db");
        assert!(
            out.status.success(),
            "manage.py setup_test_db failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let users: HashMap<String, String> =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                panic!(
                    "setup_test_db printed {:?}: {e}",
                    String::from_utf8_lossy(&out.stdout)
                )
            });

        // A free port can be taken between the probe and runserver's bind: try a few.
        let mut last_logs = String::new();
        for _ in 0..3 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let mut cmd = command(&["runserver", &addr.to_string(), "--noreload"]);
            cmd.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true);
            let mut child = cmd.spawn().expect("spawn manage.py runserver");
            let logs = Arc::new(Mutex::new(String::new()));
            for stream in [
                Box::new(child.stdout.take().expect("stdout"))
                    as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                Box::new(child.stderr.take().expect("stderr")),
            ] {
                let logs = logs.clone();
                tokio::spawn(async move {
                    let mut lines = BufReader::new(stream).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let mut l = logs.lock().unwrap();
                        l.push_str(&line);
                        l.push('\n');
                    }
                });
            }
            if wait_ready(&mut child, addr).await {
                return DjangoApp {
                    child,
                    addr,
                    users,
                    logs,
                    _dir: dir,
                };
            }
            kill_group(&mut child);
            last_logs = logs.lock().unwrap().clone();
        }
        panic!("manage.py runserver did not start; its output:\n{last_logs}");
    }

    /// `http://addr/tidings/whoami/`: the gateway's `identity.cookie_proxy.url`.
    pub fn whoami_url(&self) -> String {
        format!("http://{}/tidings/whoami/", self.addr)
    }

    /// A test user's id (`str(user.pk)`).
    pub fn user_id(&self, username: &str) -> &str {
        self.users
            .get(username)
            .unwrap_or_else(|| panic!("no test user {username}"))
    }

    /// Everything the server printed so far (runserver logs each request).
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// `GET path`, with the session's cookies if given.
    pub async fn get(&self, path: &str, session: Option<&Session>) -> Response {
        let headers: Vec<_> = session
            .map(|s| ("Cookie".to_owned(), s.cookie()))
            .into_iter()
            .collect();
        request(self.addr, "GET", path, &headers, b"").await
    }

    /// `POST path` with a form body, as the session's browser would send it
    /// (cookies and `X-CSRFToken`) if a session is given.
    pub async fn post_form(
        &self,
        path: &str,
        session: Option<&Session>,
        form: &[(&str, &str)],
    ) -> Response {
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut headers = vec![(
            "Content-Type".to_owned(),
            "application/x-www-form-urlencoded".to_owned(),
        )];
        if let Some(s) = session {
            headers.push(("Cookie".to_owned(), s.cookie()));
            headers.push(("X-CSRFToken".to_owned(), s.csrftoken.clone()));
        }
        request(self.addr, "POST", path, &headers, body.as_bytes()).await
    }

    /// Logs in through `POST /login/` (Django's `authenticate` + `login`).
    pub async fn login(&self, username: &str, password: &str) -> Session {
        let r = self
            .post_form(
                "/login/",
                None,
                &[("username", username), ("password", password)],
            )
            .await;
        assert_eq!(r.status, 200, "login {username}: {}", r.body);
        let cookie = |name: &str| {
            r.headers
                .iter()
                .filter(|(k, _)| k == "set-cookie")
                .filter_map(|(_, v)| v.split(';').next()?.trim().split_once('='))
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_owned())
                .unwrap_or_else(|| panic!("login set no {name} cookie: {:?}", r.headers))
        };
        let body: Value = serde_json::from_str(&r.body).expect("login answers JSON");
        Session {
            user_id: body["user"].as_str().expect("user id").to_owned(),
            sessionid: cookie("sessionid"),
            csrftoken: cookie("csrftoken"),
        }
    }

    /// What whoami says about these cookies (or about an anonymous visitor).
    pub async fn whoami(&self, session: Option<&Session>) -> Value {
        let r = self.get("/tidings/whoami/", session).await;
        assert_eq!(r.status, 200, "whoami: {}", r.body);
        serde_json::from_str(&r.body).expect("whoami answers JSON")
    }

    /// A one-time WebSocket token from `POST /tidings/token/`.
    pub async fn token(&self, session: &Session) -> String {
        let r = self.post_form("/tidings/token/", Some(session), &[]).await;
        assert_eq!(r.status, 200, "token: {}", r.body);
        let body: Value = serde_json::from_str(&r.body).expect("token answers JSON");
        body["token"].as_str().expect("token").to_owned()
    }

    /// `POST /notify/`: Django publishes `{"text": text}` to the session
    /// user's channel `/app/user/<id>/notifications`.
    pub async fn notify(&self, session: &Session, text: &str) {
        let r = self
            .post_form("/notify/", Some(session), &[("text", text)])
            .await;
        assert_eq!(r.status, 204, "notify: {}", r.body);
    }
}

impl Drop for DjangoApp {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// Kills a child that leads its own process group, and all of its group.
fn kill_group(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let _ = child.start_kill();
}

/// Waits until whoami answers; false if the server exited or never answered.
async fn wait_ready(child: &mut Child, addr: SocketAddr) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return false;
        }
        if TcpStream::connect(addr).await.is_ok()
            && request(addr, "GET", "/tidings/whoami/", &[], b"")
                .await
                .status
                == 200
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A directory removed on drop.
struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `application/x-www-form-urlencoded` encoding of one name or value.
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char);
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
