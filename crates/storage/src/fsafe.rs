//! Descriptor-relative file access under a store's root that never follows a symbolic
//! link below it.
//!
//! georep runs as root beside production data: a link planted in a destination
//! (`dst/sub -> /etc`) must not turn a copy or a delete of `sub/x` into a write or a
//! delete outside the folder. Every folder level below the root is opened with
//! `O_NOFOLLOW` relative to its parent's descriptor, and the final name is created,
//! renamed or unlinked relative to its folder's descriptor, so a link swapped in at any
//! moment is refused by the kernel rather than followed. The root itself is the
//! user's choice and may be a link.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

/// Why a key could not be reached without following a link.
#[derive(Debug)]
pub(crate) enum SafeError {
    /// A folder level (or the key itself) is a symbolic link; the path names it.
    Link(String),
    /// A folder level is a file (keys `a` and `a/b`), or the key is a folder.
    Clash(String),
    Io(io::Error),
}

impl From<Errno> for SafeError {
    fn from(e: Errno) -> Self {
        SafeError::Io(e.into())
    }
}

impl From<io::Error> for SafeError {
    fn from(e: io::Error) -> Self {
        SafeError::Io(e)
    }
}

pub(crate) type SafeResult<T> = std::result::Result<T, SafeError>;

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// The key's folder, opened level by level without following links, and the key's last
/// segment. With `create`, missing levels are made with the mode `create` gives for the
/// folder's key prefix (`a`, `a/b`, ...).
pub(crate) fn open_parent<'k>(
    root: &Path,
    key: &'k str,
    create: Option<&dyn Fn(&str) -> u32>,
) -> SafeResult<(OwnedFd, &'k str)> {
    let (dirs, name) = match key.rsplit_once('/') {
        Some((d, n)) => (Some(d), n),
        None => (None, key),
    };
    // The root is the user's choice: it may be a link, so it is opened normally, and
    // made when a write finds it missing.
    let open_root = || {
        rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    let mut dir = match open_root() {
        Err(Errno::NOENT) if create.is_some() => {
            let mode = create.map_or(0o755, |f| f(""));
            std::os::unix::fs::DirBuilderExt::mode(
                std::fs::DirBuilder::new().recursive(true),
                mode & 0o1777,
            )
            .create(root)?;
            open_root()?
        }
        other => other?,
    };
    if let Some(dirs) = dirs {
        let mut end = 0;
        for seg in dirs.split('/') {
            end += seg.len();
            let prefix = &dirs[..end];
            end += 1;
            dir = match rustix::fs::openat(&dir, seg, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create.is_some() => {
                    let mode = create.map_or(0o755, |f| f(prefix));
                    match rustix::fs::mkdirat(&dir, seg, Mode::from_raw_mode(mode & 0o1777)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    open_level(&dir, seg, prefix)?
                }
                Err(Errno::LOOP | Errno::NOTDIR) => return Err(classify(&dir, seg, prefix)),
                Err(e) => return Err(e.into()),
            };
        }
    }
    Ok((dir, name))
}

fn open_level(dir: &OwnedFd, seg: &str, prefix: &str) -> SafeResult<OwnedFd> {
    match rustix::fs::openat(dir, seg, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(Errno::LOOP | Errno::NOTDIR) => Err(classify(dir, seg, prefix)),
        Err(e) => Err(e.into()),
    }
}

/// Names what stands where a folder was expected.
fn classify(dir: &OwnedFd, seg: &str, prefix: &str) -> SafeError {
    match rustix::fs::statat(dir, seg, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
            SafeError::Link(prefix.to_string())
        }
        Ok(_) => SafeError::Clash(prefix.to_string()),
        Err(e) => e.into(),
    }
}

/// What stands at `name` in `dir`, without following a link; `None` when nothing does.
pub(crate) fn kind_at(dir: &OwnedFd, name: &str) -> SafeResult<Option<(FileType, u32)>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some((
            FileType::from_raw_mode(st.st_mode),
            st.st_mode & 0o7777,
        ))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Opens a regular file for reading without following a link at any level. What stands
/// there is looked at through an `O_PATH` descriptor first, so a device or a FIFO is
/// never opened (opening some devices acts: a tape rewinds, a modem hangs up); the file
/// is then reopened through that same descriptor, so nothing can be swapped in between.
pub(crate) fn open_read(root: &Path, key: &str) -> SafeResult<File> {
    use std::os::fd::AsRawFd;
    let (dir, name) = open_parent(root, key, None)?;
    let path_fd = match rustix::fs::openat(
        &dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::LOOP) => return Err(SafeError::Link(key.to_string())),
        Err(e) => return Err(e.into()),
    };
    let st = rustix::fs::fstat(&path_fd)?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => {}
        FileType::Symlink => return Err(SafeError::Link(key.to_string())),
        FileType::Directory => return Err(SafeError::Clash(key.to_string())),
        _ => {
            return Err(SafeError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file (a device, FIFO or socket); skipped",
            )))
        }
    }
    let read = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = match rustix::fs::open(
        format!("/proc/self/fd/{}", path_fd.as_raw_fd()),
        read,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        // No /proc: open by name, refusing anything but the file just looked at.
        Err(Errno::NOENT) => {
            let fd = rustix::fs::openat(
                &dir,
                name,
                read | OFlags::NOFOLLOW | OFlags::NONBLOCK,
                Mode::empty(),
            )?;
            let now = rustix::fs::fstat(&fd)?;
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) {
                return Err(SafeError::Io(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the file was replaced while it was opened; it will be read again",
                )));
            }
            let flags = rustix::fs::fcntl_getfl(&fd)?;
            rustix::fs::fcntl_setfl(&fd, flags - OFlags::NONBLOCK)?;
            fd
        }
        Err(e) => return Err(e.into()),
    };
    Ok(File::from(fd))
}

