//! The sample type every format loads into, chat messages, and dialogue text parsing.

#[allow(unused_imports)]
use super::*;

// ------------------------------------------------------------ Samples ----

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Message {
        Message {
            role: role.to_string(),
            content: content.into(),
        }
    }
}

/// The content of a sample, by source shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SampleBody {
    Fraud {
        instruction: String,
        input: String,
    },
    Alpaca {
        instruction: String,
        input: String,
        output: String,
    },
    /// Chat and ShareGPT samples (roles normalised to system/user/assistant).
    Chat {
        messages: Vec<Message>,
    },
    Text {
        text: String,
    },
}

/// A dataset sample, usable by training, evaluation and the UI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// 16 hex chars, see [`Sample::compute_id`].
    pub id: String,
    pub body: SampleBody,
    pub label: Option<bool>,
    pub fraud_speaker: Option<String>,
    pub reason: Option<String>,
}

/// Split a dialogue line into (speaker, utterance) when it starts with a
/// speaker name (1..=[`MAX_SPEAKER_CHARS`] chars) and `:` or `：`.
pub(super) fn split_speaker(line: &str) -> Option<(&str, &str)> {
    let (pos, colon) = line.char_indices().find(|&(_, c)| c == ':' || c == '：')?;
    let speaker = line[..pos].trim();
    let n = speaker.chars().count();
    if n == 0 || n > MAX_SPEAKER_CHARS {
        return None;
    }
    Some((speaker, line[pos + colon.len_utf8()..].trim()))
}

/// Parse dialogue text into (speaker, utterance) turns. Blank lines are
/// skipped; a line without a leading `speaker:` continues the previous turn
/// (joined with `\n`), or becomes a turn with an empty speaker if it is first.
pub fn parse_turns(text: &str) -> Vec<(String, String)> {
    let mut turns: Vec<(String, String)> = Vec::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        match split_speaker(line) {
            Some((s, u)) => turns.push((s.to_string(), u.to_string())),
            None => match turns.last_mut() {
                Some(last) => {
                    if !last.1.is_empty() {
                        last.1.push('\n');
                    }
                    last.1.push_str(line);
                }
                None => turns.push((String::new(), line.to_string())),
            },
        }
    }
    turns
}

impl Sample {
    /// A fraud-format sample (id computed).
    pub fn fraud(
        instruction: impl Into<String>,
        input: impl Into<String>,
        label: Option<bool>,
        fraud_speaker: Option<String>,
        reason: Option<String>,
    ) -> Sample {
        Sample::with_id(
            SampleBody::Fraud {
                instruction: instruction.into(),
                input: input.into(),
            },
            label,
            fraud_speaker,
            reason,
        )
    }

    /// An Alpaca sample; the label (and speaker, reason) come from `output`
    /// when it parses as an answer.
    pub fn alpaca(
        instruction: impl Into<String>,
        input: impl Into<String>,
        output: impl Into<String>,
    ) -> Sample {
        let output = output.into();
        let ans = parse_answer(&output);
        Sample::with_id(
            SampleBody::Alpaca {
                instruction: instruction.into(),
                input: input.into(),
                output,
            },
            ans.as_ref().map(|a| a.is_fraud),
            ans.as_ref().and_then(|a| a.fraud_speaker.clone()),
            ans.and_then(|a| a.reason),
        )
    }

    /// A chat sample; labelled when the last assistant message is an answer.
    pub fn chat(messages: Vec<Message>) -> Sample {
        let ans = messages
            .iter()
            .rev()
            .find(|m| m.role == "assistant")
            .and_then(|m| parse_answer(&m.content));
        Sample::with_id(
            SampleBody::Chat { messages },
            ans.as_ref().map(|a| a.is_fraud),
            ans.as_ref().and_then(|a| a.fraud_speaker.clone()),
            ans.and_then(|a| a.reason),
        )
    }

    /// A raw-text sample (unlabelled).
    pub fn text(text: impl Into<String>) -> Sample {
        Sample::with_id(SampleBody::Text { text: text.into() }, None, None, None)
    }

    fn with_id(
        body: SampleBody,
        label: Option<bool>,
        fraud_speaker: Option<String>,
        reason: Option<String>,
    ) -> Sample {
        let mut s = Sample {
            id: String::new(),
            body,
            label,
            fraud_speaker,
            reason,
        };
        s.id = s.compute_id();
        s
    }

