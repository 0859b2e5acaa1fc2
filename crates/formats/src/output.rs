//! Outputs that appear at their target path only when complete.
//!
//! Data is written to a temporary sibling (`.NAME.qs-partial-PID`) and renamed over the target
//! at [`AtomicFile::commit`]; dropping an uncommitted output removes the temporary. An existing
//! target is refused unless `force` is set.

use crate::error::{io_err, FormatError, Result};
use std::fs::File;
use std::path::{Path, PathBuf};

fn temp_sibling(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    dir.join(format!(".{name}.qs-partial-{}", std::process::id()))
}

/// Refuses an existing target unless `force`.
pub fn check_target(target: &Path, force: bool) -> Result<()> {
    if !force && target.symlink_metadata().is_ok() {
        return Err(FormatError::OutputExists {
            path: target.to_path_buf(),
        });
    }
    Ok(())
}

/// A file written in place under a temporary name.
#[derive(Debug)]
pub struct AtomicFile {
    target: PathBuf,
    temp: PathBuf,
    file: Option<File>,
    force: bool,
}

impl AtomicFile {
    pub fn create(target: &Path, force: bool) -> Result<AtomicFile> {
        check_target(target, force)?;
        let temp = temp_sibling(target);
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .map_err(io_err(target))?;
        Ok(AtomicFile {
            target: target.to_path_buf(),
            temp,
            file: Some(file),
            force,
        })
    }

    pub fn file(&self) -> &File {
        self.file.as_ref().expect("open until commit")
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Writes `bytes` at absolute `offset`; safe to call from several threads at once.
    pub fn write_at(&self, offset: u64, bytes: &[u8]) -> Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt;
            self.file()
                .write_all_at(bytes, offset)
                .map_err(io_err(&self.target))
        }
        #[cfg(not(unix))]
        {
            use std::os::windows::fs::FileExt;
            let mut done = 0;
            while done < bytes.len() {
                let n = self
                    .file()
                    .seek_write(&bytes[done..], offset + done as u64)
                    .map_err(io_err(&self.target))?;
                done += n;
            }
            Ok(())
        }
    }

    /// Sets the final length (the tail after the last tensor is padding).
    pub fn set_len(&self, len: u64) -> Result<()> {
        self.file().set_len(len).map_err(io_err(&self.target))
    }

    /// Flushes to disk and renames into place.
    pub fn commit(mut self) -> Result<()> {
        let f = self.file.take().expect("open until commit");
        f.sync_all().map_err(io_err(&self.target))?;
        drop(f);
        // re-check: something may have appeared at the target while we worked
        check_target(&self.target, self.force)?;
        std::fs::rename(&self.temp, &self.target).map_err(io_err(&self.target))?;
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            self.file = None;
            let _ = std::fs::remove_file(&self.temp);
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
        let temp = temp_sibling(target);
        let _ = std::fs::remove_dir_all(&temp);
        std::fs::create_dir(&temp).map_err(io_err(target))?;
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

    pub fn commit(mut self) -> Result<()> {
        check_target(&self.target, self.force)?;
        if self.force && self.target.exists() {
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
        self.done = true;
        Ok(())
    }
}

impl Drop for AtomicDir {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
}
