//! Settings of the global allocator (mimalloc) for particular commands.

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (mimalloc.h): how long freed
/// memory waits before it is given back to the system, in milliseconds; -1 never.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory for reuse instead of giving it back to the system. For batch
/// commands that allocate and free the same sizes over and over (the simulator frees a
/// whole run's state and builds the next): giving pages back and faulting them in again
/// cost a tenth of their time. The broker keeps the default, so that a long-lived
/// server returns what it no longer uses.
pub fn keep_freed_memory() {
    // SAFETY: sets one of mimalloc's integer options; any value is valid.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option number names the purge delay: its default in mimalloc 3's
    /// `options.c` is 1,000 ms, which no option near it has.
    #[test]
    fn the_option_number_is_the_purge_delay() {
        // SAFETY: reads one of mimalloc's integer options.
        let delay = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
        assert_eq!(delay, 1_000);
    }
}
