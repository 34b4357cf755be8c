//! Rebuild the programs when bpf-linker changes: a new linker can change the object even when
//! no source did.
use which::which;

fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        // The missing linker makes the build itself fail with a clearer message; `cargo xtask
        // setup` installs it.
        Err(err) => println!("cargo:warning=bpf-linker not found: {err}"),
    }
}
