//! A throwaway ZooKeeper for a test's ClickHouse cluster: its own data directory and a free
//! port on 127.0.0.1, started from Debian's `zookeeperd` package (never the system service),
//! killed when dropped.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::free_port;
use super::process::{print_log_if_panicking, Child};
use super::wait::{secs, wait_for};

/// Where Debian's `zookeeper` package puts the server's jar (it names its dependencies).
const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";
/// Overrides [`ZOOKEEPER_JAR`] (e.g. a ZooKeeper unpacked elsewhere: its `lib/*` classpath).
pub const CLASSPATH_ENV: &str = "BACKLIGHT_ZOOKEEPER_CLASSPATH";
/// How long a fresh ZooKeeper gets to serve.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// One standalone ZooKeeper of one test.
pub struct ZooKeeper {
    // Dropped first: the process goes before its directory.
    child: Child,
    port: u16,
    dir: TempDir,
}

impl ZooKeeper {
    /// Starts ZooKeeper and waits until it serves clients. Panics, saying what to install,
    /// when Java or ZooKeeper is missing: tests that need it are never skipped.
    pub async fn start() -> ZooKeeper {
        let classpath = classpath();
        let java = java();
        let dir = tempfile::Builder::new()
            .prefix("backlight-e2e-zk-")
            .tempdir()
            .expect("creating a temporary directory for ZooKeeper");
        let port = free_port();
        let config = dir.path().join("zoo.cfg");
        std::fs::create_dir_all(dir.path().join("data")).expect("creating ZooKeeper's dataDir");
        std::fs::write(
            &config,
            format!(
                "tickTime=2000\n\
                 dataDir={}\n\
                 clientPort={port}\n\
                 clientPortAddress=127.0.0.1\n\
                 maxClientCnxns=0\n\
                 admin.enableServer=false\n\
                 4lw.commands.whitelist=srvr\n",
                dir.path().join("data").display()
            ),
        )
        .expect("writing zoo.cfg");
        let args = [
            // Small and quick: a test's ZooKeeper holds a few hundred nodes.
            "-Xmx256m".to_string(),
            "-XX:+UseSerialGC".to_string(),
            "-cp".to_string(),
            classpath,
            format!("-Dzookeeper.log.dir={}", dir.path().display()),
            "org.apache.zookeeper.server.quorum.QuorumPeerMain".to_string(),
            config.display().to_string(),
        ];
        let child = Child::spawn("zookeeper", &java, args, &dir.path().join("zookeeper.log"));
        let mut zk = ZooKeeper { child, port, dir };
        zk.wait_ready().await;
        zk
    }

    async fn wait_ready(&mut self) {
        let port = self.port;
        let child = &mut self.child;
        // `ruok` says "imok" as soon as the process runs, while ZooKeeper may still close
        // client connections before the handshake; ClickHouse 18.16 then crashes (a null
        // pointer in its DDL worker, seen on a loaded machine). `srvr` answers with the
        // version only once the server serves.
        wait_for(READY_TIMEOUT, "ZooKeeper to serve (srvr)", async || {
            if let Some(status) = child.try_status() {
                panic!("ZooKeeper exited ({status}) during startup");
            }
            match four_letter(port, b"srvr").await {
                Ok(answer) if answer.starts_with("Zookeeper version") => Ok(()),
                Ok(answer) => Err(format!("answered {:?}", answer.trim())),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
    }

    /// The client port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        print_log_if_panicking("zookeeper", self.child.log_path());
        // Child's own drop kills the JVM.
    }
}

/// A ZooKeeper four-letter command and its answer.
async fn four_letter(port: u16, command: &[u8]) -> std::io::Result<String> {
    let talk = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(command).await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        Ok(answer)
    };
    tokio::time::timeout(secs(2), talk)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("no answer within 2 s")))
}

fn classpath() -> String {
    if let Ok(classpath) = std::env::var(CLASSPATH_ENV) {
        return classpath;
    }
    if !Path::new(ZOOKEEPER_JAR).is_file() {
        panic!(
            "the cluster tests need ZooKeeper: {ZOOKEEPER_JAR} is missing. Install it with \
             `apt-get install zookeeperd` (scripts/test.sh does), or set {CLASSPATH_ENV}"
        );
    }
    // The Debian jar names its dependencies in its manifest; the conf directory has the
    // logging configuration.
    format!("/etc/zookeeper/conf:{ZOOKEEPER_JAR}")
}

fn java() -> PathBuf {
    let candidates = std::env::var_os("JAVA_HOME")
        .map(|home| PathBuf::from(home).join("bin/java"))
        .into_iter()
        .chain(std::env::var_os("PATH").into_iter().flat_map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("java"))
                .collect::<Vec<_>>()
        }))
        .chain([PathBuf::from("/usr/bin/java")]);
    for candidate in candidates {
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "the cluster tests need Java for ZooKeeper: no `java` found (JAVA_HOME, PATH, /usr/bin). \
         `apt-get install zookeeperd` brings it"
    )
}
