//! Shared pieces: display-width helpers, wrapping that knows CJK characters are two cells
//! wide, a multi-line text editor whose cursor moves by characters and lands on display
//! columns, and small formatting helpers.

use ratatui::layout::{Constraint, Flex, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

/// Cells a character takes (control characters: 0).
pub fn char_width(c: char) -> usize {
    UnicodeWidthChar::width(c).unwrap_or(0)
}

/// Cells a string takes.
pub fn display_width(s: &str) -> usize {
    UnicodeWidthStr::width(s)
}

/// `s` cut to at most `width` cells, with `…` when something was cut.
pub fn truncate(s: &str, width: usize) -> String {
    if display_width(s) <= width {
        return s.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let mut out = String::new();
    let mut w = 0;
    for c in s.chars() {
        let cw = char_width(c);
        if w + cw > width - 1 {
            break;
        }
        out.push(c);
        w += cw;
    }
    out.push('…');
    out
}

/// The text on one line: newlines and tabs become spaces, other control characters go.
pub fn one_line(s: &str) -> String {
    s.chars()
        .filter_map(|c| match c {
            '\n' | '\t' | '\r' => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect()
}

/// Char ranges `(start, end)` of the visual rows of one logical line at `width` cells.
/// Breaks between any two characters (CJK text has no spaces); when a Latin word would be
/// cut and the row has an earlier space, the row ends after that space. A wide character
/// that does not fit at the end of a row moves to the next. An empty line has one empty row.
pub fn wrap_ranges(line: &[char], width: usize) -> Vec<(usize, usize)> {
    let width = width.max(1);
    let mut rows = Vec::new();
    let mut start = 0;
    let mut w = 0;
    let mut last_space: Option<usize> = None;
    let mut i = 0;
    while i < line.len() {
        let c = line[i];
        let cw = char_width(c);
        if w + cw > width && i > start {
            // break before i; prefer after the last space when cutting a word
            let cutting_word = is_word_char(c) && i > 0 && is_word_char(line[i - 1]);
            let end = match last_space {
                Some(sp) if cutting_word && sp + 1 > start && sp + 1 < i => sp + 1,
                _ => i,
            };
            rows.push((start, end));
            start = end;
            w = line[start..i].iter().map(|&c| char_width(c)).sum();
            last_space = None;
            continue;
        }
        if c == ' ' {
            last_space = Some(i);
        }
        w += cw;
        i += 1;
    }
    rows.push((start, line.len()));
    rows
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '\'' | '"')
}

/// `text` wrapped to `width` cells: one string per visual row (logical lines kept).
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.split('\n') {
        let chars: Vec<char> = line
            .chars()
            .map(|c| if c == '\t' { ' ' } else { c })
            .filter(|c| !c.is_control())
            .collect();
        for (a, b) in wrap_ranges(&chars, width) {
            out.push(chars[a..b].iter().collect());
        }
    }
    out
}

/// Lines of `text` wrapped to `width`, styled alike.
pub fn wrapped_lines(text: &str, width: usize, style: Style) -> Vec<Line<'static>> {
    wrap(text, width)
        .into_iter()
        .map(|s| Line::from(Span::styled(s, style)))
        .collect()
}

/// A rectangle of `w` x `h` cells centred in `area` (clamped to it).
pub fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let [r] = Layout::horizontal([Constraint::Length(w.min(area.width))])
        .flex(Flex::Center)
        .areas(area);
    let [r] = Layout::vertical([Constraint::Length(h.min(area.height))])
        .flex(Flex::Center)
        .areas(r);
    r
}

pub fn human_bytes(n: u64) -> String {
    let f = n as f64;
    if f >= 1e9 {
        format!("{:.1} GB", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.0} MB", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.0} kB", f / 1e3)
    } else {
        format!("{n} B")
    }
}

pub fn human_count(n: u64) -> String {
    let f = n as f64;
    if f >= 1e9 {
        format!("{:.2}B", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.1}M", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.1}k", f / 1e3)
    } else {
        n.to_string()
    }
}

pub use crate::fmt::human_secs;

/// A float for an axis label or a table: few digits, scientific when tiny.
pub fn short_float(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let a = x.abs();
    if a == 0.0 {
        "0".into()
    } else if a < 1e-3 {
        format!("{x:.1e}")
    } else if a < 1.0 {
        format!("{x:.3}")
    } else if a < 100.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.0}")
    }
}

