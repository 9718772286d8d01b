pub mod bench;
pub mod devices;
mod load;
pub mod logprobs;
pub mod model;
pub mod place;
mod progress;
pub mod run;
pub mod tokenize;
