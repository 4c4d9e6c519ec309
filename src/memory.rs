//! Gives back the code pages that only start-up used.
//!
//! Starting neko runs code that idle neko never runs again: clap, settings and TOML parsing,
//! SQLite's schema set-up, the router's construction, the Python environment check. The kernel
//! maps code in 64 KiB "fault-around" windows, so by the end of start-up nearly all of neko's
//! 10 MB of machine code is mapped into the process (counted in its RSS) though little of it
//! stays in use. [`release_startup_pages`] unmaps the clean, read-only file pages; the kernel
//! keeps them in its page cache and maps back, on first touch, whatever neko runs again.

use std::io::BufRead;

/// What one call released.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    pub mappings: usize,
    pub kib: u64,
}

/// One mapping of `/proc/self/smaps`, with the fields that decide whether it may be released.
#[derive(Debug, Default)]
struct Mapping {
    start: usize,
    end: usize,
    releasable_kind: bool,
    rss_kib: u64,
    /// Pages no longer the file's: anonymous copies, swapped out or not.
    changed_kib: u64,
}

impl Mapping {
    /// `7f..-7f.. r-xp 00000000 fd:01 1234  /usr/lib/...`: a file mapping (a path, an inode) that
    /// nobody can write to.
    fn parse_header(line: &str) -> Option<Mapping> {
        let mut fields = line.split_ascii_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let perms = fields.next()?.as_bytes();
        let _offset = fields.next()?;
        let _device = fields.next()?;
        let inode = fields.next()?;
        let path = fields.next().unwrap_or("");
        Some(Mapping {
            start: usize::from_str_radix(start, 16).ok()?,
            end: usize::from_str_radix(end, 16).ok()?,
            releasable_kind: perms.len() == 4
                && perms[1] == b'-'
                && perms[3] == b'p'
                && inode != "0"
                && path.starts_with('/'),
            ..Mapping::default()
        })
    }

    /// Only mappings whose every page is the file's own: a page that was ever written (a
    /// relocation in RELRO, say) became an anonymous copy with no twin in the file, and dropping
    /// it would lose it. (`Private_Dirty` is no guide: a freshly built binary's page-cache pages
    /// are dirty until written back, yet identical to the file.)
    fn releasable(&self) -> bool {
        self.releasable_kind && self.changed_kib == 0 && self.rss_kib > 0
    }
}

fn kib(line: &str) -> u64 {
    line.split_ascii_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX)
}

fn read_mappings() -> std::io::Result<Vec<Mapping>> {
    let smaps = std::io::BufReader::new(std::fs::File::open("/proc/self/smaps")?);
    let mut maps: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let line = line?;
        if let Some(m) = Mapping::parse_header(&line) {
            maps.push(m);
            continue;
        }
        let Some(m) = maps.last_mut() else { continue };
        if line.starts_with("Rss:") {
            m.rss_kib = kib(&line);
        } else if line.starts_with("Anonymous:") || line.starts_with("Swap:") {
            m.changed_kib = m.changed_kib.saturating_add(kib(&line));
        }
    }
    Ok(maps)
}

/// Unmaps every clean page of read-only file mappings (neko's code and constants, the C
/// libraries'); they stay in the page cache and come back on first touch.
pub fn release_startup_pages() -> std::io::Result<Released> {
    let mut released = Released::default();
    for m in read_mappings()?.iter().filter(|m| m.releasable()) {
        // SAFETY: the range is a whole mapping that cannot be written and holds no page that
        // differs from its file, so MADV_DONTNEED only drops page-table entries: the next
        // access reads the same bytes back from the file.
        let rc = unsafe {
            libc::madvise(
                m.start as *mut libc::c_void,
                m.end - m.start,
                libc::MADV_DONTNEED,
            )
        };
        if rc == 0 {
            released.mappings += 1;
            released.kib += m.rss_kib;
        }
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unwritable_file_mappings_are_candidates() {
        let kind = |line: &str| Mapping::parse_header(line).map(|m| m.releasable_kind);
        let code = "55e3721c2000-55e372c27000 r-xp 003bd000 fe:00 5384058    /usr/bin/neko";
        assert_eq!(kind(code), Some(true));
        let constants = "7f6d10024000-7f6d10077000 r--p 00000000 fe:00 77  /usr/lib/libc.so.6";
        assert_eq!(kind(constants), Some(true));
        let data = "7f6d10024000-7f6d10077000 rw-p 00000000 fe:00 77  /usr/lib/libc.so.6";
        assert_eq!(kind(data), Some(false));
        let shared = "7f6d10024000-7f6d10077000 r--s 00000000 fe:00 77  /dev/shm/x";
        assert_eq!(kind(shared), Some(false));
        assert_eq!(
            kind("20000000000-20000280000 rw-p 00000000 00:00 0"),
            Some(false)
        );
        assert_eq!(
            kind("7ffd5b1f0000-7ffd5b1f2000 r-xp 00000000 00:00 0    [vdso]"),
            Some(false)
        );
        // Field lines of a mapping are not headers.
        assert!(Mapping::parse_header("Rss:                9748 kB").is_none());
        assert!(Mapping::parse_header("VmFlags: rd ex mr mw me sd").is_none());
    }

    #[test]
    fn written_pages_keep_a_mapping() {
        let mut m = Mapping::parse_header("1000-2000 r--p 00000000 fe:00 9 /bin/x").unwrap();
        m.rss_kib = 4;
        assert!(m.releasable());
        m.changed_kib = 4;
        assert!(
            !m.releasable(),
            "RELRO pages written by the loader must stay"
        );
    }

    /// Releasing this very test process's code pages drops them from its RSS and everything
    /// still runs (they come back from the page cache on use).
    #[test]
    fn released_pages_come_back_on_use() {
        let released = release_startup_pages().expect("smaps readable");
        assert!(released.mappings > 0 && released.kib > 0, "{released:?}");
        let text = format!("{:?}", (1..10).map(|i| i * i).collect::<Vec<_>>());
        assert_eq!(text, "[1, 4, 9, 16, 25, 36, 49, 64, 81]");
        assert!(read_mappings().unwrap().iter().any(|m| m.rss_kib > 0));
    }
}
