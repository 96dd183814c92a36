//! Validation of item registrations (`POST /v1/items`) and SLA classes (`PUT /v1/sla-classes`).
//!
//! A request is all or nothing: the first bad field is reported by its JSON path
//! (`items[3].sla_due_ms`) and nothing is stored.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

/// Most items in one registration call.
pub const MAX_ITEMS_PER_CALL: usize = 1_000;
/// Most SLA classes in one call (and per tenant, in practice).
pub const MAX_CLASSES_PER_CALL: usize = 200;
pub const MAX_ITEM_ID_LEN: usize = 128;
pub const MAX_QUEUE_LEN: usize = 64;
pub const MAX_CUSTOMER_REF_LEN: usize = 128;
pub const MAX_CLASS_LEN: usize = 64;
pub const MAX_PRIORITY: u8 = 9;
/// How far from now a due time may be (either way): 400 days, like event timestamps.
pub const MAX_DUE_DISTANCE_MS: u64 = 400 * 86_400_000;
/// Shortest and longest SLA class target.
pub const MIN_CLASS_TARGET_MS: u64 = 60_000;
pub const MAX_CLASS_TARGET_MS: u64 = MAX_DUE_DISTANCE_MS;

/// `POST /v1/items`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterItems {
    pub items: Vec<NewItem>,
}

/// One item to register (or re-register: the newest registration wins).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewItem {
    pub item_id: String,
    #[serde(default)]
    pub queue: String,
    /// 0 (default) to 9; higher is more urgent.
    #[serde(default)]
    pub priority: u8,
    /// When the SLA is due (ms since the epoch); give this or `sla_class`, or neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sla_due_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sla_class: Option<String>,
    #[serde(default)]
    pub customer_ref: String,
}

/// `PUT /v1/sla-classes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutSlaClasses {
    pub classes: Vec<SlaClass>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SlaClass {
    pub sla_class: String,
    /// How long after registration an item of this class is due.
    pub target_ms: u64,
}

/// The SLA an accepted item has.
#[derive(Debug, Clone, PartialEq)]
pub enum Sla {
    None,
    Due(u64),
    /// Due `target_ms` after registration.
    Class {
        name: String,
        target_ms: u64,
    },
}

/// A field that breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn err(field: String, message: impl Into<String>) -> FieldError {
    FieldError {
        field,
        message: message.into(),
    }
}

fn item_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.:/#".contains(c)
}

fn queue_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_. :/".contains(c)
}

fn class_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || "-_".contains(c)
}

/// An item id as registrations accept it: 1–128 characters of `A-Z a-z 0-9 - _ . : / #`.
pub fn check_item_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ITEM_ID_LEN || !id.chars().all(item_id_char) {
        return Err(format!(
            "item_id must be 1-{MAX_ITEM_ID_LEN} characters of A-Z a-z 0-9 - _ . : / #"
        ));
    }
    Ok(())
}

/// An item id as lookups accept it: what agents may report (1–128 bytes, no control
/// characters, not blank).
pub fn check_lookup_id(id: &str) -> Result<(), String> {
    if id.trim().is_empty() || id.len() > MAX_ITEM_ID_LEN || id.chars().any(char::is_control) {
        return Err(format!(
            "item id must be 1-{MAX_ITEM_ID_LEN} bytes without control characters"
        ));
    }
    Ok(())
}

pub fn check_class_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_CLASS_LEN || !name.chars().all(class_char) {
        return Err(format!(
            "sla_class must be 1-{MAX_CLASS_LEN} characters of a-z 0-9 - _"
        ));
    }
    Ok(())
}

