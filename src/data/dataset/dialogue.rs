//! Turn-level dialogues (the CSV format) and their samples.

#[allow(unused_imports)]
use super::*;

// ---------------------------------------------------------- Dialogues ----

/// One turn of a turn-level (CSV) dialogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    pub speaker: String,
    pub content: String,
    pub is_fraud: bool,
}

/// A whole dialogue from a turn-level CSV file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dialogue {
    pub case: String,
    pub turns: Vec<Turn>,
}

/// The turns as `speaker: content` lines joined by `\n`.
pub fn turns_to_input(turns: &[Turn]) -> String {
    let mut s = String::new();
    for (i, t) in turns.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        s.push_str(&t.speaker);
        s.push_str(": ");
        s.push_str(&t.content);
    }
    s
}

/// The distinct speakers of the fraud turns (first-appearance order) joined
/// by `", "`; `None` when no turn is a fraud turn.
pub fn fraud_speaker_of(turns: &[Turn]) -> Option<String> {
    let mut names: Vec<&str> = Vec::new();
    for t in turns.iter().filter(|t| t.is_fraud) {
        if !names.contains(&t.speaker.as_str()) {
            names.push(&t.speaker);
        }
    }
    if turns.iter().any(|t| t.is_fraud) {
        Some(names.join(", "))
    } else {
        None
    }
}

/// A fraud sample (with [`DEFAULT_INSTRUCTION`]) from turns.
pub fn sample_from_turns(turns: &[Turn]) -> Sample {
    let label = turns.iter().any(|t| t.is_fraud);
    Sample::fraud(
        DEFAULT_INSTRUCTION,
        turns_to_input(turns),
        Some(label),
        fraud_speaker_of(turns),
        None,
    )
}

impl Dialogue {
    /// Fraud when any turn is.
    pub fn is_fraud(&self) -> bool {
        self.turns.iter().any(|t| t.is_fraud)
    }

    pub fn fraud_speaker(&self) -> Option<String> {
        fraud_speaker_of(&self.turns)
    }

    /// The whole dialogue as one fraud sample.
    pub fn to_sample(&self) -> Sample {
        sample_from_turns(&self.turns)
    }
}
