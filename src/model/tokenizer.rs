//! Tokenizer (Hugging Face `tokenizers`), eos ids and the chat template of a model.

use anyhow::{bail, Context, Result};
use minijinja::{context, Environment, ErrorKind};
use std::path::Path;

use super::config::ids_of;
use super::gguf::GgufFile;

/// One chat message (the data layer's type: datasets produce them, templates render them).
pub use crate::data::dataset::Message as ChatMessage;

/// ChatML, used when a model ships no template of its own.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

#[derive(Clone)]
pub struct TextTokenizer {
    pub inner: tokenizers::Tokenizer,
    /// Generation stops at any of these.
    pub eos_ids: Vec<u32>,
    /// The model's own template, if it has one.
    pub chat_template: Option<String>,
    /// Where the template came from (a file, or a GGUF key), for messages.
    pub template_source: String,
    pub eos_token: Option<String>,
    pub bos_token: Option<String>,
    pub pad_id: Option<u32>,
}

/// A special token of `tokenizer_config.json`: a string, an object with a string `content`, or
/// null; another type is an error naming the field.
fn token_content(tc: Option<&serde_json::Value>, key: &str, path: &Path) -> Result<Option<String>> {
    use serde_json::Value;
    match tc.and_then(|t| t.get(key)) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(o)) => match o.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => bail!(
                "{}: `{key}` is an object without a string `content`",
                path.display()
            ),
        },
        Some(_) => bail!(
            "{}: `{key}` must be a string, an object with `content`, or null",
            path.display()
        ),
    }
}

/// The template of `tokenizer_config.json`'s `chat_template`: a string, or a list of named
/// templates of which "default" is used.
fn template_of(tc: &serde_json::Value, path: &Path) -> Result<Option<String>> {
    use serde_json::Value;
    match tc.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(a)) => {
            let d = a
                .iter()
                .find(|x| x.get("name").and_then(|n| n.as_str()) == Some("default"))
                .with_context(|| {
                    format!(
                        "{}: `chat_template` is a list without a template named \"default\"",
                        path.display()
                    )
                })?;
            match d.get("template") {
                Some(Value::String(s)) => Ok(Some(s.clone())),
                _ => bail!(
                    "{}: the \"default\" `chat_template` has no string `template`",
                    path.display()
                ),
            }
        }
        Some(_) => bail!(
            "{}: `chat_template` must be a string or a list of named templates",
            path.display()
        ),
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| {
        format!("{}: not valid JSON", path.display())
    })?))
}

