//! The key map (what each key does, per pane, for the help overlay and the status-bar
//! hints) and every user-facing string of the workbench.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::app::Tab;

/// One documented key.
#[derive(Debug, Clone, Copy)]
pub struct KeyHelp {
    pub keys: &'static str,
    pub what: &'static str,
    /// Shown in the status bar as (key, word); empty: not shown.
    pub hint: (&'static str, &'static str),
}

const fn k(keys: &'static str, what: &'static str, hint: (&'static str, &'static str)) -> KeyHelp {
    KeyHelp { keys, what, hint }
}

const NO: (&str, &str) = ("", "");

pub const GLOBAL: &[KeyHelp] = &[
    k(
        "1-6",
        "switch pane: Models, Probe, Train, Data, Eval, Monitor",
        NO,
    ),
    k("Tab / Shift-Tab", "next / previous pane", NO),
    k("?", "this help (any key closes it)", ("?", "help")),
    k(
        "Esc / x",
        "cancel the running generation, scoring or evaluation; stop training",
        NO,
    ),
    k("q / Ctrl-C", "quit (the session is saved)", ("q", "quit")),
];

pub const MODELS: &[KeyHelp] = &[
    k("j/k ↑/↓", "select a model", NO),
    k(
        "Enter",
        "load the model (several can be loaded)",
        ("Enter", "load"),
    ),
    k("u", "unload the model", ("u", "unload")),
    k(
        "p",
        "load precision: f32, bf16 or quantized (GGUF); the RAM columns follow",
        ("p", "precision"),
    ),
    k(
        "L",
        "load the model with a LoRA adapter from this session's runs",
        NO,
    ),
    k(
        "a",
        "add a model folder, a .gguf file or a folder of models",
        ("a", "add"),
    ),
    k(
        "d",
        "write and list the tiny demo model (random weights)",
        ("d", "demo"),
    ),
    k(
        "g",
        "get a model by hub id (needs network: shows the command)",
        NO,
    ),
    k("r", "rescan the model folders", NO),
];

pub const PROBE: &[KeyHelp] = &[
    k(
        "j/k ↑/↓",
        "choose a field: system, prompt, sampling settings",
        NO,
    ),
    k(
        "Enter / i",
        "edit the field (Esc stops editing)",
        ("Enter", "edit"),
    ),
    k(
        "F5 / Ctrl-R / Ctrl-Enter",
        "run the prompt on every loaded model",
        ("F5", "run"),
    ),
    k("←/→ +/-", "change the focused sampling setting", NO),
    k(
        "b",
        "run the capability suite (the session's suite.jsonl, else the built-in one) on every loaded model: a pass/fail matrix, saved in the session",
        ("b", "suite"),
    ),
    k(
        "E",
        "export the suite matrix as Markdown and CSV (sessions/<name>/suites/)",
        NO,
    ),
    k("v", "view: outputs / history / suite matrix", ("v", "view")),
    k("[ ]", "history: previous / next entry", NO),
    k(
        "r",
        "history: put the entry's prompts back in the editors",
        NO,
    ),
    k("c", "clear the outputs", NO),
    k(
        "in an editor",
        "Enter new line, Tab other editor, Ctrl-A/E line start/end, Ctrl-U/K/W delete",
        NO,
    ),
];

pub const TRAIN: &[KeyHelp] = &[
    k("j/k ↑/↓", "choose a setting (in the runs view: a run)", NO),
    k(
        "Enter / Space",
        "edit, toggle or cycle the setting",
        ("Enter", "edit"),
    ),
    k("s", "start training", ("s", "start")),
    k(
        "T",
        "search recipes (lr, rank, layers) within the time budget, best adapter kept",
        NO,
    ),
    k("p", "pause / resume", ("p", "pause")),
    k(
        "x",
        "stop (a checkpoint and the adapter are written)",
        ("x", "stop"),
    ),
    k("v", "view: live run / past runs", ("v", "runs")),
    k("Space (runs view)", "show / hide the run's loss curve", NO),
    k(
        "Enter (runs view)",
        "load the run's adapter on its base model",
        NO,
    ),
    k("D", "reset the settings to the recipe defaults", NO),
];

