//! A library that used a heap instance survives `dlclose` (issue 21, item 2).
//!
//! The fixture `tests/fixtures/dlc` is a cdylib depending on ftmalloc; its `work` builds an
//! `Allocator` instance, allocates and frees a block and drops the heap, which binds the calling
//! thread to the thread registry and so registers its `pthread_key` destructor. The C driver
//! (`tests/fixtures/dlc/main.c`) calls it on a thread, `dlclose`s the library and lets the
//! thread exit: the destructor must still be mapped then (the registry pins the object that
//! holds it, `RTLD_NODELETE`). Before the fix the driver died of SIGSEGV in
//! `__nptl_deallocate_tsd` (exit 139 from a shell).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds the fixture plugin (its own target directory under cargo's scratch directory, so it
/// does not wait for the outer build's lock) and the C driver; returns their paths.
fn build() -> (PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixture = root.join("tests/fixtures/dlc");
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dlc-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--quiet", "--offline", "--manifest-path"])
        .arg(fixture.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        // The plugin is built without the outer build's flags (sanitizers, coverage).
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "building the fixture failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plugin = target.join("debug/libdlc.so");
    assert!(plugin.exists(), "{} missing", plugin.display());
    let driver = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dlc-main");
    let out = Command::new("cc")
        .arg("-o")
        .arg(&driver)
        .arg(fixture.join("main.c"))
        .args(["-ldl", "-lpthread"])
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (plugin, driver)
}

#[test]
fn thread_exit_after_dlclose() {
    let (plugin, driver) = build();
    let out = Command::new(&driver).arg(&plugin).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "driver failed ({:?}, signal {:?}):\n{stdout}\n{}",
        out.status,
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("threads exited cleanly"), "{stdout}");
}
