//! What every layer needs, knowing nothing above it: the synchronisation facade ([`sync`]),
//! the shared lock-free building blocks ([`stack`], [`list`]), the OS layer ([`os`], [`asan`]),
//! diagnostics that allocate nothing ([`diag`]) and environment parsing ([`env`]).
//!
//! Layering (checked by `tests/layers.rs`): `base` imports nothing of the crate outside itself;
//! `layout` imports `base`; the two front-ends `gil` and `ft` import `base` and `layout` and never
//! each other; the facade (`heap`) imports them all; the process shell (`global`) sits on top, and
//! nothing in the library imports it.

pub(crate) mod asan;
pub mod diag;
pub(crate) mod env;
pub(crate) mod list;
pub(crate) mod os;
pub(crate) mod stack;
pub(crate) mod sync;
