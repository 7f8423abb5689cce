//! The workbench under faults, in tmux with a real shell: SIGTERM, SIGHUP and SIGINT end it
//! with the terminal restored (cooked mode, normal screen, cursor shown; the shell prompt
//! runs the next command) and the session saved; a panic of the UI thread does the same and
//! prints the panic; a panic of the engine thread is an error in the UI, which keeps its
//! screen and goes on; SIGKILL while labelling never loses a label the screen showed.
//! Skipped (with a message) without tmux.
//!
//! Panics are asked for through the test hook `FRAUDLAB_TEST_PANIC` (`ui-thread`: F12
//! panics the UI thread; `engine-load`: the engine panics on its first model load).

mod common;
use common::tmux::{cooked, Tmux};

use std::path::PathBuf;
use std::time::Duration;

struct Bench {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    sessions: PathBuf,
    home: PathBuf,
}

impl Bench {
    fn new() -> Bench {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let home = dir.join("home");
        std::fs::create_dir_all(&home).unwrap();
        Bench {
            sessions: dir.join("sessions"),
            dir,
            home,
            _tmp: tmp,
        }
    }

    /// A shell command line that runs the workbench (its pid in `pidfile`), then prints its
    /// exit status.
    fn command(&self, session: &str, env: &str) -> String {
        format!(
            "cd '{dir}' && sh -c 'echo $$ > pid; exec env -u FRAUDLAB_MODELS -u HF_HOME HOME={home} HF_HUB_CACHE={home}/hf MODELSCOPE_CACHE={home}/ms FRAUDLAB_SESSIONS={sessions} {env} {bin} --session {session}'; echo EXITED $?",
            dir = self.dir.display(),
            home = self.home.display(),
            sessions = self.sessions.display(),
            bin = env!("CARGO_BIN_EXE_fraudlab"),
        )
    }

