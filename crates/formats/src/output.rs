//! Outputs that appear at their target path only when complete.
//!
//! Data is written to a temporary sibling (`.NAME.qs-partial-PID`) and renamed over the target
//! at [`AtomicFile::commit`]; dropping an uncommitted output removes the temporary. An existing
//! target is refused unless `force` is set; a folder is never replaced by a file, and no output
//! may be (or, for a folder, hold) an input ([`check_not_input`]).
//!
//! Every live temporary is in a process-wide registry, so that a front end's signal handler can
//! remove them all before exiting ([`remove_temporaries_then`]). A process killed outright
//! (SIGKILL, power loss) leaves its temporary; the next output to the same target removes the
//! temporaries of that target whose process is gone ([`remove_stale`]).

use crate::error::{io_err, FormatError, Result};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// The infix of every temporary name: `.NAME.qs-partial-PID`.
pub const PARTIAL: &str = ".qs-partial-";

fn temp_sibling(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    parent_of(target).join(format!(".{name}{PARTIAL}{}", std::process::id()))
}

/// The folder a path is in (`.` for a bare name).
fn parent_of(p: &Path) -> &Path {
    p.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

// ---------------------------------------------------------------------------------------------
// The registry of live temporaries

/// Temporaries created by this process and not yet committed or removed.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn live() -> MutexGuard<'static, Vec<PathBuf>> {
    // a panic while holding the lock leaves a consistent list (push / remove only)
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

fn unregister(list: &mut Vec<PathBuf>, p: &Path) {
    if let Some(i) = list.iter().position(|x| x == p) {
        list.swap_remove(i);
    }
}

/// Removes a temporary file or folder, whichever it is (best effort).
fn remove_path(p: &Path) {
    match p.symlink_metadata() {
        Ok(m) if m.is_dir() => {
            // another thread may still be creating files inside: try again a few times
            for _ in 0..3 {
                if std::fs::remove_dir_all(p).is_ok() || !p.exists() {
                    break;
                }
            }
        }
        Ok(_) => {
            let _ = std::fs::remove_file(p);
        }
        Err(_) => {}
    }
}

/// Removes every live temporary of this process, then runs `f` with the registry still locked,
/// so no output can be committed (renamed into place) from a temporary already removed. Meant
/// for a signal handler: `remove_temporaries_then(|| std::process::exit(130))`.
pub fn remove_temporaries_then<T>(f: impl FnOnce() -> T) -> T {
    let mut list = live();
    remove_all(&mut list);
    f()
}

fn remove_all(list: &mut Vec<PathBuf>) {
    // folders last: files inside them are removed first, then the folders themselves
    list.sort_by_key(|p| p.is_dir());
    for p in list.iter() {
        remove_path(p);
    }
    list.clear();
}

/// The temporaries this process has live (for tests and diagnostics).
pub fn live_temporaries() -> Vec<PathBuf> {
    live().clone()
}

/// Whether process `pid` is alive. Without `/proc` (not Linux) every process counts as alive,
/// so nothing is removed.
fn pid_alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

/// Removes temporaries left next to `target` by runs that were killed: entries named
/// `.NAME.qs-partial-PID` (NAME the target's name) whose process `PID` no longer exists. A
/// temporary whose process is alive (a run writing the same target right now) is left alone.
/// Best effort: returns what was removed.
pub fn remove_stale(target: &Path) -> Vec<PathBuf> {
    let Some(name) = target.file_name() else {
        return vec![];
    };
    let prefix = format!(".{}{PARTIAL}", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(parent_of(target)) else {
        return vec![];
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let n = e.file_name();
        let Some(pid) = n
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || pid_alive(pid) {
            continue;
        }
        let p = e.path();
        remove_path(&p);
        if p.symlink_metadata().is_err() {
            removed.push(p);
        }
    }
    removed
}

// ---------------------------------------------------------------------------------------------
// Checks made before any work

/// Refuses an existing target unless `force`.
pub fn check_target(target: &Path, force: bool) -> Result<()> {
    if !force && target.symlink_metadata().is_ok() {
        return Err(FormatError::OutputExists {
            path: target.to_path_buf(),
        });
    }
    Ok(())
}

/// [`check_target`] for a file output: besides, a folder at the target is refused even with
/// `force` (a folder is never deleted to put a file in its place).
pub fn check_file_target(target: &Path, force: bool) -> Result<()> {
    if target.symlink_metadata().is_ok_and(|m| m.is_dir()) {
        return Err(FormatError::OutputIsFolder {
            path: target.to_path_buf(),
        });
    }
    check_target(target, force)
}

/// `p` made absolute with symbolic links and `..` resolved, as far as it exists (a target
/// that does not exist yet: its existing ancestors resolved, the rest appended).
pub fn canonical(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) => canonical(parent_of_or_dot(parent)).join(name),
        _ => std::env::current_dir().unwrap_or_default().join(p),
    }
}