pub const DATA: &[KeyHelp] = &[
    k("j/k ↑/↓ PgUp/PgDn g/G", "move", NO),
    k(
        "f / n",
        "label fraud / not fraud, then next",
        ("f/n", "label"),
    ),
    k("s", "choose the fraud speaker", ("s", "speaker")),
    k("r", "edit the reason", NO),
    k("u", "undo the last label", ("u", "undo")),
    k("N", "next unlabelled", ("N", "next unlabelled")),
    k("U", "most uncertain under the model (after S)", NO),
    k(
        "S",
        "score the visible samples with the first loaded model",
        NO,
    ),
    k("/", "search the dialogues (empty: clear)", ("/", "search")),
    k(
        "v",
        "filter: all / unlabelled / fraud / normal / model disagrees",
        ("v", "filter"),
    ),
    k("Enter", "show / hide the dialogue (narrow terminals)", NO),
    k("J/K", "scroll the dialogue", NO),
    k("t", "statistics and length histogram", NO),
    k("o", "open a dataset file", ("o", "open")),
];

pub const EVAL: &[KeyHelp] = &[
    k("s", "start the evaluation", ("s", "start")),
    k("t", "choose models and adapters", ("t", "models")),
    k("m", "mode: score / generate", ("m", "mode")),
    k("l", "limit the number of samples", NO),
    k("o", "evaluation dataset (default: the Data pane's)", NO),
    k(
        "←/→",
        "move the threshold (Shift: fine)",
        ("←/→", "threshold"),
    ),
    k("[ ]", "which model the curve, matrix and mistakes show", NO),
    k("j/k ↑/↓", "select a mistake", NO),
    k(
        "Enter",
        "open the mistake in the Data pane",
        ("Enter", "open"),
    ),
];

pub const MONITOR: &[KeyHelp] = &[
    k(
        "n / →",
        "send the dialogue's next turn to every followed model",
        ("n", "next"),
    ),
    k(
        "Space",
        "play / pause the replay (a turn once the last one's results are back)",
        ("Space", "play"),
    ),
    k(
        "i",
        "type a live turn `speaker: utterance` (Enter sends, Esc stops typing)",
        ("i", "type"),
    ),
    k(
        "t / T",
        "raise / lower the alert threshold (the conversation starts again)",
        ("t/T", "threshold"),
    ),
    k(
        "m",
        "choose the models that follow (default: every loaded one)",
        ("m", "models"),
    ),
    k(
        "x",
        "explain the alert: who the fraudster is and why",
        ("x", "explain"),
    ),
    k(
        "Enter",
        "follow the highlighted dialogue (a fresh conversation)",
        ("Enter", "pick"),
    ),
    k(
        "↑/↓ PgUp/PgDn Home/End",
        "highlight a dialogue of the open dataset",
        NO,
    ),
    k(
        "r",
        "restart: end the conversation, start a fresh one from turn 1",
        ("r", "restart"),
    ),
    k(
        "k / K",
        "more / fewer turns in a row at or above the threshold to alert (starts again)",
        NO,
    ),
    k("+ / -", "replay faster / slower (0.5 to 5 s a turn)", NO),
    k(
        "e",
        "explain automatically when an alert fires: on / off",
        NO,
    ),
    k("l", "show / hide the dialogue list (narrow terminals)", NO),
    k(
        "Esc",
        "pause the replay (when paused: cancel the engine's work)",
        NO,
    ),
    k(
        "paste",
        "pasted `speaker: utterance` lines become live turns, sent one by one",
        NO,
    ),
];

pub fn pane_keys(tab: Tab) -> &'static [KeyHelp] {
    match tab {
        Tab::Models => MODELS,
        Tab::Probe => PROBE,
        Tab::Train => TRAIN,
        Tab::Data => DATA,
        Tab::Eval => EVAL,
        Tab::Monitor => MONITOR,
    }
}

/// Status-bar hints of a pane: (key, word), the pane's own (the bar always ends with `? help`).
pub fn hints(tab: Tab) -> Vec<(&'static str, &'static str)> {
    pane_keys(tab)
        .iter()
        .filter(|h| !h.hint.0.is_empty())
        .map(|h| h.hint)
        .collect()
}

pub fn ctrl(key: &KeyEvent, c: char) -> bool {
    key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char(c)
}

/// F5, Ctrl-R, Ctrl-Enter, or Ctrl-J (what many terminals send for Ctrl-Enter).
pub fn is_run(key: &KeyEvent) -> bool {
    key.code == KeyCode::F(5)
        || ctrl(key, 'r')
        || ctrl(key, 'j')
        || (key.code == KeyCode::Enter
            && key
                .modifiers
                .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT))
}

