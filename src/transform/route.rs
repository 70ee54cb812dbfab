//! What one sink receives of an event: the pipeline's `[[transforms]]` first (unless the sink
//! says `pipeline_transforms = false`), then the sink's own `when` and `transforms`. The runner
//! applies the two stages in different tasks; everything that asks the question offline (the
//! dry run, reconciliation, `verify --against-api`, `auditship transform`) asks it here.

use auditship_sink::Event;

use super::{Chain, Outcome};

/// Which stage decided an event's fate for a sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The pipeline's `[[transforms]]` (step indexes are the pipeline chain's).
    Pipeline,
    /// The sink's route and transforms (step indexes are the sink chain's).
    Sink,
}

/// What `sink` (its chain) receives of `event`, given what the pipeline's chain made of it
/// (computed once per event for every sink that takes it), or `None` for a sink that takes
/// events as received.
pub fn for_sink(event: &Event, after_pipeline: Option<&Outcome>, sink: &mut Chain) -> (Stage, Outcome) {
    let Some(after_pipeline) = after_pipeline else {
        return (Stage::Sink, sink.apply(event));
    };
    match after_pipeline {
        Outcome::Keep(shaped) => (Stage::Sink, sink.apply(shaped)),
        Outcome::Drop { step } => (Stage::Pipeline, Outcome::Drop { step: *step }),
        Outcome::Fail(why) => (Stage::Pipeline, Outcome::Fail(why.clone())),
    }
}
