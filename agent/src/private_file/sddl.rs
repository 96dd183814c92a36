//! Judging a Windows security descriptor, read back as SDDL text, for a secret file: is it
//! owned by this user and closed to everyone else?
//!
//! Pure text in, verdict out, so it is compiled and unit-tested on every platform; only reading
//! the descriptor needs Windows (`platform::windows::acl::security_descriptor_sddl`). SDDL is
//! the system's own rendering of the descriptor (`ConvertSecurityDescriptorToStringSecurity…`),
//! which spares hand-walking ACE structures through raw pointers.
//!
//! Trusted besides this user: `SYSTEM` and the Administrators group — both can take any file
//! anyway, so an entry for them grants nothing new. Every other entry that lets its holder read
//! the data, change it, delete it or change who may do so makes the file not private. An entry
//! this code does not understand counts as such a grant: failing closed costs a clear error and
//! an `icacls` fix; failing open would trust a planted credential.

use std::fmt;

const SYSTEM: &str = "S-1-5-18";
const ADMINISTRATORS: &str = "S-1-5-32-544";

// Access mask bits (winnt.h) whose grant to someone else makes a secret file not private.
const FILE_READ_DATA: u32 = 0x1;
const FILE_WRITE_DATA: u32 = 0x2;
const FILE_APPEND_DATA: u32 = 0x4;
const DELETE: u32 = 0x1_0000;
const WRITE_DAC: u32 = 0x4_0000;
const WRITE_OWNER: u32 = 0x8_0000;
const GENERIC_ALL: u32 = 0x1000_0000;
const GENERIC_WRITE: u32 = 0x4000_0000;
const GENERIC_READ: u32 = 0x8000_0000;
const RISKY: u32 = FILE_READ_DATA
    | FILE_WRITE_DATA
    | FILE_APPEND_DATA
    | DELETE
    | WRITE_DAC
    | WRITE_OWNER
    | GENERIC_ALL
    | GENERIC_WRITE
    | GENERIC_READ;

/// Why a secret file's security descriptor is not trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotPrivate {
    /// The owner is neither this user, SYSTEM nor the Administrators group.
    ForeignOwner { owner: String },
    /// The descriptor has no access list, which lets everyone do everything.
    NoAccessList,
    /// An entry grants someone else access to the data.
    OpenTo { trustee: String },
    /// The text could not be read as SDDL; the file is refused rather than trusted.
    Unreadable { what: String },
}

impl fmt::Display for NotPrivate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotPrivate::ForeignOwner { owner } => {
                write!(f, "it belongs to {}, not to this user", describe(owner))
            }
            NotPrivate::NoAccessList => f.write_str("it has no access list, so anyone may use it"),
            NotPrivate::OpenTo { trustee } => {
                write!(f, "its access list lets {} use it", describe(trustee))
            }
            NotPrivate::Unreadable { what } => {
                write!(f, "its security descriptor could not be read ({what})")
            }
        }
    }
}

/// Accepts `sddl` (owner and DACL of a file) only when `me` — the string SID of the user this
/// process runs as — owns it and nobody untrusted may read, change or delete it.
pub fn judge(sddl: &str, me: &str) -> Result<(), NotPrivate> {
    let descriptor = Descriptor::parse(sddl)?;
    let trusted = |sid: &str| {
        let sid = expand_alias(sid);
        sid.eq_ignore_ascii_case(me) || sid == SYSTEM || sid == ADMINISTRATORS
    };
    match descriptor.owner {
        Some(owner) if trusted(owner) => {}
        Some(owner) => {
            return Err(NotPrivate::ForeignOwner {
                owner: owner.to_string(),
            })
        }
        None => {
            return Err(NotPrivate::Unreadable {
                what: "no owner in it".to_string(),
            })
        }
    }
    let Some(aces) = descriptor.dacl else {
        return Err(NotPrivate::NoAccessList);
    };
    for ace in aces {
        let ace = Ace::parse(ace)?;
        // "OW" (owner rights) stands for the owner, already checked above.
        if !ace.grants || ace.inherit_only || trusted(ace.trustee) || ace.trustee == "OW" {
            continue;
        }
        if ace.mask & RISKY != 0 {
            return Err(NotPrivate::OpenTo {
                trustee: ace.trustee.to_string(),
            });
        }
    }
    Ok(())
}