/// A plain character key (no Ctrl or Alt).
pub fn plain(key: &KeyEvent) -> Option<char> {
    match key.code {
        KeyCode::Char(c)
            if !key
                .modifiers
                .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT) =>
        {
            Some(c)
        }
        _ => None,
    }
}

pub fn is_up(key: &KeyEvent) -> bool {
    matches!(key.code, KeyCode::Up) || plain(key) == Some('k')
}

pub fn is_down(key: &KeyEvent) -> bool {
    matches!(key.code, KeyCode::Down) || plain(key) == Some('j')
}

/// Every user-facing sentence.
pub mod strings {
    pub const APP: &str = "fraudlab";
    pub const NOT_A_TERMINAL: &str =
        "the workbench needs a terminal: stdout is not one. Run `fraudlab` in a terminal, or use the headless commands (`fraudlab --help`)";
    pub const TAB_TITLES: [&str; 6] = ["Models", "Probe", "Train", "Data", "Eval", "Monitor"];
    pub const HELP_TITLE: &str = "Keys — j/k scroll, any other key closes";
    pub const GLOBAL_SECTION: &str = "Everywhere";
    pub const QUIT_WAIT: &str =
        "fraudlab: waiting for the engine to stop (a training run writes its checkpoint first)…";

    // Models
    pub const MODELS_TITLE: &str = "Models";
    pub const NO_MODELS: &str = "No models found.";
    pub const NO_MODELS_WHERE: &str =
        "fraudlab looks for Qwen2-family models (folders with config.json, or .gguf files) in:";
    pub const NO_MODELS_FLAGS: &str =
        "--models-dir DIR (repeatable) and FRAUDLAB_MODELS (':'-separated folders)";
    pub const NO_MODELS_DEMO: &str = "Press d to write a tiny demo model (random weights, a few kB: it answers noise, but every pane works with it).";
    pub const NO_MODELS_ADD: &str =
        "Press a to add a folder or file, g to see how to download one.";
    pub const DEMO_NAME: &str = "fraudlab-demo-tiny";
    pub const DEMO_WARNING: &str = "DEMO: random weights, answers are noise";
    pub const ADD_PATH_TITLE: &str = "Add a model folder, .gguf file, or folder of models";
    pub const HUB_TITLE: &str =
        "Hub id to download (e.g. Qwen/Qwen2.5-0.5B-Instruct; ms:Org/Name for ModelScope)";
    pub const ADAPTER_PICK_TITLE: &str = "Load with which adapter?";
    pub const NO_ADAPTERS: &str =
        "no run of this session has an adapter yet (train one in the Train pane)";
    pub const ADVICE_NONE: &str = "Open a dataset (Data pane) for advice on base vs instruct.";

    pub fn hub_download_started(spec: &str) -> String {
        match spec.strip_prefix("ms:") {
            Some(id) => format!(
                "downloading {id} into the ModelScope cache (Esc cancels; offline, fetch it elsewhere with `modelscope download --model {id}` and press r)"
            ),
            None => format!(
                "downloading {spec} into the Hugging Face cache (Esc cancels; offline, fetch it elsewhere with `huggingface-cli download {spec}` and press r)"
            ),
        }
    }

    pub fn precision_note(p: crate::model::loader::Precision) -> String {
        use crate::model::loader::Precision;
        match p {
            Precision::F32 => "models load in f32: the exact path".into(),
            Precision::Bf16 => {
                "models load in bf16: half the memory, faster decoding; logits within bf16 rounding"
                    .into()
            }
            Precision::Quantized => {
                "GGUF models load quantized (fastest decoding, no training); folders load in f32"
                    .into()
            }
        }
    }

    pub fn advice(n: usize) -> String {
        if n > 1000 {
            format!("{n} samples: enough to fine-tune a base model (it learns the answer format); an instruct model works too.")
        } else if n >= 300 {
            format!("{n} samples: base or instruct both work; instruct starts closer to the JSON answer format.")
        } else {
            format!("{n} samples: pick an instruct model — too few samples to teach a base model the answer format.")
        }
    }

    /// Where the advice line sends a user to compare candidate models.
    pub const ADVICE_SUITE: &str =
        " Compare candidates (sizes, base vs instruct) with the capability suite: load them, Probe pane (2), b.";

