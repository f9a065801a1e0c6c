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
    check_ruby_version(ruby)?;
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

/// A LoadError, before anything is defined, when the running Ruby is not the minor version
/// the bindings were generated for: a library built for another Ruby (a build left in
/// place after switching Ruby) would read Ruby's structs at the wrong offsets.
fn check_ruby_version(ruby: &Ruby) -> Result<(), Error> {
    let built = (rb_sys::RUBY_API_VERSION_MAJOR as i32, rb_sys::RUBY_API_VERSION_MINOR as i32);
    // SAFETY: a constant array every libruby exports (ruby/version.h), read once.
    let running = unsafe { (rb_sys::ruby_api_version[0], rb_sys::ruby_api_version[1]) };
    if built == running {
        return Ok(());
    }
    let message = format!(
        "jetstream_bridge's native library was built for Ruby {}.{} (ruby_api_version), this is Ruby {}.{}: \
         rebuild it with this Ruby (rake compile, or reinstall the gem)",
        built.0, built.1, running.0, running.1
    );
    Err(Error::new(ruby.exception_load_error(), message))
}
