// Test binaries and examples of this crate find libtorch where torch-sys found it
// (the venv's torch/lib), so `cargo test` needs no LD_LIBRARY_PATH.
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
