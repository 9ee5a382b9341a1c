//! A real nginx for the deployment tests: the site file shipped in
//! `deploy/nginx/tidings.conf`, adapted to free ports and temp paths only,
//! inside a minimal main `nginx.conf` whose pid file, logs and temp
//! directories all live in a temp dir, so it runs as any user.
//!
//! nginx runs in the foreground (`daemon off`) as a single process
//! (`master_process off`: no worker to orphan), and is killed, and its temp
//! dir removed, when the [`Nginx`] guard drops, also when a test panics.
//!
//! The module also has a small parser for nginx configuration files
//! ([`parse`]), so tests can check directives rather than grep text.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::gateway::temp_path;

/// The repository root (the workspace).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The nginx executable: `$NGINX`, else `nginx` on `PATH`, else
/// `/usr/sbin/nginx` (Debian's place, often not on a user's `PATH`).
/// Panics with install instructions when there is none: the deployment
/// tests do not skip.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("NGINX") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "$NGINX is {}, which is not a file",
            p.display()
        );
        return p;
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("nginx"))
                .find(|p| p.is_file())
        })
        .unwrap_or_default();
    if let Some(p) = on_path {
        return p;
    }
    let debian = PathBuf::from("/usr/sbin/nginx");
    assert!(
        debian.is_file(),
        "nginx is not installed (not on PATH, not /usr/sbin/nginx, $NGINX unset): the \
         deployment tests run the real deploy/nginx/tidings.conf and need it. Install it \
         with `apt-get install nginx` (.ci/run does) or point $NGINX at the binary"
    );
    debian
}

/// What the test changes in the shipped site file: ports and paths, nothing
/// else.
#[derive(Debug, Clone)]
pub struct SitePorts {
    /// Replaces `listen 80;` (becomes `listen 127.0.0.1:<port>;`).
    pub listen: u16,
    /// Replaces the Django upstream `127.0.0.1:8000`.
    pub django: u16,
    /// Replaces the Tidings upstream `127.0.0.1:8080`.
    pub gateway: u16,
    /// Replaces the static root `/srv/example/static/` (must end with `/`).
    pub static_root: PathBuf,
}

/// The shipped site file's text.
pub fn shipped_site() -> String {
    let path = repo_root().join("deploy/nginx/tidings.conf");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Adapts the shipped site file: each replaced token must occur exactly
/// once, and afterwards the parsed configuration must differ from the
/// original only in the arguments of `listen`, `server` (in `upstream`) and
/// `alias` directives.
pub fn adapt_site(site: &str, ports: &SitePorts) -> String {
    let root = ports.static_root.display().to_string();
    assert!(root.ends_with('/'), "static root must end with '/': {root}");
    let replacements = [
        (
            "listen 80;".to_owned(),
            format!("listen 127.0.0.1:{};", ports.listen),
        ),
        (
            "server 127.0.0.1:8000;".to_owned(),
            format!("server 127.0.0.1:{};", ports.django),
        ),
        (
            "server 127.0.0.1:8080;".to_owned(),
            format!("server 127.0.0.1:{};", ports.gateway),
        ),
        (
            "alias /srv/example/static/;".to_owned(),
            format!("alias {root};"),
        ),
    ];
    let mut out = site.to_owned();
    for (from, to) in &replacements {
        let n = out.matches(from.as_str()).count();
        assert_eq!(
            n, 1,
            "deploy/nginx/tidings.conf must contain `{from}` exactly once (the test adapts it), found {n}"
        );
        out = out.replace(from.as_str(), to);
    }
    let before = parse(site).expect("the shipped site parses");
    let after = parse(&out).expect("the adapted site parses");
    let mut changed = Vec::new();
    diff(&before, &after, &mut changed);
    for d in &changed {
        assert!(
            ["listen", "server", "alias"].contains(&d.as_str()),
            "adapting the site changed more than ports and paths: `{d}`"
        );
    }
    out
}

fn diff(a: &[Directive], b: &[Directive], changed: &mut Vec<String>) {
    assert_eq!(a.len(), b.len(), "adapting the site changed its structure");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.name, y.name, "adapting the site changed its structure");
        if x.args != y.args {
            changed.push(x.name.clone());
        }
        match (&x.block, &y.block) {
            (Some(xb), Some(yb)) => diff(xb, yb, changed),
            (None, None) => {}
            _ => panic!("adapting the site changed the block of `{}`", x.name),
        }
    }
}

