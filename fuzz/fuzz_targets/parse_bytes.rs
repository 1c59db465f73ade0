//! Raw bytes into the weight-file loader; whatever loads is compiled and run.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(model) = bnfold_fuzz::load_both(data) {
        bnfold_fuzz::exercise(&model);
    }
});
