//! Text from the server (the notice, error messages) shown on a terminal.
//!
//! A terminal obeys escape sequences in what it prints: a notice with `ESC [2J` clears the
//! screen, `ESC [8m` hides text, a bare `CR` overwrites a line, and Unicode direction overrides
//! reorder what is read. So before the employee reads anything the server sent, every control
//! character except newline and tab, and every bidirectional control, is shown as a visible
//! escape (`\u{1b}`) instead of acted on.

use std::borrow::Cow;

/// Unicode's bidirectional embedding, override and isolate controls.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}')
}

fn is_unsafe(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t') || is_bidi_control(c)
}

/// `text` with everything a terminal would act on made visible; a Windows line end (`\r\n`)
/// becomes a plain newline.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\r' && chars.peek() == Some(&'\n') {
            continue;
        }
        if is_unsafe(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_passes_unchanged() {
        let text = "Grüße!\n\tWe record the focused application.";
        assert!(matches!(printable(text), Cow::Borrowed(t) if t == text));
    }

    #[test]
    fn escapes_and_direction_overrides_become_visible() {
        assert_eq!(printable("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(printable("x\ry"), "x\\u{d}y");
        assert_eq!(printable("line\r\nnext"), "line\nnext");
        assert_eq!(printable("abc\u{202e}def"), "abc\\u{202e}def");
        assert_eq!(printable("\u{7}\u{9b}"), "\\u{7}\\u{9b}");
    }
}
