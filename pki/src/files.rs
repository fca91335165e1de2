//! Writing a set of output files (a certificate, its key, the CA copy) all or
//! nothing: every file is written to a temporary name in the target directory,
//! fsynced, and only then renamed into place. Existing files are refused unless
//! the caller forces an overwrite. Private keys are created with mode 0600.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// One file of a set.
#[derive(Debug, Clone)]
pub struct OutputFile {
    /// File name inside the output directory.
    pub name: &'static str,
    /// The full contents.
    pub contents: Vec<u8>,
    /// Private files (keys) get mode 0600, others 0644.
    pub private: bool,
}

/// Why a file set was not written. Nothing was left behind in either case.
#[derive(Debug, Error)]
pub enum FileSetError {
    /// Output files already exist and overwriting was not forced.
    #[error("{} already exist(s); pass --force to overwrite", list(.0))]
    Exists(Vec<PathBuf>),
    /// A file system operation failed.
    #[error("{path}: {cause}")]
    Io {
        /// The path being written or created.
        path: PathBuf,
        /// The underlying error.
        cause: io::Error,
    },
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FileSetError + '_ {
    move |cause| FileSetError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// Writes `files` into `dir` (created if missing) all or nothing, and returns the
/// paths written.
pub fn write_file_set(
    dir: &Path,
    files: &[OutputFile],
    force: bool,
) -> Result<Vec<PathBuf>, FileSetError> {
    let targets: Vec<PathBuf> = files.iter().map(|f| dir.join(f.name)).collect();
    if !force {
        let existing: Vec<PathBuf> = targets
            .iter()
            .filter(|p| p.symlink_metadata().is_ok())
            .cloned()
            .collect();
        if !existing.is_empty() {
            return Err(FileSetError::Exists(existing));
        }
    }
    let created_dir = if dir.exists() {
        None
    } else {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        Some(dir.to_path_buf())
    };

    let result = write_all_or_nothing(dir, files, &targets);
    if result.is_err()
        && let Some(d) = created_dir
    {
        // Only removes the directory if nothing else appeared in it.
        let _ = fs::remove_dir(d);
    }
    result.map(|()| targets)
}

fn write_all_or_nothing(
    dir: &Path,
    files: &[OutputFile],
    targets: &[PathBuf],
) -> Result<(), FileSetError> {
    let tag = format!("{}-{}", std::process::id(), unique_suffix());
    let temps: Vec<PathBuf> = files
        .iter()
        .map(|f| dir.join(format!(".{}.tmp-{tag}", f.name)))
        .collect();

    let cleanup = |upto: usize| {
        for t in &temps[..upto] {
            let _ = fs::remove_file(t);
        }
    };
    for (i, (f, tmp)) in files.iter().zip(&temps).enumerate() {
        if let Err(e) = write_one(tmp, f) {
            cleanup(i + 1);
            return Err(e);
        }
    }

    // Remember which targets did not exist, so a failed rename can undo only those.
    let fresh: Vec<bool> = targets
        .iter()
        .map(|t| t.symlink_metadata().is_err())
        .collect();
    for (i, (tmp, target)) in temps.iter().zip(targets).enumerate() {
        if let Err(cause) = fs::rename(tmp, target) {
            for (t, was_fresh) in targets[..i].iter().zip(&fresh) {
                if *was_fresh {
                    let _ = fs::remove_file(t);
                }
            }
            for t in &temps[i..] {
                let _ = fs::remove_file(t);
            }
            return Err(FileSetError::Io {
                path: target.clone(),
                cause,
            });
        }
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(())
}

fn write_one(tmp: &Path, f: &OutputFile) -> Result<(), FileSetError> {
    let mode = if f.private { 0o600 } else { 0o644 };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)
        .map_err(io_err(tmp))?;
    file.write_all(&f.contents).map_err(io_err(tmp))?;
    file.sync_all().map_err(io_err(tmp))?;
    Ok(())
}

fn unique_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    (nanos << 16) ^ COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Writes one file atomically (temporary file, fsync, rename, fsync of the
/// directory), replacing any existing file. Used for durable state files.
pub fn write_atomic(path: &Path, contents: &[u8], private: bool) -> Result<(), FileSetError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        unique_suffix()
    ));
    let f = OutputFile {
        name: "",
        contents: contents.to_vec(),
        private,
    };
    write_one(&tmp, &f)?;
    if let Err(cause) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(FileSetError::Io {
            path: path.to_path_buf(),
            cause,
        });
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn set() -> Vec<OutputFile> {
        vec![
            OutputFile {
                name: "a.crt",
                contents: b"cert".to_vec(),
                private: false,
            },
            OutputFile {
                name: "a.key",
                contents: b"key".to_vec(),
                private: true,
            },
        ]
    }

    #[test]
    fn writes_with_modes_and_refuses_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("new/dir");
        write_file_set(&out, &set(), false).unwrap();
        assert_eq!(fs::read(out.join("a.crt")).unwrap(), b"cert");
        let mode = fs::metadata(out.join("a.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = write_file_set(&out, &set(), false).unwrap_err();
        assert!(
            matches!(err, FileSetError::Exists(ref p) if p.len() == 2),
            "{err}"
        );
        assert!(err.to_string().contains("--force"));
        write_file_set(&out, &set(), true).unwrap();
        // no temporary files left behind
        let names: Vec<_> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn one_existing_file_blocks_the_whole_set() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("a.key"), b"old").unwrap();
        assert!(write_file_set(tmp.path(), &set(), false).is_err());
        assert!(!tmp.path().join("a.crt").exists());
        assert_eq!(fs::read(tmp.path().join("a.key")).unwrap(), b"old");
    }

    #[test]
    fn failure_midway_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        // A directory where the second file should go makes its rename fail.
        fs::create_dir(tmp.path().join("a.key")).unwrap();
        fs::write(tmp.path().join("a.key/x"), b"").unwrap();
        let err = write_file_set(tmp.path(), &set(), true).unwrap_err();
        assert!(matches!(err, FileSetError::Io { .. }), "{err}");
        let names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["a.key".to_string()], "leftovers: {names:?}");
    }

    #[test]
    fn atomic_single_file_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("state.json");
        write_atomic(&p, b"one", false).unwrap();
        write_atomic(&p, b"two", true).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }
}
