//! Downloading by hub id, against a fake hub served on loopback (python3's http.server), and
//! the clear failure when the hub cannot be reached.

mod common;
use common::*;

use fraudlab::model::tiny::TinySpec;

fn have(cmd: &str) -> bool {
    std::process::Command::new(cmd)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server(std::process::Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn download_from_a_hub_into_the_cache() {
    if !have("python3") || !have("curl") {
        eprintln!("skipped: needs python3 (for a loopback hub) and curl");
        return;
    }
    let d = tmp();
    let m = tiny_model(d.path(), TinySpec::default());
    // the hub's layout: /api/models/Org/Name and /Org/Name/resolve/<rev>/<file>
    let root = d.path().join("hub");
    let rev = "0123abcd";
    let files_dir = root.join(format!("Org/Tiny-Chat/resolve/{rev}"));
    std::fs::create_dir_all(&files_dir).unwrap();
    let mut siblings = vec![serde_json::json!({"rfilename": "README.md", "size": 5})];
    for e in std::fs::read_dir(&m).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        std::fs::copy(e.path(), files_dir.join(&name)).unwrap();
        siblings.push(serde_json::json!({"rfilename": name, "size": e.metadata().unwrap().len()}));
    }
    std::fs::create_dir_all(root.join("api/models/Org")).unwrap();
    std::fs::write(
        root.join("api/models/Org/Tiny-Chat"),
        serde_json::json!({"sha": rev, "siblings": siblings}).to_string(),
    )
    .unwrap();
    let port = free_port();
    let _server = Server(
        std::process::Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--directory",
                root.to_str().unwrap(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t0 = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed().as_secs() < 20,
            "the loopback hub did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let cache = d.path().join("hf-cache");
    let endpoint = format!("http://127.0.0.1:{port}");
    let o = bin()
        .env("HF_HUB_CACHE", &cache)
        .env("HF_ENDPOINT", &endpoint)
        .args(["download", "Org/Tiny-Chat"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let snap = cache.join(format!("models--Org--Tiny-Chat/snapshots/{rev}"));
    for f in [
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "generation_config.json",
    ] {
        assert!(snap.join(f).exists(), "{f} not downloaded");
    }
    assert!(
        !snap.join("README.md").exists(),
        "only what fraudlab loads is fetched"
    );
    assert_eq!(
        std::fs::read_to_string(cache.join("models--Org--Tiny-Chat/refs/main")).unwrap(),
        rev
    );
    let o = bin()
        .env("HF_HUB_CACHE", &cache)
        .args([
            "probe",
            "--model",
            "Org/Tiny-Chat",
            "--prompt",
            "hi",
            "--max-tokens",
            "2",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // a hub that cannot be reached: a clear message, exit code 2
    let closed = free_port();
    let o = bin()
        .env("HF_HUB_CACHE", &cache)
        .env("HF_ENDPOINT", format!("http://127.0.0.1:{closed}"))
        .args(["download", "Org/Other"])
        .output()
        .unwrap();
    assert_clean_error(&o, &["Org/Other", "cannot reach the model hub"]);
    let o = bin().args(["download", "not-an-id"]).output().unwrap();
    assert_clean_error(&o, &["not a model id"]);
}