/// A multi-line (or one-line) text editor. The cursor is a char index in a logical line;
/// moving right or left skips zero-width characters so they stay with their base
/// character, and moving up or down keeps the display column (a CJK character is two).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextEditor {
    lines: Vec<Vec<char>>,
    row: usize,
    col: usize,
    multiline: bool,
}

impl Default for TextEditor {
    fn default() -> Self {
        Self::new("", true)
    }
}

impl TextEditor {
    pub fn new(text: &str, multiline: bool) -> Self {
        let mut e = Self {
            lines: vec![Vec::new()],
            row: 0,
            col: 0,
            multiline,
        };
        e.set_text(text);
        e
    }

    pub fn single(text: &str) -> Self {
        Self::new(text, false)
    }

    /// Replaces the text and puts the cursor at its end.
    pub fn set_text(&mut self, text: &str) {
        self.lines = vec![Vec::new()];
        self.row = 0;
        self.col = 0;
        self.insert_str(text);
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        for (i, l) in self.lines.iter().enumerate() {
            if i > 0 {
                s.push('\n');
            }
            s.extend(l.iter());
        }
        s
    }

    pub fn is_empty(&self) -> bool {
        self.lines.len() == 1 && self.lines[0].is_empty()
    }

    /// (logical row, char index) of the cursor.
    pub fn cursor(&self) -> (usize, usize) {
        (self.row, self.col)
    }

    pub fn line_count(&self) -> usize {
        self.lines.len()
    }

    /// Display column of the cursor in its logical line.
    pub fn cursor_column(&self) -> usize {
        self.lines[self.row][..self.col]
            .iter()
            .map(|&c| char_width(c))
            .sum()
    }

    pub fn insert_char(&mut self, c: char) {
        match c {
            '\n' => self.newline(),
            '\r' => {}
            '\t' => {
                for _ in 0..4 {
                    self.insert_char(' ');
                }
            }
            c if c.is_control() => {}
            c => {
                self.lines[self.row].insert(self.col, c);
                self.col += 1;
            }
        }
    }

    pub fn insert_str(&mut self, s: &str) {
        let s = s.replace("\r\n", "\n");
        for c in s.chars() {
            if c == '\n' && !self.multiline {
                self.insert_char(' ');
            } else {
                self.insert_char(c);
            }
        }
    }

    pub fn newline(&mut self) {
        if !self.multiline {
            return;
        }
        let rest = self.lines[self.row].split_off(self.col);
        self.lines.insert(self.row + 1, rest);
        self.row += 1;
        self.col = 0;
    }

    pub fn backspace(&mut self) {
        if self.col > 0 {
            // remove the character before the cursor with its zero-width marks
            let end = self.col;
            self.move_left();
            self.lines[self.row].drain(self.col..end);
        } else if self.row > 0 {
            let line = self.lines.remove(self.row);
            self.row -= 1;
            self.col = self.lines[self.row].len();
            self.lines[self.row].extend(line);
        }
    }

    pub fn delete(&mut self) {
        let len = self.lines[self.row].len();
        if self.col < len {
            let start = self.col;
            let mut end = start + 1;
            while end < len && char_width(self.lines[self.row][end]) == 0 {
                end += 1;
            }
            self.lines[self.row].drain(start..end);
        } else if self.row + 1 < self.lines.len() {
            let next = self.lines.remove(self.row + 1);
            self.lines[self.row].extend(next);
        }
    }

    pub fn move_left(&mut self) {
        if self.col > 0 {
            self.col -= 1;
            while self.col > 0 && char_width(self.lines[self.row][self.col]) == 0 {
                self.col -= 1;
            }
        } else if self.row > 0 {
            self.row -= 1;
            self.col = self.lines[self.row].len();
        }
    }

    pub fn move_right(&mut self) {
        let len = self.lines[self.row].len();
        if self.col < len {
            self.col += 1;
            while self.col < len && char_width(self.lines[self.row][self.col]) == 0 {
                self.col += 1;
            }
        } else if self.row + 1 < self.lines.len() {
            self.row += 1;
            self.col = 0;
        }
    }

    /// Char index in `row` whose display column is closest to `target` without passing it.
    fn col_at(&self, row: usize, target: usize) -> usize {
        let mut w = 0;
        for (i, &c) in self.lines[row].iter().enumerate() {
            let cw = char_width(c);
            if w + cw > target {
                return i;
            }
            w += cw;
        }
        self.lines[row].len()
    }

