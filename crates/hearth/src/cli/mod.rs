pub mod bench;
mod load;
pub mod logprobs;
pub mod model;
pub mod run;
pub mod tokenize;
