//! Any text as a routing configuration: a configuration or an error with a place, never a panic.
#![no_main]

use clusterscope::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::from_yaml(text, "fuzz");
    }
});
