//! A tmux server of its own driving the real binary in a terminal (the tests that use it skip
//! with a message when tmux is not installed).

use std::process::Command;
use std::time::{Duration, Instant};

pub struct Tmux {
    pub socket: String,
    pub target: String,
}

impl Tmux {
    pub fn available() -> bool {
        Command::new("tmux")
            .arg("-V")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// A detached 160x45 session running `cmd` (through the shell).
    pub fn start(socket: &str, name: &str, cmd: &str) -> Tmux {
        let st = Command::new("tmux")
            .args([
                "-L",
                socket,
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-s",
                name,
                "-x",
                "160",
                "-y",
                "45",
                cmd,
            ])
            .status()
            .expect("run tmux");
        assert!(st.success(), "tmux new-session failed");
        Tmux {
            socket: socket.into(),
            target: name.into(),
        }
    }

    fn tmux(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .unwrap()
    }

    pub fn keys(&self, keys: &[&str]) {
        for k in keys {
            assert!(self
                .tmux(&["send-keys", "-t", &self.target, k])
                .status
                .success());
            // let each key reach the app as its own event
            std::thread::sleep(Duration::from_millis(40));
        }
    }

    /// Several keys in one `send-keys` (they arrive as fast as the terminal takes them).
    pub fn burst(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.target];
        args.extend_from_slice(keys);
        assert!(self.tmux(&args).status.success());
    }

    pub fn literal(&self, text: &str) {
        assert!(self
            .tmux(&["send-keys", "-t", &self.target, "-l", text])
            .status
            .success());
        std::thread::sleep(Duration::from_millis(60));
    }

    /// Types a shell command line and Enter.
    pub fn line(&self, text: &str) {
        self.literal(text);
        self.keys(&["Enter"]);
    }

    pub fn screen(&self) -> String {
        String::from_utf8_lossy(
            &self
                .tmux(&["capture-pane", "-p", "-t", &self.target])
                .stdout,
        )
        .into_owned()
    }

    /// A tmux format of the pane, e.g. `#{alternate_on}`.
    pub fn display(&self, format: &str) -> String {
        String::from_utf8_lossy(
            &self
                .tmux(&["display", "-p", "-t", &self.target, format])
                .stdout,
        )
        .trim()
        .to_string()
    }

    /// The pane's terminal settings (`stty -a` on its tty, read from outside).
    pub fn stty(&self) -> String {
        let tty = self.display("#{pane_tty}");
        let o = Command::new("stty")
            .args(["-a", "-F", &tty])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Polls the screen until `pred` holds; panics with the last screen after `secs`.
    pub fn wait(&self, what: &str, secs: u64, pred: impl Fn(&str) -> bool) -> String {
        let t = Instant::now();
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            if t.elapsed() > Duration::from_secs(secs) {
                panic!("timed out after {secs}s waiting for {what}; screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_for(&self, text: &str, secs: u64) -> String {
        self.wait(&format!("{text:?}"), secs, |s| s.contains(text))
    }

    pub fn kill(&self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-session", "-t", &self.target])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.kill();
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Whether `stty -a` output shows a cooked terminal: canonical input and echo on.
pub fn cooked(stty: &str) -> bool {
    let flags: Vec<&str> = stty.split_whitespace().collect();
    flags.contains(&"icanon") && flags.contains(&"echo")
}
