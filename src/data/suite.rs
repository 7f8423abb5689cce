//! The capability suite of the model-selection study: a file of cases (one JSON object a
//! line: a prompt and the checks its answer must pass), the checks themselves, a suite
//! run's results (one row per model and case) saved in the session, and their export as
//! Markdown or CSV. Answers are read with the project's one tolerant answer parser
//! ([`parse_answer`]): a wrong verdict is a failure, whatever its shape.
//!
//! This room owns the file formats and the grading; running the models is the engine's.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

use super::dataset::{parse_answer, DEFAULT_INSTRUCTION, DEFAULT_SYSTEM};
use super::{fsutil, Session};

/// The suite that ships with fraudlab (`assets/suite.jsonl`, written for the project).
pub const DEFAULT_SUITE: &str = include_str!("../../assets/suite.jsonl");

/// Answer length cap of a case that sets none.
pub const DEFAULT_MAX_TOKENS: usize = 128;

/// One case: a prompt, and the checks its answer must pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    /// The user message. Or give `dialogue`: the prompt is then `instruction` (default: the
    /// fraud-dialogue instruction training uses) followed by the dialogue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dialogue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruction: Option<String>,
    /// System message (default: the one training uses; "" for none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The answer must parse and hold these values (`is_fraud` read as evaluation reads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_json: Option<Map<String, Value>>,
    /// The answer is one JSON object and nothing else (no prose, no code fence).
    #[serde(default, skip_serializing_if = "is_false")]
    pub json_only: bool,
    /// The answer's JSON object has these keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expect_keys: Vec<String>,
    /// `zh`: at least half the answer's letters are Chinese characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lang: Option<String>,
    /// The answer is at most this many characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_chars: Option<usize>,
    /// Each of these must appear in the answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contains: Vec<String>,
    /// None of these may appear in the answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_contains: Vec<String>,
    /// Answer length cap in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    /// Free labels (fraud type, "honest", "format"…), shown and exported, never checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Case {
    /// The user message the model gets.
    pub fn user_prompt(&self) -> String {
        match (&self.prompt, &self.dialogue) {
            (Some(p), _) => p.clone(),
            (None, Some(d)) => format!(
                "{}{d}",
                self.instruction.as_deref().unwrap_or(DEFAULT_INSTRUCTION)
            ),
            (None, None) => String::new(),
        }
    }

    /// The system message (`None`: the chat template's own).
    pub fn system_prompt(&self) -> Option<String> {
        match self.system.as_deref() {
            None => Some(DEFAULT_SYSTEM.to_string()),
            Some("") => None,
            Some(s) => Some(s.to_string()),
        }
    }

    pub fn max_tokens_or(&self, default: usize) -> usize {
        self.max_tokens.unwrap_or(default)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("`name` is empty".into());
        }
        match (&self.prompt, &self.dialogue) {
            (Some(_), Some(_)) => return Err("give `prompt` or `dialogue`, not both".into()),
            (None, None) => return Err("no `prompt` (or `dialogue`)".into()),
            _ => {}
        }
        if self.user_prompt().trim().is_empty() {
            return Err("the prompt is empty".into());
        }
        if let Some(l) = &self.lang {
            if l != "zh" {
                return Err(format!("`lang` {l:?}: only \"zh\" is checked"));
            }
        }
        if self.max_tokens == Some(0) {
            return Err("`max_tokens` must be at least 1".into());
        }
        if self.checks_count() == 0 {
            return Err(
                "no check (expect_json, json_only, expect_keys, lang, max_chars, contains, not_contains)"
                    .into(),
            );
        }
        Ok(())
    }

    fn checks_count(&self) -> usize {
        self.expect_json.is_some() as usize
            + self.json_only as usize
            + !self.expect_keys.is_empty() as usize
            + self.lang.is_some() as usize
            + self.max_chars.is_some() as usize
            + !self.contains.is_empty() as usize
            + !self.not_contains.is_empty() as usize
    }
}

