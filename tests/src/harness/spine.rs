//! The server side of a desktop test: a ClickHouse, a server on its own database, one tenant
//! and an enrollment key for it.

use std::path::Path;

use super::clickhouse::{ClickHouse, Db};
use super::server::{Server, ServerOptions};

pub struct Spine {
    // Fields drop in order: the server goes before the ClickHouse it writes to.
    pub server: Server,
    pub ch: ClickHouse,
    pub tenant: String,
    pub key: String,
}

impl Spine {
    pub async fn start(tenant_prefix: &str) -> Spine {
        let ch = ClickHouse::start().await;
        let server = Server::start_with(ch.fresh_db(), ServerOptions::default()).await;
        let tenant = server.create_tenant(tenant_prefix).await;
        let key = server.create_enrollment_key(&tenant).await;
        Spine {
            server,
            ch,
            tenant,
            key,
        }
    }

    /// `admin policy set --tenant T FILE` with `policy` written to `dir`; the raw output.
    pub async fn set_policy(&self, dir: &Path, policy: &serde_json::Value) -> std::process::Output {
        let file = dir.join(format!("policy-{}.json", uuid::Uuid::new_v4().simple()));
        std::fs::write(&file, policy.to_string()).expect("writing the policy file");
        let file = file.display().to_string();
        self.server
            .try_admin(&["policy", "set", "--tenant", &self.tenant, &file])
            .await
    }
}

/// Greps every String column of every table in `db` for each of `secrets`: strings that must
/// never leave the desktop (a private window's title, titles while the policy drops them).
pub async fn assert_nowhere(db: &Db, secrets: &[&str]) {
    let columns = db
        .tsv(&format!(
            "SELECT table, name FROM system.columns WHERE database = '{}' AND type LIKE '%String%'",
            db.name()
        ))
        .await;
    assert!(
        columns.iter().any(|c| c[0] == "events" && c[1] == "title"),
        "{columns:?}"
    );
    for column in &columns {
        for secret in secrets {
            let hits = db
                .count(&format!(
                    "SELECT count() FROM `{}` WHERE positionCaseInsensitive(toString(`{}`), '{secret}') > 0",
                    column[0], column[1]
                ))
                .await;
            assert_eq!(hits, 0, "{secret:?} found in {}.{}", column[0], column[1]);
        }
    }
}
