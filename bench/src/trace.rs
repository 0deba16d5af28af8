//! The embedded CPython allocation trace (`bench/pytrace/pytrace.bin.gz`) and its decoder: it
//! turns the recording into one event list per replay thread for the `pytrace` workload
//! ([`crate::workloads::pytrace`]).

/// The recorded CPython trace (`bench/pytrace/record.sh` regenerates it; format in
/// `bench/pytrace/convert.py`).
pub static PYTRACE_GZ: &[u8] = include_bytes!("../pytrace/pytrace.bin.gz");

/// One event of a replay thread: allocate or free object `obj` (generation `generation` of its
/// slot within one pass) of `size` bytes.
#[derive(Clone, Copy, Debug)]
pub struct TraceEvent {
    /// The object's slot (the trace reuses slots once their object is freed).
    pub obj: u32,
    /// An allocation (`true`) or a free.
    pub alloc: bool,
    /// The object's size in bytes (for a free, the size it was allocated with).
    pub size: u32,
    /// Which allocation of the slot, counted from 0, within one pass.
    pub generation: u32,
}

/// A trace parsed for replay on `threads` threads.
pub struct Trace {
    /// Per replay thread, its events in the trace's global order.
    pub per_thread: Vec<Vec<TraceEvent>>,
    /// Allocations of each slot in one pass.
    pub allocs_per_slot: Vec<u32>,
    /// Allocations in one pass.
    pub allocs: u64,
}

/// Reads the LEB128 varint at `*at` and moves `*at` past it.
fn read_varint(data: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let b = data[*at];
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

/// Decompresses and parses the trace; trace thread `t` replays on thread `t % threads`, and
/// each replay thread keeps the global order of its events, so a replay thread only ever waits
/// for events earlier in that order (no deadlock). Objects still live at the end of the trace
/// are freed by replay thread 0 at the end of each pass.
pub fn load(threads: usize) -> Trace {
    use std::io::Read;
    let mut data = Vec::new();
    flate2::read::GzDecoder::new(PYTRACE_GZ)
        .read_to_end(&mut data)
        .expect("the embedded pytrace trace is valid gzip");
    assert_eq!(&data[..8], b"FTMPYT01", "not a pytrace trace");
    let slots = u32::from_le_bytes(data[12..16].try_into().unwrap()) as usize;
    let events = u64::from_le_bytes(data[16..24].try_into().unwrap());
    let mut per_thread = vec![Vec::new(); threads.max(1)];
    let mut allocs_per_slot = vec![0u32; slots];
    let mut live_size = vec![0u32; slots];
    let mut live = vec![false; slots];
    let mut allocs = 0u64;
    let mut at = 24;
    for _ in 0..events {
        let head = data[at];
        at += 1;
        let thread = usize::from(head & 0x7f) % per_thread.len();
        let alloc = head & 0x80 == 0;
        let size = if alloc {
            read_varint(&data, &mut at) as u32
        } else {
            0
        };
        let obj = read_varint(&data, &mut at) as u32;
        let o = obj as usize;
        if alloc {
            let generation = allocs_per_slot[o];
            allocs_per_slot[o] += 1;
            live[o] = true;
            live_size[o] = size;
            allocs += 1;
            per_thread[thread].push(TraceEvent {
                obj,
                alloc,
                size,
                generation,
            });
        } else {
            live[o] = false;
            per_thread[thread].push(TraceEvent {
                obj,
                alloc,
                size: live_size[o],
                generation: allocs_per_slot[o] - 1,
            });
        }
    }
    for o in 0..slots {
        if live[o] {
            per_thread[0].push(TraceEvent {
                obj: o as u32,
                alloc: false,
                size: live_size[o],
                generation: allocs_per_slot[o] - 1,
            });
        }
    }
    Trace {
        per_thread,
        allocs_per_slot,
        allocs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_decode() {
        let data = [0x05, 0xac, 0x02, 0x80, 0x80, 0x01];
        let mut at = 0;
        assert_eq!(read_varint(&data, &mut at), 5);
        assert_eq!(read_varint(&data, &mut at), 300);
        assert_eq!(read_varint(&data, &mut at), 1 << 14);
        assert_eq!(at, data.len());
    }

    #[test]
    fn every_allocation_is_freed_once_per_pass() {
        let t = load(3);
        assert_eq!(t.per_thread.len(), 3);
        let events = t.per_thread.iter().flatten();
        let (allocs, frees) =
            events.fold(
                (0u64, 0u64),
                |(a, f), e| {
                    if e.alloc {
                        (a + 1, f)
                    } else {
                        (a, f + 1)
                    }
                },
            );
        assert_eq!(allocs, t.allocs);
        assert_eq!(frees, t.allocs);
        assert_eq!(
            t.allocs_per_slot.iter().map(|&n| u64::from(n)).sum::<u64>(),
            t.allocs
        );
    }
}
