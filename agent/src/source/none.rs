//! The empty source: records nothing, so the agent only uploads its own health reports.

use super::{Pulled, Source, SourceError};

/// A source with no events.
#[derive(Debug, Default)]
pub struct NoSource;

impl Source for NoSource {
    fn describe(&self) -> String {
        "none".into()
    }

    async fn pull(&mut self) -> Result<Pulled, SourceError> {
        Ok(Pulled::Exhausted)
    }
}
