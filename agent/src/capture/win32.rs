//! What Win32 reports, interpreted: pure functions the Windows backend uses, compiled on every
//! platform so their unit tests run on our Linux build machines too.

use backlight_shared::event::{DesktopSession, SessionKind};

use super::{truncate_on_char_boundary, MAX_NAME_BYTES};

/// `WTSClientProtocolType`: the console, Citrix ICA, Microsoft RDP.
pub const PROTOCOL_CONSOLE: u16 = 0;
pub const PROTOCOL_ICA: u16 = 1;
pub const PROTOCOL_RDP: u16 = 2;

/// The session kind from what Windows says: the protocol when known, else the remote metric.
/// A client name is kept only for remote sessions (the console reports the machine itself).
pub fn session_from(
    remote_metric: bool,
    protocol: Option<u16>,
    client_name: Option<String>,
) -> DesktopSession {
    let kind = match protocol {
        Some(PROTOCOL_RDP) => SessionKind::Rdp,
        Some(PROTOCOL_ICA) => SessionKind::Citrix,
        Some(PROTOCOL_CONSOLE) | None if !remote_metric => SessionKind::Local,
        _ => SessionKind::Remote,
    };
    DesktopSession {
        kind,
        client_name: client_name.filter(|_| kind.is_remote()),
    }
}

/// The last component of a Windows path, cut to [`MAX_NAME_BYTES`].
pub fn file_name(path: &str) -> String {
    let name = path.rsplit(['\\', '/']).next().unwrap_or(path);
    let mut name = clean_name(name);
    truncate_on_char_boundary(&mut name, MAX_NAME_BYTES);
    name
}

/// Names are single-line metadata: control characters become spaces, ends are trimmed.
pub fn clean_name(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

/// UTF-16LE bytes (as Win32 hands out strings in byte buffers) up to the first NUL, lossily.
pub fn utf16_le_text(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

/// The desktops a user's own windows live on are `Default`; anything else that holds input
/// (`Winlogon`, `Screen-saver`) means the person cannot be working in their applications.
pub fn is_lock_desktop(name: &str) -> bool {
    !name.eq_ignore_ascii_case("default")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_come_from_windows_paths() {
        assert_eq!(
            file_name(r"C:\Program Files\Microsoft Office\root\Office16\OUTLOOK.EXE"),
            "OUTLOOK.EXE"
        );
        assert_eq!(file_name("notepad.exe"), "notepad.exe");
    }

    #[test]
    fn sessions_are_classified_by_protocol_then_metric() {
        let local = session_from(false, Some(PROTOCOL_CONSOLE), Some("DESK-1".into()));
        assert_eq!(local.kind, SessionKind::Local);
        assert_eq!(local.client_name, None);
        let rdp = session_from(true, Some(PROTOCOL_RDP), Some("LAPTOP-7".into()));
        assert_eq!(rdp.kind, SessionKind::Rdp);
        assert_eq!(rdp.client_name.as_deref(), Some("LAPTOP-7"));
        assert_eq!(
            session_from(true, Some(PROTOCOL_ICA), None).kind,
            SessionKind::Citrix
        );
        assert_eq!(session_from(true, None, None).kind, SessionKind::Remote);
        assert_eq!(session_from(false, None, None).kind, SessionKind::Local);
    }

    #[test]
    fn utf16_buffers_end_at_the_nul() {
        let bytes: Vec<u8> = "THIN-7\0junk"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .chain([0x41]) // an odd trailing byte is ignored
            .collect();
        assert_eq!(utf16_le_text(&bytes), "THIN-7");
        assert_eq!(utf16_le_text(&[]), "");
    }

    #[test]
    fn only_the_default_desktop_is_unlocked() {
        assert!(!is_lock_desktop("Default"));
        assert!(is_lock_desktop("Winlogon"));
        assert!(is_lock_desktop("Screen-saver"));
    }
}
