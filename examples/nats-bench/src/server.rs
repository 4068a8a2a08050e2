//! A `nats-server -js` of the benchmark's own: a free port, a temporary store, both gone
//! when it is dropped (at the end of the run, on an error, on Ctrl-C).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

pub(crate) struct NatsServer {
    child: Child,
    dir: PathBuf,
    pub(crate) url: String,
}

impl NatsServer {
    /// Starts `NATS_SERVER` if set, else `/usr/sbin/nats-server`, else `nats-server` on
    /// the `PATH`, and waits until it accepts connections.
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .context("no free port for nats-server")?;
        let binary = std::env::var("NATS_SERVER").ok().unwrap_or_else(|| {
            ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
                .into_iter()
                .find(|p| Path::new(p).exists())
                .unwrap_or("nats-server")
                .to_owned()
        });
        let dir =
            std::env::temp_dir().join(format!("nats-bench-{}", uuid::Uuid::new_v4().simple()));
        let child = Command::new(&binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start `{binary}`: install nats-server (for example \
                     `apt-get install nats-server`) or point NATS_SERVER at it"
                )
            })?;
        // From here on, dropping `server` stops it and removes its store.
        let mut server = Self {
            child,
            dir,
            url: format!("nats://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = server.child.try_wait().context("nats-server")? {
                bail!("`{binary}` exited at once ({status})");
            }
            if Instant::now() > deadline {
                bail!("`{binary}` did not accept connections on port {port} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(server)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
