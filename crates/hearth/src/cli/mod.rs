pub mod bench;
mod load;
pub mod logprobs;
pub mod model;
mod progress;
pub mod run;
pub mod tokenize;
