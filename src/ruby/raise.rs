//! Core errors raised as Ruby exceptions: the class is chosen by the error's kind and
//! looked up in lib/jetstream_bridge/errors.rb when raised, never by parsing messages.

use magnus::{prelude::*, ExceptionClass, RModule, Ruby, Value};

use crate::errors::{BridgeError, Kind};

impl BridgeError {
    /// Builds the Ruby exception. Must be called with the GVL held.
    pub fn into_ruby(self) -> magnus::Error {
        let ruby = Ruby::get().expect("errors are raised with the GVL held");
        let class = if self.kind == Kind::InvalidArgument {
            Ok(ruby.exception_arg_error())
        } else {
            ruby.class_object()
                .const_get::<_, RModule>("JetstreamBridge")
                .and_then(|m| m.const_get::<_, ExceptionClass>(self.kind.class_name()))
        };
        let class = match class {
            Ok(class) => class,
            Err(e) => return e,
        };
        match class.new_instance((self.message.as_str(),)) {
            Ok(exc) => {
                if let (Some(code), Some(err_code)) = (self.code, self.err_code) {
                    let _: std::result::Result<Value, magnus::Error> = exc.funcall("instance_variable_set", ("@code", code));
                    let _: std::result::Result<Value, magnus::Error> = exc.funcall("instance_variable_set", ("@err_code", err_code));
                }
                magnus::Error::from(exc)
            }
            Err(e) => e,
        }
    }
}
