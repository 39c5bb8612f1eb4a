//! The file layer under the log.
//!
//! Every byte the log reads or writes, every file it creates, removes or renames and every
//! fsync it issues goes through [`Vfs`] and [`VfsFile`]. Production uses [`StdFs`]; tests use
//! [`fault::FaultFs`], an in-memory file system that can fail operations on demand and, on a
//! simulated power loss, drops or tears everything that was not yet synced.

pub mod fault;
mod std_fs;

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

pub use std_fs::StdFs;

/// How [`Vfs::open`] opens a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Open an existing file for reading only.
    Read,
    /// Open an existing file for reading and writing.
    ReadWrite,
    /// Create a new file for reading and writing; fails if it exists.
    CreateNew,
}

/// A file system, as far as the log needs one.
///
/// Implementations must be usable from several threads at once.
pub trait Vfs: Send + Sync + fmt::Debug {
    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names (not paths) of the entries of `dir` — files and subdirectories — in no
    /// particular order.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens `path` in `mode`.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn VfsFile>>;
    /// Removes the file at `path`.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Atomically renames `from` to `to`, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the entries of `dir` (creations, removals, renames) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Removes `dir` and everything below it (missing is not an error). Not durable until
    /// the parent directory is synced.
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `dir` for this process; the lock is held until the returned
    /// guard is dropped. Fails with [`io::ErrorKind::WouldBlock`] if another holder has it.
    fn lock_dir(&self, dir: &Path) -> io::Result<Box<dyn DirLock>>;
}

/// A held directory lock; dropping it releases the lock.
pub trait DirLock: Send + Sync + fmt::Debug {}

/// An open file. All I/O is positional, so readers and the writer never share a cursor.
#[allow(clippy::len_without_is_empty)] // a file's length is a size, not a collection's
pub trait VfsFile: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at end of file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`, growing the file if needed.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// The current length of the file in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Truncates or extends the file to `len` bytes (extension reads as zeros).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves disk space for `len` bytes from the start without changing what reads return
    /// beyond the current length (which may grow to `len`, reading as zeros). The default does
    /// nothing, which is always correct.
    fn preallocate(&self, len: u64) -> io::Result<()> {
        let _ = len;
        Ok(())
    }
    /// `fdatasync`: makes the file's contents and length durable.
    fn sync_data(&self) -> io::Result<()>;
    /// `fsync`: makes the file's contents and all of its metadata durable.
    fn sync_all(&self) -> io::Result<()>;
}

impl dyn VfsFile {
    /// Reads exactly `buf.len()` bytes at `offset`, or fails with
    /// [`io::ErrorKind::UnexpectedEof`].
    pub fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = buf.get_mut(n..).unwrap_or_default();
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads as many bytes as are available at `offset`, up to `buf.len()`; returns the count.
    pub fn read_up_to(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            let Some(rest) = buf.get_mut(done..) else {
                break;
            };
            match self.read_at(rest, offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}