impl TextTokenizer {
    /// From a Hugging Face folder: `tokenizer.json` (required), `tokenizer_config.json`,
    /// `generation_config.json`, `config.json` (eos ids), `chat_template.jinja`.
    pub fn from_folder(dir: &Path) -> Result<Self> {
        let tj = dir.join("tokenizer.json");
        if !tj.exists() {
            bail!(
                "{}: missing tokenizer (the model folder has no tokenizer.json)",
                tj.display()
            );
        }
        let text = std::fs::read_to_string(&tj)
            .map_err(|e| anyhow::anyhow!("{}: not a valid tokenizer: {e}", tj.display()))?;
        // Parsed to a JSON tree first: `tokenizers` panics (instead of answering an error) on
        // some syntax errors inside a `decoder` entry, and a tree has none left.
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!("{}: not a valid tokenizer: not JSON: {e}", tj.display())
        })?;
        drop(text);
        let inner: tokenizers::Tokenizer = serde_json::from_value(value)
            .map_err(|e| anyhow::anyhow!("{}: not a valid tokenizer: {e}", tj.display()))?;
        let tc_path = dir.join("tokenizer_config.json");
        let tc = read_json(&tc_path)?;
        if tc.as_ref().is_some_and(|t| !t.is_object()) {
            bail!("{}: not a JSON object", tc_path.display());
        }
        let gc = read_json(&dir.join("generation_config.json"))?;
        let cc = read_json(&dir.join("config.json"))?;
        let mut chat_template = match &tc {
            Some(t) => template_of(t, &tc_path)?,
            None => None,
        };
        let mut template_source = tc_path.display().to_string();
        let jinja = dir.join("chat_template.jinja");
        if chat_template.is_none() && jinja.exists() {
            chat_template = Some(
                std::fs::read_to_string(&jinja)
                    .with_context(|| format!("{}: cannot read", jinja.display()))?,
            );
            template_source = jinja.display().to_string();
        }
        if chat_template.is_none() {
            template_source = BUILTIN_SOURCE.into();
        }
        let eos_token = token_content(tc.as_ref(), "eos_token", &tc_path)?;
        let bos_token = token_content(tc.as_ref(), "bos_token", &tc_path)?;
        let pad_token = token_content(tc.as_ref(), "pad_token", &tc_path)?;
        let mut eos_ids = ids_of(gc.as_ref().and_then(|g| g.get("eos_token_id")));
        eos_ids.extend(ids_of(cc.as_ref().and_then(|c| c.get("eos_token_id"))));
        let mut me = Self {
            inner,
            eos_ids,
            chat_template,
            template_source,
            eos_token,
            bos_token,
            pad_id: None,
        };
        me.pad_id = pad_token.and_then(|p| me.inner.token_to_id(&p));
        me.finish_eos();
        Ok(me)
    }

    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let json = g.tokenizer_json()?;
        let inner = tokenizers::Tokenizer::from_bytes(serde_json::to_vec(&json)?).map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot build the tokenizer from GGUF metadata: {e}",
                g.path.display()
            )
        })?;
        let eos_token = g.special_token("eos");
        let pad_id = g
            .special_token("padding")
            .and_then(|p| inner.token_to_id(&p));
        let chat_template = g.chat_template();
        let template_source = if chat_template.is_some() {
            format!("{} (tokenizer.chat_template)", g.path.display())
        } else {
            BUILTIN_SOURCE.into()
        };
        let mut me = Self {
            inner,
            eos_ids: vec![],
            chat_template,
            template_source,
            eos_token,
            bos_token: None,
            pad_id,
        };
        me.finish_eos();
        Ok(me)
    }

    /// Adds the eos token and Qwen's end-of-turn / end-of-text tokens, deduplicated.
    fn finish_eos(&mut self) {
        let mut ids = std::mem::take(&mut self.eos_ids);
        for t in [
            self.eos_token.clone(),
            Some("<|im_end|>".into()),
            Some("<|endoftext|>".into()),
        ]
        .into_iter()
        .flatten()
        {
            if let Some(id) = self.inner.token_to_id(&t) {
                ids.push(id);
            }
        }
        let mut seen = std::collections::HashSet::new();
        ids.retain(|x| seen.insert(*x));
        self.eos_ids = ids;
        if self.pad_id.is_none() {
            self.pad_id = self
                .inner
                .token_to_id("<|endoftext|>")
                .or(self.eos_ids.first().copied());
        }
    }

    /// Token ids of `text` as given: special tokens such as `<|im_start|>` are recognised, no
    /// bos/eos is added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// `encode`, with each token's byte range in `text`.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<(usize, usize)>)> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))
    }

    /// The text of one token as `decode` writes it.
    pub fn token_text(&self, id: u32) -> String {
        self.inner.decode(&[id], false).unwrap_or_default()
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Renders messages with the model's chat template (ChatML when it has none).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let tpl = self.chat_template.as_deref().unwrap_or(CHATML_TEMPLATE);
        render_chat(
            tpl,
            &self.template_source,
            messages,
            add_generation_prompt,
            self.bos_token.as_deref(),
            self.eos_token.as_deref(),
        )
    }
}

/// Names the template used when a model ships none.
pub const BUILTIN_SOURCE: &str = "the built-in ChatML template";

/// Template steps one render may take: a fixed allowance plus some per message, far above
/// what real chat templates need (tens of steps per message) and small enough that a looping
/// template stops within a fraction of a second.
pub fn template_fuel(messages: usize) -> u64 {
    200_000 + 5_000 * messages as u64
}

/// Largest rendering accepted: room for the messages' text several times over, plus a fixed
/// allowance for the template's own text.
pub fn template_output_cap(messages: &[ChatMessage]) -> usize {
    let text: usize = messages
        .iter()
        .map(|m| m.content.len() + m.role.len())
        .sum();
    (4 << 20) + 4 * text
}

