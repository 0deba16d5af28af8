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

#[cfg(test)]
mod tests {
    use super::*;
    use core::ptr;

    struct Node {
        next: *mut Node,
        prev: *mut Node,
    }

    impl Links for Node {
        unsafe fn next(n: *const Node) -> *mut Node {
            // SAFETY: the test's nodes are live.
            unsafe { (*n).next }
        }
        unsafe fn prev(n: *const Node) -> *mut Node {
            // SAFETY: as above.
            unsafe { (*n).prev }
        }
        unsafe fn set_next(n: *mut Node, v: *mut Node) {
            // SAFETY: as above.
            unsafe { (*n).next = v }
        }
        unsafe fn set_prev(n: *mut Node, v: *mut Node) {
            // SAFETY: as above.
            unsafe { (*n).prev = v }
        }
    }

    fn walk(head: *mut Node) -> Vec<*mut Node> {
        let mut out = Vec::new();
        let mut n = head;
        while !n.is_null() {
            // SAFETY: nodes on the list are live; links are consistent both ways.
            unsafe {
                let next = Node::next(n);
                if !next.is_null() {
                    assert_eq!(Node::prev(next), n, "prev link broken");
                }
                out.push(n);
                n = next;
            }
        }
        out
    }

    #[test]
    fn push_front_and_unlink_keep_both_links() {
        let mut nodes: Vec<Node> = (0..4)
            .map(|_| Node {
                next: ptr::null_mut(),
                prev: ptr::null_mut(),
            })
            .collect();
        let p: Vec<*mut Node> = nodes.iter_mut().map(|n| n as *mut Node).collect();
        let mut head = ptr::null_mut();
        // SAFETY: the nodes outlive the list; each is pushed once and unlinked while on it.
        unsafe {
            for &n in &p {
                push_front(&mut head, n);
            }
            assert_eq!(walk(head), vec![p[3], p[2], p[1], p[0]]);
            assert!(Node::prev(head).is_null());
            assert_eq!(unlink(&mut head, p[2]), p[1], "middle");
            assert_eq!(walk(head), vec![p[3], p[1], p[0]]);
            assert_eq!(unlink(&mut head, p[3]), p[1], "head");
            assert_eq!(walk(head), vec![p[1], p[0]]);
            assert!(unlink(&mut head, p[0]).is_null(), "tail");
            assert_eq!(walk(head), vec![p[1]]);
            assert!(unlink(&mut head, p[1]).is_null());
            assert!(head.is_null());
        }
    }
}