/// Reads a suite: one case a line (blank lines and lines starting with `//` skipped). Every
/// problem names the line; names must be unique.
pub fn parse_suite(text: &str, origin: &str) -> Result<Vec<Case>> {
    let mut cases: Vec<Case> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with("//") {
            continue;
        }
        let c: Case = serde_json::from_str(t)
            .with_context(|| format!("{origin}:{}: not a suite case", i + 1))?;
        if let Err(e) = c.validate() {
            bail!("{origin}:{}: case {:?}: {e}", i + 1, c.name);
        }
        if cases.iter().any(|x| x.name == c.name) {
            bail!("{origin}:{}: a second case named {:?}", i + 1, c.name);
        }
        cases.push(c);
    }
    if cases.is_empty() {
        bail!("{origin}: no cases");
    }
    Ok(cases)
}

/// Reads a suite file.
pub fn load_suite(path: &Path) -> Result<Vec<Case>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the suite", path.display()))?;
    parse_suite(&text, &path.display().to_string())
}

/// The session's suite (`suite.jsonl`) if it has one, else the built-in one; and where it
/// came from.
pub fn session_suite(session: &Session) -> Result<(Vec<Case>, String)> {
    let p = suite_path(session);
    if p.exists() {
        Ok((load_suite(&p)?, p.display().to_string()))
    } else {
        Ok((
            parse_suite(DEFAULT_SUITE, "built-in suite")?,
            "built-in".into(),
        ))
    }
}

/// `sessions/<name>/suite.jsonl`.
pub fn suite_path(session: &Session) -> PathBuf {
    session.dir().join("suite.jsonl")
}

