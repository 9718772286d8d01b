pub mod bench;
mod load;
pub mod logprobs;
pub mod model;
pub mod place;
mod progress;
pub mod run;
pub mod tokenize;
