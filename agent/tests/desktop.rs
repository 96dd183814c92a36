//! The desktop source end to end inside the agent: a scripted desktop backend (a test double of
//! the platform only), the real consent control loop, the real spool. Each test drives the
//! source the way `run` does and looks at what the spool committed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backlight_agent::capture::{CaptureError, DesktopBackend, Focus, Sample};
use backlight_agent::consent::{self, AskOptions, Gate};
use backlight_agent::desktop::{DesktopSource, Opener};
use backlight_agent::policy::{ActivePolicy, Origin};
use backlight_agent::source::{Pulled, Source};
use backlight_agent::spool::{Spool, SpoolConfig, MAX_SEEN_ITEMS};
use backlight_shared::event::{EventBody, ItemAction};
use backlight_shared::now_ms;
use backlight_shared::policy::{ItemRule, Policy};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

/// What the fake desktop shows, and what was asked of it.
#[derive(Default)]
struct Desk {
    opens: AtomicUsize,
    samples: AtomicUsize,
    title: Mutex<String>,
    /// The next sample fails with `Disconnected`.
    disconnect: AtomicBool,
    /// Opening fails with `Unavailable`.
    unavailable: AtomicBool,
}

impl Desk {
    fn samples(&self) -> usize {
        self.samples.load(Ordering::SeqCst)
    }
    fn show(&self, title: &str) {
        *self.title.lock().unwrap() = title.to_string();
    }
}

struct FakeBackend(Arc<Desk>);

impl DesktopBackend for FakeBackend {
    fn describe(&self) -> String {
        "fake".into()
    }

    fn sample(&mut self) -> Result<Sample, CaptureError> {
        if self.0.disconnect.swap(false, Ordering::SeqCst) {
            return Err(CaptureError::Disconnected("fake X server went away".into()));
        }
        self.0.samples.fetch_add(1, Ordering::SeqCst);
        Ok(Sample {
            at_ms: now_ms(),
            focus: Some(Focus {
                app: "claims-desk".into(),
                process: None,
                product: None,
                title: self.0.title.lock().unwrap().clone(),
                window: 7,
            }),
            idle_ms: 0,
            locked: false,
        })
    }

    fn window_exists(&mut self, _window: u64) -> Result<bool, CaptureError> {
        Ok(true)
    }
}

fn opener(desk: &Arc<Desk>) -> Opener {
    let desk = Arc::clone(desk);
    Box::new(move || {
        desk.opens.fetch_add(1, Ordering::SeqCst);
        if desk.unavailable.load(Ordering::SeqCst) {
            return Err(CaptureError::Unavailable("no display in this test".into()));
        }
        Ok(Box::new(FakeBackend(Arc::clone(&desk))) as Box<dyn DesktopBackend>)
    })
}

fn policy(version: u32) -> Arc<ActivePolicy> {
    Arc::new(ActivePolicy {
        policy: Policy {
            version,
            sample_interval_ms: 200,
            rules: vec![ItemRule {
                name: "claims".into(),
                app: None,
                title: r"Claim (?P<item>CLM-\d+)".into(),
                complete_title: None,
                complete_on_close: false,
            }],
            ..Policy::default()
        },
        etag: None,
        origin: Origin::Server,
    })
}

