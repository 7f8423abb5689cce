//! Colours and styles, in one place. Plain ANSI colours so the workbench reads well on
//! light and dark terminals alike.

use ratatui::style::{Color, Modifier, Style};
use ratatui::widgets::{Block, BorderType, Borders};

pub const ACCENT: Color = Color::Cyan;
pub const OK: Color = Color::Green;
pub const WARN: Color = Color::Yellow;
pub const ERR: Color = Color::Red;
pub const DIM: Color = Color::DarkGray;
pub const FRAUD: Color = Color::LightRed;
pub const NORMAL: Color = Color::LightGreen;

/// Line colours of charts with several series (runs, models).
pub const SERIES: [Color; 6] = [
    Color::Cyan,
    Color::Yellow,
    Color::Magenta,
    Color::Green,
    Color::LightBlue,
    Color::LightRed,
];

/// Speaker colours in the dialogue view (first speaker, second, …).
pub const SPEAKERS: [Color; 6] = [
    Color::Cyan,
    Color::Magenta,
    Color::Yellow,
    Color::LightGreen,
    Color::LightBlue,
    Color::LightRed,
];

pub fn dim() -> Style {
    Style::new().fg(DIM)
}

pub fn bold() -> Style {
    Style::new().add_modifier(Modifier::BOLD)
}

pub fn accent() -> Style {
    Style::new().fg(ACCENT)
}

pub fn ok() -> Style {
    Style::new().fg(OK)
}

pub fn warn() -> Style {
    Style::new().fg(WARN)
}

pub fn err() -> Style {
    Style::new().fg(ERR)
}

/// The selected row of a table or list.
pub fn selected() -> Style {
    Style::new()
        .bg(Color::Blue)
        .fg(Color::White)
        .add_modifier(Modifier::BOLD)
}

/// A focused form field or editor.
pub fn focused() -> Style {
    Style::new().fg(Color::Black).bg(ACCENT)
}

pub fn header() -> Style {
    Style::new().fg(WARN).add_modifier(Modifier::BOLD)
}

pub fn label_style(label: Option<bool>) -> Style {
    match label {
        Some(true) => Style::new().fg(FRAUD),
        Some(false) => Style::new().fg(NORMAL),
        None => dim(),
    }
}

/// A bordered block; the border is bright when the block has the focus.
pub fn block(title: impl Into<String>, focus: bool) -> Block<'static> {
    let b = Block::new()
        .borders(Borders::ALL)
        .border_type(BorderType::Rounded)
        .title(format!(" {} ", title.into()));
    if focus {
        b.border_style(Style::new().fg(ACCENT))
            .title_style(bold().fg(ACCENT))
    } else {
        b.border_style(dim()).title_style(bold())
    }
}

pub fn speaker_color(i: usize) -> Color {
    SPEAKERS[i % SPEAKERS.len()]
}