/// A running nginx. Killed on drop.
pub struct Nginx {
    child: Option<Child>,
    dir: PathBuf,
    /// Where it listens (127.0.0.1).
    pub addr: SocketAddr,
}

impl Nginx {
    /// Writes `site` (an adapted site file, listening on `port`) into a
    /// minimal main configuration in a temp dir, checks it with `nginx -t`,
    /// starts nginx and waits until `port` accepts connections.
    pub async fn start(site: &str, port: u16) -> Nginx {
        let bin = binary();
        let dir = temp_path("nginx");
        std::fs::create_dir_all(&dir).expect("nginx temp dir");
        let d = dir.display();
        std::fs::write(dir.join("site.conf"), site).expect("write site.conf");
        let main = format!(
            "# The deployment test's nginx: everything in {d}.\n\
             daemon off;\n\
             master_process off;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\n\
             events {{\n    worker_connections 256;\n}}\n\
             http {{\n\
             \x20   access_log {d}/access.log;\n\
             \x20   client_body_temp_path {d}/client_body;\n\
             \x20   proxy_temp_path {d}/proxy;\n\
             \x20   fastcgi_temp_path {d}/fastcgi;\n\
             \x20   uwsgi_temp_path {d}/uwsgi;\n\
             \x20   scgi_temp_path {d}/scgi;\n\
             \x20   types {{\n        text/css css;\n        text/plain txt;\n    }}\n\
             \x20   default_type application/octet-stream;\n\
             \x20   include {d}/site.conf;\n\
             }}\n"
        );
        std::fs::write(dir.join("nginx.conf"), main).expect("write nginx.conf");
        let mut guard = Nginx {
            child: None,
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let test = guard
            .command(&bin)
            .arg("-t")
            .output()
            .unwrap_or_else(|e| panic!("run {} -t: {e}", bin.display()));
        assert!(
            test.status.success(),
            "nginx -t refused the adapted deploy/nginx/tidings.conf:\n{}{}\nsite as adapted:\n{site}",
            String::from_utf8_lossy(&test.stdout),
            String::from_utf8_lossy(&test.stderr),
        );
        let out = std::fs::File::create(guard.dir.join("stderr.log")).expect("stderr.log");
        let child = guard
            .command(&bin)
            .stdout(Stdio::from(out.try_clone().expect("clone")))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        guard.child = Some(child);
        let deadline = tokio::time::Instant::now() + crate::PATIENCE;
        loop {
            if tokio::net::TcpStream::connect(guard.addr).await.is_ok() {
                return guard;
            }
            if let Some(status) = guard
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("nginx exited with {status}:\n{}", guard.logs());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nginx does not accept connections on {}:\n{}",
                guard.addr,
                guard.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn command(&self, bin: &Path) -> Command {
        let mut cmd = Command::new(bin);
        // -p: prefix for relative paths; -e: the error log used before the
        // configuration is read (else the compiled-in /var/log/nginx/...).
        cmd.arg("-p")
            .arg(&self.dir)
            .arg("-e")
            .arg(self.dir.join("error.log"))
            .arg("-c")
            .arg(self.dir.join("nginx.conf"))
            .stdin(Stdio::null());
        cmd
    }

    /// nginx's error log and stderr so far.
    pub fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!(
            "--- error.log\n{}--- stderr\n{}",
            read("error.log"),
            read("stderr.log")
        )
    }

    /// nginx's access log so far.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One directive of an nginx configuration: `name args...;` or
/// `name args... { block }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// The directive's name.
    pub name: String,
    /// Its arguments, quotes removed.
    pub args: Vec<String>,
    /// The directives inside its block, if it has one.
    pub block: Option<Vec<Directive>>,
}

impl Directive {
    /// The directives named `name` in this one's block.
    pub fn children<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Directive> + 'a {
        self.block.iter().flatten().filter(move |d| d.name == name)
    }

    /// The arguments of the only directive named `name` in this block.
    /// Panics if there is none or several.
    pub fn one(&self, name: &str) -> &[String] {
        let found: Vec<&Directive> = self
            .block
            .iter()
            .flatten()
            .filter(|d| d.name == name)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected one `{name}` in `{self}`, found {}",
            found.len()
        );
        &found[0].args
    }

