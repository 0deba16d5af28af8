//! The configuration of a heap: pool and arena sizes, debug mode, decay; validated into a
//! [`Geometry`].
//!
//! pymalloc's numbers on 64-bit are the default ([`Config::PYMALLOC`]): 16 KiB pools carved
//! from 1 MiB arenas, 16-byte blocks steps up to 512 bytes. Tests and loom models shrink the
//! sizes with [`Config::new`] so that "pool full", "pool empty" and "arena empty" are reached
//! in a handful of operations.
//!
//! Invariants kept by [`Geometry`] (checked once, in [`Config::geometry`]):
//! - `pool_size` and `arena_size` are powers of two, `pool_size <= arena_size`, and an arena
//!   holds between 1 and 64 pools (the free-threaded mode keeps one bit per pool in a `u64`);
//! - every size class up to `small_limit` fits at least two blocks in a pool after the header,
//!   so a fresh pool never fills on its first block;
//! - `pool_overhead` is a multiple of [`ALIGNMENT`], so every block is 16-byte aligned.

use crate::base::os::page_size;
use crate::layout::geometry::{
    Geometry, MAX_POOLS_PER_ARENA, MAX_POOL_SHIFT, PYMALLOC_ARENA_SHIFT, PYMALLOC_POOL_SHIFT,
};
use crate::layout::pool;
use crate::layout::size_class::{ALIGNMENT, MAX_SMALL_REQUEST};
use core::fmt;

/// Pool and arena sizes of one [`Allocator`](crate::Allocator).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Bytes per pool (a power of two; pools are aligned to their size).
    pub pool_size: usize,
    /// Bytes per arena (a power of two and a multiple of `pool_size`; arenas are aligned to their size).
    pub arena_size: usize,
    /// Debug mode: size headers, guard bytes and fill patterns on every pool block, with checks
    /// for double frees, overruns and writes to freed memory (see the `debug` module).
    pub debug: bool,
    /// Free-threaded mode: how long (milliseconds) a free pool keeps its pages before they are
    /// given back to the OS (`madvise`); a pool is purged after one to two intervals free.
    /// 0 purges every pool as it returns to its arena. GIL mode, like pymalloc, gives back
    /// only whole arenas and ignores it. Default [`Config::DEFAULT_DECAY_MS`].
    pub decay_ms: u64,
}

/// Why a [`Config`] was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The configuration that was refused.
    pub config: Config,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid ftmalloc config (pool_size {}, arena_size {}, decay_ms {}): {}",
            self.config.pool_size, self.config.arena_size, self.config.decay_ms, self.reason
        )
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// pymalloc's layout on 64-bit platforms: 16 KiB pools in 1 MiB arenas.
    pub const PYMALLOC: Config = Config::new(1 << PYMALLOC_POOL_SHIFT, 1 << PYMALLOC_ARENA_SHIFT);

    /// The default decay interval: 100 ms.
    pub const DEFAULT_DECAY_MS: u64 = 100;

    /// Longest decay interval accepted: one hour.
    pub const MAX_DECAY_MS: u64 = 3_600_000;

    /// A configuration with the given pool and arena sizes (validated when an allocator is built).
    pub const fn new(pool_size: usize, arena_size: usize) -> Config {
        Config {
            pool_size,
            arena_size,
            debug: false,
            decay_ms: Config::DEFAULT_DECAY_MS,
        }
    }

    /// The same configuration with debug mode on or off.
    pub const fn with_debug(self, debug: bool) -> Config {
        Config { debug, ..self }
    }

    /// The same configuration with another decay interval (see [`Config::decay_ms`]).
    pub const fn with_decay_ms(self, decay_ms: u64) -> Config {
        Config { decay_ms, ..self }
    }

    /// Checks the configuration and derives the numbers the allocator works with.
    pub fn geometry(&self) -> Result<Geometry, ConfigError> {
        let err = |reason| ConfigError {
            config: *self,
            reason,
        };
        if !self.pool_size.is_power_of_two() {
            return Err(err("pool_size must be a power of two"));
        }
        if !self.arena_size.is_power_of_two() {
            return Err(err("arena_size must be a power of two"));
        }
        if self.arena_size < self.pool_size {
            return Err(err("arena_size must be at least pool_size"));
        }
        let pools_per_arena = self.arena_size / self.pool_size;
        if pools_per_arena > MAX_POOLS_PER_ARENA {
            return Err(err("an arena may hold at most 64 pools"));
        }
        if self.pool_size > 1 << MAX_POOL_SHIFT {
            return Err(err(
                "pool_size may be at most 64 KiB (block offsets are checked in 16 bits)",
            ));
        }
        if self.decay_ms > Config::MAX_DECAY_MS {
            return Err(err("decay_ms may be at most 3600000 (one hour)"));
        }
        if self.arena_size < page_size() {
            return Err(err("arena_size must be at least the OS page size"));
        }
        let pool_overhead = pool::OVERHEAD;
        if self.pool_size < pool_overhead + 2 * ALIGNMENT {
            return Err(err(
                "pool_size leaves no room for two 16-byte blocks after the pool header",
            ));
        }
        // Largest class that still fits two blocks after the header.
        let room = (self.pool_size - pool_overhead) / 2;
        let small_limit = (room / ALIGNMENT * ALIGNMENT).min(MAX_SMALL_REQUEST);
        Ok(Geometry {
            pool_size: self.pool_size,
            pool_shift: self.pool_size.trailing_zeros(),
            arena_size: self.arena_size,
            arena_shift: self.arena_size.trailing_zeros(),
            pools_per_arena,
            pool_overhead,
            small_limit,
            num_classes: small_limit / ALIGNMENT,
        })
    }
}

