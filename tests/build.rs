//! Decides at build time whether the multi-host tests (three hosts in
//! network namespaces) can run: they need root. Built by another user they
//! are `#[ignore]`d, so the runner reports them as ignored instead of
//! passing without having run (`cfg(lab)`).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(lab)");
    println!("cargo::rerun-if-env-changed=USER");
    println!("cargo::rerun-if-env-changed=SUDO_USER");
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false);
    if root {
        println!("cargo::rustc-cfg=lab");
    }
}