/// A running desktop source with its control loop, as `run` wires them.
struct Rig {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    spool: Spool,
    desk: Arc<Desk>,
    policy: watch::Sender<Arc<ActivePolicy>>,
    gate: watch::Receiver<Gate>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Rig {
    async fn start() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.sqlite3");
        let spool = Spool::open(&path, SpoolConfig::default()).unwrap();
        let desk = Arc::new(Desk::default());
        desk.show("Inbox");
        let (policy_tx, policy_rx) = watch::channel(policy(1));
        let (shutdown_tx, shutdown) = watch::channel(false);
        let initial = consent::gate(&spool.control().await.unwrap(), 1, now_ms());
        let (gate_tx, gate_rx) = watch::channel(initial);
        let control = tokio::spawn({
            let (spool, policy_rx, shutdown) = (spool.clone(), policy_rx.clone(), shutdown.clone());
            async move {
                consent::watch_control(
                    spool,
                    policy_rx,
                    gate_tx,
                    Arc::new(Notify::new()),
                    AskOptions::default(),
                    shutdown,
                )
                .await
                .unwrap();
            }
        });
        let seen = spool.seen_items(MAX_SEEN_ITEMS as usize).await.unwrap();
        let mut source = DesktopSource::new(
            opener(&desk),
            spool.clone(),
            policy_rx,
            gate_rx.clone(),
            seen,
        );
        let pump = tokio::spawn({
            let spool = spool.clone();
            let mut shutdown = shutdown.clone();
            async move {
                loop {
                    let pulled = tokio::select! {
                        pulled = source.pull() => pulled.unwrap(),
                        _ = shutdown.changed() => {
                            if let Some(Pulled::Guarded { bodies, guard }) = source.finish() {
                                spool.append_guarded(bodies, Default::default(), guard).await.unwrap();
                            }
                            return;
                        }
                    };
                    if let Pulled::Guarded { bodies, guard } = pulled {
                        spool
                            .append_guarded(bodies, Default::default(), guard)
                            .await
                            .unwrap();
                    }
                }
            }
        });
        Rig {
            _dir: dir,
            path,
            spool,
            desk,
            policy: policy_tx,
            gate: gate_rx,
            shutdown: shutdown_tx,
            tasks: vec![control, pump],
        }
    }

    /// Another process's connection, as `backlight-agent consent …` opens it.
    fn other_process(&self) -> Spool {
        Spool::open(&self.path, SpoolConfig::default()).unwrap()
    }

    async fn events(&self) -> Vec<EventBody> {
        self.spool
            .oldest(100_000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.body)
            .collect()
    }

    async fn captured(&self) -> usize {
        self.events()
            .await
            .iter()
            .filter(|b| matches!(b, EventBody::ActivitySpan(_) | EventBody::WorkItem(_)))
            .count()
    }

    async fn stop(self) -> Vec<EventBody> {
        self.shutdown.send(true).unwrap();
        for task in self.tasks {
            task.await.unwrap();
        }
        let events = self
            .spool
            .oldest(100_000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.body)
            .collect();
        self.spool.close().await;
        events
    }
}

/// Polls `condition` every 50 ms for up to `secs` seconds.
async fn eventually(secs: u64, what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn nothing_is_sampled_before_consent() {
    let rig = Rig::start().await;
    assert_eq!(*rig.gate.borrow(), Gate::Ask { version: 1 });
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        rig.desk.opens.load(Ordering::SeqCst),
        0,
        "the backend was opened before consent"
    );
    assert_eq!(
        rig.desk.samples(),
        0,
        "the desktop was sampled before consent"
    );
    assert_eq!(rig.captured().await, 0);

    // Granted from another process (the `consent grant` command): capture starts within ~1 s.
    let cli = rig.other_process();
    consent::grant(&cli, 1).await.unwrap();
    cli.close().await;
    eventually(5, "sampling after consent", async || rig.desk.samples() > 0).await;
    rig.desk.show("Claim CLM-1");
    eventually(5, "the item to start", async || rig.captured().await > 0).await;
    let events = rig.stop().await;
    let started = events.iter().any(|b| {
        matches!(b, EventBody::WorkItem(w) if w.item_id == "CLM-1" && w.action == ItemAction::Started)
    });
    assert!(started, "{events:?}");
    // Shutdown flushed the open span on the item.
    assert!(
        events.iter().any(
            |b| matches!(b, EventBody::ActivitySpan(s) if s.item_id.as_deref() == Some("CLM-1"))
        ),
        "{events:?}"
    );
}

