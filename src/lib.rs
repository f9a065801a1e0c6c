//! Native core of the jetstream_bridge gem, exposed to Ruby as `JetstreamBridge::Native`.
//! See src/README.md for the threading, GVL, fork and panic rules this code follows, and
//! which folder holds what.

mod clock;
mod consume;
mod duration;
mod errors;
mod publish;
mod redact;
mod ruby;
mod runtime;
mod sync;
mod topology;
mod wire;

#[magnus::init]
fn init(ruby: &magnus::Ruby) -> Result<(), magnus::Error> {
    ruby::define(ruby)
}

/// Checks of src/README.md's rules against the source text (cargo test).
#[cfg(test)]
mod boundary;
