//! Waking the running agent from another process, so that a work item recorded by
//! `backlight-agent item` is uploaded at once instead of when the agent next looks at its spool.
//!
//! # How
//!
//! `run` binds a UDP socket on 127.0.0.1 (a port the system chooses) and writes its address and
//! a random token to [`WAKE_FILE`] in the data directory. The `item` command commits its event
//! to the spool itself, exactly as it does without a running agent, and *then* sends the token
//! in one datagram to that address. On receipt the agent looks at its spool
//! ([`Spool::notice_other_writers`]), which wakes the uploader when the other process added
//! events. No interval is waited anywhere on the way.
//!
//! # Why this shape
//!
//! - **The spool stays the only way in.** The command never hands its event to the agent, so
//!   there is no moment where the event is neither committed nor refused: when `item` says
//!   "recorded", it is in the spool, whether an agent runs, is stopping, or is hung. A wake that
//!   is lost (no agent, a stale file after a crash, a dropped datagram) delays the upload until
//!   the agent next looks (at its latest when it starts, or within a minute) and loses nothing.
//!   Sending the event through the local API instead would need a second path for "no agent
//!   runs" and a rule for a request that timed out after the agent committed it.
//! - **Loopback UDP works the same on Linux, macOS and Windows**, needs no fixed port (two
//!   users on one terminal server each have their own agent, data directory and port), and
//!   binding to 127.0.0.1 asks no firewall for permission. The file lives in the data directory,
//!   which is private to its user.
//! - **A wake carries no data and costs one `PRAGMA data_version` read**, so the token only
//!   keeps stray datagrams (another user, a reused port) from costing even that; bursts are
//!   coalesced into one check.

use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::path::{Path, PathBuf};

use tokio::net::UdpSocket;
use tokio::sync::watch;

use crate::spool::Spool;

/// File name, in the data directory, of the running agent's wake address and token.
pub const WAKE_FILE: &str = "agent.wake";

/// Longest wake file read; it holds one line.
const MAX_FILE_BYTES: u64 = 256;

/// The running agent's end: a socket on loopback and the file that names it.
pub struct WakeListener {
    socket: UdpSocket,
    token: String,
    path: PathBuf,
    contents: String,
}

impl WakeListener {
    /// Binds on 127.0.0.1 and writes [`WAKE_FILE`] in `dir` (replacing one a crashed agent left).
    pub async fn bind(dir: &Path) -> io::Result<WakeListener> {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let token = crate::consent::page::random_token();
        let contents = format!("{} {token}\n", socket.local_addr()?);
        let path = dir.join(WAKE_FILE);
        // Written beside and renamed, so a command never reads half a line.
        let partial = dir.join(format!("{WAKE_FILE}.{}", std::process::id()));
        std::fs::write(&partial, &contents)?;
        std::fs::rename(&partial, &path)?;
        Ok(WakeListener {
            socket,
            token,
            path,
            contents,
        })
    }

    /// The address commands send to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Answers wakes until shutdown: each one (or each burst of them) makes the spool look for
    /// other writers. Removes the file when it stops, unless another agent has replaced it.
    pub async fn serve(self, spool: Spool, mut shutdown: watch::Receiver<bool>) {
        let mut buffer = [0u8; 128];
        loop {
            let received = tokio::select! {
                received = self.socket.recv(&mut buffer) => received,
                _ = shutdown.changed() => break,
            };
            let mut woken = matches!(received, Ok(n) if self.is_token(&buffer[..n]));
            // Everything already queued is answered by the same check.
            while let Ok(n) = self.socket.try_recv(&mut buffer) {
                woken |= self.is_token(&buffer[..n]);
            }
            if woken {
                if let Err(error) = spool.notice_other_writers().await {
                    tracing::warn!(%error, "cannot look at the spool after a wake");
                }
            }
        }
        self.remove_file();
    }

    fn is_token(&self, datagram: &[u8]) -> bool {
        crate::local_api::http1::same_secret(
            std::str::from_utf8(datagram).unwrap_or(""),
            &self.token,
        )
    }

