//! Compute devices as hearth sees them. This first part holds the thermal model and governor:
//! a first-order RC model fitted online from telemetry ([`thermal::model`]), a governor that
//! keeps a device below its threshold by predicting where the temperature is heading
//! ([`thermal::governor`]), and the sysfs reader that feeds it ([`thermal::sysfs`]).
//! Everything here is pure except the sysfs reader, which only reads the files it is pointed at.

pub mod error;
pub mod thermal;

pub use error::{ConfigError, SampleError, SysfsError};
pub use thermal::governor::{Decision, Governor, GovernorConfig, Sample, State};
pub use thermal::model::{ModelConfig, RcParams, ThermalModel};
