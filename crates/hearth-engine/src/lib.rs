//! Runs layers `[start, end)` of a model on one compute backend.

pub mod quant;
