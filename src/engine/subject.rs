//! What an engine event or error belongs to ([`Subject`]), and the subject of each command
//! (a command that fails, even by a bug caught in the worker, reports under it).

use serde::{Deserialize, Serialize};

use super::worker::{Command, RequestId};

/// What an event or an error belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Subject {
    /// The engine itself (its thread has stopped, or a command with no subject of its own).
    Engine,
    Load {
        key: String,
        spec: String,
    },
    Generate {
        request: RequestId,
        key: String,
    },
    Score {
        request: RequestId,
        key: String,
    },
    Train,
    Eval,
    Download {
        id: String,
    },
    Monitor {
        request: RequestId,
        key: String,
        conversation: String,
    },
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Engine => write!(f, "engine"),
            Self::Load { spec, .. } => write!(f, "load {spec}"),
            Self::Generate { key, .. } => write!(f, "generate with {key}"),
            Self::Score { key, .. } => write!(f, "score with {key}"),
            Self::Train => write!(f, "training"),
            Self::Eval => write!(f, "evaluation"),
            Self::Download { id } => write!(f, "download {id}"),
            Self::Monitor {
                key, conversation, ..
            } => write!(f, "monitor {conversation} with {key}"),
        }
    }
}

impl Command {
    /// What an error while running this command is about.
    pub fn subject(&self) -> Subject {
        match self {
            Self::Load { key, spec, .. } => Subject::Load {
                key: key.clone(),
                spec: spec.clone(),
            },
            Self::Generate { request, keys, .. } => Subject::Generate {
                request: *request,
                key: keys.first().cloned().unwrap_or_default(),
            },
            Self::Chat { request, key, .. } => Subject::Generate {
                request: *request,
                key: key.clone(),
            },
            Self::Score { request, key, .. } => Subject::Score {
                request: *request,
                key: key.clone(),
            },
            Self::Train(_) | Self::Tune { .. } => Subject::Train,
            Self::Evaluate(_) => Subject::Eval,
            Self::Download { id } => Subject::Download { id: id.clone() },
            Self::MonitorTurn {
                request,
                key,
                conversation,
                ..
            }
            | Self::MonitorExplain {
                request,
                key,
                conversation,
                ..
            } => Subject::Monitor {
                request: *request,
                key: key.clone(),
                conversation: conversation.clone(),
            },
            Self::MonitorConfigure { key, .. } => Subject::Monitor {
                request: 0,
                key: key.clone(),
                conversation: String::new(),
            },
            Self::MonitorEnd { key, conversation } => Subject::Monitor {
                request: 0,
                key: key.clone(),
                conversation: conversation.clone(),
            },
            Self::Unload { .. } | Self::Shutdown => Subject::Engine,
        }
    }
}