/// Checks every item; `classes` are the tenant's SLA classes (name → target). Returns each
/// item's SLA, in order.
pub fn validate_items(
    request: &RegisterItems,
    classes: &HashMap<String, u64>,
    now_ms: u64,
) -> Result<Vec<Sla>, FieldError> {
    if request.items.is_empty() || request.items.len() > MAX_ITEMS_PER_CALL {
        return Err(err(
            "items".into(),
            format!("give 1-{MAX_ITEMS_PER_CALL} items per call"),
        ));
    }
    let mut seen = HashSet::new();
    let mut slas = Vec::with_capacity(request.items.len());
    for (i, item) in request.items.iter().enumerate() {
        let f = |name: &str| format!("items[{i}].{name}");
        check_item_id(&item.item_id).map_err(|m| err(f("item_id"), m))?;
        if !seen.insert(item.item_id.as_str()) {
            return Err(err(
                f("item_id"),
                format!("item {} appears twice in this call", item.item_id),
            ));
        }
        let q = &item.queue;
        if q.len() > MAX_QUEUE_LEN || !q.chars().all(queue_char) || q.trim() != q {
            return Err(err(
                f("queue"),
                format!("queue must be at most {MAX_QUEUE_LEN} characters of A-Z a-z 0-9 - _ . : / and inner spaces"),
            ));
        }
        if item.priority > MAX_PRIORITY {
            return Err(err(
                f("priority"),
                format!("priority must be 0-{MAX_PRIORITY}"),
            ));
        }
        let c = &item.customer_ref;
        if c.len() > MAX_CUSTOMER_REF_LEN || c.chars().any(char::is_control) || c.trim() != c {
            return Err(err(
                f("customer_ref"),
                format!("customer_ref must be at most {MAX_CUSTOMER_REF_LEN} bytes, no control characters or outer spaces"),
            ));
        }
        let sla = match (item.sla_due_ms, &item.sla_class) {
            (Some(_), Some(_)) => {
                return Err(err(
                    f("sla_class"),
                    "give sla_due_ms or sla_class, not both",
                ))
            }
            (None, None) => Sla::None,
            (Some(due), None) => {
                if due.abs_diff(now_ms) > MAX_DUE_DISTANCE_MS {
                    return Err(err(
                        f("sla_due_ms"),
                        "sla_due_ms must be a time (ms since the epoch) within 400 days of now",
                    ));
                }
                Sla::Due(due)
            }
            (None, Some(name)) => {
                check_class_name(name).map_err(|m| err(f("sla_class"), m))?;
                let target_ms = *classes.get(name).ok_or_else(|| {
                    err(
                        f("sla_class"),
                        format!("unknown SLA class {name:?}: define it with PUT /v1/sla-classes"),
                    )
                })?;
                Sla::Class {
                    name: name.clone(),
                    target_ms,
                }
            }
        };
        slas.push(sla);
    }
    Ok(slas)
}

