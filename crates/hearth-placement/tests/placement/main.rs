//! Integration tests of the planner: random fleets against an independent evaluation of the
//! cost model and a brute-force optimum, the shared and bundled fleets against the baselines,
//! bad input, and (ignored, run by hand) the scale benchmark.

mod bad_input;
mod common;
mod fleets;
mod properties;
mod scale;
