//! The Ruby boundary: the only code that touches Ruby (magnus, rb-sys). Everything it
//! hands to the rest of the core is plain Rust data; see src/README.md for which thread
//! may run what.

pub mod client;
pub mod consumer;
pub mod convert;
pub mod from_json;
pub mod gvl;
pub mod native;
pub mod publish_args;
pub mod publish_items;
pub mod raise;
pub mod to_json;
pub mod topology;
pub mod types;

use magnus::{prelude::*, Error, Ruby};

/// Defines `JetstreamBridge::Native` (functions, Client, Consumer); called once by the
/// extension's init.
pub fn define(ruby: &Ruby) -> Result<(), Error> {
    crate::runtime::process::install_fork_handler();
    let bridge = ruby.define_module("JetstreamBridge")?;
    let native = bridge.define_module("Native")?;
    // Before anything can raise or build a result: the classes of errors.rb and native_types.rb.
    raise::load(ruby, bridge)?;
    types::load(ruby, native)?;
    native::init(ruby, native)?;
    client::init(ruby, native)?;
    consumer::init(ruby, native)?;
    Ok(())
}
