//! An in-memory, fault-injecting file system for crash and error tests.
//!
//! [`FaultFs`] remembers, per file, the contents as of the last `sync_data`/`sync_all`
//! (the *durable* image) and the list of writes and truncations since; per directory, the
//! entries as of the last `sync_dir` and the creations, removals and renames since. A
//! [`FaultFs::power_loss`] keeps the durable image and, for every operation not yet synced,
//! independently drops it, keeps it, or (for writes) keeps a random subset of its 512-byte
//! sectors — the worst a disk with a volatile cache and a file system with delayed metadata may
//! do. Renames stay atomic (either old or new name), as on journaling file systems. Directories
//! themselves are durable as soon as they are created.
//!
//! Faults on demand: [`FaultFs::crash_after`] cuts the power after N more mutating operations
//! (every operation fails with `EIO` from then on, until [`FaultFs::power_loss`]);
//! [`FaultFs::set_fail_sync`] makes syncs fail; [`FaultFs::set_no_space`] makes writes fail with
//! "no space left on device".

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{DirLock, OpenMode, Vfs, VfsFile};

const SECTOR: u64 = 512;

/// The in-memory fault-injecting file system. Cheap to clone; clones share state.
#[derive(Clone, Default)]
pub struct FaultFs {
    inner: Arc<Mutex<Inner>>,
}

impl fmt::Debug for FaultFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultFs").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    /// Bumped by every power loss; handles from an older generation are dead.
    generation: u64,
    next_ino: u64,
    inodes: HashMap<u64, Inode>,
    dirs: HashMap<PathBuf, Dir>,
    locks: HashSet<PathBuf>,
    /// Mutating operations left before the power is cut.
    crash_in: Option<u64>,
    crashed: bool,
    fail_sync: bool,
    no_space: bool,
    stats: FaultStats,
}

/// Counters of what the file system was asked to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// `write_all_at` calls that succeeded.
    pub writes: u64,
    /// `sync_data`/`sync_all` calls that succeeded.
    pub file_syncs: u64,
    /// `sync_dir` calls that succeeded.
    pub dir_syncs: u64,
    /// Power losses simulated so far.
    pub power_losses: u64,
}

#[derive(Default, Clone)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<DataOp>,
}

#[derive(Clone)]
enum DataOp {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Default)]
struct Dir {
    current: BTreeMap<String, u64>,
    durable: BTreeMap<String, u64>,
    pending: Vec<DirOp>,
}

enum DirOp {
    Link { name: String, ino: u64 },
    Unlink { name: String },
    Rename { from: String, to: String },
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("fault fs: {what}"))
}

impl Inner {
    /// Counts a mutating operation and fails it if the power is (now) out.
    fn mutate(&mut self) -> io::Result<()> {
        self.check_power()?;
        if let Some(left) = self.crash_in.as_mut() {
            if *left == 0 {
                self.crashed = true;
                self.crash_in = None;
                return Err(eio("power cut"));
            }
            *left -= 1;
        }
        Ok(())
    }

    fn check_power(&self) -> io::Result<()> {
        if self.crashed {
            Err(eio("power is off"))
        } else {
            Ok(())
        }
    }

    fn dir_mut(&mut self, dir: &Path) -> io::Result<&mut Dir> {
        self.dirs.get_mut(dir).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no directory {}", dir.display()),
            )
        })
    }
}

fn split(path: &Path) -> io::Result<(PathBuf, String)> {
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad path {}", path.display()),
        )
    })?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok((dir, name.to_owned()))
}

/// A small deterministic PRNG (SplitMix64), so power losses replay from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

fn apply(data: &mut Vec<u8>, op: &DataOp) {
    match op {
        DataOp::Write { offset, bytes } => write_into(data, *offset, bytes),
        DataOp::SetLen(len) => data.resize(usize::try_from(*len).unwrap_or(usize::MAX), 0),
    }
}

fn write_into(data: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    let end = start.saturating_add(bytes.len());
    if data.len() < end {
        data.resize(end, 0);
    }
    if let Some(dst) = data.get_mut(start..end) {
        dst.copy_from_slice(bytes);
    }
}

impl FaultFs {
    /// An empty file system.
    pub fn new() -> Self {
        Self::default()
    }