    /// The content id: 16 hex chars of SHA-256 of
    /// * fraud, and Alpaca with a parsed label: `instruction \n input` — the
    ///   label is not part of the id, so a hand label or a relabelled export keeps
    ///   the sample's id, and a fraud sample and its Alpaca export share one;
    /// * Alpaca without a label: `"alpaca\n" instruction \n input \n output`;
    /// * chat (and ShareGPT): `"chat\n"` then `role \x1f content \x1e` per message;
    /// * text: `"text\n" text`.
    ///
    /// `fraud_speaker` and `reason` are not part of the id.
    pub fn compute_id(&self) -> String {
        let mut h = hash::Sha256::new();
        match &self.body {
            SampleBody::Fraud { instruction, input } => {
                for part in [instruction.as_str(), "\n", input] {
                    h.update(part.as_bytes());
                }
            }
            SampleBody::Alpaca {
                instruction,
                input,
                output,
            } => {
                let parts: Vec<&str> = match self.label {
                    Some(_) => vec![instruction, "\n", input],
                    None => vec!["alpaca\n", instruction, "\n", input, "\n", output],
                };
                for part in parts {
                    h.update(part.as_bytes());
                }
            }
            SampleBody::Chat { messages } => {
                h.update(b"chat\n");
                for m in messages {
                    h.update(m.role.as_bytes());
                    h.update(b"\x1f");
                    h.update(m.content.as_bytes());
                    h.update(b"\x1e");
                }
            }
            SampleBody::Text { text } => {
                h.update(b"text\n");
                h.update(text.as_bytes());
            }
        }
        hash::hex(&h.finish()[..8])
    }

    /// Short format name of the body: `fraud`, `alpaca`, `chat` or `text`.
    pub fn kind(&self) -> &'static str {
        match self.body {
            SampleBody::Fraud { .. } => "fraud",
            SampleBody::Alpaca { .. } => "alpaca",
            SampleBody::Chat { .. } => "chat",
            SampleBody::Text { .. } => "text",
        }
    }

    /// The dialogue text: fraud → `input`; Alpaca → `input` (or `instruction`
    /// when `input` is empty); chat → the last user message, with a leading
    /// [`DEFAULT_INSTRUCTION`] removed; text → the text.
    pub fn dialogue_text(&self) -> &str {
        match &self.body {
            SampleBody::Fraud { input, .. } => input,
            SampleBody::Alpaca {
                instruction, input, ..
            } => {
                if input.trim().is_empty() {
                    instruction
                } else {
                    input
                }
            }
            SampleBody::Chat { messages } => messages
                .iter()
                .rev()
                .find(|m| m.role == "user")
                .map(|m| {
                    m.content
                        .strip_prefix(DEFAULT_INSTRUCTION)
                        .unwrap_or(&m.content)
                })
                .unwrap_or(""),
            SampleBody::Text { text } => text,
        }
    }

    /// (speaker, utterance) turns of [`Sample::dialogue_text`], see [`parse_turns`].
    pub fn turns(&self) -> Vec<(String, String)> {
        parse_turns(self.dialogue_text())
    }

    /// Distinct non-empty speakers in first-appearance order.
    pub fn speakers(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (s, _) in self.turns() {
            if !s.is_empty() && seen.insert(s.clone()) {
                out.push(s);
            }
        }
        out
    }

    /// Length of [`Sample::dialogue_text`] in chars.
    pub fn char_len(&self) -> usize {
        self.dialogue_text().chars().count()
    }

    /// The first turn, if any.
    pub fn first_turn(&self) -> Option<(String, String)> {
        self.turns().into_iter().next()
    }

    /// The user prompt: `instruction + input` (plain concatenation) for fraud
    /// and Alpaca, the last user message for chat, the text for text.
    pub fn prompt_text(&self) -> String {
        match &self.body {
            SampleBody::Fraud { instruction, input }
            | SampleBody::Alpaca {
                instruction, input, ..
            } => format!("{instruction}{input}"),
            SampleBody::Chat { messages } => messages
                .iter()
                .rev()
                .find(|m| m.role == "user")
                .map(|m| m.content.clone())
                .unwrap_or_default(),
            SampleBody::Text { text } => text.clone(),
        }
    }

    /// The expected assistant answer: for a labelled fraud sample
    /// [`answer_json`] (with `fraud_speaker`/`reason` when `answer_fields`),
    /// for Alpaca its `output`, for chat the last assistant message.
    pub fn expected_answer(&self, answer_fields: bool) -> Option<String> {
        match &self.body {
            SampleBody::Fraud { .. } => self.label.map(|l| {
                answer_json(
                    l,
                    self.fraud_speaker.as_deref(),
                    self.reason.as_deref(),
                    answer_fields,
                )
            }),
            SampleBody::Alpaca { output, .. } => Some(output.clone()),
            SampleBody::Chat { messages } => messages
                .iter()
                .rev()
                .find(|m| m.role == "assistant")
                .map(|m| m.content.clone()),
            SampleBody::Text { .. } => None,
        }
    }

    /// Chat messages per the training recipe: `system` (omitted when empty),
    /// user = [`Sample::prompt_text`], and with `with_answer` the assistant
    /// [`Sample::expected_answer`] (omitted when there is none, e.g. an
    /// unlabelled fraud sample). Chat samples give their own messages
    /// (without `with_answer`: those before the last assistant message).
    pub fn to_chat_messages(
        &self,
        system: &str,
        with_answer: bool,
        answer_fields: bool,
    ) -> Vec<Message> {
        if let SampleBody::Chat { messages } = &self.body {
            if with_answer {
                return messages.clone();
            }
            let end = messages
                .iter()
                .rposition(|m| m.role == "assistant")
                .unwrap_or(messages.len());
            return messages[..end].to_vec();
        }
        let mut out = Vec::with_capacity(3);
        if !system.is_empty() {
            out.push(Message::new("system", system));
        }
        out.push(Message::new("user", self.prompt_text()));
        if with_answer {
            if let Some(a) = self.expected_answer(answer_fields) {
                out.push(Message::new("assistant", a));
            }
        }
        out
    }
}

