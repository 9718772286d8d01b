//! The on-disk cache of device measurements, so a node measures itself once per hardware
//! configuration rather than on every start.
//!
//! The file is `$XDG_DATA_HOME/hearth/devices.json` (else `~/.local/share/hearth/devices.json`).
//! An entry is reused only while its hardware fingerprint matches ([`CpuInfo::fingerprint`]).
//! A file that is not valid JSON of the expected shape is a cache, not a record: it is
//! discarded and the device re-measured, and [`Lookup::discarded_corrupt`] says so. Failing to
//! read or write the file is an error.

use crate::bench::{BenchError, Measurement};
use crate::cpu::{CpuInfo, DeviceRecord};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("neither XDG_DATA_HOME nor HOME is set, so there is nowhere to keep devices.json")]
    NoDataDir,
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("encoding the device registry: {0}")]
    Encode(String),
    #[error("measuring: {0}")]
    Measure(#[from] BenchError),
}

const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub fingerprint: String,
    pub record: DeviceRecord,
    pub measurement: Measurement,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    version: u32,
    devices: Vec<Entry>,
}

/// A device with its measurement, and where the measurement came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Lookup {
    pub entry: Entry,
    /// The measurement was read from the file rather than taken now.
    pub cached: bool,
    /// The file existed but could not be understood, and was replaced.
    pub discarded_corrupt: bool,
}

pub struct Registry {
    path: PathBuf,
}

impl Registry {
    /// The registry at its usual place for this user.
    pub fn open_default() -> Result<Registry, RegistryError> {
        let path = data_dir()
            .ok_or(RegistryError::NoDataDir)?
            .join("devices.json");
        Ok(Registry { path })
    }

    /// A registry kept in `path` (tests, or a node told where to keep its state).
    pub fn at(path: impl Into<PathBuf>) -> Registry {
        Registry { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The entry for `cpu`: from the file when its fingerprint matches and `remeasure` is
    /// false, otherwise from `measure`, which is then stored.
    pub fn cpu<F>(
        &self,
        cpu: &CpuInfo,
        remeasure: bool,
        measure: F,
    ) -> Result<Lookup, RegistryError>
    where
        F: FnOnce() -> Result<Measurement, BenchError>,
    {
        let (mut file, discarded_corrupt) = self.load()?;
        let fingerprint = cpu.fingerprint();
        let record = cpu.record();
        if !remeasure {
            if let Some(e) = file.devices.iter().find(|e| e.fingerprint == fingerprint) {
                // Memory available changes from minute to minute; the record is refreshed,
                // only the measurement is reused.
                let entry = Entry {
                    fingerprint,
                    record,
                    measurement: e.measurement.clone(),
                };
                return Ok(Lookup {
                    entry,
                    cached: true,
                    discarded_corrupt,
                });
            }
        }
        let entry = Entry {
            fingerprint,
            record,
            measurement: measure()?,
        };
        // One entry per device id: new hardware under the same id replaces the old figures.
        file.devices.retain(|e| e.record.id != entry.record.id);
        file.devices.push(entry.clone());
        file.version = FORMAT_VERSION;
        self.store(&file)?;
        Ok(Lookup {
            entry,
            cached: false,
            discarded_corrupt,
        })
    }

    fn load(&self) -> Result<(File, bool), RegistryError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((File::default(), false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Ok((File::default(), true))
            }
            Err(source) => {
                return Err(RegistryError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        match serde_json::from_str::<File>(&text) {
            Ok(f) if f.version == FORMAT_VERSION => Ok((f, false)),
            _ => Ok((File::default(), true)),
        }
    }

    fn store(&self, file: &File) -> Result<(), RegistryError> {
        let write_err = |source| RegistryError::Write {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(write_err)?;
        }
        let text =
            serde_json::to_string_pretty(file).map_err(|e| RegistryError::Encode(e.to_string()))?;
        // Write then rename, so a crash or a concurrent reader never sees half a file.
        let tmp = self
            .path
            .with_extension(format!("json.{}.tmp", std::process::id()));
        std::fs::write(&tmp, text).map_err(write_err)?;
        std::fs::rename(&tmp, &self.path).map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            write_err(source)
        })
    }
}

/// `$XDG_DATA_HOME/hearth/devices.json`, else `$HOME/.local/share/hearth/devices.json`.
pub fn default_path(xdg_data_home: Option<PathBuf>, home: Option<PathBuf>) -> Option<PathBuf> {
    data_dir_from(xdg_data_home, home).map(|d| d.join("devices.json"))
}

/// hearth's data directory for this user: `$XDG_DATA_HOME/hearth`, else
/// `$HOME/.local/share/hearth` (empty variables count as unset). Everything a node keeps
/// between runs lives below it.
pub fn data_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    data_dir_from(var("XDG_DATA_HOME"), var("HOME"))
}

fn data_dir_from(xdg_data_home: Option<PathBuf>, home: Option<PathBuf>) -> Option<PathBuf> {
    let base = xdg_data_home.or_else(|| home.map(|h| h.join(".local").join("share")))?;
    Some(base.join("hearth"))
}