fn parent_of_or_dot(p: &Path) -> &Path {
    if p.as_os_str().is_empty() {
        Path::new(".")
    } else {
        p
    }
}

/// Refuses an output target that is one of `inputs` (files or folders) or, for a folder output
/// (`folder`), a folder holding one: writing it would replace or delete an input, with or
/// without `--force`. Paths are compared canonicalized (symbolic links and `..` resolved).
pub fn check_not_input(target: &Path, folder: bool, inputs: &[PathBuf]) -> Result<()> {
    let t = canonical(target);
    for i in inputs {
        let c = canonical(i);
        if c == t || (folder && c.starts_with(&t)) {
            return Err(FormatError::OutputIsInput {
                path: target.to_path_buf(),
                input: i.clone(),
            });
        }
    }
    Ok(())
}

/// Checks up front that a file (a report) can be written at `path` once the work is done: it is
/// not an existing folder, none of `inputs`, not one of `outputs` nor inside one (a folder
/// output), and its folder exists and takes new files (probed by creating and removing the
/// temporary [`write_file`] will use).
pub fn check_writable(path: &Path, inputs: &[PathBuf], outputs: &[PathBuf]) -> Result<()> {
    check_file_target(path, true)?;
    check_not_input(path, false, inputs)?;
    let p = canonical(path);
    for o in outputs {
        if p.starts_with(canonical(o)) {
            return Err(FormatError::File {
                path: path.to_path_buf(),
                msg: format!("is (or is inside) the output {}", o.display()),
            });
        }
    }
    drop(AtomicFile::create(path, true)?);
    Ok(())
}

/// Writes `bytes` to `path` atomically (temporary, then rename), replacing an existing file.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let f = AtomicFile::create(path, true)?;
    f.write_at(0, bytes)?;
    f.set_len(bytes.len() as u64)?;
    f.commit()
}

// ---------------------------------------------------------------------------------------------
// Outputs

/// A file written in place under a temporary name.
#[derive(Debug)]
pub struct AtomicFile {
    target: PathBuf,
    /// The path errors name: the target, or for a file inside an [`AtomicDir`], where it will be
    /// once the folder is committed.
    shown: PathBuf,
    temp: PathBuf,
    file: Option<File>,
    force: bool,
    /// Renamed into place: nothing to remove on drop.
    done: bool,
    /// Bytes written since the kernel was last asked to start writing them back.
    unsynced: std::sync::atomic::AtomicU64,
}

/// How many written bytes [`AtomicFile::write_at`] lets accumulate before it asks the kernel to
/// start their writeback, so that `commit`'s flush finds little left to wait for.
const WRITEBACK_EVERY: u64 = 16 << 20;

impl AtomicFile {
    pub fn create(target: &Path, force: bool) -> Result<AtomicFile> {
        Self::create_shown(target, target, force)
    }