/// The owner and the DACL's entries of an SDDL string; the group and SACL are not consulted.
struct Descriptor<'a> {
    owner: Option<&'a str>,
    /// `None`: no DACL, or a NULL one (`D:NO_ACCESS_CONTROL`).
    dacl: Option<Vec<&'a str>>,
}

impl<'a> Descriptor<'a> {
    fn parse(sddl: &'a str) -> Result<Self, NotPrivate> {
        let mut owner = None;
        let mut dacl = None;
        let mut rest = sddl.trim();
        while !rest.is_empty() {
            let (tag, after) = rest.split_at_checked(2).ok_or_else(|| unreadable(rest))?;
            match tag {
                "O:" | "G:" => {
                    let (sid, after) = split_sid(after).ok_or_else(|| unreadable(after))?;
                    if tag == "O:" {
                        owner = Some(sid);
                    }
                    rest = after;
                }
                "D:" | "S:" => {
                    let (flags, entries, after) = split_acl(after)?;
                    if tag == "D:" && !flags.contains("NO_ACCESS_CONTROL") {
                        dacl = Some(entries);
                    }
                    rest = after;
                }
                _ => return Err(unreadable(rest)),
            }
        }
        Ok(Descriptor { owner, dacl })
    }
}

/// A SID at the start of `text`: `S-1-…` or a two-letter alias such as `BA`.
fn split_sid(text: &str) -> Option<(&str, &str)> {
    if let Some(tail) = text.strip_prefix("S-") {
        // Decimal sub-authorities; the next section's tag ("D:") ends it.
        let end = tail
            .find(|c: char| !(c.is_ascii_digit() || c == '-'))
            .unwrap_or(tail.len());
        Some(text.split_at(2 + end))
    } else {
        let (alias, rest) = text.split_at_checked(2)?;
        alias
            .chars()
            .all(|c| c.is_ascii_uppercase())
            .then_some((alias, rest))
    }
}

/// An ACL's flags and parenthesised entries; conditional entries may nest parentheses.
fn split_acl(text: &str) -> Result<(&str, Vec<&str>, &str), NotPrivate> {
    let flags_end = text.find(['(', ':']).unwrap_or(text.len());
    let mut flags = &text[..flags_end];
    let mut rest = &text[flags_end..];
    if rest.starts_with(':') {
        // No entries: the flags were followed by the next section's tag ("D:PS:…"), one ASCII
        // letter (anything else is not SDDL, and slicing inside a character would panic).
        let tag_start = flags
            .len()
            .checked_sub(1)
            .filter(|&i| flags.as_bytes()[i].is_ascii_uppercase())
            .ok_or_else(|| unreadable(text))?;
        rest = &text[tag_start..];
        flags = &text[..tag_start];
        return Ok((flags, Vec::new(), rest));
    }
    let mut entries = Vec::new();
    while rest.starts_with('(') {
        let mut depth = 0usize;
        let mut end = None;
        for (i, c) in rest.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(i);
                        break;
                    }
                }
                _ => {}
            }
        }
        let end = end.ok_or_else(|| unreadable(rest))?;
        entries.push(&rest[1..end]);
        rest = &rest[end + 1..];
    }
    Ok((flags, entries, rest))
}

/// One access control entry: `type;flags;rights;object;inherited object;trustee[;condition]`.
struct Ace<'a> {
    grants: bool,
    inherit_only: bool,
    mask: u32,
    trustee: &'a str,
}

impl<'a> Ace<'a> {
    fn parse(text: &'a str) -> Result<Self, NotPrivate> {
        let fields: Vec<&str> = text.splitn(7, ';').collect();
        let [kind, flags, rights, _, _, trustee, ..] = fields[..] else {
            return Err(unreadable(text));
        };
        Ok(Ace {
            // Allow entries, plain, object, callback ("XA") or resource ("ZA").
            grants: matches!(kind, "A" | "OA" | "XA" | "ZA"),
            inherit_only: two_letter_codes(flags).any(|flag| flag == "IO"),
            mask: access_mask(rights).ok_or_else(|| unreadable(text))?,
            trustee,
        })
    }
}

