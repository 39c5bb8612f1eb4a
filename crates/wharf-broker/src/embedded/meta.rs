//! Small metadata files (topic and subscription settings), written atomically through the
//! log's file layer: temp file, fsync, rename, directory fsync. A file either exists whole
//! or not at all, so it can serve as the commit point of a creation.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use wharf_log::vfs::{OpenMode, Vfs};

use crate::error::{BrokerError, Result};

fn io(op: &str, path: &Path, e: std::io::Error) -> BrokerError {
    BrokerError::StorageUnavailable(format!("{op} {}: {e}", path.display()))
}

/// Writes `value` as JSON to `dir/name`, atomically and durably.
pub(crate) fn write_json<T: Serialize>(
    vfs: &dyn Vfs,
    dir: &Path,
    name: &str,
    value: &T,
) -> Result<()> {
    let bytes =
        serde_json::to_vec_pretty(value).map_err(|e| BrokerError::Internal(e.to_string()))?;
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let _ = vfs.remove_file(&tmp);
    let file = vfs
        .open(&tmp, OpenMode::CreateNew)
        .map_err(|e| io("create", &tmp, e))?;
    file.write_all_at(&bytes, 0)
        .map_err(|e| io("write", &tmp, e))?;
    file.sync_all().map_err(|e| io("fsync", &tmp, e))?;
    vfs.rename(&tmp, &path)
        .map_err(|e| io("rename", &path, e))?;
    vfs.sync_dir(dir).map_err(|e| io("fsync", dir, e))
}

/// Reads JSON from `path`; `None` if the file does not exist.
pub(crate) fn read_json<T: DeserializeOwned>(vfs: &dyn Vfs, path: &Path) -> Result<Option<T>> {
    let file = match vfs.open(path, OpenMode::Read) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("open", path, e)),
    };
    let len = file.len().map_err(|e| io("stat", path, e))?;
    let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(0)];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| io("read", path, e))?;
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        BrokerError::StorageUnavailable(format!("{} is not valid: {e}", path.display()))
    })
}

/// Removes `dir/name` durably (missing is fine).
pub(crate) fn remove(vfs: &dyn Vfs, dir: &Path, name: &str) -> Result<()> {
    let path = dir.join(name);
    match vfs.remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("remove", &path, e)),
    }
    vfs.sync_dir(dir).map_err(|e| io("fsync", dir, e))
}
