//! Built without the `vulkan` feature: there is no FFI, so no device is ever found.

use super::{VulkanError, VulkanFacts};

pub(super) fn gather() -> Result<Vec<VulkanFacts>, VulkanError> {
    Ok(Vec::new())
}

pub(super) fn loader_library() -> Option<&'static str> {
    None
}