    fn remove_file(&self) {
        let ours = std::fs::read_to_string(&self.path).is_ok_and(|text| text == self.contents);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// What [`wake`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// A wake was sent to the agent named in [`WAKE_FILE`].
    Sent,
    /// No agent has announced itself in this data directory.
    NoAgent,
}

/// Tells the agent running on data directory `dir`, if any, to look at its spool now. An error
/// means only that the upload waits for the agent's next look.
pub fn wake(dir: &Path) -> io::Result<Woken> {
    let mut text = String::new();
    match std::fs::File::open(dir.join(WAKE_FILE)) {
        Ok(file) => file.take(MAX_FILE_BYTES).read_to_string(&mut text)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Woken::NoAgent),
        Err(e) => return Err(e),
    };
    let (addr, token) = text
        .trim()
        .split_once(' ')
        .ok_or_else(|| io::Error::other(format!("{WAKE_FILE} is not `ADDRESS TOKEN`")))?;
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| io::Error::other(format!("{WAKE_FILE} names no address: {addr:?}")))?;
    if !addr.ip().is_loopback() {
        return Err(io::Error::other(format!(
            "{WAKE_FILE} names {addr}, which is not a loopback address"
        )));
    }
    let socket = StdUdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    socket.send_to(token.as_bytes(), addr)?;
    Ok(Woken::Sent)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use backlight_shared::event::{ActivitySpan, ActivityState, EventBody};

    use super::*;
    use crate::spool::{SourceProgress, SpoolConfig};

    fn span() -> EventBody {
        EventBody::ActivitySpan(ActivitySpan {
            app: "claims-desk".into(),
            title: None,
            start_ms: 1_800_000_000_000,
            end_ms: 1_800_000_001_000,
            state: ActivityState::Active,
            item_id: None,
            step: None,
        })
    }

    #[tokio::test]
    async fn a_wake_makes_the_agent_notice_another_process_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.sqlite3");
        let agent = Spool::open(&path, SpoolConfig::default()).unwrap();
        let appended = agent.appended();
        let listener = WakeListener::bind(dir.path()).await.unwrap();
        let (stop, shutdown) = watch::channel(false);
        let serving = tokio::spawn(listener.serve(agent.clone(), shutdown));

        // Another process (a second connection) commits; nothing tells the agent's spool.
        let command = Spool::open(&path, SpoolConfig::default()).unwrap();
        command
            .append(vec![span()], SourceProgress::default())
            .await
            .unwrap();
        command.close().await;
        let without_wake =
            tokio::time::timeout(Duration::from_millis(300), appended.notified()).await;
        assert!(without_wake.is_err(), "woken without a wake");

        assert_eq!(wake(dir.path()).unwrap(), Woken::Sent);
        tokio::time::timeout(Duration::from_secs(5), appended.notified())
            .await
            .expect("the wake should wake the uploader");

        stop.send(true).unwrap();
        serving.await.unwrap();
        assert!(
            !dir.path().join(WAKE_FILE).exists(),
            "the file goes with the agent"
        );
        assert_eq!(wake(dir.path()).unwrap(), Woken::NoAgent);
        agent.close().await;
    }

    #[tokio::test]
    async fn datagrams_without_the_token_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.sqlite3");
        let agent = Spool::open(&path, SpoolConfig::default()).unwrap();
        let appended = agent.appended();
        let listener = WakeListener::bind(dir.path()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, shutdown) = watch::channel(false);
        tokio::spawn(listener.serve(agent.clone(), shutdown));
        let command = Spool::open(&path, SpoolConfig::default()).unwrap();
        command
            .append(vec![span()], SourceProgress::default())
            .await
            .unwrap();
        command.close().await;

        let stranger = StdUdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        stranger.send_to(b"wake up", addr).unwrap();
        let woken = tokio::time::timeout(Duration::from_millis(300), appended.notified()).await;
        assert!(woken.is_err(), "a stranger's datagram woke the agent");
        agent.close().await;
    }

    #[test]
    fn a_file_naming_another_host_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(WAKE_FILE), "192.0.2.1:9 token\n").unwrap();
        let error = wake(dir.path()).unwrap_err();
        assert!(error.to_string().contains("not a loopback"), "{error}");
    }
}