    // Probe
    pub const SYSTEM_TITLE: &str = "System";
    pub const PROMPT_TITLE: &str = "Prompt";
    pub const SAMPLING_TITLE: &str = "Sampling";
    pub const OUTPUTS_TITLE: &str = "Outputs";
    pub const HISTORY_TITLE: &str = "History";
    pub const SUITE_TITLE: &str = "Capability suite";
    pub const DEFAULT_PROMPT: &str = "请简短介绍下大语言模型。";
    pub const NO_LOADED: &str = "load a model first (Models pane: Enter)";
    pub const NO_OUTPUT_YET: &str =
        "F5 (or Ctrl-R) runs the prompt on every loaded model; outputs stream here side by side.";
    pub const NO_HISTORY: &str = "No probes in this session yet.";
    pub const NO_SUITE: &str = "Press b to run the capability suite (the session's suite.jsonl, else the built-in one) on every loaded model: a pass/fail matrix of cases and models, wrong verdicts failing.";
    pub const ENGINE_BUSY_QUEUED: &str =
        "the engine is busy; this waits until the current work ends (Esc cancels it)";

    // Train
    pub const TRAIN_FORM_TITLE: &str = "Run settings";
    pub const TRAIN_LIVE_TITLE: &str = "Live run";
    pub const TRAIN_RUNS_TITLE: &str = "Past runs";
    pub const NO_RUN_YET: &str = "No run yet: choose a model and data, then press s.";
    pub const NO_RUNS: &str = "No runs in this session yet.";
    pub const TRAIN_NEEDS_MODEL: &str =
        "choose a model: load one in the Models pane, or set the model field";
    pub const TRAIN_NEEDS_DATA: &str =
        "choose training data: open a dataset in the Data pane, or set the data field";
    pub const TRAIN_ALREADY: &str = "a run is already going (p pauses, x stops)";
    pub const TUNE_NEEDS_BUDGET: &str =
        "a recipe search needs a time budget: set the `time budget` setting (e.g. 60m)";

    // Data
    pub const DATA_TITLE: &str = "Data";
    pub const NO_DATASET: &str = "No dataset open. Press o and give a file (fraud JSONL, Alpaca, chat, ShareGPT, text or CSV).";
    pub const OPEN_TITLE: &str = "Dataset file to open";
    pub const SEARCH_TITLE: &str = "Search the dialogues (empty clears)";
    pub const REASON_TITLE: &str = "Reason for the label";
    pub const SPEAKER_TITLE: &str = "Who is the fraudster?";
    pub const NO_SCORES: &str =
        "no model scores yet: press S to score the visible samples with a loaded model";
    pub const LABEL_FIRST: &str = "label the sample first (f fraud, n not fraud)";
    pub const NOTHING_TO_UNDO: &str = "nothing to undo";
    pub const NO_UNLABELLED: &str = "no unlabelled sample in view";

    // Eval
    pub const EVAL_TITLE: &str = "Evaluation";
    pub const EVAL_NEEDS_DATA: &str =
        "open a dataset in the Data pane (or press o here) to evaluate on";
    pub const EVAL_NEEDS_TARGET: &str =
        "choose at least one model (t); load models in the Models pane";
    pub const TARGETS_TITLE: &str = "Models to evaluate (Space toggles, Enter done)";
    pub const NO_RESULTS: &str = "No results yet: choose models (t), then press s.";
    pub const NO_ROC: &str = "no scores (generate mode, or one class only): no ROC curve";
    pub const EVAL_LIMIT_TITLE: &str = "Evaluate at most N samples (empty: all)";
    pub const EVAL_DATA_TITLE: &str = "Evaluation dataset file (empty: the Data pane's)";

    // Monitor
    pub const MONITOR_TITLE: &str = "Monitor";
    pub const MONITOR_LIST_TITLE: &str = "Dialogues";
    pub const MONITOR_INPUT_TITLE: &str = "Live turn";
    pub const MONITOR_NEEDS_MODEL: &str =
        "no model loaded: load one in the Models pane (1, then Enter) to monitor with";
    pub const MONITOR_MODEL_LOADING: &str = "the model is still loading: wait a moment";
    pub const MONITOR_NO_DIALOGUE: &str =
        "nothing to replay: open a dataset (Data pane, o) and pick a dialogue, or type a turn (i)";
    pub const MONITOR_NO_DATASET: &str =
        "No dataset open: open one in the Data pane (4, then o), or type turns live (i).";
    pub const MONITOR_EMPTY: &str =
        "Enter follows the highlighted dialogue, n sends its next turn, Space plays it; i types a turn live.";
    pub const MONITOR_PICK_TITLE: &str = "Models that follow (Space toggles, Enter done)";
    pub const MONITOR_NO_ALERT: &str = "no alert";
}
