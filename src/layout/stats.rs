//! Statistics: a plain snapshot of the heap, printed as CPython's `sys._debugmallocstats()`.
//!
//! A snapshot is filled without allocating (it is taken under the GIL-mode lock); formatting
//! happens afterwards, outside any lock. The byte counts are derived from the per-class rows,
//! so they balance by construction of the layout, and [`Stats::total`] equals
//! `arenas_current * arena_size` whenever the snapshot was taken while no thread allocated:
//!
//! ```text
//! allocated blocks + available blocks + unused pools + pool headers + quantization
//!     == arenas_current * arena_size
//! ```

use crate::layout::geometry::Geometry;
use crate::layout::size_class::{class_size, NUM_CLASSES};
use crate::layout::Mode;
use core::fmt;

/// Arena counters kept by both modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaCounters {
    /// Arenas mapped since the allocator was built.
    pub allocated_total: u64,
    /// Arenas unmapped since the allocator was built.
    pub reclaimed: u64,
    /// Most arenas mapped at once.
    pub highwater: u64,
    /// Arenas mapped now.
    pub current: u64,
}

impl ArenaCounters {
    pub(crate) fn mapped(&mut self) {
        self.allocated_total += 1;
        self.current += 1;
        self.highwater = self.highwater.max(self.current);
    }

    pub(crate) fn unmapped(&mut self) {
        self.reclaimed += 1;
        self.current -= 1;
    }
}

/// One size class's row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Block size in bytes.
    pub size: usize,
    /// Pools serving this class (with at least one block in use, or owned by a thread cache).
    pub pools: usize,
    /// Blocks handed out and not freed.
    pub blocks_in_use: usize,
    /// Free blocks in those pools, carved or not.
    pub blocks_available: usize,
}

/// A snapshot of an allocator's small-object heap.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    /// The mode of the allocator.
    pub mode: Mode,
    /// Bytes per pool.
    pub pool_size: usize,
    /// Bytes per arena.
    pub arena_size: usize,
    /// Bytes of each pool taken by its header.
    pub pool_overhead: usize,
    /// Largest request served from pools.
    pub small_limit: usize,
    /// Size classes in use (rows of `classes` past this are empty).
    pub num_classes: usize,
    /// One row per size class.
    pub classes: [ClassStats; NUM_CLASSES],
    /// Arena counters.
    pub counters: ArenaCounters,
    /// Pools of mapped arenas that serve no class.
    pub unused_pools: usize,
    /// Free-threaded mode: thread caches alive (0 in GIL mode).
    pub thread_caches: usize,
    /// Free-threaded mode: pools held by thread caches (0 in GIL mode).
    pub cached_pools: usize,
    /// Free-threaded mode: pools waiting on the central abandoned lists (0 in GIL mode).
    pub abandoned_pools: usize,
    /// Free-threaded mode: most pools held by one thread cache (0 in GIL mode).
    pub max_cached_pools: usize,
    /// Free-threaded mode: free pools whose pages are still resident, waiting for the decay
    /// interval to pass before they are purged (0 in GIL mode).
    pub dirty_pools: usize,
    /// Free-threaded mode: pools whose pages were given back to the OS (`madvise`) since the
    /// heap was built (0 in GIL mode).
    pub pools_purged: u64,
}

impl Stats {
    pub(crate) fn empty(mode: Mode, geo: &Geometry) -> Stats {
        let mut classes = [ClassStats::default(); NUM_CLASSES];
        for (c, row) in classes.iter_mut().enumerate() {
            row.size = class_size(c);
        }
        Stats {
            mode,
            pool_size: geo.pool_size,
            arena_size: geo.arena_size,
            pool_overhead: geo.pool_overhead,
            small_limit: geo.small_limit,
            num_classes: geo.num_classes,
            classes,
            counters: ArenaCounters::default(),
            unused_pools: 0,
            thread_caches: 0,
            cached_pools: 0,
            abandoned_pools: 0,
            max_cached_pools: 0,
            dirty_pools: 0,
            pools_purged: 0,
        }
    }

    /// Records one pool of `class` with `in_use` blocks handed out. In free-threaded mode the
    /// header is read while its owner may change it (even re-prepare the pool for another class
    /// between the reads of `szidx` and `ref_count`), so `in_use` is clamped to the class's
    /// capacity: a snapshot taken while threads allocate is approximate, never a panic or a
    /// wrapped count.
    pub(crate) fn add_pool(&mut self, class: usize, in_use: usize, geo: &Geometry) {
        let capacity = geo.blocks_per_pool(class);
        let in_use = in_use.min(capacity);
        let row = &mut self.classes[class];
        row.pools += 1;
        row.blocks_in_use += in_use;
        row.blocks_available += capacity - in_use;
    }

    /// Pools serving some class.
    pub fn pools_in_use(&self) -> usize {
        self.classes.iter().map(|c| c.pools).sum()
    }

    /// Blocks handed out and not freed, over all classes.
    pub fn blocks_in_use(&self) -> usize {
        self.classes.iter().map(|c| c.blocks_in_use).sum()
    }

    /// Bytes in blocks handed out.
    pub fn bytes_in_allocated_blocks(&self) -> usize {
        self.classes.iter().map(|c| c.blocks_in_use * c.size).sum()
    }

    /// Bytes in free blocks of pools in use.
    pub fn bytes_in_available_blocks(&self) -> usize {
        self.classes
            .iter()
            .map(|c| c.blocks_available * c.size)
            .sum()
    }

    /// Bytes in pools that serve no class.
    pub fn bytes_in_unused_pools(&self) -> usize {
        self.unused_pools * self.pool_size
    }