fn two_letter_codes(text: &str) -> impl Iterator<Item = &str> {
    (0..text.len() / 2).filter_map(move |i| text.get(2 * i..2 * i + 2))
}

/// The access mask of an SDDL rights field: hex (`0x1f01ff`) or two-letter codes (`FRFW`).
/// Codes this table lacks map to everything, so an unknown right is treated as risky.
fn access_mask(rights: &str) -> Option<u32> {
    if let Some(hex) = rights
        .strip_prefix("0x")
        .or_else(|| rights.strip_prefix("0X"))
    {
        return u32::from_str_radix(hex, 16).ok();
    }
    // Codes are pairs of ASCII letters: anything else would split inside a character, and a
    // pair skipped for it would grant nothing, failing open.
    if !rights.len().is_multiple_of(2) || !rights.is_ascii() {
        return None;
    }
    Some(two_letter_codes(rights).fold(0, |mask, code| {
        mask | match code {
            "GA" => GENERIC_ALL,
            "GR" => GENERIC_READ,
            "GW" => GENERIC_WRITE,
            "GX" => 0x2000_0000,
            "FA" => 0x1f_01ff,
            "FR" => 0x12_0089,
            "FW" => 0x12_0116,
            "FX" => 0x12_00a0,
            "RC" => 0x2_0000,
            "SD" => DELETE,
            "WD" => WRITE_DAC,
            "WO" => WRITE_OWNER,
            // Directory-service names Windows also uses for a file's low bits.
            "CC" => 0x1,
            "DC" => 0x2,
            "LC" => 0x4,
            "SW" => 0x8,
            "RP" => 0x10,
            "WP" => 0x20,
            "DT" => 0x40,
            "LO" => 0x80,
            "CR" => 0x100,
            _ => u32::MAX,
        }
    }))
}

/// The SID behind the aliases that matter here; others stay as they are (and so are untrusted).
fn expand_alias(sid: &str) -> &str {
    match sid {
        "SY" => SYSTEM,
        "BA" => ADMINISTRATORS,
        other => other,
    }
}

/// A SID with the name an administrator knows it by, where it is well known.
fn describe(sid: &str) -> String {
    let name = match sid {
        "WD" | "S-1-1-0" => "Everyone",
        "AU" | "S-1-5-11" => "Authenticated Users",
        "BU" | "S-1-5-32-545" => "the Users group",
        "BG" | "S-1-5-32-546" => "the Guests group",
        "IU" | "S-1-5-4" => "Interactive users",
        "AN" | "S-1-5-7" => "Anonymous",
        _ => return sid.to_string(),
    };
    format!("{name} ({sid})")
}

