//! Where downloaded models live.

use super::{CatalogEntry, CatalogError};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Overrides the cache location outright.
pub const MODELS_DIR_ENV: &str = "HEARTH_MODELS_DIR";

/// The model cache directory: `$HEARTH_MODELS_DIR`, else `$XDG_CACHE_HOME/hearth/models`, else
/// `~/.cache/hearth/models`.
pub fn cache_dir() -> Result<PathBuf, CatalogError> {
    let home = std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE"));
    cache_dir_from(
        std::env::var_os(MODELS_DIR_ENV),
        std::env::var_os("XDG_CACHE_HOME"),
        home,
    )
    .ok_or(CatalogError::NoCacheDir)
}

/// The precedence rule of [`cache_dir`] without reading the environment. Empty values count as
/// unset, and a relative `XDG_CACHE_HOME` is ignored as the XDG base-directory spec requires.
pub fn cache_dir_from(
    models_dir: Option<OsString>,
    xdg_cache_home: Option<OsString>,
    home: Option<OsString>,
) -> Option<PathBuf> {
    let non_empty = |v: Option<OsString>| v.filter(|s| !s.is_empty()).map(PathBuf::from);
    if let Some(dir) = non_empty(models_dir) {
        return Some(dir);
    }
    if let Some(xdg) = non_empty(xdg_cache_home).filter(|p| p.is_absolute()) {
        return Some(xdg.join("hearth").join("models"));
    }
    non_empty(home).map(|h| h.join(".cache").join("hearth").join("models"))
}

/// Final location of a catalog entry's file inside `dir`.
pub fn model_path(dir: &Path, entry: &CatalogEntry) -> PathBuf {
    dir.join(entry.file_name)
}

/// Where an unfinished download of `entry` accumulates.
pub fn partial_path(dir: &Path, entry: &CatalogEntry) -> PathBuf {
    dir.join(format!("{}.part", entry.file_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> Option<OsString> {
        Some(OsString::from(s))
    }

    #[test]
    fn precedence() {
        assert_eq!(
            cache_dir_from(os("/m"), os("/x"), os("/h")),
            Some(PathBuf::from("/m"))
        );
        assert_eq!(
            cache_dir_from(None, os("/x"), os("/h")),
            Some(PathBuf::from("/x/hearth/models"))
        );
        assert_eq!(
            cache_dir_from(os(""), os(""), os("/h")),
            Some(PathBuf::from("/h/.cache/hearth/models"))
        );
        assert_eq!(
            cache_dir_from(None, os("relative"), os("/h")),
            Some(PathBuf::from("/h/.cache/hearth/models"))
        );
        assert_eq!(cache_dir_from(None, None, None), None);
    }
}