    fn create_shown(target: &Path, shown: &Path, force: bool) -> Result<AtomicFile> {
        check_file_target(target, force).map_err(|e| e.with_path(shown))?;
        remove_stale(target);
        let temp = temp_sibling(target);
        // registered as it is created (the registry locked throughout), so a signal handler
        // removes it whenever the signal comes
        let mut list = live();
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .map_err(io_err(shown))?;
        list.push(temp.clone());
        drop(list);
        Ok(AtomicFile {
            target: target.to_path_buf(),
            shown: shown.to_path_buf(),
            temp,
            file: Some(file),
            force,
            done: false,
            unsynced: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn file(&self) -> &File {
        self.file.as_ref().expect("open until commit")
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Writes `bytes` at absolute `offset`; safe to call from several threads at once. Every
    /// [`WRITEBACK_EVERY`] bytes the kernel is asked to start writing the file back (Linux),
    /// so the flush before the rename overlaps with the run instead of following it.
    pub fn write_at(&self, offset: u64, bytes: &[u8]) -> Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt;
            use std::sync::atomic::Ordering;
            self.file()
                .write_all_at(bytes, offset)
                .map_err(io_err(&self.shown))?;
            let n = bytes.len() as u64;
            if self.unsynced.fetch_add(n, Ordering::Relaxed) + n >= WRITEBACK_EVERY {
                self.unsynced.store(0, Ordering::Relaxed);
                self.start_writeback();
            }
            Ok(())
        }
        #[cfg(not(unix))]
        {
            use std::os::windows::fs::FileExt;
            let mut done = 0;
            while done < bytes.len() {
                let n = self
                    .file()
                    .seek_write(&bytes[done..], offset + done as u64)
                    .map_err(io_err(&self.shown))?;
                done += n;
            }
            Ok(())
        }
    }

    /// Reads `buf.len()` bytes at absolute `offset` (a file used as scratch space and read back
    /// before it is dropped).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt;
            self.file()
                .read_exact_at(buf, offset)
                .map_err(io_err(&self.shown))
        }
        #[cfg(not(unix))]
        {
            use std::os::windows::fs::FileExt;
            let mut done = 0;
            while done < buf.len() {
                let n = self
                    .file()
                    .seek_read(&mut buf[done..], offset + done as u64)
                    .map_err(io_err(&self.shown))?;
                if n == 0 {
                    return Err(io_err(&self.shown)(
                        std::io::ErrorKind::UnexpectedEof.into(),
                    ));
                }
                done += n;
            }
            Ok(())
        }
    }

    /// Asks the kernel to start writing the file's dirty pages back, without waiting (a hint:
    /// errors surface at `commit`'s flush).
    fn start_writeback(&self) {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: a valid open descriptor; offset 0 and length 0 mean the whole file;
            // SYNC_FILE_RANGE_WRITE only initiates writeback of dirty pages
            let _ = unsafe {
                libc::sync_file_range(self.file().as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE)
            };
        }
    }

    /// Sets the final length (the tail after the last tensor is padding).
    pub fn set_len(&self, len: u64) -> Result<()> {
        self.file().set_len(len).map_err(io_err(&self.shown))
    }

    /// Flushes to disk and renames into place. On failure the temporary is removed (on drop).
    pub fn commit(mut self) -> Result<()> {
        let f = self.file.take().expect("open until commit");
        f.sync_all().map_err(io_err(&self.shown))?;
        drop(f);
        // re-check: something may have appeared at the target while we worked
        check_file_target(&self.target, self.force).map_err(|e| e.with_path(&self.shown))?;
        let mut list = live();
        std::fs::rename(&self.temp, &self.target).map_err(io_err(&self.shown))?;
        unregister(&mut list, &self.temp);
        self.done = true;
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.done {
            self.file = None;
            let mut list = live();
            let _ = std::fs::remove_file(&self.temp);
            unregister(&mut list, &self.temp);
        }
    }
}

/// A folder filled under a temporary name, then renamed into place.
#[derive(Debug)]
pub struct AtomicDir {
    target: PathBuf,
    temp: PathBuf,
    force: bool,
    done: bool,
}

