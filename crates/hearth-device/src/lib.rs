//! Compute devices as hearth sees them: the CPU's capabilities parsed from `/proc`
//! ([`cpu`]), micro-benchmarks with the engine's kernels ([`bench`]) and the on-disk cache of
//! their results ([`registry`]); and the thermal model and governor:
//! a first-order RC model fitted online from telemetry ([`thermal::model`]), a governor that
//! keeps a device below its threshold by predicting where the temperature is heading
//! ([`thermal::governor`]), and the sysfs reader that feeds it ([`thermal::sysfs`]).
//! Live telemetry of the CPU ([`telemetry`]) samples memory, utilisation, temperature, power,
//! battery and throttling on a background thread into a bounded channel. GPU probes
//! ([`probe::nvidia`]: NVML or nvidia-smi; [`probe::amd`]: amdgpu sysfs and rocm-smi) describe
//! other devices as [`Accelerator`]s.
//! Everything here is pure except the sysfs and telemetry readers, which only read the files
//! they are pointed at.

pub mod bench;
pub mod cpu;
pub mod declared;
pub mod error;
pub mod probe;
pub mod registry;
pub mod telemetry;
pub mod thermal;

pub use bench::{BenchConfig, BenchError, Measurement};
pub use cpu::{CpuInfo, CpuInfoError, DeviceRecord, ProbeError, SimdFlags};
pub use declared::{DeviceProfile, ProfileError, StandInReading, ThermalProfile, ThermalStandIn};
pub use error::{ConfigError, SampleError, SysfsError};
pub use probe::{Accelerator, Backend, DeviceKind, Discovery, Precision, ProbeWarning, Reading};
pub use registry::{Entry, Lookup, Registry, RegistryError};
pub use telemetry::{Battery, Sampler, SamplerStats, SourceError, TelemetryConfig, ThrottleRule};
pub use thermal::governor::{Decision, Governor, GovernorConfig, Sample, State};
pub use thermal::model::{ModelConfig, RcParams, ThermalModel};