    /// The value `proxy_set_header <header>` sets in this block, if any.
    pub fn proxy_header(&self, header: &str) -> Option<&str> {
        self.children("proxy_set_header")
            .find(|d| {
                d.args
                    .first()
                    .is_some_and(|h| h.eq_ignore_ascii_case(header))
            })
            .and_then(|d| d.args.get(1))
            .map(String::as_str)
    }
}

impl fmt::Display for Directive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name)?;
        for a in &self.args {
            write!(f, " {a}")?;
        }
        Ok(())
    }
}

/// Every directive named `name`, at any depth, in document order.
pub fn find_all<'a>(directives: &'a [Directive], name: &str) -> Vec<&'a Directive> {
    let mut out = Vec::new();
    for d in directives {
        if d.name == name {
            out.push(d);
        }
        if let Some(b) = &d.block {
            out.extend(find_all(b, name));
        }
    }
    out
}

/// Parses nginx configuration text (comments, quotes and blocks; no
/// variables or includes are resolved).
pub fn parse(text: &str) -> Result<Vec<Directive>, String> {
    let tokens = tokenize(text)?;
    let mut pos = 0;
    let out = parse_block(&tokens, &mut pos)?;
    if pos != tokens.len() {
        return Err("unbalanced `}`".into());
    }
    Ok(out)
}

#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Semi,
    Open,
    Close,
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            ';' | '{' | '}' => {
                chars.next();
                out.push(match c {
                    ';' => Token::Semi,
                    '{' => Token::Open,
                    _ => Token::Close,
                });
            }
            '"' | '\'' => {
                chars.next();
                let mut word = String::new();
                loop {
                    match chars.next() {
                        None => return Err(format!("unterminated {c}")),
                        Some('\\') => word.extend(chars.next()),
                        Some(q) if q == c => break,
                        Some(other) => word.push(other),
                    }
                }
                out.push(Token::Word(word));
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || matches!(c, ';' | '{' | '}' | '"' | '\'') {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                out.push(Token::Word(word));
            }
        }
    }
    Ok(out)
}

fn parse_block(tokens: &[Token], pos: &mut usize) -> Result<Vec<Directive>, String> {
    let mut out = Vec::new();
    while let Some(t) = tokens.get(*pos) {
        let name = match t {
            Token::Close => return Ok(out),
            Token::Word(w) => w.clone(),
            other => return Err(format!("unexpected {other:?} at token {pos}")),
        };
        *pos += 1;
        let mut args = Vec::new();
        loop {
            match tokens.get(*pos) {
                Some(Token::Word(w)) => {
                    args.push(w.clone());
                    *pos += 1;
                }
                Some(Token::Semi) => {
                    *pos += 1;
                    out.push(Directive {
                        name,
                        args,
                        block: None,
                    });
                    break;
                }
                Some(Token::Open) => {
                    *pos += 1;
                    let block = parse_block(tokens, pos)?;
                    if tokens.get(*pos) != Some(&Token::Close) {
                        return Err(format!("block of `{name}` not closed"));
                    }
                    *pos += 1;
                    out.push(Directive {
                        name,
                        args,
                        block: Some(block),
                    });
                    break;
                }
                Some(Token::Close) | None => return Err(format!("`{name}` not terminated by `;`")),
            }
        }
    }
    Ok(out)
}

/// An nginx time value (`3600s`, `1h`, `90`, `500ms`) in seconds.
pub fn time_secs(value: &str) -> Option<f64> {
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (n, unit) = value.split_at(split);
    let n: f64 = n.parse().ok()?;
    let factor = match unit {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        "w" => 7.0 * 86400.0,
        _ => return None,
    };
    Some(n * factor)
}