pub fn validate_classes(request: &PutSlaClasses) -> Result<(), FieldError> {
    if request.classes.is_empty() || request.classes.len() > MAX_CLASSES_PER_CALL {
        return Err(err(
            "classes".into(),
            format!("give 1-{MAX_CLASSES_PER_CALL} classes per call"),
        ));
    }
    let mut seen = HashSet::new();
    for (i, class) in request.classes.iter().enumerate() {
        check_class_name(&class.sla_class)
            .map_err(|m| err(format!("classes[{i}].sla_class"), m))?;
        if !seen.insert(class.sla_class.as_str()) {
            return Err(err(
                format!("classes[{i}].sla_class"),
                "class appears twice in this call",
            ));
        }
        if !(MIN_CLASS_TARGET_MS..=MAX_CLASS_TARGET_MS).contains(&class.target_ms) {
            return Err(err(
                format!("classes[{i}].target_ms"),
                "target_ms must be between 1 minute and 400 days",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn item(id: &str) -> NewItem {
        NewItem {
            item_id: id.into(),
            queue: "motor".into(),
            priority: 1,
            sla_due_ms: None,
            sla_class: None,
            customer_ref: "C-1".into(),
        }
    }

    fn check(items: Vec<NewItem>) -> Result<Vec<Sla>, FieldError> {
        let classes = HashMap::from([("gold".to_string(), 3_600_000)]);
        validate_items(&RegisterItems { items }, &classes, NOW)
    }

    fn field(items: Vec<NewItem>) -> String {
        check(items).unwrap_err().field
    }

    #[test]
    fn good_items_pass_with_their_sla() {
        let mut a = item("CLM-1");
        a.sla_due_ms = Some(NOW + 1);
        let mut b = item("ORD/2#x");
        b.sla_class = Some("gold".into());
        let slas = check(vec![a, b, item("c.3")]).unwrap();
        assert_eq!(
            slas,
            vec![
                Sla::Due(NOW + 1),
                Sla::Class {
                    name: "gold".into(),
                    target_ms: 3_600_000
                },
                Sla::None
            ]
        );
    }

    #[test]
    fn the_bad_field_is_named_by_path() {
        let mut bad = item("d");
        bad.sla_due_ms = Some(5);
        assert_eq!(
            field(vec![item("a"), item("b"), item("c"), bad]),
            "items[3].sla_due_ms"
        );
        assert_eq!(field(vec![item("a b")]), "items[0].item_id");
        assert_eq!(field(vec![item(""), item("x")]), "items[0].item_id");
        assert_eq!(field(vec![item(&"x".repeat(129))]), "items[0].item_id");
        assert_eq!(field(vec![item("a"), item("a")]), "items[1].item_id");
        let mut q = item("a");
        q.queue = "x\ny".into();
        assert_eq!(field(vec![q]), "items[0].queue");
        let mut p = item("a");
        p.priority = 10;
        assert_eq!(field(vec![p]), "items[0].priority");
        let mut c = item("a");
        c.customer_ref = "x".repeat(129);
        assert_eq!(field(vec![c]), "items[0].customer_ref");
        let mut both = item("a");
        both.sla_due_ms = Some(NOW);
        both.sla_class = Some("gold".into());
        assert_eq!(field(vec![both]), "items[0].sla_class");
        let mut unknown = item("a");
        unknown.sla_class = Some("platinum".into());
        assert_eq!(field(vec![unknown]), "items[0].sla_class");
    }

    #[test]
    fn due_time_must_be_within_400_days() {
        let mut ok = item("a");
        ok.sla_due_ms = Some(NOW - MAX_DUE_DISTANCE_MS);
        assert!(check(vec![ok.clone()]).is_ok());
        ok.sla_due_ms = Some(NOW + MAX_DUE_DISTANCE_MS + 1);
        assert_eq!(field(vec![ok]), "items[0].sla_due_ms");
    }

    #[test]
    fn item_count_is_bounded() {
        assert_eq!(field(vec![]), "items");
        let many: Vec<NewItem> = (0..=MAX_ITEMS_PER_CALL)
            .map(|i| item(&format!("i{i}")))
            .collect();
        assert_eq!(field(many), "items");
        let max: Vec<NewItem> = (0..MAX_ITEMS_PER_CALL)
            .map(|i| item(&format!("i{i}")))
            .collect();
        assert!(check(max).is_ok());
    }

    #[test]
    fn classes_are_validated() {
        let ok = PutSlaClasses {
            classes: vec![SlaClass {
                sla_class: "gold".into(),
                target_ms: 3_600_000,
            }],
        };
        assert!(validate_classes(&ok).is_ok());
        let bad = PutSlaClasses {
            classes: vec![SlaClass {
                sla_class: "Gold".into(),
                target_ms: 3_600_000,
            }],
        };
        assert_eq!(
            validate_classes(&bad).unwrap_err().field,
            "classes[0].sla_class"
        );
        let short = PutSlaClasses {
            classes: vec![SlaClass {
                sla_class: "x".into(),
                target_ms: 1,
            }],
        };
        assert_eq!(
            validate_classes(&short).unwrap_err().field,
            "classes[0].target_ms"
        );
    }

    #[test]
    fn lookup_ids_accept_what_agents_send() {
        assert!(check_lookup_id("Claim 42 (motor)").is_ok());
        assert!(check_lookup_id(" ").is_err());
        assert!(check_lookup_id("a\tb").is_err());
    }
}