impl AtomicDir {
    pub fn create(target: &Path, force: bool) -> Result<AtomicDir> {
        check_target(target, force)?;
        remove_stale(target);
        let temp = temp_sibling(target);
        let mut list = live();
        let _ = std::fs::remove_dir_all(&temp);
        std::fs::create_dir(&temp).map_err(io_err(target))?;
        list.push(temp.clone());
        drop(list);
        Ok(AtomicDir {
            target: target.to_path_buf(),
            temp,
            force,
            done: false,
        })
    }

    /// Where files go while the folder is being built.
    pub fn path(&self) -> &Path {
        &self.temp
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Where `p` (a path inside [`Self::path`]) will be once the folder is committed: the path
    /// to name in messages.
    pub fn shown(&self, p: &Path) -> PathBuf {
        match p.strip_prefix(&self.temp) {
            Ok(rest) if rest.as_os_str().is_empty() => self.target.clone(),
            Ok(rest) => self.target.join(rest),
            Err(_) => p.to_path_buf(),
        }
    }

    /// An [`AtomicFile`] at `name` inside the folder (replacing one there); its errors name
    /// the file under the target.
    pub fn file(&self, name: impl AsRef<Path>) -> Result<AtomicFile> {
        let p = self.temp.join(name);
        AtomicFile::create_shown(&p, &self.shown(&p), true)
    }

    pub fn commit(mut self) -> Result<()> {
        check_target(&self.target, self.force)?;
        let mut list = live();
        if self.force && self.target.symlink_metadata().is_ok() {
            let m = self
                .target
                .symlink_metadata()
                .map_err(io_err(&self.target))?;
            if m.is_dir() {
                std::fs::remove_dir_all(&self.target).map_err(io_err(&self.target))?;
            } else {
                std::fs::remove_file(&self.target).map_err(io_err(&self.target))?;
            }
        }
        std::fs::rename(&self.temp, &self.target).map_err(io_err(&self.target))?;
        unregister(&mut list, &self.temp);
        self.done = true;
        Ok(())
    }
}

impl Drop for AtomicDir {
    fn drop(&mut self) {
        if !self.done {
            let mut list = live();
            let _ = std::fs::remove_dir_all(&self.temp);
            unregister(&mut list, &self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn nothing_at_target_until_commit() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("o.bin");
        let a = AtomicFile::create(&t, false).unwrap();
        a.file().write_all(b"hi").unwrap();
        assert!(!t.exists());
        drop(a);
        assert!(!t.exists());
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            0,
            "temp removed"
        );
        let a = AtomicFile::create(&t, false).unwrap();
        a.file().write_all(b"hi").unwrap();
        a.commit().unwrap();
        assert_eq!(std::fs::read(&t).unwrap(), b"hi");
        assert!(matches!(
            AtomicFile::create(&t, false),
            Err(FormatError::OutputExists { .. })
        ));
        assert!(AtomicFile::create(&t, true).is_ok());
    }

    /// Another run finished first: commit fails ("already exists") and the temporary goes.
    #[test]
    fn failed_commit_removes_the_temporary() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("o.gguf");
        let a = AtomicFile::create(&t, false).unwrap();
        a.write_at(0, &[7; 4096]).unwrap();
        std::fs::write(&t, b"theirs").unwrap();
        let e = a.commit().unwrap_err();
        assert!(matches!(e, FormatError::OutputExists { .. }), "{e}");
        assert_eq!(names(d.path()), ["o.gguf"]);
        assert_eq!(std::fs::read(&t).unwrap(), b"theirs");
        // a folder appeared at a file target: refused even with force, temporary removed
        let t = d.path().join("f.gguf");
        let a = AtomicFile::create(&t, true).unwrap();
        std::fs::create_dir(&t).unwrap();
        let e = a.commit().unwrap_err();
        assert!(matches!(e, FormatError::OutputIsFolder { .. }), "{e}");
        assert_eq!(names(d.path()), ["f.gguf", "o.gguf"]);
    }

