//! `proxy.auth_file`: `"user" "secret"` lines, secrets plain, md5 or
//! SCRAM verifiers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = pgwarden_wire::auth::auth_file::AuthFile::parse(&text);
});
