//! Output files: the folder is checked before any model work, and each file is written to a
//! temporary name and renamed, so a failure leaves no half-written file.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Why an output could not be written.
#[derive(Debug, thiserror::Error)]
#[error("--out {path}: {message}")]
pub struct OutputError {
    /// The file or folder.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

/// The output folder, checked by [`prepare_dir`]. The folders that call created are removed
/// again, if they are still empty, when this is dropped before [`OutDir::keep`]: a run that
/// fails before it writes anything (a model that cannot be read, a target that is not one
/// token) leaves no empty folder behind.
#[must_use = "the folder is removed again on drop unless kept"]
#[derive(Debug)]
pub struct OutDir {
    /// The folders created, innermost first.
    created: Vec<PathBuf>,
}

impl OutDir {
    /// Keeps the folder (the run has written into it).
    pub fn keep(mut self) {
        self.created.clear();
    }
}

impl Drop for OutDir {
    fn drop(&mut self) {
        // `remove_dir` refuses a folder that holds anything, which is then kept, with the
        // folders above it.
        for dir in &self.created {
            if std::fs::remove_dir(dir).is_err() {
                break;
            }
        }
    }
}

/// Creates `dir` if needed and checks that files can be created in it.
pub fn prepare_dir(dir: &Path) -> Result<OutDir, OutputError> {
    let fail = |path: &Path, e: std::io::Error| OutputError {
        path: path.to_path_buf(),
        message: format!("cannot write here ({e}); pass --out a writable folder"),
    };
    let missing: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .map(Path::to_path_buf)
        .collect();
    std::fs::create_dir_all(dir).map_err(|e| fail(dir, e))?;
    let out = OutDir { created: missing };
    let probe = dir.join(format!(".attrib-write-check-{}", std::process::id()));
    std::fs::File::create(&probe).map_err(|e| fail(dir, e))?;
    std::fs::remove_file(&probe).map_err(|e| fail(dir, e))?;
    Ok(out)
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    let fail = |e: std::io::Error| OutputError {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_replaces_without_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn folders_made_for_a_run_that_wrote_nothing_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("a/b/c");
        drop(prepare_dir(&out).unwrap());
        assert!(!dir.path().join("a").exists());
        // Kept after a run that wrote.
        prepare_dir(&out).unwrap().keep();
        assert!(out.is_dir());
        // A folder that existed before stays, and so does one that holds a file.
        drop(prepare_dir(&out).unwrap());
        assert!(out.is_dir());
        let other = dir.path().join("x/y");
        let guard = prepare_dir(&other).unwrap();
        std::fs::write(dir.path().join("x/kept.txt"), b"x").unwrap();
        drop(guard);
        assert!(!other.exists() && dir.path().join("x/kept.txt").exists());
    }

    #[test]
    fn an_unwritable_folder_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let err = prepare_dir(&file.join("sub")).unwrap_err();
        assert!(err.to_string().starts_with("--out "), "{err}");
    }
}
