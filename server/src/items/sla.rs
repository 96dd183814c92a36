//! SLA state of an item.
//!
//! Rules, in order (documented for users in `docs/status-api.md`):
//! 1. No due time → `none`.
//! 2. Completed: `breached` if completed after the due time, else `on_track`.
//! 3. Open and `now` past the due time → `breached`.
//! 4. Open and the expected completion (ETA) after the due time → `at_risk`.
//! 5. Open and less than 20 % of the SLA window (registration → due) left → `at_risk`.
//! 6. Otherwise `on_track`.
//!
//! Boundaries: completing exactly at the due time is on track; an open item exactly at its due
//! time is at risk (not yet breached); exactly 20 % left is on track.

use serde::Serialize;

/// Share of the SLA window below which an open item is at risk: 1/5 = 20 %.
pub const AT_RISK_DIVISOR: u64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SlaState {
    OnTrack,
    AtRisk,
    Breached,
    None,
}

impl SlaState {
    pub const ALL: [SlaState; 4] = [
        SlaState::OnTrack,
        SlaState::AtRisk,
        SlaState::Breached,
        SlaState::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SlaState::OnTrack => "on_track",
            SlaState::AtRisk => "at_risk",
            SlaState::Breached => "breached",
            SlaState::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<SlaState> {
        SlaState::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// The SLA state at `now_ms`.
///
/// `due_ms`: when the SLA is due (`None`: no SLA). `window_start_ms`: when the SLA clock started
/// (the registration). `completed_ms`: when the item was completed, if it is.
/// `expected_ms`: the ETA of an open item, when one could be estimated.
pub fn sla_state(
    due_ms: Option<u64>,
    window_start_ms: u64,
    completed_ms: Option<u64>,
    expected_ms: Option<u64>,
    now_ms: u64,
) -> SlaState {
    let Some(due) = due_ms else {
        return SlaState::None;
    };
    if let Some(done) = completed_ms {
        return if done > due {
            SlaState::Breached
        } else {
            SlaState::OnTrack
        };
    }
    if now_ms > due {
        return SlaState::Breached;
    }
    if expected_ms.is_some_and(|e| e > due) {
        return SlaState::AtRisk;
    }
    let window = due.saturating_sub(window_start_ms);
    let left = due - now_ms;
    if window == 0 || left * AT_RISK_DIVISOR < window {
        return SlaState::AtRisk;
    }
    SlaState::OnTrack
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: u64 = 1_000_000;
    const DUE: u64 = START + 100_000; // a 100 s window: at risk below 20 s left

    #[test]
    fn no_due_time_is_none() {
        assert_eq!(
            sla_state(None, START, None, Some(u64::MAX), START),
            SlaState::None
        );
        assert_eq!(
            sla_state(None, START, Some(START), None, START),
            SlaState::None
        );
    }

    #[test]
    fn completed_at_or_before_due_is_on_track_after_is_breached() {
        assert_eq!(
            sla_state(Some(DUE), START, Some(DUE), None, DUE + 1_000_000),
            SlaState::OnTrack
        );
        assert_eq!(
            sla_state(Some(DUE), START, Some(DUE + 1), None, DUE + 2),
            SlaState::Breached
        );
    }

    #[test]
    fn open_past_due_is_breached_exactly_at_due_is_at_risk() {
        assert_eq!(
            sla_state(Some(DUE), START, None, None, DUE + 1),
            SlaState::Breached
        );
        assert_eq!(
            sla_state(Some(DUE), START, None, None, DUE),
            SlaState::AtRisk
        );
    }

    #[test]
    fn twenty_percent_left_boundary() {
        // exactly 20 s (20 %) left: on track; 1 ms less: at risk
        assert_eq!(
            sla_state(Some(DUE), START, None, None, DUE - 20_000),
            SlaState::OnTrack
        );
        assert_eq!(
            sla_state(Some(DUE), START, None, None, DUE - 19_999),
            SlaState::AtRisk
        );
        assert_eq!(
            sla_state(Some(DUE), START, None, None, START),
            SlaState::OnTrack
        );
    }

    #[test]
    fn expected_completion_after_due_is_at_risk() {
        assert_eq!(
            sla_state(Some(DUE), START, None, Some(DUE + 1), START),
            SlaState::AtRisk
        );
        assert_eq!(
            sla_state(Some(DUE), START, None, Some(DUE), START),
            SlaState::OnTrack
        );
    }

    #[test]
    fn registered_after_due_is_at_risk_until_it_passes() {
        assert_eq!(
            sla_state(Some(START), START + 5, None, None, START),
            SlaState::AtRisk
        );
    }

    #[test]
    fn names_round_trip() {
        for s in SlaState::ALL {
            assert_eq!(SlaState::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