    /// Bytes taken by the headers of pools in use.
    pub fn bytes_lost_to_pool_headers(&self) -> usize {
        self.pools_in_use() * self.pool_overhead
    }

    /// Bytes at the end of pools in use too small for one more block.
    pub fn bytes_lost_to_quantization(&self) -> usize {
        self.classes
            .iter()
            .map(|c| c.pools * ((self.pool_size - self.pool_overhead) % c.size))
            .sum()
    }

    /// Sum of all the byte counts above; equals `arenas_current * arena_size`.
    pub fn total(&self) -> usize {
        self.bytes_in_allocated_blocks()
            + self.bytes_in_available_blocks()
            + self.bytes_in_unused_pools()
            + self.bytes_lost_to_pool_headers()
            + self.bytes_lost_to_quantization()
    }

    /// Bytes given back to the OS by purging free pools since the heap was built.
    pub fn bytes_purged(&self) -> u64 {
        self.pools_purged * self.pool_size as u64
    }

    /// `arenas_current * arena_size`: what [`total`](Self::total) must equal.
    pub fn mapped_bytes(&self) -> usize {
        self.counters.current as usize * self.arena_size
    }
}

struct Grouped(usize);

impl fmt::Display for Grouped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Digits grouped by thousands, right-aligned in the width asked for, without allocating.
        let mut buf = [0u8; 32];
        let mut i = buf.len();
        let mut n = self.0;
        let mut digits = 0;
        loop {
            if digits > 0 && digits % 3 == 0 {
                i -= 1;
                buf[i] = b',';
            }
            i -= 1;
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
            digits += 1;
            if n == 0 {
                break;
            }
        }
        // SAFETY: buf[i..] holds only ASCII digits and commas.
        f.pad_integral(true, "", unsafe {
            core::str::from_utf8_unchecked(&buf[i..])
        })
    }
}

/// A label formatted into a stack buffer, so that it can be padded (formatting allocates
/// nothing: stats are printed at exit by the global allocator).
struct Label {
    buf: [u8; 64],
    len: usize,
}

impl Label {
    fn new(args: fmt::Arguments<'_>) -> Label {
        let mut l = Label {
            buf: [0; 64],
            len: 0,
        };
        let _ = fmt::Write::write_fmt(&mut l, args);
        l
    }
}

impl fmt::Write for Label {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only ASCII is ever written into labels, so any prefix is valid UTF-8.
        f.pad(core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?"))
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "ftmalloc ({} mode)", self.mode)?;
        writeln!(
            f,
            "Small block threshold = {}, in {} size classes.\n",
            self.small_limit, self.num_classes
        )?;
        writeln!(f, "class   size   num pools   blocks in use  avail blocks")?;
        writeln!(f, "-----   ----   ---------   -------------  ------------")?;
        for (c, row) in self.classes[..self.num_classes].iter().enumerate() {
            if row.pools == 0 {
                continue;
            }
            writeln!(
                f,
                "{:5} {:6} {:11} {:15} {:13}",
                c, row.size, row.pools, row.blocks_in_use, row.blocks_available
            )?;
        }
        writeln!(f)?;
        let line = |f: &mut fmt::Formatter<'_>, label: &str, v: usize| {
            writeln!(f, "{:<35}= {:>21}", label, Grouped(v))
        };
        line(
            f,
            "# arenas allocated total",
            self.counters.allocated_total as usize,
        )?;
        line(f, "# arenas reclaimed", self.counters.reclaimed as usize)?;
        line(
            f,
            "# arenas highwater mark",
            self.counters.highwater as usize,
        )?;
        line(
            f,
            "# arenas allocated current",
            self.counters.current as usize,
        )?;
        writeln!(
            f,
            "{:<35}= {:>21}\n",
            Label::new(format_args!(
                "{} arenas * {} bytes/arena",
                self.counters.current, self.arena_size
            )),
            Grouped(self.mapped_bytes())
        )?;
        line(
            f,
            "# bytes in allocated blocks",
            self.bytes_in_allocated_blocks(),
        )?;
        line(
            f,
            "# bytes in available blocks",
            self.bytes_in_available_blocks(),
        )?;
        writeln!(
            f,
            "{:<35}= {:>21}",
            Label::new(format_args!(
                "{} unused pools * {} bytes",
                self.unused_pools, self.pool_size
            )),
            Grouped(self.bytes_in_unused_pools())
        )?;
        line(
            f,
            "# bytes lost to pool headers",
            self.bytes_lost_to_pool_headers(),
        )?;
        line(
            f,
            "# bytes lost to quantization",
            self.bytes_lost_to_quantization(),
        )?;
        line(f, "# bytes lost to arena alignment", 0)?;
        line(f, "Total", self.total())?;
        if self.mode != Mode::Gil {
            writeln!(f)?;
            line(f, "# thread caches", self.thread_caches)?;
            line(f, "# pools held by thread caches", self.cached_pools)?;
            line(f, "# pools awaiting adoption", self.abandoned_pools)?;
            line(f, "# most pools held by one cache", self.max_cached_pools)?;
            line(f, "# free pools not yet purged", self.dirty_pools)?;
            line(f, "# pools purged", self.pools_purged as usize)?;
            line(f, "# bytes purged", self.bytes_purged() as usize)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouped_numbers() {
        assert_eq!(format!("{}", Grouped(0)), "0");
        assert_eq!(format!("{}", Grouped(1_048_576)), "1,048,576");
        assert_eq!(format!("{:>8}", Grouped(1234)), "   1,234");
    }
}
