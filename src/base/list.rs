//! The intrusive doubly linked list, written once: a head pointer owned by its user and
//! `prev`/`next` links inside the nodes (pool headers, GIL mode's arena descriptors). Owned
//! by one thread at a time (a thread cache, or the GIL-mode lock's holder): no atomics.

/// A node of an intrusive list: how to read and write its links.
pub(crate) trait Links: Sized {
    /// The next node, or null.
    ///
    /// # Safety
    /// `node` is a live node the caller may read.
    unsafe fn next(node: *const Self) -> *mut Self;
    /// The previous node, or null.
    ///
    /// # Safety
    /// As [`next`](Self::next).
    unsafe fn prev(node: *const Self) -> *mut Self;
    /// Sets the next link.
    ///
    /// # Safety
    /// `node` is a live node the caller may write.
    unsafe fn set_next(node: *mut Self, next: *mut Self);
    /// Sets the previous link.
    ///
    /// # Safety
    /// As [`set_next`](Self::set_next).
    unsafe fn set_prev(node: *mut Self, prev: *mut Self);
}

/// Pushes `node` at the front of the list at `head`.
///
/// # Safety
/// `node` is on no list; `head` and every node on it are live and the caller's to write.
#[inline(always)]
pub(crate) unsafe fn push_front<T: Links>(head: &mut *mut T, node: *mut T) {
    let first = *head;
    // SAFETY: the contract.
    unsafe {
        T::set_next(node, first);
        T::set_prev(node, core::ptr::null_mut());
        if !first.is_null() {
            T::set_prev(first, node);
        }
    }
    *head = node;
}

/// Removes `node` from the list at `head`; returns its successor (null at the end).
///
/// # Safety
/// `node` is on the list at `head`; its neighbours are live and the caller's to write.
#[inline(always)]
pub(crate) unsafe fn unlink<T: Links>(head: &mut *mut T, node: *mut T) -> *mut T {
    // SAFETY: the contract.
    unsafe {
        let (prev, next) = (T::prev(node), T::next(node));
        if prev.is_null() {
            debug_assert!(*head == node);
            *head = next;
        } else {
            T::set_next(prev, next);
        }
        if !next.is_null() {
            T::set_prev(next, prev);
        }
        next
    }
}