/// `sessions/<name>/suites/`.
pub fn results_dir(session: &Session) -> PathBuf {
    session.dir().join("suites")
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub check: String,
    pub pass: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

fn check(name: &str, pass: bool, detail: impl Into<String>) -> CheckResult {
    CheckResult {
        check: name.into(),
        pass,
        detail: if pass { String::new() } else { detail.into() },
    }
}

/// The first complete JSON object in the text (after prose or inside a code fence).
fn first_object(text: &str) -> Option<Map<String, Value>> {
    for (i, _) in text.match_indices('{') {
        let mut it = serde_json::Deserializer::from_str(&text[i..]).into_iter::<Value>();
        if let Some(Ok(Value::Object(o))) = it.next() {
            return Some(o);
        }
    }
    None
}

fn is_han(c: char) -> bool {
    matches!(c as u32, 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x2FA1F)
}

/// Grades an answer against a case's checks, in the order the case lists them.
pub fn grade(case: &Case, answer: &str) -> Vec<CheckResult> {
    let mut out = Vec::new();
    let obj = first_object(answer);
    if let Some(want) = &case.expect_json {
        let parsed = parse_answer(answer);
        let mut problems = Vec::new();
        for (k, v) in want {
            let got: Option<Value> = if k == "is_fraud" {
                parsed.as_ref().map(|a| Value::Bool(a.is_fraud))
            } else {
                match (k.as_str(), &parsed) {
                    ("fraud_speaker", Some(a)) if a.fraud_speaker.is_some() => {
                        a.fraud_speaker.clone().map(Value::String)
                    }
                    _ => obj.as_ref().and_then(|o| o.get(k).cloned()),
                }
            };
            match got {
                Some(g) if &g == v => {}
                Some(g) => problems.push(format!("{k}: expected {v}, got {g}")),
                None if parsed.is_none() && obj.is_none() => {
                    problems.push("no JSON answer could be read".into());
                    break;
                }
                None => problems.push(format!("{k}: missing")),
            }
        }
        out.push(check(
            "expect_json",
            problems.is_empty(),
            problems.join("; "),
        ));
    }
    if case.json_only {
        let ok = matches!(
            serde_json::from_str::<Value>(answer.trim()),
            Ok(Value::Object(_))
        );
        let detail = if answer.trim_start().starts_with("```") {
            "wrapped in a code fence"
        } else if obj.is_some() {
            "JSON with other text around it"
        } else {
            "not JSON"
        };
        out.push(check("json_only", ok, detail));
    }
    if !case.expect_keys.is_empty() {
        let missing: Vec<&str> = case
            .expect_keys
            .iter()
            .filter(|k| !obj.as_ref().is_some_and(|o| o.contains_key(k.as_str())))
            .map(String::as_str)
            .collect();
        let detail = if obj.is_none() {
            "no JSON object".to_string()
        } else {
            format!("missing {}", missing.join(", "))
        };
        out.push(check("expect_keys", missing.is_empty(), detail));
    }
    if case.lang.as_deref() == Some("zh") {
        let han = answer.chars().filter(|c| is_han(*c)).count();
        let latin = answer.chars().filter(|c| c.is_ascii_alphabetic()).count();
        let ok = han > 0 && han >= latin;
        out.push(check(
            "lang",
            ok,
            format!("{han} Chinese characters, {latin} Latin letters"),
        ));
    }
    if let Some(m) = case.max_chars {
        let n = answer.trim().chars().count();
        out.push(check(
            "max_chars",
            n <= m,
            format!("{n} characters, over {m}"),
        ));
    }
    if !case.contains.is_empty() {
        let missing: Vec<&str> = case
            .contains
            .iter()
            .filter(|s| !answer.contains(s.as_str()))
            .map(String::as_str)
            .collect();
        out.push(check(
            "contains",
            missing.is_empty(),
            format!("lacks {}", missing.join(", ")),
        ));
    }
    if !case.not_contains.is_empty() {
        let found: Vec<&str> = case
            .not_contains
            .iter()
            .filter(|s| answer.contains(s.as_str()))
            .map(String::as_str)
            .collect();
        out.push(check(
            "not_contains",
            found.is_empty(),
            format!("has {}", found.join(", ")),
        ));
    }
    out
}

/// One model's answer to one case, graded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseResult {
    pub name: String,
    pub model: String,
    pub pass: bool,
    pub checks: Vec<CheckResult>,
    pub answer: String,
    pub tokens_per_s: f64,
    #[serde(default)]
    pub generated_tokens: usize,
    /// Why the model could not answer (the case then fails).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl CaseResult {
    pub fn graded(
        case: &Case,
        model: &str,
        answer: &str,
        tokens_per_s: f64,
        tokens: usize,
    ) -> Self {
        let checks = grade(case, answer);
        Self {
            name: case.name.clone(),
            model: model.into(),
            pass: checks.iter().all(|c| c.pass),
            checks,
            answer: answer.into(),
            tokens_per_s,
            generated_tokens: tokens,
            error: None,
        }
    }

    pub fn failed(case: &Case, model: &str, error: &str) -> Self {
        Self {
            name: case.name.clone(),
            model: model.into(),
            pass: false,
            checks: vec![check("answer", false, error)],
            answer: String::new(),
            tokens_per_s: 0.0,
            generated_tokens: 0,
            error: Some(error.into()),
        }
    }

    /// The failed checks in a few words.
    pub fn failures(&self) -> String {
        self.checks
            .iter()
            .filter(|c| !c.pass)
            .map(|c| format!("{}: {}", c.check, c.detail))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A model of a suite run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteModel {
    /// The column label (also `CaseResult::model`).
    pub label: String,
    pub spec: String,
    #[serde(default)]
    pub adapter: Option<PathBuf>,
}

/// A suite run: the cases, the models, every result. Saved as `suites/<id>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteResults {
    pub id: String,
    pub time: String,
    /// The suite file, or `built-in`.
    pub suite: String,
    pub cases: Vec<Case>,
    pub models: Vec<SuiteModel>,
    pub results: Vec<CaseResult>,
}

impl SuiteResults {
    pub fn new(suite: &str, cases: Vec<Case>, models: Vec<SuiteModel>) -> Self {
        Self {
            id: String::new(),
            time: fsutil::rfc3339(fsutil::now_unix()),
            suite: suite.into(),
            cases,
            models,
            results: Vec::new(),
        }
    }

    /// The result of a case for a model.
    pub fn get(&self, case: &str, model: &str) -> Option<&CaseResult> {
        self.results
            .iter()
            .find(|r| r.name == case && r.model == model)
    }

    /// Cases a model passed, and the cases it was graded on.
    pub fn score(&self, model: &str) -> (usize, usize) {
        let rs: Vec<_> = self.results.iter().filter(|r| r.model == model).collect();
        (rs.iter().filter(|r| r.pass).count(), rs.len())
    }

    /// Writes `suites/<id>.json` in the session (a new id unless it has one) and returns
    /// its path.
    pub fn save(&mut self, session: &Session) -> Result<PathBuf> {
        let dir = results_dir(session);
        fsutil::create_dir_durable(&dir)?;
        if self.id.is_empty() {
            let stamp = fsutil::compact_stamp(fsutil::now_unix().floor());
            let mut n = 0;
            loop {
                let id = if n == 0 {
                    stamp.clone()
                } else {
                    format!("{stamp}-{n:03}")
                };
                if !dir.join(format!("{id}.json")).exists() {
                    self.id = id;
                    break;
                }
                n += 1;
            }
        }
        let p = dir.join(format!("{}.json", self.id));
        fsutil::write_atomic(&p, serde_json::to_string_pretty(self)?.as_bytes())?;
        Ok(p)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not a saved suite result", path.display()))
    }

    /// The session's newest saved result, if any reads back.
    pub fn latest(session: &Session) -> Option<Self> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(results_dir(session))
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        files.iter().rev().find_map(|p| Self::load(p).ok())
    }

    /// The matrix as a Markdown table: a row per case, a column per model, a last row with
    /// each model's score; failures listed under it.
    pub fn to_markdown(&self) -> String {
        let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
        let mut s = format!(
            "# Capability suite {} ({})\n\nSuite: {}\n\n| case | tags |",
            self.id, self.time, self.suite
        );
        for m in &self.models {
            s.push_str(&format!(" {} |", cell(&m.label)));
        }
        s.push_str("\n|---|---|");
        s.push_str(&"---|".repeat(self.models.len()));
        s.push('\n');
        for c in &self.cases {
            s.push_str(&format!(
                "| {} | {} |",
                cell(&c.name),
                cell(&c.tags.join(", "))
            ));
            for m in &self.models {
                let v = match self.get(&c.name, &m.label) {
                    Some(r) if r.pass => "✓".to_string(),
                    Some(_) => "✗".to_string(),
                    None => "–".to_string(),
                };
                s.push_str(&format!(" {v} |"));
            }
            s.push('\n');
        }
        s.push_str("| **passed** | |");
        for m in &self.models {
            let (p, n) = self.score(&m.label);
            s.push_str(&format!(" **{p}/{n}** |"));
        }
        s.push_str("\n\n");
        let fails: Vec<&CaseResult> = self.results.iter().filter(|r| !r.pass).collect();
        if !fails.is_empty() {
            s.push_str("## Failures\n\n");
            for r in fails {
                s.push_str(&format!(
                    "- **{}** × {}: {} — answer: `{}`\n",
                    cell(&r.name),
                    cell(&r.model),
                    cell(&r.failures()),
                    cell(&r.answer).replace('`', "'")
                ));
            }
        }
        s
    }

    /// One CSV row per model and case: case, model, pass, failed checks, tokens/s, answer.
    pub fn to_csv(&self) -> String {
        fn q(s: &str) -> String {
            if s.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        }
        let mut s = String::from("case,model,pass,failed_checks,tokens_per_s,answer\n");
        for c in &self.cases {
            for m in &self.models {
                if let Some(r) = self.get(&c.name, &m.label) {
                    s.push_str(&format!(
                        "{},{},{},{},{:.1},{}\n",
                        q(&r.name),
                        q(&r.model),
                        r.pass,
                        q(&r.failures()),
                        r.tokens_per_s,
                        q(&r.answer)
                    ));
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(json: &str) -> Case {
        parse_suite(json, "t").unwrap().remove(0)
    }

    #[test]
    fn the_default_suite_reads_and_covers_fraud_and_honest_dialogues() {
        let cases = parse_suite(DEFAULT_SUITE, "built-in").unwrap();
        let verdict = |v: bool| {
            cases
                .iter()
                .filter(|c| {
                    c.expect_json
                        .as_ref()
                        .and_then(|o| o.get("is_fraud"))
                        .and_then(Value::as_bool)
                        == Some(v)
                })
                .count()
        };
        assert!(verdict(true) >= 6, "fraud cases");
        assert!(verdict(false) >= 5, "honest cases");
        assert!(cases.len() >= 12);
        assert!(cases.iter().any(|c| c.json_only));
        assert!(cases.iter().any(|c| c.lang.is_some()));
        assert!(cases.iter().any(|c| c.max_chars.is_some()));
    }

    #[test]
    fn a_wrong_verdict_fails_whatever_its_shape() {
        let c = case(r#"{"name": "f", "dialogue": "甲: 转账", "expect_json": {"is_fraud": true}}"#);
        assert!(CaseResult::graded(&c, "m", "{\"is_fraud\": true}", 1.0, 5).pass);
        // tolerant: code fence, prose, a string verdict, cut-off JSON
        for ok in [
            "```json\n{\"is_fraud\": true, \"reason\": \"x\"}\n```",
            "分析如下：{\"is_fraud\": \"true\"}",
            "{\"is_fraud\": true, \"reason\": \"对方要求转",
        ] {
            assert!(CaseResult::graded(&c, "m", ok, 1.0, 5).pass, "{ok}");
        }
        let r = CaseResult::graded(&c, "m", "{\"is_fraud\": false}", 1.0, 5);
        assert!(!r.pass);
        assert!(
            r.failures().contains("expected true, got false"),
            "{}",
            r.failures()
        );
        let r = CaseResult::graded(&c, "m", "这是诈骗", 1.0, 5);
        assert!(!r.pass);
        assert!(r.failures().contains("no JSON"), "{}", r.failures());
    }

    #[test]
    fn format_language_length_and_instruction_checks() {
        let c = case(
            r#"{"name": "j", "prompt": "p", "json_only": true, "expect_keys": ["is_fraud", "reason"]}"#,
        );
        assert!(
            CaseResult::graded(
                &c,
                "m",
                " {\"is_fraud\": true, \"reason\": \"r\"}\n",
                0.0,
                1
            )
            .pass
        );
        let r = CaseResult::graded(&c, "m", "```json\n{\"is_fraud\": true}\n```", 0.0, 1);
        assert_eq!(
            r.checks.iter().map(|x| x.pass).collect::<Vec<_>>(),
            vec![false, false]
        );
        assert!(r.failures().contains("code fence") && r.failures().contains("missing reason"));
        let c = case(
            r#"{"name": "z", "prompt": "p", "lang": "zh", "max_chars": 10, "contains": ["诈骗"], "not_contains": ["I"]}"#,
        );
        assert!(CaseResult::graded(&c, "m", "这是诈骗。", 0.0, 1).pass);
        let r = CaseResult::graded(&c, "m", "It is a scam, 诈骗 indeed", 0.0, 1);
        let failed: Vec<&str> = r
            .checks
            .iter()
            .filter(|x| !x.pass)
            .map(|x| x.check.as_str())
            .collect();
        assert_eq!(failed, vec!["lang", "max_chars", "not_contains"]);
    }

    #[test]
    fn bad_suites_name_the_line() {
        for (text, needle) in [
            ("{\"name\": \"a\", \"prompt\": \"p\"}", "no check"),
            ("{\"name\": \"a\", \"prompt\": \"p\", \"json_only\": true, \"colour\": 1}", "t:1"),
            ("\n{\"name\": \"a\", \"json_only\": true}", "t:2"),
            ("{\"name\": \"a\", \"prompt\": \"p\", \"lang\": \"fr\", \"json_only\": true}", "only \"zh\""),
            ("{\"name\": \"a\", \"prompt\": \"p\", \"json_only\": true}\n{\"name\": \"a\", \"prompt\": \"q\", \"json_only\": true}", "second case"),
            ("// nothing\n", "no cases"),
            ("{not json", "t:1"),
        ] {
            let e = format!("{:#}", parse_suite(text, "t").unwrap_err());
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn results_save_reload_and_export() {
        let d = tempfile::tempdir().unwrap();
        let s = Session::open(d.path(), "x").unwrap();
        assert!(SuiteResults::latest(&s).is_none());
        let cases = parse_suite(DEFAULT_SUITE, "b").unwrap()[..2].to_vec();
        let models = vec![
            SuiteModel {
                label: "small".into(),
                spec: "a".into(),
                adapter: None,
            },
            SuiteModel {
                label: "big, instruct".into(),
                spec: "b".into(),
                adapter: None,
            },
        ];
        let mut r = SuiteResults::new("built-in", cases.clone(), models);
        for c in &cases {
            r.results.push(CaseResult::graded(
                c,
                "small",
                "{\"is_fraud\": true}",
                10.0,
                4,
            ));
            r.results
                .push(CaseResult::failed(c, "big, instruct", "out of memory"));
        }
        let p = r.save(&s).unwrap();
        assert!(p.starts_with(results_dir(&s)));
        let back = SuiteResults::latest(&s).unwrap();
        assert_eq!(back, r);
        let md = r.to_markdown();
        assert!(md.contains("| big, instruct |"), "{md}");
        assert!(md.contains("**0/2**"));
        let csv = r.to_csv();
        assert!(csv.starts_with("case,model,pass,"));
        assert!(
            csv.contains("\"big, instruct\",false,answer: out of memory"),
            "{csv}"
        );
    }
}