    #[test]
    fn a_folder_is_never_replaced_by_a_file() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("o.gguf");
        std::fs::create_dir(&t).unwrap();
        std::fs::write(t.join("keep"), b"x").unwrap();
        for force in [false, true] {
            let e = AtomicFile::create(&t, force).unwrap_err();
            assert!(matches!(e, FormatError::OutputIsFolder { .. }), "{e}");
            assert!(e.to_string().contains("o.gguf"), "{e}");
        }
        assert_eq!(names(d.path()), ["o.gguf"]);
        assert!(t.join("keep").is_file());
    }

    #[test]
    fn dir_commit_and_abort() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("out");
        let a = AtomicDir::create(&t, false).unwrap();
        std::fs::write(a.path().join("x"), b"1").unwrap();
        drop(a);
        assert!(!t.exists());
        let a = AtomicDir::create(&t, false).unwrap();
        std::fs::write(a.path().join("x"), b"1").unwrap();
        a.commit().unwrap();
        assert!(t.join("x").is_file());
        assert!(AtomicDir::create(&t, false).is_err());
        let a = AtomicDir::create(&t, true).unwrap();
        std::fs::write(a.path().join("y"), b"2").unwrap();
        a.commit().unwrap();
        assert!(t.join("y").is_file() && !t.join("x").exists());
    }

    /// Files inside a folder output name where they will be, not the temporary folder.
    #[test]
    fn errors_inside_a_folder_name_the_target() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("out");
        let a = AtomicDir::create(&t, false).unwrap();
        assert_eq!(
            a.shown(&a.path().join("config.json")),
            t.join("config.json")
        );
        std::fs::create_dir(a.path().join("model.safetensors")).unwrap();
        let e = a.file("model.safetensors").unwrap_err().to_string();
        assert!(
            e.contains(&t.join("model.safetensors").display().to_string()) && !e.contains(PARTIAL),
            "{e}"
        );
        let f = a.file("w.bin").unwrap();
        f.write_at(0, b"1").unwrap();
        f.commit().unwrap();
        assert!(a.path().join("w.bin").is_file());
    }

    #[test]
    fn the_registry_follows_live_temporaries() {
        let d = tempfile::tempdir().unwrap();
        let (t1, t2) = (d.path().join("a.gguf"), d.path().join("b"));
        let f = AtomicFile::create(&t1, false).unwrap();
        let g = AtomicDir::create(&t2, false).unwrap();
        let inner = g.file("model.safetensors").unwrap();
        let mine = |p: &PathBuf| p.starts_with(d.path());
        assert_eq!(live_temporaries().iter().filter(|p| mine(p)).count(), 3);
        drop(inner);
        f.commit().unwrap();
        assert_eq!(live_temporaries().iter().filter(|p| mine(p)).count(), 1);
        drop(g);
        assert_eq!(live_temporaries().iter().filter(|p| mine(p)).count(), 0);
        assert_eq!(names(d.path()), ["a.gguf"]);
    }

    #[cfg(unix)]
    #[test]
    fn stale_temporaries_of_dead_processes_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("out.gguf");
        let dead = d.path().join(format!(".out.gguf{PARTIAL}999999999"));
        let dead_dir = d.path().join(format!(".out.gguf{PARTIAL}999999998"));
        // a live process (this one's parent is alive while we run) and other names stay
        let alive = d.path().join(format!(
            ".out.gguf{PARTIAL}{}",
            std::os::unix::process::parent_id()
        ));
        let other = d.path().join(format!(".other.gguf{PARTIAL}999999999"));
        let not_pid = d.path().join(format!(".out.gguf{PARTIAL}12x"));
        for p in [&dead, &alive, &other, &not_pid] {
            std::fs::write(p, b"x").unwrap();
        }
        std::fs::create_dir(&dead_dir).unwrap();
        std::fs::write(dead_dir.join("model.safetensors"), b"x").unwrap();
        let f = AtomicFile::create(&t, false).unwrap();
        f.commit().unwrap();
        let mut want = vec![
            "out.gguf".to_string(),
            alive.file_name().unwrap().to_string_lossy().into_owned(),
            other.file_name().unwrap().to_string_lossy().into_owned(),
            not_pid.file_name().unwrap().to_string_lossy().into_owned(),
        ];
        if !Path::new("/proc/self").exists() {
            // without /proc nothing counts as dead
            return;
        }
        want.sort();
        assert_eq!(names(d.path()), want);
    }

    /// What the signal handler does, on this test's temporaries only (the registry is shared
    /// with the tests running alongside; the CLI's signal tests cover the whole path).
    #[test]
    fn removing_all_temporaries() {
        let d = tempfile::tempdir().unwrap();
        let f = AtomicFile::create(&d.path().join("a.gguf"), false).unwrap();
        let g = AtomicDir::create(&d.path().join("b"), false).unwrap();
        let inner = g.file("model.safetensors").unwrap();
        inner.write_at(0, &[1; 100]).unwrap();
        let mut mine: Vec<PathBuf> = live_temporaries()
            .into_iter()
            .filter(|p| p.starts_with(d.path()))
            .collect();
        assert_eq!(mine.len(), 3);
        remove_all(&mut mine);
        assert_eq!(names(d.path()), Vec::<String>::new());
        drop((f, inner, g));
        assert_eq!(names(d.path()), Vec::<String>::new());
    }

    #[cfg(unix)]
    #[test]
    fn inputs_are_never_outputs() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("model");
        std::fs::create_dir(&m).unwrap();
        let w = m.join("model.safetensors");
        std::fs::write(&w, b"x").unwrap();
        let inputs = vec![w.clone()];
        // the file itself, through `..` and a symbolic link
        assert!(check_not_input(&w, false, &inputs).is_err());
        assert!(check_not_input(&m.join("../model/model.safetensors"), false, &inputs).is_err());
        std::os::unix::fs::symlink(&w, d.path().join("link")).unwrap();
        assert!(check_not_input(&d.path().join("link"), false, &inputs).is_err());
        // a folder output that is or holds the input
        assert!(check_not_input(&m, true, &inputs).is_err());
        assert!(check_not_input(d.path(), true, &inputs).is_err());
        let e = check_not_input(d.path(), true, &inputs).unwrap_err();
        assert!(matches!(e, FormatError::OutputIsInput { .. }), "{e}");
        // elsewhere is fine: a sibling, a new folder inside the model folder, a new file
        assert!(check_not_input(&d.path().join("out"), true, &inputs).is_ok());
        assert!(check_not_input(&m.join("q4"), true, &inputs).is_ok());
        assert!(check_not_input(&m.join("q4.gguf"), false, &inputs).is_ok());
        assert!(check_not_input(Path::new("no/such/x.gguf"), false, &inputs).is_ok());
    }

    #[test]
    fn report_paths_are_checked_up_front() {
        let d = tempfile::tempdir().unwrap();
        let input = d.path().join("in.safetensors");
        std::fs::write(&input, b"x").unwrap();
        let out = d.path().join("out");
        let inputs = [input.clone()];
        let outputs = [out.clone()];
        assert!(check_writable(&d.path().join("r.json"), &inputs, &outputs).is_ok());
        assert_eq!(names(d.path()), ["in.safetensors"], "probe removed");
        for bad in [
            d.path().join("no/such/r.json"),
            input.join("r.json"),
            d.path().to_path_buf(),
            input.clone(),
            out.clone(),
            out.join("r.json"),
        ] {
            assert!(
                check_writable(&bad, &inputs, &outputs).is_err(),
                "{}",
                bad.display()
            );
        }
        write_file(&d.path().join("r.json"), b"{}").unwrap();
        write_file(&d.path().join("r.json"), b"[]").unwrap();
        assert_eq!(std::fs::read(d.path().join("r.json")).unwrap(), b"[]");
        assert_eq!(names(d.path()), ["in.safetensors", "r.json"]);
    }
}