    /// Up one logical line keeping the display column. Returns false at the top.
    pub fn move_up(&mut self) -> bool {
        if self.row == 0 {
            return false;
        }
        let x = self.cursor_column();
        self.row -= 1;
        self.col = self.col_at(self.row, x);
        true
    }

    pub fn move_down(&mut self) -> bool {
        if self.row + 1 >= self.lines.len() {
            return false;
        }
        let x = self.cursor_column();
        self.row += 1;
        self.col = self.col_at(self.row, x);
        true
    }

    pub fn home(&mut self) {
        self.col = 0;
    }

    pub fn end(&mut self) {
        self.col = self.lines[self.row].len();
    }

    /// Deletes from the line start to the cursor.
    pub fn kill_to_start(&mut self) {
        self.lines[self.row].drain(..self.col);
        self.col = 0;
    }

    /// Deletes from the cursor to the line end.
    pub fn kill_to_end(&mut self) {
        self.lines[self.row].truncate(self.col);
    }

    /// Deletes the word before the cursor (spaces first, then non-spaces).
    pub fn delete_word(&mut self) {
        let line = &mut self.lines[self.row];
        let mut i = self.col;
        while i > 0 && line[i - 1] == ' ' {
            i -= 1;
        }
        while i > 0 && line[i - 1] != ' ' {
            i -= 1;
        }
        line.drain(i..self.col);
        self.col = i;
    }

    /// Applies an editing key. Returns true when the key was an editing key.
    pub fn handle_key(&mut self, key: &crossterm::event::KeyEvent) -> bool {
        use crossterm::event::{KeyCode, KeyModifiers};
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('a') if ctrl => self.home(),
            KeyCode::Char('e') if ctrl => self.end(),
            KeyCode::Char('u') if ctrl => self.kill_to_start(),
            KeyCode::Char('k') if ctrl => self.kill_to_end(),
            KeyCode::Char('w') if ctrl => self.delete_word(),
            KeyCode::Char('h') if ctrl => self.backspace(),
            KeyCode::Char(_) if ctrl || key.modifiers.contains(KeyModifiers::ALT) => return false,
            KeyCode::Char(c) => self.insert_char(c),
            KeyCode::Enter
                if self.multiline
                    && (key.modifiers.is_empty() || key.modifiers == KeyModifiers::SHIFT) =>
            {
                self.newline()
            }
            KeyCode::Backspace => self.backspace(),
            KeyCode::Delete => self.delete(),
            KeyCode::Left => self.move_left(),
            KeyCode::Right => self.move_right(),
            KeyCode::Up => return self.move_up() || self.multiline,
            KeyCode::Down => return self.move_down() || self.multiline,
            KeyCode::Home => self.home(),
            KeyCode::End => self.end(),
            _ => return false,
        }
        true
    }

    /// The visual rows at `width` cells and the cursor's (x, y) among them.
    pub fn layout(&self, width: usize) -> (Vec<String>, (usize, usize)) {
        let width = width.max(1);
        let mut rows = Vec::new();
        let mut cursor = (0, 0);
        for (r, line) in self.lines.iter().enumerate() {
            let ranges = wrap_ranges(line, width);
            for (k, &(a, b)) in ranges.iter().enumerate() {
                if r == self.row {
                    let last = k + 1 == ranges.len();
                    if self.col >= a && (self.col < b || (last && self.col == b)) {
                        let x: usize = line[a..self.col].iter().map(|&c| char_width(c)).sum();
                        cursor = (x, rows.len());
                    }
                }
                rows.push(line[a..b].iter().collect::<String>());
            }
        }
        // a cursor just past a full row shows at the start of the next row
        if cursor.0 >= width {
            cursor = (0, cursor.1 + 1);
            if cursor.1 >= rows.len() {
                rows.push(String::new());
            }
        }
        (rows, cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_cjk_by_width() {
        let rows = wrap("你好世界你好", 5);
        assert_eq!(rows, vec!["你好", "世界", "你好"]);
        for r in &rows {
            assert!(display_width(r) <= 5);
        }
    }

    #[test]
    fn wrap_prefers_spaces_for_words() {
        assert_eq!(wrap("hello world again", 12), vec!["hello world ", "again"]);
    }

    #[test]
    fn truncate_wide() {
        assert_eq!(truncate("你好世界", 5), "你好…");
        assert!(display_width(&truncate("你好世界", 5)) <= 5);
    }
}