/// A new temp file `tmp` in `dir`, created `0600` and never through a link.
pub(crate) fn create_temp_in(dir: &OwnedFd, tmp: &str) -> SafeResult<File> {
    let fd = rustix::fs::openat(
        dir,
        tmp,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    Ok(File::from(fd))
}

/// Sets a file's permission bits through its descriptor. Set-user-ID and set-group-ID
/// bits are never carried: georep (often root) owns what it writes, and a setuid file of
/// an ordinary user must not become a setuid-root one.
pub(crate) fn set_mode(file: &File, mode: u32) -> io::Result<()> {
    rustix::fs::fchmod(file, Mode::from_raw_mode(mode & 0o777)).map_err(io::Error::from)
}

/// Renames `tmp` over `name`, both in `dir`. What stands at `name` must be absent or a
/// regular file: a link or a folder there is left alone and reported.
pub(crate) fn commit_rename(dir: &OwnedFd, tmp: &str, name: &str, key: &str) -> SafeResult<()> {
    match kind_at(dir, name)? {
        Some((FileType::Symlink, _)) => return Err(SafeError::Link(key.to_string())),
        Some((FileType::Directory, _)) => return Err(SafeError::Clash(key.to_string())),
        _ => {}
    }
    rustix::fs::renameat(dir, tmp, dir, name)?;
    Ok(())
}

/// Removes `name` from `dir` (never through a link).
pub(crate) fn unlink_in(dir: &OwnedFd, name: &str) -> io::Result<()> {
    rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(io::Error::from)
}

/// Deletes a key's file. Gone already (at any level) counts as deleted; a link, at any
/// level or as the key itself, is left alone and reported.
pub(crate) fn delete(root: &Path, key: &str) -> SafeResult<()> {
    let (dir, name) = match open_parent(root, key, None) {
        Ok(p) => p,
        Err(SafeError::Io(e)) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    match kind_at(&dir, name)? {
        None => Ok(()),
        Some((FileType::Symlink, _)) => Err(SafeError::Link(key.to_string())),
        Some((FileType::Directory, _)) => Err(SafeError::Clash(key.to_string())),
        Some(_) => match unlink_in(&dir, name) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        },
    }
}

/// The permission bits of the folder `prefix` under `root`, not following links; used to
/// create a destination folder as open (or as closed) as its source.
pub(crate) fn folder_mode(root: &Path, prefix: &str) -> Option<u32> {
    let (dir, name) = open_parent(root, prefix, None).ok()?;
    match kind_at(&dir, name).ok()?? {
        (FileType::Directory, mode) => Some(mode),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_opened_for_reading() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("f"), b"data").expect("write");
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
        std::fs::create_dir(dir.path().join("d")).expect("mkdir");
        std::os::unix::fs::symlink(dir.path().join("f"), dir.path().join("l")).expect("link");

        let mut text = String::new();
        std::io::Read::read_to_string(&mut open_read(dir.path(), "f").expect("file"), &mut text)
            .expect("read");
        assert_eq!(text, "data");
        // A FIFO is refused without being opened (no writer: opening it would block).
        match open_read(dir.path(), "fifo") {
            Err(SafeError::Io(e)) => assert!(e.to_string().contains("not a regular file")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            open_read(dir.path(), "d"),
            Err(SafeError::Clash(_))
        ));
        assert!(matches!(
            open_read(dir.path(), "l"),
            Err(SafeError::Link(_))
        ));
    }
}
