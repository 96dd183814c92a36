//! The agent's local page: the organisation's notice with Grant / Decline (or Withdraw)
//! buttons, and the transparency view of what was recorded today.
//!
//! It listens on `127.0.0.1` on a random free port for as long as `run` runs. Every URL needs
//! the random token the page was started with (printed in the log, stored in the owner-only
//! spool, shown by `backlight-agent consent show`); answers are `POST`ed forms that must carry
//! the token in the body, the notice version they answer, and — when the browser says where
//! the form came from — come from this page itself (`Origin`, `Sec-Fetch-Site`). The `Host`
//! header must name the page's own address, so a web site cannot reach it through DNS
//! rebinding.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use backlight_shared::now_ms;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use super::show;
use super::{describe, gate, Gate};
use crate::local_api::http1::{self, escape_html, same_secret, Request, Response};
use crate::policy::ActivePolicy;
use crate::spool::{Note, Spool};

struct State {
    token: String,
    /// `127.0.0.1:PORT`, the only acceptable `Host`.
    host: String,
    spool: Spool,
    dir: PathBuf,
    policy: watch::Receiver<Arc<ActivePolicy>>,
    /// Wakes the control loop so an answer takes effect at once.
    refresh: Arc<Notify>,
}

/// Starts the page; returns its URL (with the token). It stops with `shutdown`.
pub async fn start(
    spool: Spool,
    dir: PathBuf,
    policy: watch::Receiver<Arc<ActivePolicy>>,
    refresh: Arc<Notify>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<String> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let address = listener.local_addr()?;
    let token = random_token();
    let url = format!("http://{address}/?token={token}");
    let state = Arc::new(State {
        token,
        host: address.to_string(),
        spool: spool.clone(),
        dir,
        policy,
        refresh,
    });
    if let Err(error) = spool.set_note(Note::ConsentUrl, Some(url.clone())).await {
        tracing::warn!(%error, "cannot store the consent page's address");
    }
    tokio::spawn(http1::serve(
        listener,
        move |request| {
            let state = Arc::clone(&state);
            async move { handle(&state, request).await }
        },
        shutdown,
    ));
    Ok(url)
}

/// 32 random bytes in hex.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

async fn handle(state: &State, request: Request) -> Response {
    if request.header("host") != Some(state.host.as_str()) {
        return Response::error(403, "forbidden", "wrong Host");
    }
    let query_token = Request::param(&request.query, "token").unwrap_or_default();
    match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/") if same_secret(&query_token, &state.token) => main_page(state, None).await,
        ("GET", "/show") if same_secret(&query_token, &state.token) => show_page(state).await,
        ("POST", "/answer") => answer(state, &request).await,
        ("GET", "/" | "/show") => Response::error(403, "forbidden", "missing or wrong token"),
        _ => Response::error(404, "not_found", "no such page"),
    }
}

async fn answer(state: &State, request: &Request) -> Response {
    let form = String::from_utf8_lossy(&request.body).into_owned();
    let token = Request::param(&form, "token").unwrap_or_default();
    if !same_secret(&token, &state.token) {
        return Response::error(403, "forbidden", "missing or wrong token");
    }
    let own_origin = format!("http://{}", state.host);
    if request.header("origin").is_some_and(|o| o != own_origin)
        || request
            .header("sec-fetch-site")
            .is_some_and(|s| s != "same-origin" && s != "none")
    {
        return Response::error(403, "forbidden", "answers come from this page only");
    }
    let version = state.policy.borrow().policy.version;
    if Request::param(&form, "version").and_then(|v| v.parse::<u32>().ok()) != Some(version) {
        return main_page(
            state,
            Some("The notice changed while the page was open; please read it again."),
        )
        .await;
    }
    let result = match Request::param(&form, "answer").as_deref() {
        Some("grant") => super::grant(&state.spool, version)
            .await
            .map(|_| "Thank you. Recording starts now."),
        Some("decline") => super::decline(&state.spool, version)
            .await
            .map(|_| "You declined. Nothing is recorded."),
        Some("revoke") => super::revoke(&state.spool, version)
            .await
            .map(|_| "Consent withdrawn. Recording stopped and data not yet sent was deleted."),
        _ => {
            return Response::error(
                400,
                "bad_request",
                "answer must be grant, decline or revoke",
            )
        }
    };
    match result {
        Ok(message) => {
            state.refresh.notify_one();
            main_page(state, Some(message)).await
        }
        Err(error) => Response::error(
            503,
            "unavailable",
            format!("cannot record the answer: {error}"),
        ),
    }
}

async fn main_page(state: &State, message: Option<&str>) -> Response {
    let (version, notice) = {
        let policy = state.policy.borrow();
        (policy.policy.version, policy.policy.notice.clone())
    };
    let control = match state.spool.control().await {
        Ok(control) => control,
        Err(error) => return Response::error(503, "unavailable", error.to_string()),
    };
    let current = gate(&control, version, now_ms());
    let mut body = String::new();
    if let Some(message) = message {
        let _ = write!(body, "<p class=msg>{}</p>", escape_html(message));
    }
    let _ = write!(
        body,
        "<h1>Backlight on this computer</h1><h2>Your organisation's notice (version {version})</h2>"
    );
    for paragraph in notice.split("\n\n") {
        let _ = write!(body, "<p>{}</p>", escape_html(paragraph));
    }
    let _ = write!(
        body,
        "<p>Your answer: {}. Now: {}.</p>",
        escape_html(&describe(control.consent.as_ref())),
        escape_html(&current.describe())
    );
    let button = |answer: &str, label: &str| {
        format!(
            "<form method=post action=/answer><input type=hidden name=token value={}>\
             <input type=hidden name=version value={version}><input type=hidden name=answer \
             value={answer}><button>{label}</button></form>",
            state.token
        )
    };
    match current {
        Gate::Open | Gate::Paused { .. } => body.push_str(&button(
            "revoke",
            "Withdraw consent (stops recording, deletes what was not sent)",
        )),
        Gate::Ask { .. } | Gate::Refused { .. } => {
            body.push_str(&button("grant", "I agree"));
            body.push_str(&button("decline", "I decline"));
        }
    }
    let _ = write!(
        body,
        "<p><a href=\"/show?token={}\">See exactly what was recorded today</a></p>",
        state.token
    );
    Response::html(200, page(&body))
}

async fn show_page(state: &State) -> Response {
    let dir = state.dir.clone();
    match tokio::task::spawn_blocking(move || show::today(&dir)).await {
        Ok(Ok(today)) => Response::html(
            200,
            page(&format!(
                "{}<p><a href=\"/?token={}\">Back</a></p>",
                show::render_html(&today),
                state.token
            )),
        ),
        Ok(Err(error)) => Response::error(503, "unavailable", error.to_string()),
        Err(error) => Response::error(503, "unavailable", error.to_string()),
    }
}

fn page(body: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=utf-8><title>Backlight</title>\
         <meta name=viewport content=\"width=device-width\"><style>body{{font:16px sans-serif;\
         max-width:48em;margin:2em auto;padding:0 1em}}form{{display:inline-block;margin:.5em\
         }}button{{font-size:1em;padding:.5em 1em}}.msg{{background:#eef;padding:.5em}}td{{\
         padding:0 .5em;font-size:.9em}}</style></head><body>{body}</body></html>"
    )
}