#[tokio::test]
async fn revoke_stops_capture_at_once_and_purges_unsent_data() {
    let rig = Rig::start().await;
    consent::grant(&rig.spool, 1).await.unwrap();
    rig.desk.show("Claim CLM-2");
    eventually(5, "an item event", async || rig.captured().await > 0).await;
    rig.desk.show("Inbox");
    eventually(5, "a closed span", async || {
        rig.events()
            .await
            .iter()
            .any(|b| matches!(b, EventBody::ActivitySpan(_)))
    })
    .await;

    let cli = rig.other_process();
    let recorded = consent::revoke(&cli, 1).await.unwrap();
    cli.close().await;
    assert!(recorded.purged >= 2, "purged {}", recorded.purged);
    assert_eq!(rig.captured().await, 0, "unsent desktop data is deleted");

    eventually(3, "the gate to close", async || {
        *rig.gate.borrow() == Gate::Refused { version: 1 }
    })
    .await;
    // Give the source one sampling interval to notice, then sampling must stop for good.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let after = rig.desk.samples();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(rig.desk.samples(), after, "sampling continued after revoke");
    let events = rig.stop().await;
    assert!(
        !events
            .iter()
            .any(|b| matches!(b, EventBody::ActivitySpan(_) | EventBody::WorkItem(_))),
        "desktop data recorded after revoke: {events:?}"
    );
    // The withdrawal itself is kept for the server.
    assert!(events
        .iter()
        .any(|b| matches!(b, EventBody::Consent(c) if !c.granted)));
}

#[tokio::test]
async fn a_new_policy_version_stops_capture_until_granted() {
    let rig = Rig::start().await;
    consent::grant(&rig.spool, 1).await.unwrap();
    eventually(5, "sampling", async || rig.desk.samples() > 0).await;

    rig.policy.send(policy(2)).unwrap();
    eventually(3, "the gate to ask again", async || {
        *rig.gate.borrow() == Gate::Ask { version: 2 }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let stopped_at = rig.desk.samples();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(
        rig.desk.samples(),
        stopped_at,
        "sampling continued under an unanswered notice"
    );

    consent::grant(&rig.spool, 2).await.unwrap();
    eventually(5, "sampling after the new consent", async || {
        rig.desk.samples() > stopped_at
    })
    .await;
    rig.stop().await;
}

#[tokio::test]
async fn pause_stops_sampling_and_resume_restarts_it() {
    let rig = Rig::start().await;
    consent::grant(&rig.spool, 1).await.unwrap();
    eventually(5, "sampling", async || rig.desk.samples() > 0).await;
    rig.spool
        .set_pause(Some(now_ms() + 3_600_000))
        .await
        .unwrap();
    eventually(3, "the pause", async || {
        matches!(*rig.gate.borrow(), Gate::Paused { .. })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let paused_at = rig.desk.samples();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(rig.desk.samples(), paused_at);
    rig.spool.set_pause(None).await.unwrap();
    eventually(5, "sampling again", async || rig.desk.samples() > paused_at).await;
    rig.stop().await;
}

#[tokio::test]
async fn a_lost_display_closes_spans_and_reconnects() {
    let rig = Rig::start().await;
    consent::grant(&rig.spool, 1).await.unwrap();
    rig.desk.show("Claim CLM-3");
    eventually(5, "sampling", async || rig.desk.samples() > 2).await;
    rig.desk.disconnect.store(true, Ordering::SeqCst);
    // The open span and the item are closed at the last sample…
    eventually(5, "the span to close", async || {
        rig.events()
            .await
            .iter()
            .any(|b| matches!(b, EventBody::WorkItem(w) if w.action == ItemAction::Paused))
    })
    .await;
    // …and the backend is opened again.
    eventually(5, "a reconnect", async || {
        rig.desk.opens.load(Ordering::SeqCst) >= 2
    })
    .await;
    let before = rig.desk.samples();
    eventually(5, "sampling after the reconnect", async || {
        rig.desk.samples() > before
    })
    .await;
    rig.stop().await;
}

#[tokio::test]
async fn unavailable_capture_keeps_the_source_running() {
    let rig = Rig::start().await;
    rig.desk.unavailable.store(true, Ordering::SeqCst);
    consent::grant(&rig.spool, 1).await.unwrap();
    eventually(5, "an attempt to open the desktop", async || {
        rig.desk.opens.load(Ordering::SeqCst) == 1
    })
    .await;
    eventually(5, "the capture note", async || {
        rig.spool
            .note(backlight_agent::spool::Note::Capture)
            .await
            .unwrap()
            .is_some_and(|n| n.starts_with("unavailable"))
    })
    .await;
    // Still alive: shutdown works and nothing was sampled.
    let events = rig.stop().await;
    assert!(!events
        .iter()
        .any(|b| matches!(b, EventBody::ActivitySpan(_))));
}
