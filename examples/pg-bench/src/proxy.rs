//! A loopback TCP proxy in front of PostgreSQL that counts round trips.
//!
//! It reads the client's side of the wire protocol. A round trip ends at a `Sync` (for
//! the extended protocol sqlx uses) or is a simple `Query`; a `Sync` batch that executes
//! a statement is a statement round trip, and a `Sync` alone is a ping (sqlx's pool
//! pings every connection it gets back, after the caller already has its answer).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Round trips seen so far.
#[derive(Debug, Default)]
struct Counts {
    statements: AtomicU64,
    pings: AtomicU64,
}

/// The proxy's address and its counters.
#[derive(Debug, Clone)]
pub(crate) struct RoundTrips {
    pub(crate) addr: SocketAddr,
    counts: Arc<Counts>,
}

impl RoundTrips {
    /// Starts a proxy to `upstream` on an ephemeral loopback port. Connect through it
    /// with TLS disabled, so that the protocol is readable.
    pub(crate) async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let shared = Arc::clone(&counts);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let counts = Arc::clone(&shared);
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        let _ = relay(client, server, counts).await;
                    }
                });
            }
        });
        Ok(Self { addr, counts })
    }

    /// Statement round trips and pings so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.counts.statements.load(Ordering::SeqCst),
            self.counts.pings.load(Ordering::SeqCst),
        )
    }
}

async fn relay(client: TcpStream, server: TcpStream, counts: Arc<Counts>) -> std::io::Result<()> {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let downstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    });
    let mut frames = Frames::default();
    let mut buffer = vec![0_u8; 64 * 1024];
    loop {
        let read = client_read.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        frames.feed(&buffer[..read], &counts);
        server_write.write_all(&buffer[..read]).await?;
    }
    let _ = server_write.shutdown().await;
    downstream.abort();
    Ok(())
}

/// Splits the client's byte stream into messages: the startup packet (a length that
/// counts itself, no type byte), then typed messages (a type byte, then such a length).
#[derive(Debug, Default)]
struct Frames {
    started: bool,
    header: Vec<u8>,
    skip: usize,
    executes: bool,
}

impl Frames {
    fn feed(&mut self, mut bytes: &[u8], counts: &Counts) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let header_len = if self.started { 5 } else { 4 };
            let n = (header_len - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.header.len() < header_len {
                continue;
            }
            let length_at = header_len - 4;
            let length = u32::from_be_bytes([
                self.header[length_at],
                self.header[length_at + 1],
                self.header[length_at + 2],
                self.header[length_at + 3],
            ]);
            self.skip = usize::try_from(length)
                .unwrap_or(usize::MAX)
                .saturating_sub(4);
            if self.started {
                self.message(self.header[0], counts);
            } else {
                self.started = true;
            }
            self.header.clear();
        }
    }

    fn message(&mut self, kind: u8, counts: &Counts) {
        match kind {
            b'E' => self.executes = true,
            b'Q' => {
                counts.statements.fetch_add(1, Ordering::SeqCst);
            }
            b'S' => {
                let counter = if self.executes {
                    &counts.statements
                } else {
                    &counts.pings
                };
                counter.fetch_add(1, Ordering::SeqCst);
                self.executes = false;
            }
            _ => {}
        }
    }
}
