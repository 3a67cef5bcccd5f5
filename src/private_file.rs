//! Files that hold a secret: created new (never over an existing one), readable by their owner
//! only (mode 0600, in a directory made 0700 when missing), and synced before they are used.

use std::io::Write;
use std::path::Path;

/// Creates `path` holding `contents`; fails if it exists.
pub fn create(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    // The state directory on a fresh account (`~/.local/state/auditor`) may not exist yet.
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}