    /// This file system as the shared handle [`crate::LogConfig`] takes.
    pub fn shared(&self) -> Arc<dyn Vfs> {
        Arc::new(self.clone())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock can only come from a bug in this test helper; keep
        // going with the state as it is rather than cascading panics into every other thread.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Cuts the power after `ops` more mutating operations (writes, truncations, syncs,
    /// creations, removals, renames): that operation and every later one fails.
    pub fn crash_after(&self, ops: u64) {
        self.lock().crash_in = Some(ops);
    }

    /// True once the power has been cut and not yet restored by [`FaultFs::power_loss`].
    pub fn is_crashed(&self) -> bool {
        self.lock().crashed
    }

    /// Cuts the power now.
    pub fn crash(&self) {
        self.lock().crashed = true;
    }

    /// Makes every `sync_data`, `sync_all` and `sync_dir` fail with `EIO` (while `on`).
    pub fn set_fail_sync(&self, on: bool) {
        self.lock().fail_sync = on;
    }

    /// Makes every write that would grow a file fail with "no space left" (while `on`).
    pub fn set_no_space(&self, on: bool) {
        self.lock().no_space = on;
    }

    /// What the file system has done so far.
    pub fn stats(&self) -> FaultStats {
        self.lock().stats
    }

    /// Simulates a power loss and restart: keeps what was synced, and keeps, drops or tears
    /// (by 512-byte sector) each operation that was not, choosing with a PRNG seeded by `seed`.
    /// Every handle opened before becomes unusable; locks are released; faults are cleared.
    pub fn power_loss(&self, seed: u64) {
        let mut rng = Rng(seed);
        let mut g = self.lock();
        let inner = &mut *g;
        // Directory entries first: which names survive decides which inodes survive.
        for dir in inner.dirs.values_mut() {
            let mut entries = std::mem::take(&mut dir.durable);
            for op in std::mem::take(&mut dir.pending) {
                if rng.below(2) == 0 {
                    continue;
                }
                match op {
                    DirOp::Link { name, ino } => {
                        entries.insert(name, ino);
                    }
                    DirOp::Unlink { name } => {
                        entries.remove(&name);
                    }
                    DirOp::Rename { from, to } => {
                        if let Some(ino) = entries.remove(&from) {
                            entries.insert(to, ino);
                        }
                    }
                }
            }
            dir.current = entries.clone();
            dir.durable = entries;
        }
        let live: HashSet<u64> = inner
            .dirs
            .values()
            .flat_map(|d| d.current.values().copied())
            .collect();
        inner.inodes.retain(|ino, _| live.contains(ino));
        for inode in inner.inodes.values_mut() {
            let mut data = std::mem::take(&mut inode.durable);
            for op in std::mem::take(&mut inode.pending) {
                match (rng.below(3), &op) {
                    (0, _) => {}
                    (1, _) | (_, DataOp::SetLen(_)) => apply(&mut data, &op),
                    (_, DataOp::Write { offset, bytes }) => {
                        // Torn: each sector of the write independently made it or not.
                        let mut pos = 0u64;
                        let len = bytes.len() as u64;
                        while pos < len {
                            let abs = offset + pos;
                            let sector_end = ((abs / SECTOR) + 1) * SECTOR;
                            let chunk = (sector_end - abs).min(len - pos);
                            if rng.below(2) == 1 {
                                let s = usize::try_from(pos).unwrap_or(usize::MAX);
                                let e = usize::try_from(pos + chunk).unwrap_or(usize::MAX);
                                if let Some(piece) = bytes.get(s..e) {
                                    write_into(&mut data, abs, piece);
                                }
                            }
                            pos += chunk;
                        }
                    }
                }
            }
            inode.data = data.clone();
            inode.durable = data;
        }
        inner.generation += 1;
        inner.locks.clear();
        inner.crashed = false;
        inner.crash_in = None;
        inner.fail_sync = false;
        inner.no_space = false;
        inner.stats.power_losses += 1;
    }

    /// The current (not necessarily durable) contents of the file at `path`.
    pub fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        let g = self.lock();
        let (dir, name) = split(path)?;
        let ino = g
            .dirs
            .get(&dir)
            .and_then(|d| d.current.get(&name))
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, path.display().to_string()))?;
        Ok(g.inodes
            .get(ino)
            .map(|i| i.data.clone())
            .unwrap_or_default())
    }

    /// Replaces the contents of the file at `path` (creating it), durably. For tests that
    /// damage files on purpose.
    pub fn write_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut g = self.lock();
        let (dir, name) = split(path)?;
        let existing = g.dirs.get(&dir).and_then(|d| d.current.get(&name)).copied();
        let ino = match existing {
            Some(ino) => ino,
            None => {
                g.next_ino += 1;
                let ino = g.next_ino;
                let d = g.dir_mut(&dir)?;
                d.current.insert(name.clone(), ino);
                d.durable.insert(name, ino);
                ino
            }
        };
        g.inodes.insert(
            ino,
            Inode {
                data: bytes.to_vec(),
                durable: bytes.to_vec(),
                pending: Vec::new(),
            },
        );
        Ok(())
    }
}

