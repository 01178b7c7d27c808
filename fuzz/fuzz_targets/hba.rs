//! `proxy.hba_file`: pg_hba.conf lines.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = pgwarden_proxy::frontend::hba::Hba::parse(&text);
});
