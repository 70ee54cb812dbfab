//! Operations on a pipeline besides running it, callable as a library: a backfill's lifecycle
//! (named jobs, resumable windows). Reconciliation ([`crate::reconcile`]) and `verify`
//! ([`crate::verify`]) are operations of the same kind; they keep their own modules.

pub mod backfill;
