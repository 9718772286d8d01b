//! Typed errors: each names the field, device or link at fault, or the size of a shortfall.

use thiserror::Error;

/// A fleet description that cannot be used as given.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum FleetError {
    #[error("fleet file is not valid TOML: {0}")]
    Syntax(String),
    #[error("fleet has no [[device]] entries")]
    NoDevices,
    #[error("device #{index}: `name` is empty")]
    EmptyName { index: usize },
    #[error("device `{name}` is listed more than once (`name` must be unique)")]
    DuplicateDevice { name: String },
    #[error("{owner}: `{field}` must be {rule}, got {value}")]
    BadFigure {
        owner: String,
        field: &'static str,
        value: f64,
        rule: &'static str,
    },
    #[error("device `{device}`: unknown `backend` {value:?} (expected cpu, cuda, rocm, metal, vulkan or directml)")]
    UnknownBackend { device: String, value: String },
    #[error(
        "device `{device}`: unknown entry {value:?} in `precisions` (expected f32, f16 or bf16)"
    )]
    UnknownPrecision { device: String, value: String },
    #[error("device `{device}`: `precisions` is empty")]
    NoPrecisions { device: String },
    #[error("link #{index}: `{field}` names unknown device `{name}`")]
    UnknownDevice {
        index: usize,
        field: &'static str,
        name: String,
    },
    #[error("link #{index}: device `{name}` is linked to itself")]
    SelfLink { index: usize, name: String },
    #[error("link #{index}: `{a}` and `{b}` are already linked by an earlier [[link]]")]
    DuplicateLink { index: usize, a: String, b: String },
    #[error("fleet has {count} devices; the planner handles at most {max}")]
    TooManyDevices { count: usize, max: usize },
}

/// A model profile the cost model cannot work with.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ProfileError {
    #[error("model profile `{model}`: {field} {problem}")]
    Invalid {
        model: String,
        field: &'static str,
        problem: String,
    },
}

/// A policy with a meaningless setting.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum PolicyError {
    #[error("policy: `{field}` {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

/// Why no plan came out.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum PlanError {
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("no device can take part: {}", reasons.join("; "))]
    NoUsableDevice { reasons: Vec<String> },
    #[error(
        "model `{model}` does not fit: it needs {} (weights + KV cache for {context} tokens) but the usable devices offer {}, {} short{}",
        gib(*needed), gib(*available), gib(needed.saturating_sub(*available)), excluded_note(excluded)
    )]
    DoesNotFit {
        model: String,
        context: usize,
        needed: u64,
        available: u64,
        excluded: Vec<String>,
    },
    #[error("model `{model}` fits in the fleet's total memory ({} needed, {} usable) but no chain of linked devices can hold it: {detail}", gib(*needed), gib(*available))]
    NoChain {
        model: String,
        needed: u64,
        available: u64,
        detail: String,
    },
    #[error("the search budget ran out before any plan was found; raise the budget")]
    BudgetExhausted,
}

fn excluded_note(excluded: &[String]) -> String {
    if excluded.is_empty() {
        String::new()
    } else {
        format!(" (excluded: {})", excluded.join("; "))
    }
}

/// `1.23 GiB`, the unit every memory message uses.
pub fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}
