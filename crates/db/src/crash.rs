//! The crash-point test hook: a named step of a role change where the end-to-end tests
//! can kill the process. It reads `GEOREP_CRASH_AT` only in builds with the
//! `crash-points` feature (which the CLI's tests turn on); other builds compile it to
//! nothing.

/// Test hook for multi-step operations: when `GEOREP_CRASH_AT` names `point`, the
/// process aborts there at once, as a `kill -9` would, so tests can interrupt a role
/// change at an exact step and check what a restart makes of it.
#[cfg(feature = "crash-points")]
pub fn crash_point(point: &str) {
    if std::env::var("GEOREP_CRASH_AT").is_ok_and(|p| p == point) {
        eprintln!("GEOREP_CRASH_AT={point}: aborting here");
        std::process::abort();
    }
}

/// Test hook for multi-step operations; this build has no `crash-points` feature, so it
/// does nothing.
#[cfg(not(feature = "crash-points"))]
#[inline]
pub fn crash_point(_point: &str) {}
