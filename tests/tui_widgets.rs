//! The editor and wrapping: display width of CJK text, cursor movement by characters and
//! display columns, wrapping that never splits a wide character or overflows a row.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use fraudlab::tui::widgets::{display_width, truncate, wrap, wrap_ranges, TextEditor};

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

#[test]
fn display_width_counts_cjk_as_two() {
    assert_eq!(display_width("abc"), 3);
    assert_eq!(display_width("你好"), 4);
    assert_eq!(display_width("张伟：您好"), 10);
    assert_eq!(display_width("e\u{301}"), 1); // combining accent takes no cell
}

#[test]
fn wrap_never_overflows_or_splits_wide_chars() {
    let text = "张伟：您好，我是银行客服，您的账户涉嫌洗钱，需要把资金转到安全账户。Please call 95588 now.";
    for w in 1..40 {
        let rows = wrap(text, w);
        let joined: String = rows.concat();
        assert_eq!(joined, text.replace('\n', ""), "width {w}: nothing lost");
        for r in &rows {
            // a row holds at least one char even when that char is wider than the row
            assert!(
                display_width(r) <= w.max(2),
                "width {w}: row {r:?} too wide"
            );
        }
    }
    assert_eq!(wrap("你好世界", 3), vec!["你", "好", "世", "界"]);
    assert_eq!(wrap("ab你好", 3), vec!["ab", "你", "好"]);
}

#[test]
fn wrap_keeps_latin_words_and_newlines() {
    assert_eq!(
        wrap("the quick brown fox", 10),
        vec!["the quick ", "brown fox"]
    );
    assert_eq!(wrap("a\n\nb", 5), vec!["a", "", "b"]);
    let chars: Vec<char> = "".chars().collect();
    assert_eq!(wrap_ranges(&chars, 5), vec![(0, 0)]);
}

#[test]
fn truncate_fits_width() {
    for w in 0..12 {
        assert!(display_width(&truncate("验证码是123456", w)) <= w);
    }
    assert_eq!(truncate("abc", 3), "abc");
}

#[test]
fn editor_moves_by_chars_over_cjk() {
    let mut e = TextEditor::new("你好ab", true);
    assert_eq!(e.cursor(), (0, 4));
    assert_eq!(e.cursor_column(), 6);
    e.handle_key(&key(KeyCode::Left));
    e.handle_key(&key(KeyCode::Left));
    assert_eq!(e.cursor_column(), 4);
    e.handle_key(&key(KeyCode::Left));
    assert_eq!(e.cursor(), (0, 1));
    assert_eq!(e.cursor_column(), 2);
    e.handle_key(&key(KeyCode::Char('世')));
    assert_eq!(e.text(), "你世好ab");
    e.handle_key(&key(KeyCode::Backspace));
    e.handle_key(&key(KeyCode::Delete));
    assert_eq!(e.text(), "你ab");
}

#[test]
fn editor_keeps_display_column_across_lines() {
    // line 0: 4 CJK chars (8 cells); line 1: ascii
    let mut e = TextEditor::new("你好世界\nabcdefghij", true);
    assert_eq!(e.cursor(), (1, 10));
    e.handle_key(&key(KeyCode::Home));
    for _ in 0..4 {
        e.handle_key(&key(KeyCode::Right));
    }
    assert_eq!(e.cursor_column(), 4);
    e.handle_key(&key(KeyCode::Up));
    // column 4 in "你好世界" is after 2 chars
    assert_eq!(e.cursor(), (0, 2));
    e.handle_key(&key(KeyCode::Down));
    assert_eq!(e.cursor(), (1, 4));
    // column 5 lands before the wide char that would cross it
    e.handle_key(&key(KeyCode::Right));
    e.handle_key(&key(KeyCode::Up));
    assert_eq!(e.cursor(), (0, 2));
}

#[test]
fn editor_combining_marks_stay_with_their_base() {
    let mut e = TextEditor::new("e\u{301}x", true);
    e.handle_key(&key(KeyCode::Home));
    e.handle_key(&key(KeyCode::Right));
    assert_eq!(e.cursor(), (0, 2), "skips the combining accent");
    e.handle_key(&key(KeyCode::Backspace));
    assert_eq!(e.text(), "x");
}

#[test]
fn editor_enter_newline_and_join() {
    let mut e = TextEditor::new("ab", true);
    e.handle_key(&key(KeyCode::Left));
    e.handle_key(&key(KeyCode::Enter));
    assert_eq!(e.text(), "a\nb");
    assert_eq!(e.cursor(), (1, 0));
    e.handle_key(&key(KeyCode::Backspace));
    assert_eq!(e.text(), "ab");
    let mut one = TextEditor::single("x");
    assert!(
        !one.handle_key(&key(KeyCode::Enter)),
        "single-line editors leave Enter to the caller"
    );
    one.insert_str("a\nb");
    assert_eq!(one.text(), "xa b");
}

#[test]
fn editor_ctrl_keys() {
    let ctrl = |c| KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL);
    let mut e = TextEditor::new("hello big world", true);
    e.handle_key(&ctrl('w'));
    assert_eq!(e.text(), "hello big ");
    e.handle_key(&ctrl('a'));
    e.handle_key(&ctrl('k'));
    assert_eq!(e.text(), "");
    e.insert_str("abc");
    e.handle_key(&ctrl('u'));
    assert_eq!(e.text(), "");
}

#[test]
fn editor_layout_places_cursor_in_wrapped_rows() {
    let e = TextEditor::new("你好世界你好", true);
    let (rows, cur) = e.layout(5);
    assert_eq!(rows, vec!["你好", "世界", "你好"]);
    assert_eq!(cur, (4, 2));
    // a cursor after a row that fills the width goes to the next row
    let e = TextEditor::new("你好", true);
    let (rows, cur) = e.layout(4);
    assert_eq!(cur, (0, 1));
    assert_eq!(rows.len(), 2);
    let mut e = TextEditor::new("abcdef\n你好", true);
    e.handle_key(&key(KeyCode::Up));
    let (_, cur) = e.layout(4);
    // row 0 "abcd", row 1 "ef", cursor at col 4 of line 0 = x 0 of row 1
    assert_eq!(cur, (0, 1));
}
