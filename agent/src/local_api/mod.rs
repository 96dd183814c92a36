//! The local API: line-of-business applications on this desktop report work items to the
//! agent, which records them like its own (source `app`).
//!
//! ```text
//! POST http://127.0.0.1:47777/v1/items/{item_id}/{start|pause|resume|done|transfer}
//! Authorization: Bearer <contents of DATA_DIR/local-api.token>
//! Content-Type: application/json
//!
//! {"step": "assess"}          (optional; an empty body is fine)
//! ```
//!
//! Answers: `201 {"seq": n}` once the event is committed; `401` without the right token; `403
//! no_consent` when the employee has not consented to the policy in force; `422` naming the
//! field (`item_id`, `step`) the server would refuse; `404`/`405` for other paths and methods.
//!
//! **Security invariant:** the API listens on a loopback address only ([`start`] refuses any
//! other), and every request needs the per-user token, created once with mode 0600 in the
//! agent's data directory: other users of the machine cannot read it, and a web page cannot
//! send the `Authorization` header cross-origin without a CORS preflight this server never
//! approves.

pub mod http1;

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use backlight_shared::event::ItemSource;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::items::{self, ItemError, Verb};
use crate::policy::ActivePolicy;
use crate::spool::Spool;
use http1::{percent_decode, same_secret, Request, Response};

/// The default address of the local API.
pub const DEFAULT_ADDR: &str = "127.0.0.1:47777";
/// File name of the token in the data directory.
pub const TOKEN_FILE: &str = "local-api.token";

/// The local API could not start.
#[derive(Debug, thiserror::Error)]
pub enum LocalApiError {
    #[error("the local API must listen on a loopback address, not {0}")]
    NotLoopback(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot create or read the token file {path}: {source}")]
    Token { path: PathBuf, source: io::Error },
}

/// The token file in `dir`, created (0600, 32 random bytes in hex) if missing.
pub fn ensure_token(dir: &Path) -> Result<String, LocalApiError> {
    let path = dir.join(TOKEN_FILE);
    let error = |source| LocalApiError::Token {
        path: path.clone(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(&path) {
        Ok(mut file) => {
            let token = crate::consent::page::random_token();
            file.write_all(token.as_bytes()).map_err(error)?;
            file.sync_all().map_err(error)?;
            Ok(token)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let mut text = String::new();
            let file = std::fs::File::open(&path).map_err(error)?;
            crate::private_file::check(&path, &file).map_err(error)?;
            file.take(1024).read_to_string(&mut text).map_err(error)?;
            let token = text.trim().to_string();
            if token.len() < 32 {
                return Err(error(io::Error::other(
                    "the token is shorter than 32 characters",
                )));
            }
            Ok(token)
        }
        Err(e) => Err(error(e)),
    }
}

struct State {
    token: String,
    spool: Spool,
    policy: watch::Receiver<Arc<ActivePolicy>>,
}

/// Starts the API on `addr` (loopback only); returns the address it listens on.
pub async fn start(
    addr: SocketAddr,
    dir: &Path,
    spool: Spool,
    policy: watch::Receiver<Arc<ActivePolicy>>,
    shutdown: watch::Receiver<bool>,
) -> Result<SocketAddr, LocalApiError> {
    if !addr.ip().is_loopback() {
        return Err(LocalApiError::NotLoopback(addr));
    }
    let token = ensure_token(dir)?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| LocalApiError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| LocalApiError::Bind { addr, source })?;
    let state = Arc::new(State {
        token,
        spool,
        policy,
    });
    tokio::spawn(http1::serve(
        listener,
        move |request| {
            let state = Arc::clone(&state);
            async move { handle(&state, request).await }
        },
        shutdown,
    ));
    Ok(local)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemBody {
    #[serde(default)]
    step: Option<String>,
}

async fn handle(state: &State, request: Request) -> Response {
    let Some(rest) = request.path.strip_prefix("/v1/items/") else {
        return Response::error(
            404,
            "not_found",
            "the local API serves POST /v1/items/{id}/{action}",
        );
    };
    let Some((raw_id, raw_action)) = rest.rsplit_once('/') else {
        return Response::error(404, "not_found", "expected /v1/items/{id}/{action}");
    };
    if request.method != "POST" {
        return Response::error(405, "method_not_allowed", "use POST");
    }
    let authorized = request
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|token| same_secret(token.trim(), &state.token));
    if !authorized {
        return Response::error(
            401,
            "unauthorized",
            format!("send Authorization: Bearer <the token in {TOKEN_FILE}>"),
        );
    }
    let Ok(Verb(action)) = raw_action.parse::<Verb>() else {
        return Response::error(
            404,
            "not_found",
            format!("unknown action {raw_action:?}; use start, pause, resume, done or transfer"),
        );
    };
    let body: ItemBody = if request.body.iter().all(u8::is_ascii_whitespace) {
        ItemBody::default()
    } else {
        match serde_json::from_slice(&request.body) {
            Ok(body) => body,
            Err(e) => {
                return Response::error(
                    400,
                    "bad_request",
                    format!("the body must be {{\"step\": \"…\"}}: {e}"),
                )
            }
        }
    };
    // In a path `+` is a plus sign, not a space as in forms.
    let item_id = percent_decode(&raw_id.replace('+', "%2B"));
    let version = state.policy.borrow().policy.version;
    match items::record(
        &state.spool,
        &item_id,
        action,
        body.step,
        ItemSource::App,
        version,
    )
    .await
    {
        Ok(seq) => Response::json(201, &serde_json::json!({"seq": seq})),
        Err(ItemError::Invalid(e)) => Response::json(
            422,
            &serde_json::json!({"error": "invalid_field", "message": e.to_string(), "field": e.field}),
        ),
        Err(e @ ItemError::NoConsent { .. }) => Response::error(403, "no_consent", e.to_string()),
        Err(e @ ItemError::Spool(_)) => Response::error(503, "unavailable", e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let token = ensure_token(dir.path()).unwrap();
        assert_eq!(ensure_token(dir.path()).unwrap(), token);
    }

    /// Issue 10: a token file others can read (or wrote themselves) is not a secret of this
    /// user; the agent trusted it whatever its permissions.
    #[cfg(unix)]
    #[test]
    fn token_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKEN_FILE);
        std::fs::write(&path, "a".repeat(64)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = ensure_token(dir.path()).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(ensure_token(dir.path()).unwrap(), "a".repeat(64));
    }
}
