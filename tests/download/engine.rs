//! The workbench's path: the engine downloads on its thread, reports progress for the status
//! line, and a cancel (Esc in the Models pane) ends the download at once.

use super::*;
use fraudlab::engine::{Command as EngineCommand, Engine, Event, Subject};

/// The next event `pick` accepts, within `limit`.
fn wait_for<T>(engine: &Engine, limit: Duration, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        for e in engine.drain() {
            if let Some(t) = pick(&e) {
                return t;
            }
        }
        assert!(t0.elapsed() < limit, "no such event within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_engine_downloads_with_progress_and_a_cancel_stops_it() {
    let d = tmp();
    let (hub, m) = tiny_hub(d.path(), TinySpec::default());
    let repo = Repo::from_folder(ID, COMMIT, &m);
    let _env = ENV_LOCK.lock().unwrap();
    for v in [
        "HF_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
    ] {
        std::env::remove_var(v);
    }
    std::env::set_var("HF_ENDPOINT", &hub.url);
    std::env::set_var("HF_HUB_CACHE", d.path().join("cache"));
    std::env::set_var("HF_HOME", d.path().join("hf-home"));

    let engine = Engine::spawn(64);
    hub.knobs().piece_delay = Some(Duration::from_millis(100));
    engine.send(EngineCommand::Download { id: ID.into() });
    wait_for(&engine, Duration::from_secs(20), |e| match e {
        Event::DownloadProgress { progress, .. } if progress.fetched > 0 => Some(()),
        _ => None,
    });
    let t0 = Instant::now();
    engine.cancel();
    let message = wait_for(&engine, Duration::from_secs(5), |e| match e {
        Event::Error {
            subject: Subject::Download { id },
            message,
        } if id == ID => Some(message.clone()),
        _ => None,
    });
    assert!(message.contains("cancelled"), "{message}");
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());

    hub.knobs().piece_delay = None;
    engine.send(EngineCommand::Download { id: ID.into() });
    let mut last = None;
    let path = wait_for(&engine, Duration::from_secs(20), |e| match e {
        Event::DownloadProgress { progress, .. } => {
            last = Some(progress.clone());
            None
        }
        Event::Downloaded { path, .. } => Some(path.clone()),
        Event::Error { message, .. } => panic!("{message}"),
        _ => None,
    });
    for v in ["HF_ENDPOINT", "HF_HUB_CACHE", "HF_HOME"] {
        std::env::remove_var(v);
    }
    let last = last.expect("progress events");
    assert_eq!(last.files_done, last.files_total, "{last:?}");
    assert_eq!(Some(last.done), last.total, "{last:?}");
    assert_eq!(
        path,
        d.path()
            .join(format!("cache/models--Org--Tiny-Chat/snapshots/{COMMIT}"))
    );
    assert_layout(&d.path().join("cache"), &repo, COMMIT);
}
