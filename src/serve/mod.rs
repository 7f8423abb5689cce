//! `fraudlab serve`: the model behind an HTTP server (HTTP/1.1, JSON).
//!
//! - `GET /healthz`: `{"status": "ok", "model", "threshold", "consecutive", …}`
//! - `POST /v1/classify` `{"dialogue", "instruction"?}`: score mode on a whole dialogue
//! - `POST /v1/conversations/{id}/turns` `{"speaker"?, "text", "instruction"?}`: one more
//!   turn of a live conversation, scored incrementally (`fraudlab monitor`'s per-turn object);
//!   `DELETE /v1/conversations/{id}` forgets it
//! - `POST /v1/chat/completions`: OpenAI-compatible chat, streamed with `"stream": true`
//! - `GET /v1/models`: the one model, for OpenAI clients
//!
//! Startup ([`run`]) binds the socket, loads the model on the engine thread and prints
//! `serve: listening on http://ADDR (model NAME)`. Handlers wait on the engine through
//! [`bridge`]; at most `--queue` requests wait or run at once (more get 503). SIGINT or
//! SIGTERM stops accepting connections and lets the requests in flight finish (a second
//! signal stops at once).

mod bridge;
mod chat;
mod request;
mod routes;

use std::future::IntoFuture;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::engine::worker::{Command, Engine, EngineState, Event, Subject};

/// The engine's key for the served model.
const KEY: &str = "serve";

pub fn run(a: crate::cli::ServeArgs) -> Result<()> {
    let (cfg, source) = a.live.monitor_config()?;
    let opts = a.live.model.options()?;
    if a.queue == 0 {
        bail!("--queue 0: at least one request must be allowed to wait for the model");
    }
    if a.max_body == 0 {
        bail!("--max-body 0: no request body would fit");
    }
    // Bound first: a port in use fails before a long model load.
    let listener = std::net::TcpListener::bind(&a.addr)
        .with_context(|| format!("serve: cannot listen on {}", a.addr))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;

    let spec = a.live.model.model.clone();
    let engine = Engine::spawn(1024);
    engine.send(Command::Load {
        key: KEY.into(),
        spec: spec.clone(),
        opts,
        adapter: a.live.adapter.clone(),
    });
    engine.send(Command::MonitorConfigure {
        key: KEY.into(),
        cfg: cfg.clone(),
    });
    // Both commands end with `Idle`; collect what they said.
    let mut name = None;
    let mut errors = Vec::new();
    let mut idle = 0;
    while idle < 2 {
        match engine.events.recv() {
            Ok(Event::State(EngineState::Idle)) => idle += 1,
            Ok(Event::Loaded(info)) => name = Some(info.name),
            Ok(Event::Error { subject, message }) => errors.push(match subject {
                Subject::Load { .. } => format!("cannot load the model {spec}: {message}"),
                s => format!("{s}: {message}"),
            }),
            Ok(_) => {}
            Err(_) => bail!("the engine stopped while loading {spec}"),
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    let Some(name) = name else {
        bail!("cannot load the model {spec}: the engine reported nothing");
    };

    let (bridge, pump) =
        bridge::EventPump::start(engine, a.queue).context("serve: event thread")?;
    let threshold = cfg.threshold;
    let consecutive = cfg.consecutive;
    // classify decides on a whole dialogue: --threshold, else the adapter's whole-dialogue
    // threshold, else the per-turn one
    let meta = crate::model::adapter::AdapterMeta::for_adapter(a.live.adapter.as_deref())?;
    let classify_threshold = a.live.threshold.or(meta.threshold).unwrap_or(cfg.threshold);
    let mut st = routes::AppState::new(bridge, KEY.into(), name.clone(), cfg, a.max_body);
    st.classify_threshold = classify_threshold;
    let state = Arc::new(st);
    let app = routes::router(state);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("fraudlab-serve")
        .enable_all()
        .build()
        .context("serve: cannot start the async runtime")?;
    let served = rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        // listening for signals before the line that says the server is up
        let mut signals = Signals::new()?;
        eprintln!(
            "serve: listening on http://{local} (model {name}) — threshold {threshold:.3} ({source}), {consecutive} turn(s) in a row, queue {}",
            a.queue
        );
        let (first_tx, first_rx) = tokio::sync::oneshot::channel::<Signals>();
        let server = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                signals.recv().await;
                eprintln!("serve: shutting down; finishing the requests in flight (signal again to stop now)");
                let _ = first_tx.send(signals);
            })
            .into_future();
        tokio::select! {
            r = server => r,
            _ = async {
                match first_rx.await {
                    Ok(mut signals) => signals.recv().await,
                    Err(_) => std::future::pending::<()>().await,
                }
            } => {
                eprintln!("serve: stopped with requests in flight");
                Ok(())
            }
        }
    });
    // cancels what the engine still runs, then joins it
    pump.stop();
    drop(rt);
    served.context("serve")?;
    eprintln!("serve: stopped");
    Ok(())
}

/// SIGINT and SIGTERM, listened to from startup to the end (a signal between two waits is
/// not lost).
struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    /// Inside the runtime.
    fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next SIGINT or SIGTERM.
    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
