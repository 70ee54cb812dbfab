//! What one sink receives of an event: the pipeline's `[[transforms]]` first (unless the sink
//! says `pipeline_transforms = false`), then the sink's own `when` and `transforms`. The runner
//! applies the two stages in different tasks; everything that asks the question offline (the
//! dry run, reconciliation, `verify --against-api`, `auditship transform`) asks it here.

use auditship_sink::Event;

use super::{Outcome, Transformer};

/// Which stage decided an event's fate for a sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The pipeline's `[[transforms]]` (step indexes count in the pipeline's list).
    Pipeline,
    /// The sink's route and transforms (step indexes count in the sink's list).
    Sink,
}

/// What `sink` (its transformer) receives of `event`, given what the pipeline's transformer made of it
/// (computed once per event for every sink that takes it), or `None` for a sink that takes
/// events as received.
pub fn for_sink(event: &Event, after_pipeline: Option<&Outcome>, sink: &mut Transformer) -> (Stage, Outcome) {
    let Some(after_pipeline) = after_pipeline else {
        return (Stage::Sink, sink.apply(event));
    };
    match after_pipeline {
        Outcome::Keep(shaped) => (Stage::Sink, sink.apply(shaped)),
        Outcome::Drop { step } => (Stage::Pipeline, Outcome::Drop { step: *step }),
        Outcome::Fail(why) => (Stage::Pipeline, Outcome::Fail(why.clone())),
    }
}
