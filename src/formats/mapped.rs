//! Read-only memory maps of model files, whose pages can be handed back once read.
//!
//! Loading converts every tensor to an owned f32 buffer; the file's pages are not needed after
//! that, and releasing them tensor by tensor keeps the resident size of a load near the final
//! weights' size instead of weights plus file.

use std::path::{Path, PathBuf};

use memmap2::{Mmap, UncheckedAdvice};

use crate::error::{MsError, Result};

/// One file, mapped read-only.
pub struct MappedFile {
    pub path: PathBuf,
    map: Mmap,
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
            map,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Let the kernel drop the whole pages inside `start..start + len` (neighbouring tensors
    /// may share the pages at the edges). Dropped pages are read from the file again if
    /// touched, so this changes memory use, never data.
    pub fn release(&self, start: usize, len: usize) {
        let end = (start + len).min(self.map.len());
        let first = start.div_ceil(PAGE) * PAGE;
        let last = end / PAGE * PAGE;
        if last > first {
            // SAFETY: the mapping is read-only and file-backed: MADV_DONTNEED discards
            // clean pages that the kernel re-reads from the file on the next access.
            let _ = unsafe {
                self.map
                    .unchecked_advise_range(UncheckedAdvice::DontNeed, first, last - first)
            };
        }
    }
}
