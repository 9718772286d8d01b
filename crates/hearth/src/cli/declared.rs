//! `--device-profile FILE`: this node stands in for a declared device. The engine is held to
//! the declared memory and runs at the declared compute share; outputs say so.

use super::devices::measured_cpu;
use anyhow::Context;
use hearth_device::DeviceProfile;
use serde_json::json;
use std::path::{Path, PathBuf};

pub struct Declared {
    pub profile: DeviceProfile,
    pub path: PathBuf,
    pub compute_share: f64,
    /// Where the share came from, for people reading the output.
    pub share_basis: String,
}

impl Declared {
    /// Reads the profile; when it gives no compute share, derives one from the bandwidth
    /// measured here (measuring once if the registry has no figures for this machine).
    pub fn load(path: &Path) -> anyhow::Result<Declared> {
        let profile = DeviceProfile::load(path)?;
        let (compute_share, share_basis) = match profile.compute_share {
            Some(s) => (s, "declared".to_string()),
            None => {
                let lookup = measured_cpu(false).context(
                    "the device profile gives no compute_share, so it is derived from this \
                     machine's measured bandwidth, which could not be measured",
                )?;
                let m = &lookup.entry.measurement;
                let share = profile
                    .compute_share(Some(m))
                    .context("this machine's measured bandwidth is not a positive number")?;
                (
                    share,
                    format!(
                        "declared {:.1} GB/s over {:.1} GB/s measured here",
                        profile.bandwidth_gbs, m.bandwidth_gbs
                    ),
                )
            }
        };
        Ok(Declared {
            profile,
            path: path.to_path_buf(),
            compute_share,
            share_basis,
        })
    }

    /// One line for people: what this node pretends to be.
    pub fn summary(&self) -> String {
        let p = &self.profile;
        format!(
            "declared device `{}` ({}): {} {}, {:.2} GiB memory limit, compute share {:.3} ({})",
            p.name,
            self.path.display(),
            p.backend,
            p.precisions.join("/"),
            p.memory_gib,
            self.compute_share,
            self.share_basis
        )
    }

    pub fn json(&self) -> serde_json::Value {
        let p = &self.profile;
        json!({
            "declared": true,
            "profile": self.path.display().to_string(),
            "name": p.name,
            "backend": p.backend,
            "precisions": p.precisions,
            "memory_budget_bytes": p.memory_bytes(),
            "bandwidth_gbs": p.bandwidth_gbs,
            "tflops": p.tflops,
            "thermal_headroom": p.thermal_headroom,
            "on_battery": p.on_battery,
            "compute_share": self.compute_share,
            "compute_share_basis": self.share_basis,
            "thermal": p.thermal.as_ref().map(|t| json!({
                "idle_temp_c": t.idle_temp_c,
                "heat_rate": t.heat_rate,
                "cool_rate": t.cool_rate,
                "threshold_c": t.threshold_c,
            })),
        })
    }
}
