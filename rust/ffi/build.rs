// The cdylib looks for libtorch beside itself, then where it was built against (a checkout's
// .venv). Elsewhere (a cluster node) the JVM and Python loaders preload libtorch from the
// node's own `pip install torch` before loading this library.
fn main() {
    let mut rpath = String::from("$ORIGIN");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        rpath.push(':');
        rpath.push_str(&dir);
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{rpath}");
}
