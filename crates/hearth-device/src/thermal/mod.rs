//! Thermal model, governor and temperature sensors.

pub mod governor;
pub mod model;
pub mod sysfs;