/// [`Config::PYMALLOC`]'s geometry as a constant (the process-wide heap's: its fast paths use
/// it, so its sizes and shifts are immediates; `tests::pymalloc_geometry` checks it equals
/// what [`Config::geometry`] derives).
pub(crate) const PYMALLOC_GEOMETRY: Geometry = {
    let pool_size = 1 << PYMALLOC_POOL_SHIFT;
    let room = (pool_size - pool::OVERHEAD) / 2;
    let small = room / ALIGNMENT * ALIGNMENT;
    let small_limit = if small < MAX_SMALL_REQUEST {
        small
    } else {
        MAX_SMALL_REQUEST
    };
    Geometry {
        pool_size,
        pool_shift: PYMALLOC_POOL_SHIFT,
        arena_size: 1 << PYMALLOC_ARENA_SHIFT,
        arena_shift: PYMALLOC_ARENA_SHIFT,
        pools_per_arena: 1 << (PYMALLOC_ARENA_SHIFT - PYMALLOC_POOL_SHIFT),
        pool_overhead: pool::OVERHEAD,
        small_limit,
        num_classes: small_limit / ALIGNMENT,
    }
};

impl Default for Config {
    fn default() -> Self {
        Config::PYMALLOC
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pymalloc_geometry() {
        let g = Config::PYMALLOC.geometry().unwrap();
        assert_eq!(g, PYMALLOC_GEOMETRY);
        assert_eq!(g.pools_per_arena, 64);
        assert_eq!(g.small_limit, 512);
        assert_eq!(g.num_classes, 32);
        assert_eq!(g.pool_overhead % 16, 0);
        assert_eq!(g.pool_of(0x1234_5678), 0x1234_4000);
        assert_eq!(g.arena_of(0x1234_5678), 0x1230_0000);
    }

    #[test]
    fn tiny_geometry_limits_classes() {
        let ov = pool::OVERHEAD;
        let pool = (ov + 128).next_power_of_two();
        let g = Config::new(pool, page_size().max(pool)).geometry().unwrap();
        assert!(g.small_limit >= 16);
        assert!(g.blocks_per_pool(g.num_classes - 1) >= 2);
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        for (p, a) in [
            (3000, 1 << 20),
            (16384, 3 << 20),
            (1 << 20, 1 << 14),
            (1 << 10, 1 << 20),
            (16, 4096),
        ] {
            let e = Config::new(p, a).geometry().unwrap_err();
            assert!(!e.reason.is_empty());
            assert!(e.to_string().contains(&p.to_string()));
        }
        let e = Config::PYMALLOC
            .with_decay_ms(Config::MAX_DECAY_MS + 1)
            .geometry()
            .unwrap_err();
        assert!(e.to_string().contains("decay_ms 3600001"), "{e}");
        assert!(Config::PYMALLOC
            .with_decay_ms(Config::MAX_DECAY_MS)
            .geometry()
            .is_ok());
    }
}