    fn pid(&self) -> i32 {
        std::fs::read_to_string(self.dir.join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn session_json(&self, session: &str) -> serde_json::Value {
        let p = self.sessions.join(session).join("session.json");
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }
}

/// A tmux session running a plain shell.
fn shell(socket: &str, name: &str) -> Tmux {
    let t = Tmux::start(socket, name, "env PS1='PROMPT$ ' sh");
    t.wait_for("PROMPT$", 10);
    t
}

/// The terminal is given back: normal screen, cursor shown, cooked mode, and the shell
/// runs the next command.
fn assert_terminal_restored(t: &Tmux, what: &str) {
    assert_eq!(
        t.display("#{alternate_on}"),
        "0",
        "{what}: alternate screen left on"
    );
    assert_eq!(t.display("#{cursor_flag}"), "1", "{what}: cursor hidden");
    let stty = t.stty();
    assert!(cooked(&stty), "{what}: terminal not restored: {stty}");
    t.line("stty -a | tr ' ;' '\\n\\n' | grep -x -e icanon -e echo | tr '\\n' ' '; echo; echo SHELL-$((6*7))");
    let s = t.wait_for("SHELL-42", 10);
    assert!(s.contains("icanon echo"), "{what}: the shell sees {s}");
}

#[test]
fn stop_signals_restore_the_terminal_and_save_the_session() {
    if !Tmux::available() {
        println!("SKIPPED tui_faults: tmux is not installed (the CI script installs it)");
        return;
    }
    let b = Bench::new();
    for (name, sig) in [
        ("TERM", libc::SIGTERM),
        ("HUP", libc::SIGHUP),
        ("INT", libc::SIGINT),
    ] {
        // a server of its own each time (a killed one may still be going away)
        let socket = format!("fraudlab-sig-{name}-{}", std::process::id());
        let t = shell(&socket, name);
        t.line(&b.command("sig", ""));
        t.wait_for("1 Models", 30);
        // a pane to remember, then the signal while the workbench runs
        t.keys(&["4"]);
        t.wait_for("hand-labelled", 30);
        assert_eq!(t.display("#{alternate_on}"), "1");
        assert!(!cooked(&t.stty()), "the workbench runs in raw mode");
        std::fs::remove_file(b.sessions.join("sig/session.json")).unwrap();
        // SAFETY: a signal to the child this test started.
        assert_eq!(unsafe { libc::kill(b.pid(), sig) }, 0);
        t.wait_for(&format!("EXITED {}", 128 + sig), 30);
        assert_terminal_restored(&t, name);
        let s = b.session_json("sig");
        assert_eq!(
            s["settings"]["tui"]["tab"], "data",
            "SIG{name}: the session is saved on the way out"
        );
        drop(t);
    }
}

#[test]
fn a_ui_thread_panic_restores_the_terminal_then_prints_the_panic() {
    if !Tmux::available() {
        println!("SKIPPED tui_faults: tmux is not installed (the CI script installs it)");
        return;
    }
    let b = Bench::new();
    let socket = format!("fraudlab-uipanic-{}", std::process::id());
    let t = shell(&socket, "ui");
    t.line(&b.command("p", "FRAUDLAB_TEST_PANIC=ui-thread"));
    t.wait_for("1 Models", 30);
    t.keys(&["F12"]);
    let s = t.wait_for("EXITED 101", 30);
    assert!(s.contains("test panic in the UI thread"), "{s}");
    assert_terminal_restored(&t, "UI panic");
}

#[test]
fn an_engine_panic_is_an_error_in_the_ui_which_goes_on() {
    if !Tmux::available() {
        println!("SKIPPED tui_faults: tmux is not installed (the CI script installs it)");
        return;
    }
    let b = Bench::new();
    let socket = format!("fraudlab-enginepanic-{}", std::process::id());
    let t = shell(&socket, "engine");
    t.line(&b.command("e", "FRAUDLAB_TEST_PANIC=engine-load"));
    t.wait_for("1 Models", 30);
    t.keys(&["1", "d"]);
    t.wait_for("fraudlab-demo-tiny (demo)", 30);
    t.keys(&["Enter"]);
    let s = t.wait_for("internal error", 30);
    assert!(s.contains("test panic in the engine thread"), "{s}");
    // the workbench keeps its screen and raw mode; nothing was printed over it
    assert_eq!(t.display("#{alternate_on}"), "1");
    assert!(!cooked(&t.stty()));
    assert!(!s.contains("panicked at"), "{s}");
    // the engine goes on: the same model loads now
    t.keys(&["Enter"]);
    t.wait_for(" 1 loaded ", 60);
    t.keys(&["q"]);
    let s = t.wait_for("EXITED 0", 60);
    assert!(
        s.contains("thread 'fraudlab-engine'") && s.contains("test panic in the engine thread"),
        "the engine's panic report is printed once the terminal is back: {s}"
    );
    assert_terminal_restored(&t, "engine panic");
    let models = b.session_json("e")["models"].clone();
    assert_eq!(models.as_array().map(Vec::len), Some(1), "{models}");
}

/// Sample ids and the "hand-labelled N" counter of the Data pane's screen.
fn hand_labelled(screen: &str) -> Option<usize> {
    let i = screen.find("hand-labelled ")?;
    screen[i + 14..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[test]
fn sigkill_while_labelling_in_the_workbench_keeps_every_label_it_showed() {
    if !Tmux::available() {
        println!("SKIPPED tui_faults: tmux is not installed (the CI script installs it)");
        return;
    }
    const ROUNDS: usize = 100;
    let b = Bench::new();
    let data = b.dir.join("unlabelled.jsonl");
    // dialogues without labels: every label the pane counts is a hand label
    let mut text = String::new();
    for i in 0..2000 {
        text.push_str(
            &serde_json::json!({"text": format!("甲: 第{i}通电话，请转账。\n乙: 好的。")})
                .to_string(),
        );
        text.push('\n');
    }
    std::fs::write(&data, text).unwrap();
    let jp = b
        .sessions
        .join("k/labels")
        .join(format!("{}.jsonl", fraudlab::data::dataset_id(&data)));
    let socket = format!("fraudlab-kill-{}", std::process::id());
    let cmd = format!(
        "exec env -u FRAUDLAB_MODELS -u HF_HOME HOME={home} HF_HUB_CACHE={home}/hf MODELSCOPE_CACHE={home}/ms FRAUDLAB_SESSIONS={sessions} {bin} --session k",
        home = b.home.display(),
        sessions = b.sessions.display(),
        bin = env!("CARGO_BIN_EXE_fraudlab"),
    );
    let t = Tmux::start(&socket, "k", &cmd);
    // a killed workbench leaves its pane for the next one
    let _ = std::process::Command::new("tmux")
        .args(["-L", &socket, "set-option", "-g", "remain-on-exit", "on"])
        .status();
    t.wait_for("1 Models", 30);
    t.keys(&["4", "o", "C-u"]);
    t.literal(&data.display().to_string());
    t.keys(&["Enter"]);
    t.wait_for("hand-labelled 0", 30);
    let mut rng = 0x2545F4914F6CDD1Du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut on_disk = 0;
    let mut shown_total = 0;
    let t0 = std::time::Instant::now();
    for round in 0..ROUNDS {
        if round > 0 {
            let _ = std::process::Command::new("tmux")
                .args(["-L", &socket, "respawn-pane", "-k", "-t", "k", &cmd])
                .status();
        }
        t.wait("the Data pane", 30, |s| hand_labelled(s) == Some(on_disk));
        // only unlabelled rows, so each key labels a new sample; then a burst of labels
        let n = 1 + (next() % 8) as usize;
        let keys: Vec<bool> = (0..n).map(|_| next() % 2 == 0).collect();
        let mut burst = vec!["v"];
        burst.extend(keys.iter().map(|&f| if f { "f" } else { "n" }));
        t.burst(&burst);
        std::thread::sleep(Duration::from_micros(next() % 40_000));
        let shown = hand_labelled(&t.screen()).unwrap_or(on_disk);
        let pid: i32 = t.display("#{pane_pid}").parse().unwrap();
        // SAFETY: SIGKILL to the workbench this test started in its pane.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        t.wait("the pane to die", 10, |_| t.display("#{pane_dead}") == "1");
        // every label counted on screen is on disk, with the value its key gave
        let r = fraudlab::data::Journal::read(&jp).unwrap();
        assert!(r.bad_lines.is_empty(), "{:?}", r.bad_lines);
        let now = r.entries.len();
        assert!(
            now >= shown,
            "round {round}: the screen showed {shown} hand labels, the journal holds {now}"
        );
        for (k, e) in r.entries[on_disk..].iter().enumerate() {
            assert_eq!(
                e.label,
                Some(keys[k]),
                "round {round}: label {k} of the burst"
            );
        }
        shown_total += shown - on_disk;
        on_disk = now;
    }
    println!(
        "{ROUNDS} kills of the workbench in {:.1}s; {shown_total} labels shown before a kill, {on_disk} on disk",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        shown_total > ROUNDS,
        "too few labels were shown: {shown_total}"
    );
}