/// Collects a rendering and stops it once it passes its cap.
struct CappedOutput {
    buf: Vec<u8>,
    cap: usize,
    over: bool,
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + b.len() > self.cap {
            self.over = true;
            return Err(std::io::Error::other("output cap"));
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Renders a Hugging Face chat template (Jinja) with minijinja, as transformers does:
/// blocks trimmed, Python string methods available, `raise_exception` defined. A rendering
/// runs on a step budget ([`template_fuel`]) and an output cap ([`template_output_cap`]), so
/// a template that loops or grows without end is an error naming `source`, not a hang.
pub fn render_chat(
    template: &str,
    source: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: Option<&str>,
    eos_token: Option<&str>,
) -> Result<String> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    let fuel = template_fuel(messages.len());
    env.set_fuel(Some(fuel));
    env.add_template("chat", template)
        .with_context(|| format!("{source}: chat template does not parse"))?;
    let tpl = env.get_template("chat")?;
    let mut out = CappedOutput {
        buf: Vec::new(),
        cap: template_output_cap(messages),
        over: false,
    };
    let res = tpl.render_captured_to(
        context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => bos_token.unwrap_or(""),
            eos_token => eos_token.unwrap_or(""),
        },
        &mut out,
    );
    if out.over {
        bail!(
            "{source}: chat template output is over its cap of {} bytes for these messages",
            out.cap
        );
    }
    match res {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::OutOfFuel => {
            bail!("{source}: chat template ran past its budget of {fuel} steps (it loops too long)")
        }
        Err(e) => {
            return Err(e).with_context(|| format!("{source}: chat template failed to render"))
        }
    }
    String::from_utf8(out.buf)
        .with_context(|| format!("{source}: chat template rendered invalid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_fallback() {
        let m = vec![
            ChatMessage::new("system", "S"),
            ChatMessage::new("user", "你好"),
        ];
        let s = render_chat(CHATML_TEMPLATE, "t", &m, true, None, None).unwrap();
        assert_eq!(s, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n");
        let s = render_chat(CHATML_TEMPLATE, "t", &m, false, None, None).unwrap();
        assert!(!s.ends_with("assistant\n"));
    }

    #[test]
    fn qwen_style_template_with_python_methods() {
        // The shape of Qwen2.5's template: default system prompt, tools branch, loop.first.
        let tpl = "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'].strip() + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are Qwen.<|im_end|>\\n' }}{%- endif %}{%- for message in messages %}{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";
        let m = vec![
            ChatMessage::new("system", " S "),
            ChatMessage::new("user", "U"),
        ];
        let s = render_chat(tpl, "t", &m, true, None, None).unwrap();
        assert_eq!(s, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n");
        let s = render_chat(tpl, "t", &m[1..], false, None, None).unwrap();
        assert!(s.starts_with("<|im_start|>system\nYou are Qwen."));
    }

    #[test]
    fn looping_and_huge_templates_are_stopped_and_named() {
        let m = vec![ChatMessage::new("user", "hi")];
        let cases = [
            // steps without output: the step budget stops it
            (
                "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                "budget",
            ),
            // output without end: the output cap stops it
            (
                "{% for i in range(100000) %}{{ 'x' * 1000000 }}{% endfor %}",
                "cap",
            ),
            // recursion without end
            (
                "{% for x in [1] recursive %}{{ loop([x]) }}{% endfor %}",
                "recursion",
            ),
        ];
        for (tpl, want) in cases {
            let t0 = std::time::Instant::now();
            let e =
                render_chat(tpl, "dir/tokenizer_config.json", &m, true, None, None).unwrap_err();
            let msg = format!("{e:#}");
            assert!(msg.contains("dir/tokenizer_config.json"), "{msg}");
            assert!(msg.contains(want), "{tpl}: {msg}");
            // a guard against a hang, not a speed claim
            assert!(t0.elapsed().as_secs() < 20, "{tpl} took {:?}", t0.elapsed());
        }
        // a syntax error names the file too
        let e = render_chat("{% for %}", "x.jinja", &m, true, None, None).unwrap_err();
        assert!(format!("{e:#}").contains("x.jinja: chat template does not parse"));
        // long conversations still fit the budget of a real template
        let many: Vec<ChatMessage> = (0..2000)
            .map(|i| ChatMessage::new(if i % 2 == 0 { "user" } else { "assistant" }, "好的"))
            .collect();
        render_chat(CHATML_TEMPLATE, "t", &many, true, None, None).unwrap();
    }

    #[test]
    fn raise_exception_is_an_error() {
        let tpl = "{{ raise_exception('no system allowed') }}";
        let e = render_chat(tpl, "t", &[], false, None, None).unwrap_err();
        assert!(format!("{e:#}").contains("no system allowed"));
    }
}