fn unreadable(at: &str) -> NotPrivate {
    let shown: String = at.chars().take(40).collect();
    NotPrivate::Unreadable {
        what: format!("unexpected text at {shown:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "S-1-5-21-1004336348-1177238915-682003330-1000";

    fn judged(sddl: &str) -> Result<(), NotPrivate> {
        judge(sddl, ME)
    }

    #[test]
    fn owner_only_file_as_the_agent_writes_it_is_private() {
        assert_eq!(judged(&format!("O:{ME}G:{ME}D:P(A;;FA;;;{ME})")), Ok(()));
        // Inherited from the data directory's entry.
        assert_eq!(judged(&format!("O:{ME}D:(A;ID;FA;;;{ME})")), Ok(()));
    }

    #[test]
    fn system_and_administrators_are_trusted() {
        let sddl = format!("O:BAG:SYD:PAI(A;;FA;;;SY)(A;;FA;;;BA)(A;;0x1f01ff;;;{ME})");
        assert_eq!(judged(&sddl), Ok(()));
        assert_eq!(judged("O:SYD:(A;;FA;;;S-1-5-18)"), Ok(()));
    }

    #[test]
    fn a_file_owned_by_someone_else_is_refused() {
        let other = "S-1-5-21-1004336348-1177238915-682003330-1001";
        assert_eq!(
            judged(&format!("O:{other}D:P(A;;FA;;;{ME})")),
            Err(NotPrivate::ForeignOwner {
                owner: other.to_string()
            })
        );
    }

    #[test]
    fn read_access_for_everyone_or_users_is_refused() {
        for (trustee, rights) in [("WD", "FR"), ("BU", "0x120089"), ("AU", "GR"), ("IU", "CC")] {
            let sddl = format!("O:{ME}D:P(A;;FA;;;{ME})(A;;{rights};;;{trustee})");
            assert_eq!(
                judged(&sddl),
                Err(NotPrivate::OpenTo {
                    trustee: trustee.to_string()
                }),
                "{sddl}"
            );
        }
    }

    #[test]
    fn write_or_delete_or_acl_changes_by_others_are_refused() {
        for rights in ["FW", "GW", "SD", "WD", "WO", "0x2", "GA"] {
            let sddl = format!("O:{ME}D:(A;;FA;;;{ME})(A;;{rights};;;WD)");
            assert!(judged(&sddl).is_err(), "{sddl}");
        }
    }

    #[test]
    fn harmless_or_inapplicable_entries_are_accepted() {
        // Reading attributes and synchronising reveal nothing of the secret.
        let attributes = format!("O:{ME}D:(A;;FA;;;{ME})(A;;0x100080;;;WD)");
        assert_eq!(judged(&attributes), Ok(()));
        // A deny entry grants nothing; an inherit-only one does not apply to the file.
        let deny = format!("O:{ME}D:(D;;FA;;;WD)(A;;FA;;;{ME})(A;OICIIO;FA;;;BU)");
        assert_eq!(judged(&deny), Ok(()));
    }

    #[test]
    fn a_missing_or_null_access_list_is_refused() {
        assert_eq!(judged(&format!("O:{ME}")), Err(NotPrivate::NoAccessList));
        assert_eq!(
            judged(&format!("O:{ME}D:NO_ACCESS_CONTROL")),
            Err(NotPrivate::NoAccessList)
        );
    }

    #[test]
    fn an_empty_access_list_is_private() {
        // Nobody may open it but the owner, whose implicit rights suffice to fix it.
        assert_eq!(judged(&format!("O:{ME}D:P")), Ok(()));
        assert_eq!(judged(&format!("O:{ME}D:PS:(AU;FA;FA;;;WD)")), Ok(()));
    }

    #[test]
    fn unknown_rights_and_garbage_fail_closed() {
        let unknown = format!("O:{ME}D:(A;;QQ;;;WD)");
        assert_eq!(
            judged(&unknown),
            Err(NotPrivate::OpenTo {
                trustee: "WD".to_string()
            })
        );
        for garbage in [
            "",
            "O:",
            "X:foo",
            &format!("O:{ME}D:(A;;FA;;;WD"),
            &format!("O:{ME}D:(A;;FA)"),
            &format!("O:{ME}D:(A;;0xZZ;;;WD)"),
            // Non-ASCII where letters belong: refused, never a panic or a skipped right.
            &format!("O:{ME}D:Pé:(A;;FA;;;WD)"),
            &format!("O:{ME}D:(A;;Géx;;;WD)"),
        ] {
            assert!(judged(garbage).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn conditional_entries_with_nested_parentheses_are_read() {
        let sddl = format!("O:{ME}D:(A;;FA;;;{ME})(XA;;FR;;;WD;(@User.x == 1))");
        assert_eq!(
            judged(&sddl),
            Err(NotPrivate::OpenTo {
                trustee: "WD".to_string()
            })
        );
    }

    #[test]
    fn messages_name_well_known_trustees() {
        let error = NotPrivate::OpenTo {
            trustee: "WD".to_string(),
        };
        assert_eq!(
            error.to_string(),
            "its access list lets Everyone (WD) use it"
        );
    }
}
