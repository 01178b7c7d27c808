//! The message scanner the proxy runs over every byte a client or server
//! sends, in chunks cut where the input says, with an observer that asks
//! for every body and stops at some messages.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgwarden_wire::ProtocolError;
use pgwarden_wire::scan::{Flow, Observer, Scanner};

struct Watch {
    messages: usize,
}

impl Observer for Watch {
    fn start(&mut self, tag: u8) -> Result<Flow, ProtocolError> {
        self.messages += 1;
        Ok(if tag == b'X' {
            Flow::Stop
        } else {
            Flow::Continue
        })
    }

    fn wants_body(&self, tag: u8) -> bool {
        tag != b'd'
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let mut scanner = Scanner::new(1 << 16);
    let mut obs = Watch { messages: 0 };
    let size = usize::from(cut).max(1);
    for chunk in rest.chunks(size) {
        let mut at = 0;
        loop {
            match scanner.scan(&chunk[at..], &mut obs) {
                Ok(None) | Err(_) => break,
                Ok(Some(offset)) => {
                    // Stopped at a message: skip its tag byte and go on,
                    // as a caller that consumed it would.
                    at += offset + 1;
                    if at >= chunk.len() {
                        break;
                    }
                    scanner = Scanner::new(1 << 16);
                }
            }
        }
    }
});
