//! Item status for the contact center: pure functions from an item's events (and its
//! registration) to what an agent on the phone is shown. No I/O here: [`crate::storage::items`]
//! reads the rows, [`crate::service::items`] builds the documents, [`crate::http::items`] serves
//! them.
//!
//! - [`derive`]: events → status, current step, handler device, times, handle time, touches,
//!   timeline. Events may arrive twice and out of order; derivation dedupes by
//!   `(device_id, seq)` and orders by `(time, device_id, seq)`.
//! - [`sla`]: `on_track` / `at_risk` / `breached` / `none`.
//! - [`eta`]: expected completion from historical handle times of completed items.
//! - [`register`]: validation of item registrations; [`registration`]: a stored one.
//!
//! **Architecture invariant:** every number the status API shows is computed here, from rows
//! deduplicated by identity, so a re-sent batch never changes an answer.

pub mod derive;
pub mod eta;
pub mod register;
pub mod registration;
pub mod sla;

pub use derive::{derive, ItemEvent, ItemState, Occurrence, Status};
pub use eta::{estimate, Eta, EtaMethod, HandleTimeStats};
pub use registration::ItemRegistration;
pub use sla::{sla_state, SlaState};