/// Words in a speaker's name that give the label away (`诈骗者`, `骗子`, "fraudster"…): a
/// shortcut a live meeting transcript never offers.
pub const LABEL_WORDS: &[&str] = &[
    "诈骗",
    "骗子",
    "骗局",
    "嫌疑人",
    "犯罪",
    "fraud",
    "scam",
    "suspect",
];

/// Whether a speaker name gives the label away (see [`LABEL_WORDS`]).
pub fn is_label_leak(speaker: &str) -> bool {
    let s = speaker.to_lowercase();
    LABEL_WORDS.iter().any(|w| s.contains(w))
}

/// The name the `i`-th distinct speaker gets: A … Z, then S27, S28 …
fn anonymous_name(i: usize) -> String {
    if i < 26 {
        ((b'A' + i as u8) as char).to_string()
    } else {
        format!("S{}", i + 1)
    }
}

/// The turns with speakers renamed A, B, C… in order of first appearance, and their names
/// replaced inside the utterances too (longest names first), consistent within the dialogue.
pub fn anonymize_turns(turns: &[(String, String)]) -> Vec<(String, String)> {
    let mut names: Vec<String> = Vec::new();
    for (s, _) in turns {
        if !s.is_empty() && !names.contains(s) {
            names.push(s.clone());
        }
    }
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(names[i].chars().count()));
    let map = |s: &str| -> String {
        names
            .iter()
            .position(|n| n == s)
            .map(anonymous_name)
            .unwrap_or_default()
    };
    turns
        .iter()
        .map(|(s, u)| {
            let mut u = u.clone();
            for &i in &order {
                // names of one character would rewrite ordinary words
                if names[i].chars().count() >= 2 {
                    u = u.replace(&names[i], &anonymous_name(i));
                }
            }
            (map(s), u)
        })
        .collect()
}

impl Sample {
    /// Speaker names in the dialogue that give the label away.
    pub fn label_leaks(&self) -> Vec<String> {
        self.speakers()
            .into_iter()
            .filter(|s| is_label_leak(s))
            .collect()
    }

    /// This sample with its speakers anonymised ([`anonymize_turns`]) for building a prompt:
    /// the id, the label and the rest stay; `fraud_speaker` is renamed the same way. Samples
    /// that are not fraud dialogues come back unchanged.
    pub fn anonymized(&self) -> Sample {
        let SampleBody::Fraud { instruction, input } = &self.body else {
            return self.clone();
        };
        let turns = parse_turns(input);
        let anon = anonymize_turns(&turns);
        let mut names: Vec<&str> = Vec::new();
        for (s, _) in &turns {
            if !s.is_empty() && !names.contains(&s.as_str()) {
                names.push(s);
            }
        }
        let rename = |s: &str| {
            names
                .iter()
                .position(|n| *n == s.trim())
                .map(anonymous_name)
                .unwrap_or_else(|| s.to_string())
        };
        let input = anon
            .iter()
            .map(|(s, u)| {
                if s.is_empty() {
                    u.clone()
                } else {
                    format!("{s}: {u}")
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let fraud_speaker = self.fraud_speaker.as_ref().map(|f| {
            f.split([',', '，', '、'])
                .map(rename)
                .collect::<Vec<_>>()
                .join(", ")
        });
        Sample {
            id: self.id.clone(),
            body: SampleBody::Fraud {
                instruction: instruction.clone(),
                input,
            },
            label: self.label,
            fraud_speaker: fraud_speaker.filter(|s| !s.is_empty()),
            reason: self.reason.clone(),
        }
    }
}
