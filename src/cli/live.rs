//! `fraudlab monitor`: live conversations from standard input, one result line per turn.

use anyhow::{bail, Result};
use serde_json::{json, Value};
use std::io::{BufRead, Write};
use std::sync::atomic::AtomicBool;

use super::args::MonitorArgs;
use crate::engine::monitor::{Monitor, TurnResult};

/// One input line: `(conversation, speaker, text)`.
pub fn parse_turn_line(line: &str) -> Result<(String, String, String)> {
    let t = line.trim();
    if t.starts_with('{') {
        let v: Value =
            serde_json::from_str(t).map_err(|e| anyhow::anyhow!("not valid JSON: {e}"))?;
        let o = v
            .as_object()
            .ok_or_else(|| anyhow::anyhow!("not a JSON object"))?;
        let field = |k: &str, required: bool| -> Result<Option<String>> {
            match o.get(k) {
                None | Some(Value::Null) if !required => Ok(None),
                None | Some(Value::Null) => bail!("field `{k}` is missing"),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(Value::Number(n)) if k == "conversation" => Ok(Some(n.to_string())),
                Some(_) => bail!("field `{k}` must be a string"),
            }
        };
        let conv = field("conversation", false)?.unwrap_or_else(|| "default".into());
        let speaker = field("speaker", false)?.unwrap_or_default();
        let text = field("text", true)?.unwrap_or_default();
        if conv.trim().is_empty() {
            bail!("field `conversation` is empty");
        }
        if text.trim().is_empty() {
            bail!("field `text` is empty");
        }
        return Ok((conv, speaker, text));
    }
    let (speaker, text) = match t.find([':', '：']) {
        Some(i) if t[..i].chars().count() <= crate::data::dataset::MAX_SPEAKER_CHARS && i > 0 => {
            let c = t[i..].chars().next().map(char::len_utf8).unwrap_or(1);
            (t[..i].trim().to_string(), t[i + c..].trim().to_string())
        }
        _ => bail!("expected `speaker: utterance` or a JSON object with `text`"),
    };
    if text.is_empty() {
        bail!("the utterance after `{speaker}:` is empty");
    }
    Ok(("default".into(), speaker, text))
}

/// A readable line for a turn.
pub fn turn_line(r: &TurnResult, threshold: f64) -> String {
    let bar_len = (r.p_fraud * 20.0).round() as usize;
    let bar: String = "█".repeat(bar_len) + &"·".repeat(20 - bar_len.min(20));
    let state = match r.alert_turn {
        Some(t) if t == r.turn => format!("ALERT (fired at turn {t})"),
        Some(t) => format!("alert since turn {t}"),
        None if r.p_fraud >= threshold => "above threshold".into(),
        None => "ok".into(),
    };
    format!(
        "[{}] turn {:>3} {:<10} p_fraud {:.3} {bar} {state}  {:.0} ms",
        r.conversation, r.turn, r.speaker, r.p_fraud, r.latency_ms
    )
}

pub fn monitor(a: MonitorArgs) -> Result<()> {
    let (cfg, source) = a.live.monitor_config()?;
    let lm = a.live.load()?;
    eprintln!(
        "monitor: {} — threshold {:.3} ({source}), {} turn(s) in a row, window {} tokens; reading turns from standard input",
        lm.name, cfg.threshold, cfg.consecutive, cfg.window
    );
    let threshold = cfg.threshold;
    let mut mon = Monitor::new(cfg)?;
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    let cancel = AtomicBool::new(false);
    let mut bad = 0usize;
    for (i, line) in stdin.lock().lines().enumerate() {
        let n = i + 1;
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                eprintln!("monitor: stdin line {n}: cannot read: {e}");
                bad += 1;
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let (conv, speaker, text) = match parse_turn_line(&line) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("monitor: stdin line {n}: {e:#}");
                bad += 1;
                continue;
            }
        };
        let r = match mon.turn(&lm, &conv, &speaker, &text) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("monitor: stdin line {n} (conversation {conv}): {e:#}");
                bad += 1;
                continue;
            }
        };
        if let Some(ev) = &r.evicted {
            eprintln!(
                "monitor: conversation {ev} left the cache (at most {} kept); its turns are kept and it is prefilled again if it returns",
                mon.cfg.max_conversations
            );
        }
        if r.slid {
            eprintln!(
                "monitor: conversation {} passed the window; the prompt now starts at turn {}",
                r.conversation, r.window_start
            );
        }
        let explanation = if a.explain && r.alert_turn == Some(r.turn) {
            match mon.explain(&lm, &conv, 48, &cancel) {
                Ok(e) => Some(e),
                Err(e) => {
                    eprintln!("monitor: conversation {conv}: cannot explain the alert: {e:#}");
                    None
                }
            }
        } else {
            None
        };
        if a.json {
            let mut v = json!({
                "conversation": r.conversation,
                "turn": r.turn,
                "speaker": r.speaker,
                "p_fraud": r.p_fraud,
                "alert": r.alert,
                "alert_turn": r.alert_turn,
                "latency_ms": r.latency_ms,
            });
            if let Some(e) = &explanation {
                v["fraud_speaker"] = json!(e.fraud_speaker);
                v["reason"] = json!(e.reason);
            }
            writeln!(out, "{v}")?;
        } else {
            writeln!(out, "{}", turn_line(&r, threshold))?;
            if let Some(e) = &explanation {
                writeln!(
                    out,
                    "[{}]   fraudster: {}  reason: {}",
                    r.conversation,
                    e.fraud_speaker.as_deref().unwrap_or("?"),
                    e.reason.as_deref().unwrap_or("?")
                )?;
            }
        }
        out.flush()?;
    }
    if bad > 0 {
        bail!("{bad} input line(s) could not be used (see above)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_lines() {
        assert_eq!(
            parse_turn_line("张三: 你好").unwrap(),
            ("default".into(), "张三".into(), "你好".into())
        );
        assert_eq!(
            parse_turn_line("李四：转账到安全账户").unwrap().1,
            "李四".to_string()
        );
        let (c, s, t) =
            parse_turn_line(r#"{"conversation": "c1", "speaker": "A", "text": "hi"}"#).unwrap();
        assert_eq!((c.as_str(), s.as_str(), t.as_str()), ("c1", "A", "hi"));
        assert!(parse_turn_line(r#"{"conversation": "c1"}"#)
            .unwrap_err()
            .to_string()
            .contains("text"));
        assert!(parse_turn_line(r#"{"text": 3}"#).is_err());
        assert!(parse_turn_line("{not json").is_err());
        assert!(parse_turn_line("no speaker here").is_err());
        assert!(parse_turn_line("A:   ").is_err());
    }
}