#[derive(Debug)]
struct FaultFile {
    fs: FaultFs,
    ino: u64,
    generation: u64,
    writable: bool,
}

#[derive(Debug)]
struct FaultLock {
    fs: FaultFs,
    dir: PathBuf,
    generation: u64,
}

impl DirLock for FaultLock {}

impl Drop for FaultLock {
    fn drop(&mut self) {
        let mut g = self.fs.lock();
        if g.generation == self.generation {
            g.locks.remove(&self.dir);
        }
    }
}

impl FaultFile {
    fn with<T>(
        &self,
        mutating: bool,
        f: impl FnOnce(&mut Inner, u64) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut g = self.fs.lock();
        if g.generation != self.generation {
            return Err(eio("stale handle from before a power loss"));
        }
        if mutating {
            if !self.writable {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "file opened read-only",
                ));
            }
            g.mutate()?;
        } else {
            g.check_power()?;
        }
        f(&mut g, self.ino)
    }
}

fn inode(inner: &mut Inner, ino: u64) -> io::Result<&mut Inode> {
    inner
        .inodes
        .get_mut(&ino)
        .ok_or_else(|| eio("inode vanished"))
}

impl VfsFile for FaultFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.with(false, |inner, ino| {
            let data = &inode(inner, ino)?.data;
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(data.len());
            let n = buf.len().min(data.len() - start);
            if let (Some(dst), Some(src)) = (buf.get_mut(..n), data.get(start..start + n)) {
                dst.copy_from_slice(src);
            }
            Ok(n)
        })
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.with(true, |inner, ino| {
            let no_space = inner.no_space;
            let node = inode(inner, ino)?;
            if no_space && offset + buf.len() as u64 > node.data.len() as u64 {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "fault fs: no space left on device",
                ));
            }
            write_into(&mut node.data, offset, buf);
            node.pending.push(DataOp::Write {
                offset,
                bytes: buf.to_vec(),
            });
            inner.stats.writes += 1;
            Ok(())
        })
    }

    fn len(&self) -> io::Result<u64> {
        self.with(false, |inner, ino| Ok(inode(inner, ino)?.data.len() as u64))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(true, |inner, ino| {
            let node = inode(inner, ino)?;
            let op = DataOp::SetLen(len);
            apply(&mut node.data, &op);
            node.pending.push(op);
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with(true, |inner, ino| {
            if inner.fail_sync {
                return Err(eio("injected fsync failure"));
            }
            let node = inode(inner, ino)?;
            for op in std::mem::take(&mut node.pending) {
                apply(&mut node.durable, &op);
            }
            inner.stats.file_syncs += 1;
            Ok(())
        })
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync_data()
    }
}

impl Vfs for FaultFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut g = self.lock();
        g.check_power()?;
        let mut p = dir.to_path_buf();
        loop {
            g.dirs.entry(p.clone()).or_default();
            match p.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => p = parent.to_path_buf(),
                _ => break,
            }
        }
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut g = self.lock();
        g.check_power()?;
        let mut names: Vec<String> = g.dir_mut(dir)?.current.keys().cloned().collect();
        names.extend(
            g.dirs
                .keys()
                .filter(|d| d.parent() == Some(dir))
                .filter_map(|d| d.file_name().and_then(|n| n.to_str()).map(str::to_owned)),
        );
        Ok(names)
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        // Simplification: removal of whole directories is durable at once (the log never
        // relies on it; callers that do make their own commit point durable first).
        let mut g = self.lock();
        g.mutate()?;
        g.dirs.retain(|d, _| !d.starts_with(dir));
        Ok(())
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn VfsFile>> {
        let mut g = self.lock();
        let (dir, name) = split(path)?;
        let existing = g.dirs.get(&dir).and_then(|d| d.current.get(&name)).copied();
        let ino = match (mode, existing) {
            (OpenMode::CreateNew, Some(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    path.display().to_string(),
                ));
            }
            (OpenMode::CreateNew, None) => {
                g.mutate()?;
                g.next_ino += 1;
                let ino = g.next_ino;
                g.inodes.insert(ino, Inode::default());
                let d = g.dir_mut(&dir)?;
                d.current.insert(name.clone(), ino);
                d.pending.push(DirOp::Link { name, ino });
                ino
            }
            (_, Some(ino)) => {
                g.check_power()?;
                ino
            }
            (_, None) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    path.display().to_string(),
                ));
            }
        };
        Ok(Arc::new(FaultFile {
            fs: self.clone(),
            ino,
            generation: g.generation,
            writable: mode != OpenMode::Read,
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut g = self.lock();
        g.mutate()?;
        let (dir, name) = split(path)?;
        let d = g.dir_mut(&dir)?;
        if d.current.remove(&name).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                path.display().to_string(),
            ));
        }
        d.pending.push(DirOp::Unlink { name });
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut g = self.lock();
        g.mutate()?;
        let (dir, from_name) = split(from)?;
        let (to_dir, to_name) = split(to)?;
        if dir != to_dir {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "fault fs: rename across directories",
            ));
        }
        let d = g.dir_mut(&dir)?;
        let ino = d
            .current
            .remove(&from_name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, from.display().to_string()))?;
        d.current.insert(to_name.clone(), ino);
        d.pending.push(DirOp::Rename {
            from: from_name,
            to: to_name,
        });
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut g = self.lock();
        g.mutate()?;
        if g.fail_sync {
            return Err(eio("injected fsync failure"));
        }
        let d = g.dir_mut(dir)?;
        d.durable = d.current.clone();
        d.pending.clear();
        g.stats.dir_syncs += 1;
        Ok(())
    }

    fn lock_dir(&self, dir: &Path) -> io::Result<Box<dyn DirLock>> {
        let mut g = self.lock();
        g.check_power()?;
        if !g.locks.insert(dir.to_path_buf()) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is locked by another process", dir.display()),
            ));
        }
        Ok(Box::new(FaultLock {
            fs: self.clone(),
            dir: dir.to_path_buf(),
            generation: g.generation,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs_with_dir() -> (FaultFs, PathBuf) {
        let fs = FaultFs::new();
        let dir = PathBuf::from("/d");
        fs.create_dir_all(&dir).unwrap();
        (fs, dir)
    }

    #[test]
    fn synced_data_and_entries_survive_power_loss() {
        let (fs, dir) = fs_with_dir();
        let f = fs.open(&dir.join("a"), OpenMode::CreateNew).unwrap();
        f.write_all_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(&dir).unwrap();
        for seed in 0..50 {
            fs.power_loss(seed);
            assert_eq!(fs.read_file(&dir.join("a")).unwrap(), b"hello");
        }
    }

    #[test]
    fn unsynced_entry_can_vanish_and_unsynced_bytes_can_tear() {
        let (fs, dir) = fs_with_dir();
        let mut vanished = false;
        let mut torn_or_dropped = false;
        for seed in 0..200 {
            let name = format!("f{seed}");
            let f = fs.open(&dir.join(&name), OpenMode::CreateNew).unwrap();
            f.write_all_at(&[7u8; 2048], 0).unwrap();
            f.sync_data().unwrap();
            let g = fs
                .open(&dir.join("synced"), OpenMode::ReadWrite)
                .or_else(|_| {
                    let g = fs.open(&dir.join("synced"), OpenMode::CreateNew)?;
                    fs.sync_dir(&dir)?;
                    Ok::<_, io::Error>(g)
                });
            let g = g.unwrap();
            let fill = (seed % 250) as u8 + 1;
            g.write_all_at(&[fill; 2048], 0).unwrap();
            fs.power_loss(seed);
            match fs.read_file(&dir.join(&name)) {
                Err(_) => vanished = true,
                Ok(data) => assert_eq!(data, vec![7u8; 2048]),
            }
            let s = fs.read_file(&dir.join("synced")).unwrap();
            if s != vec![fill; 2048] {
                torn_or_dropped = true;
            }
            fs.sync_dir(&dir).unwrap();
        }
        assert!(vanished, "an unsynced directory entry never vanished");
        assert!(torn_or_dropped, "unsynced bytes were never lost");
    }

    #[test]
    fn crash_after_fails_everything_until_power_loss() {
        let (fs, dir) = fs_with_dir();
        let f = fs.open(&dir.join("a"), OpenMode::CreateNew).unwrap();
        fs.crash_after(1);
        f.write_all_at(b"x", 0).unwrap();
        assert!(f.write_all_at(b"y", 1).is_err());
        assert!(f.read_at(&mut [0u8; 1], 0).is_err());
        assert!(fs.is_crashed());
        fs.power_loss(1);
        assert!(
            f.read_at(&mut [0u8; 1], 0).is_err(),
            "old handles must be dead"
        );
    }

    #[test]
    fn renames_are_atomic() {
        for seed in 0..64 {
            let (fs, dir) = fs_with_dir();
            let f = fs.open(&dir.join("tmp"), OpenMode::CreateNew).unwrap();
            f.write_all_at(b"data", 0).unwrap();
            f.sync_data().unwrap();
            fs.sync_dir(&dir).unwrap();
            fs.rename(&dir.join("tmp"), &dir.join("final")).unwrap();
            fs.power_loss(seed);
            let names = fs.list_dir(&dir).unwrap();
            assert_eq!(names.len(), 1, "{names:?}");
        }
    }
}
