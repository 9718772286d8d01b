//! NVML, loaded with `dlopen` at run time (feature `nvml`, on by default). Without the
//! feature, [`gather`] always reports NVML as unavailable, so the nvidia-smi path takes over.

use super::GpuFacts;

/// NVML loaded and initialised but answered with an error that is not "absent".
#[derive(Debug, thiserror::Error)]
#[error("{call}: {message}")]
pub struct NvmlProbeError {
    pub call: &'static str,
    pub message: String,
}

/// `Ok(None)` when NVML is unavailable (no library, no driver, feature off); otherwise the
/// facts of every GPU it lists.
#[cfg(feature = "nvml")]
pub fn gather() -> Result<Option<Vec<GpuFacts>>, NvmlProbeError> {
    use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
    use nvml_wrapper::error::NvmlError;
    use nvml_wrapper::Nvml;

    let err = |call: &'static str| {
        move |e: NvmlError| NvmlProbeError {
            call,
            message: e.to_string(),
        }
    };
    let nvml = match Nvml::init() {
        Ok(nvml) => nvml,
        // The machine has no NVIDIA driver: the platform is absent, which is not a fault.
        Err(
            NvmlError::LibloadingError(_) | NvmlError::DriverNotLoaded | NvmlError::LibraryNotFound,
        ) => return Ok(None),
        Err(e) => return Err(err("nvmlInit")(e)),
    };
    let driver_version = nvml.sys_driver_version().ok();
    // NVML encodes the CUDA version as 1000·major + 10·minor.
    let cuda_version = nvml
        .sys_cuda_driver_version()
        .ok()
        .map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10));
    let count = nvml.device_count().map_err(err("nvmlDeviceGetCount"))?;
    let mut out = Vec::new();
    for index in 0..count {
        let dev = nvml
            .device_by_index(index)
            .map_err(err("nvmlDeviceGetHandleByIndex"))?;
        let memory = dev.memory_info().map_err(err("nvmlDeviceGetMemoryInfo"))?;
        let architecture = dev
            .architecture()
            .ok()
            .map(|a| a.to_string())
            .filter(|a| a != "Unknown");
        let compute_capability = dev
            .cuda_compute_capability()
            .ok()
            .and_then(|c| Some((u32::try_from(c.major).ok()?, u32::try_from(c.minor).ok()?)));
        out.push(GpuFacts {
            name: dev.name().map_err(err("nvmlDeviceGetName"))?,
            uuid: dev.uuid().map_err(err("nvmlDeviceGetUUID"))?,
            pci_bus_id: dev.pci_info().ok().map(|p| p.bus_id),
            architecture,
            compute_capability,
            memory_total_bytes: memory.total,
            memory_free_bytes: Some(memory.free),
            driver_version: driver_version.clone(),
            cuda_version: cuda_version.clone(),
            temperature_c: dev.temperature(TemperatureSensor::Gpu).ok().map(f64::from),
            // NVML reports milliwatts.
            power_w: dev.power_usage().ok().map(|mw| f64::from(mw) / 1000.0),
            power_limit_w: dev
                .enforced_power_limit()
                .ok()
                .map(|mw| f64::from(mw) / 1000.0),
            utilisation: dev
                .utilization_rates()
                .ok()
                .map(|u| f64::from(u.gpu.min(100)) / 100.0),
        });
    }
    Ok(Some(out))
}

/// Built without NVML: always unavailable.
#[cfg(not(feature = "nvml"))]
pub fn gather() -> Result<Option<Vec<GpuFacts>>, NvmlProbeError> {
    Ok(None)
}

/// Whether this build can load NVML at all.
pub const COMPILED: bool = cfg!(feature = "nvml");
